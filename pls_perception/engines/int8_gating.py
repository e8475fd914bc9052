"""One int8 graph that serves every keep ratio: skippable blocks behind ``If``, per-ratio
quantization parameters as inputs.

Why: ONNX Runtime packs each int8 convolution's weights per session, and its shared pre-packed
weights container does not take the int8 ``QLinearConv`` kernel
(bench/bench_int8_prepack_sharing.py), so ten ratio sessions hold ten packed copies (544 MB for a
node with all ten ratios). The full-mask graph with every skippable block (all but the first of a
stage) behind an ``If`` on a boolean input packs each block once. What per-ratio calibration
changes (activation scales and zero points, int32 biases) becomes graph inputs, fed from each
ratio's own graph, so every ratio computes exactly what its own graph does. The weights and their
scales stay constants: they are the same at every ratio unless BatchNorm statistics differ, which
`fixed_inputs` lets the engine check.

Works on the offline-optimised int8 graphs (com.microsoft ``QLinearConv``, ``QLinearAdd``,
``QGemm`` ...), whose node names are the exporter's module paths plus an optimiser suffix
``_token_N`` that differs between ratios. Needs ``onnx``: used when a graph is built, never to
serve one.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

    from pls_perception.skipping.ratios import Masks

# Input slots that per-ratio calibration changes, by operator (weights and their scales do not).
RATIO_SLOTS = {'QLinearConv': (1, 2, 6, 7, 8), 'QLinearAdd': (1, 2, 4, 5, 6, 7),
               'QGemm': (1, 2, 6, 7, 8), 'QLinearGlobalAveragePool': (1, 2, 3, 4),
               'QuantizeLinear': (1, 2), 'DequantizeLinear': (1, 2)}
_OPTIMISER_SUFFIX = re.compile(r'_token_\d+$')
GATE_PREFIX = 'keep/'
PARAMETER_PREFIX = 'q/'


def node_key(node: Any) -> str:
    """A node's name without the optimiser's suffix: the same node in every ratio's graph."""
    return _OPTIMISER_SUFFIX.sub('', node.name)


def _slots(node: Any) -> dict[int, str]:
    """Input slot -> the input name it becomes, of ``node``'s per-ratio parameters."""
    return {slot: f'{PARAMETER_PREFIX}{node_key(node)}/{slot}'
            for slot in RATIO_SLOTS.get(node.op_type, ())
            if slot < len(node.input) and node.input[slot]}


def _parameter_slots(graph: Any) -> Iterator[tuple[Any, int, str]]:
    """(node, input slot, input name it becomes) of every per-ratio parameter in ``graph``,
    ``If`` branches included."""
    for node in all_nodes(graph):
        for slot, name in _slots(node).items():
            yield node, slot, name


def ratio_parameters(graph: Any) -> dict[str, str]:
    """A ratio graph's per-ratio parameters: parameter input name -> the tensor it holds there.
    ValueError if two nodes share a name (their parameters would be one input)."""
    parameters: dict[str, str] = {}
    for node, slot, name in _parameter_slots(graph):
        if name in parameters:
            raise ValueError(f'two nodes are named {node_key(node)!r}: their parameters would '
                             'be one input')
        parameters[name] = node.input[slot]
    return parameters


def fixed_inputs(graph: Any) -> dict[str, list[str]]:
    """Node key -> the constants among the node's other inputs ('' for an activation): the
    weights and their scales. A ratio can be served by the gated graph only if each of its nodes
    has the full-mask graph's."""
    constants = {t.name for t in graph.initializer}
    fixed: dict[str, list[str]] = {}
    for node in graph.node:
        parameters = _slots(node)
        names = [name if name in constants else '' for slot, name in enumerate(node.input)
                 if slot not in parameters]
        if fixed.setdefault(node_key(node), names) != names:
            raise ValueError(f'two nodes named {node_key(node)!r} hold different constants')
    return fixed


