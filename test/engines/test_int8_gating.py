"""int8_gating on hand-made graphs: what becomes a per-ratio input, and what is refused.

The gated graph itself, built from real int8 graphs and run, is tested through the engine
(test_int8_engine.py).
"""
from __future__ import annotations

import pytest
from onnx import TensorProto, helper

from pls_perception.engines.int8_gating import (fixed_inputs, gate_name, gated_graph, gated_runs,
                                                parameter_inputs, ratio_inputs, ratio_parameters)
from pls_perception.skipping.ratios import (PROFILE_RATIOS, RESNET152_DEPTHS,
                                            ProportionalPolicy)


def _conv(name: str, x: str, y: str, w: str = 'w') -> object:
    """A QLinearConv whose inputs are x, x scale/zp, w, w scale/zp, y scale/zp, bias; an
    activation's scale and zero point are named after it, as one quantizer gives them."""
    return helper.make_node('QLinearConv', [x, f'{x}.s', f'{x}.z', w, 'ws', 'wz', f'{y}.s',
                                            f'{y}.z', f'{name}.b'],
                            [y], name=name, domain='com.microsoft')


def _graph(nodes: list, outputs: tuple[str, ...] = ()) -> object:
    """The nodes, every input no node makes (but 'input') a constant."""
    made = {o for n in nodes for o in n.output} | {'input'}
    constants = sorted({i for n in nodes for i in n.input} - made)
    return helper.make_graph(nodes, 'g', [], [
        helper.make_tensor_value_info(o, TensorProto.UINT8, None) for o in outputs], initializer=[
        helper.make_tensor(c, TensorProto.FLOAT, [], [1.0]) for c in constants])


def test_parameters_are_the_calibrated_slots_and_constants_the_rest() -> None:
    graph = _graph([_conv('/conv1/Conv_token_7', 'input', 'y')])
    assert ratio_parameters(graph) == {
        f'q//conv1/Conv/{slot}': name for slot, name in
        ((1, 'input.s'), (2, 'input.z'), (6, 'y.s'), (7, 'y.z'), (8, '/conv1/Conv_token_7.b'))}
    # the optimiser's suffix is dropped: the same node in every ratio's graph
    assert fixed_inputs(graph) == {'/conv1/Conv': ['', 'w', 'ws', 'wz']}


def test_an_activation_is_one_input_for_its_producer_and_consumers() -> None:
    """conv1's output scale and zero point are conv2's input ones; each bias is its node's."""
    convs = [_conv('/conv1/Conv_token_1', 'input', 'y'), _conv('/conv2/Conv_token_2', 'y', 'z')]
    inputs = parameter_inputs(_graph(convs))
    assert inputs == {'q//conv1/Conv/1': 'q/input:scale', 'q//conv1/Conv/2': 'q/input:zero_point',
                      'q//conv1/Conv/6': 'q/y:scale', 'q//conv1/Conv/7': 'q/y:zero_point',
                      'q//conv1/Conv/8': 'q//conv1/Conv/8',
                      'q//conv2/Conv/1': 'q/y:scale', 'q//conv2/Conv/2': 'q/y:zero_point',
                      'q//conv2/Conv/6': 'q/z:scale', 'q//conv2/Conv/7': 'q/z:zero_point',
                      'q//conv2/Conv/8': 'q//conv2/Conv/8'}
    # a graph whose producer and consumer hold different scales keeps an input per slot
    convs[1].input[1] = 'w'
    inputs = parameter_inputs(_graph(convs))
    assert inputs['q//conv1/Conv/6'] == 'q//conv1/Conv/6'
    assert inputs['q//conv2/Conv/1'] == 'q//conv2/Conv/1'
    assert inputs['q//conv2/Conv/2'] == 'q/y:zero_point'


def test_nodes_sharing_a_name_are_refused() -> None:
    twins = [_conv('/conv1/Conv_token_1', 'input', 'y1'), _conv('/conv1/Conv_token_2', 'y1', 'y2')]
    with pytest.raises(ValueError, match="two nodes are named '/conv1/Conv'"):
        ratio_parameters(_graph(twins))


