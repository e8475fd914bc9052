"""int8_gating on hand-made graphs: what becomes a per-ratio input, and what is refused.

The gated graph itself, built from real int8 graphs and run, is tested through the engine
(test_int8_engine.py).
"""
from __future__ import annotations

import pytest
from onnx import TensorProto, helper

from pls_perception.engines.int8_gating import fixed_inputs, gated_graph, ratio_parameters


def _conv(name: str, x: str, y: str) -> object:
    """A QLinearConv whose inputs are x, x scale/zp, w, w scale/zp, y scale/zp, bias."""
    return helper.make_node('QLinearConv', [x, 'xs', 'xz', 'w', 'ws', 'wz', 'ys', 'yz', 'b'],
                            [y], name=name, domain='com.microsoft')


def _graph(nodes: list, constants: tuple[str, ...] = ('w', 'ws', 'wz', 'xs')) -> object:
    return helper.make_graph(nodes, 'g', [], [], initializer=[
        helper.make_tensor(c, TensorProto.FLOAT, [], [1.0]) for c in constants])


def test_parameters_are_the_calibrated_slots_and_constants_the_rest() -> None:
    graph = _graph([_conv('/conv1/Conv_token_7', 'input', 'y')])
    assert ratio_parameters(graph) == {f'q//conv1/Conv/{slot}': name for slot, name in
                                       ((1, 'xs'), (2, 'xz'), (6, 'ys'), (7, 'yz'), (8, 'b'))}
    # the optimiser's suffix is dropped: the same node in every ratio's graph
    assert fixed_inputs(graph) == {'/conv1/Conv': ['', 'w', 'ws', 'wz']}


def test_nodes_sharing_a_name_are_refused() -> None:
    twins = [_conv('/conv1/Conv_token_1', 'input', 'y1'), _conv('/conv1/Conv_token_2', 'y1', 'y2')]
    with pytest.raises(ValueError, match="two nodes are named '/conv1/Conv'"):
        ratio_parameters(_graph(twins))


def test_a_block_that_is_not_one_subgraph_is_refused() -> None:
    """Block 1 of layer1 reads the stem's output and block 0's: two inputs, no single skip."""
    nodes = [_conv('/stem/Conv', 'input', 's'), _conv('/layer1/layer1.0/conv/Conv', 's', 'a'),
             helper.make_node('Add', ['a', 's'], ['b'], name='/layer1/layer1.1/Add')]
    model = helper.make_model(_graph(nodes))
    with pytest.raises(ValueError, match='/layer1/layer1.1/ is not one subgraph'):
        gated_graph(model, ('layer1',), (2,))