def gate_name(stage: int, block: int) -> str:
    return f'{GATE_PREFIX}{stage}/{block}'


def gated_blocks(depths: Iterable[int]) -> list[tuple[int, int]]:
    """(stage, block) of every block the gated graph can skip: all but the first of a stage."""
    return [(s, b) for s, depth in enumerate(depths) for b in range(1, depth)]


def ratio_inputs(masks: Masks, defaults: dict[str, str],
                 parameters: dict[str, str]) -> tuple[dict[str, bool], dict[str, str]]:
    """What a ratio with ``masks`` binds to the gated graph: gate name -> run the block, and
    parameter input -> tensor: its own ``parameters``, ``defaults`` (the full-mask graph's) for
    the blocks it skips."""
    gates = {gate_name(s, b): bool(masks[s][b])
             for s, b in gated_blocks(len(stage) for stage in masks)}
    return gates, {**defaults, **parameters}


def gated_graph(model: onnx.ModelProto, stage_names: Sequence[str],
                depths: Sequence[int]) -> onnx.ModelProto:
    """``model`` (the full-mask int8 graph) with block b >= 1 of each stage run only when the
    boolean input ``gate_name(stage, b)`` is true (else its input passes on), and every
    per-ratio parameter read from an input named after its node and slot.

    ValueError if a block is not one subgraph with one input and one output.
    """
    import onnx
    from onnx import TensorProto, helper
    gated = onnx.ModelProto()
    gated.CopyFrom(model)
    graph = gated.graph
    constants = {t.name for t in graph.initializer}
    nodes = list(graph.node)
    for s, b in gated_blocks(depths):
        stage = stage_names[s]
        prefix = f'/{stage}/{stage}.{b}/'
        block = [n for n in nodes if n.name.startswith(prefix)]
        made = {o for n in block for o in n.output}
        rest = [n for n in nodes if not n.name.startswith(prefix)]
        used = {i for n in rest for i in n.input} | {o.name for o in graph.output}
        inputs = {i for n in block for i in n.input if i and i not in made | constants}
        outputs = made & used
        if not block or len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f'block {prefix} is not one subgraph with one input and output')
        (x,), (y,) = inputs, outputs
        then_nodes = []
        for n in block:
            copy = onnx.NodeProto()
            copy.CopyFrom(n)
            copy.output[:] = [f'{o}/then' if o == y else o for o in n.output]
            then_nodes.append(copy)
        gate = gate_name(s, b)
        branches = {
            'then_branch': helper.make_graph(then_nodes, f'{gate}/then', [], [
                helper.make_tensor_value_info(f'{y}/then', TensorProto.UINT8, None)]),
            'else_branch': helper.make_graph(
                [helper.make_node('Identity', [x], [f'{y}/else'])], f'{gate}/else', [],
                [helper.make_tensor_value_info(f'{y}/else', TensorProto.UINT8, None)])}
        at = nodes.index(block[0])
        nodes = [*rest[:at], helper.make_node('If', [gate], [y], name=f'{prefix}If',
                                              **branches), *rest[at:]]
        graph.input.append(helper.make_tensor_value_info(gate, TensorProto.BOOL, []))
    del graph.node[:]
    graph.node.extend(nodes)
    types = {t.name: (t.data_type, list(t.dims)) for t in graph.initializer}
    ratio_parameters(graph)                  # ValueError if two nodes share a name
    for node, slot, name in list(_parameter_slots(graph)):
        tensor = node.input[slot]
        if tensor not in types:
            raise ValueError(f'{node.name}: parameter {tensor!r} is not a constant')
        node.input[slot] = name
        graph.input.append(helper.make_tensor_value_info(name, *types[tensor]))
    still_used = {i for n in all_nodes(graph) for i in n.input}
    kept = [t for t in graph.initializer if t.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return gated


def all_nodes(graph: Any) -> Iterator[Any]:
    """Every node of ``graph``, those in ``If`` branches included."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.HasField('g'):
                yield from all_nodes(attribute.g)