def test_a_block_that_is_not_one_subgraph_is_refused() -> None:
    """Block 1 of layer1 reads the stem's output and block 0's: two inputs, no single skip."""
    nodes = [_conv('/stem/Conv', 'input', 's'), _conv('/layer1/layer1.0/conv/Conv', 's', 'a'),
             helper.make_node('Add', ['a', 's'], ['b'], name='/layer1/layer1.1/Add')]
    model = helper.make_model(_graph(nodes))
    with pytest.raises(ValueError, match='blocks /layer1/layer1.1/ are not one subgraph'):
        gated_graph(model, ('layer1',), [(0, 1, 2)])


def test_runs_group_the_blocks_the_ratios_skip_together() -> None:
    policy = ProportionalPolicy()
    masks = [policy.masks(r, (3, 8)) for r in (1.0, 0.5)]    # keeps 2 of 3, 4 of 8
    assert gated_runs(masks) == [(0, 2, 3), (1, 4, 8)]
    masks.append(policy.masks(0.25, (3, 8)))                 # keeps 1 of 3, 2 of 8
    assert gated_runs(masks) == [(0, 1, 2), (0, 2, 3), (1, 2, 4), (1, 4, 8)]
    # ResNet-152 at the ten profile ratios: 20 gates instead of one per skippable block (46)
    runs = gated_runs([policy.masks(r, RESNET152_DEPTHS) for r in PROFILE_RATIOS])
    assert len(runs) == 20
    assert sum(stop - first for _, first, stop in runs) == 46 - 3     # layer3.1-3 always run


def test_a_ratio_binds_one_gate_per_run_or_is_refused() -> None:
    policy = ProportionalPolicy()
    runs = gated_runs([policy.masks(r, (3, 8)) for r in (1.0, 0.5)])
    inputs = {'q/a/6': 'q/y:scale', 'q/b/1': 'q/y:scale', 'q/c/1': 'q/c/1'}
    half = policy.masks(0.5, (3, 8))
    gates, parameters = ratio_inputs(half, runs, inputs,
                                     {'q/a/6': 'full', 'q/b/1': 'full', 'q/c/1': 'full c'},
                                     {'q/a/6': 'own', 'q/b/1': 'own'})
    assert gates == {gate_name((0, 2, 3)): False, gate_name((1, 4, 8)): False}
    assert parameters == {'q/y:scale': 'own', 'q/c/1': 'full c'}
    with pytest.raises(ValueError, match="two tensors for the one input 'q/y:scale'"):
        ratio_inputs(half, runs, inputs, {}, {'q/a/6': 'own', 'q/b/1': 'another'})
    with pytest.raises(ValueError, match='keep part of the gated run'):
        ratio_inputs(policy.masks(0.75, (3, 8)), runs, inputs, {}, {})      # keeps 6 of 8
    with pytest.raises(ValueError, match='cannot skip'):
        ratio_inputs(policy.masks(0.25, (3, 8)), runs, inputs, {}, {})      # skips block 1 of 3


def test_weights_stay_in_the_main_graph() -> None:
    """Where ONNX Runtime frees them once packed: a branch holds no initializer; the
    parameters that became inputs are no initializers any more."""
    nodes = [_conv('/layer1/layer1.0/conv/Conv', 'input', 'a'),
             _conv('/layer1/layer1.1/conv/Conv', 'a', 'b', w='w1')]
    model = helper.make_model(_graph(nodes, outputs=('b',)))
    gated, inputs = gated_graph(model, ('layer1',), [(0, 1, 2)])
    assert inputs == parameter_inputs(model.graph)
    graph = gated.graph
    (branch,) = [a.g for n in graph.node if n.op_type == 'If' for a in n.attribute
                 if a.name == 'then_branch']
    assert list(branch.initializer) == []
    assert [t.name for t in graph.initializer] == ['w', 'w1', 'ws', 'wz']
