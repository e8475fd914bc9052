"""One int8 graph that serves many keep ratios: runs of blocks they skip behind ``If``,
per-ratio quantization parameters as inputs.

Why: ONNX Runtime packs each int8 convolution's weights per session, and its shared pre-packed
weights container does not take the int8 ``QLinearConv`` kernel
(bench/bench_int8_prepack_sharing.py), so ten ratio sessions hold ten packed copies. The
full-mask graph with each run of blocks that the served ratios skip together behind an ``If`` on a
boolean input packs each block once. What per-ratio calibration changes (activation scales
and zero points, int32 biases) becomes graph inputs, fed from each ratio's own graph, so every
ratio computes exactly what its own graph does. The weights and their scales stay constants:
they are the same at every ratio unless BatchNorm statistics differ, which `fixed_inputs` lets
the engine check.

Works on the offline-optimised int8 graphs (com.microsoft ``QLinearConv``, ``QLinearAdd``,
``QGemm`` ...), whose node names are the exporter's module paths plus an optimiser suffix
``_token_N`` that differs between ratios. Needs ``onnx``: used when a graph is built, never to
serve one.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

    from pls_perception.skipping.ratios import Masks

# Input slots that per-ratio calibration changes, by operator (weights and their scales do
# not): an activation's scale and zero point (the slot of the scale -> the node input it
# quantizes, -1 for the output; the zero point is the next slot), or an int32 bias, the
# node's own.
_SCALE_SLOTS = {'QLinearConv': {1: 0, 6: -1}, 'QLinearAdd': {1: 0, 4: 3, 6: -1},
                'QGemm': {1: 0, 7: -1}, 'QLinearGlobalAveragePool': {1: 0, 3: -1},
                'QuantizeLinear': {1: -1}, 'DequantizeLinear': {1: 0}}
_ACTIVATION_SLOTS = {op: {**{slot: (index, 'scale') for slot, index in scales.items()},
                          **{slot + 1: (index, 'zero_point') for slot, index in scales.items()}}
                     for op, scales in _SCALE_SLOTS.items()}
_BIAS_SLOTS = {'QLinearConv': (8,), 'QGemm': (6,)}
RATIO_SLOTS = {op: (*slots, *_BIAS_SLOTS.get(op, ())) for op, slots in _ACTIVATION_SLOTS.items()}
_OPTIMISER_SUFFIX = re.compile(r'_token_\d+$')
GATE_PREFIX = 'keep/'
PARAMETER_PREFIX = 'q/'


def node_key(node: Any) -> str:
    """A node's name without the optimiser's suffix: the same node in every ratio's graph."""
    return _OPTIMISER_SUFFIX.sub('', node.name)


def _slots(node: Any) -> dict[int, str]:
    """Input slot -> its parameter key (node and slot), of ``node``'s per-ratio parameters."""
    return {slot: f'{PARAMETER_PREFIX}{node_key(node)}/{slot}'
            for slot in RATIO_SLOTS.get(node.op_type, ())
            if slot < len(node.input) and node.input[slot]}


def _parameter_slots(graph: Any) -> Iterator[tuple[Any, int, str]]:
    """(node, input slot, parameter key) of every per-ratio parameter in ``graph``, ``If``
    branches included."""
    for node in all_nodes(graph):
        for slot, name in _slots(node).items():
            yield node, slot, name


def ratio_parameters(graph: Any) -> dict[str, str]:
    """A ratio graph's per-ratio parameters: parameter key -> the tensor it holds there.
    ValueError if two nodes share a name (their parameters would be one key)."""
    parameters: dict[str, str] = {}
    for node, slot, name in _parameter_slots(graph):
        if name in parameters:
            raise ValueError(f'two nodes are named {node_key(node)!r}: their parameters would '
                             'be one key')
        parameters[name] = node.input[slot]
    return parameters


def parameter_inputs(graph: Any) -> dict[str, str]:
    """Parameter key -> the gated graph input it is read from: one per activation's scale and
    one per its zero point, which its producer and every consumer hold alike, and one per bias.
    Why: an input the ``If`` branches read costs time on every frame, and per activation there
    are half as many (580 instead of 1,088 for ResNet-152). An activation whose slots hold
    different tensors in ``graph`` keeps an input per slot."""
    tensors = ratio_parameters(graph)        # ValueError if two nodes share a name
    keys: dict[str, str] = {}
    held: dict[str, set[str]] = {}
    for node, slot, key in _parameter_slots(graph):
        activation = _ACTIVATION_SLOTS[node.op_type].get(slot)
        if activation is not None:
            index, kind = activation
            name = node.output[0] if index < 0 else node.input[index]
            keys[key] = f'{PARAMETER_PREFIX}{name}:{kind}'
        else:
            keys[key] = key
        held.setdefault(keys[key], set()).add(tensors[key])
    return {key: name if len(held[name]) == 1 else key for key, name in keys.items()}


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


Run = tuple[int, int, int]
"""Blocks ``first`` to ``stop`` - 1 of stage ``stage``: one gate of the gated graph."""


def gated_runs(known: Sequence[Masks]) -> list[Run]:
    """The runs of blocks the gated graph puts behind one gate each: consecutive blocks of a
    stage that each of the ``known`` ratios' masks keeps or skips together. Blocks every mask
    keeps are not gated. Why: each ``If`` costs time on every frame, so a gate per run of the
    ratios a node serves (20 for ResNet-152's ten profile ratios) rather than per block (46)."""
    if not known or any(list(map(len, m)) != list(map(len, known[0])) for m in known):
        raise ValueError('gated runs need masks of one network')
    runs: list[Run] = []
    for s, depth in enumerate(map(len, known[0])):
        first = 0
        while first < depth:
            kept = [m[s][first] for m in known]
            stop = first + 1
            while stop < depth and [m[s][stop] for m in known] == kept:
                stop += 1
            if not all(kept):
                runs.append((s, first, stop))
            first = stop
    return runs


def gate_name(run: Run) -> str:
    stage, first, stop = run
    return f'{GATE_PREFIX}{stage}/{first}-{stop}'


def ratio_inputs(masks: Masks, runs: Sequence[Run], inputs: dict[str, str],
                 defaults: dict[str, str],
                 parameters: dict[str, str]) -> tuple[dict[str, bool], dict[str, str]]:
    """What a ratio with ``masks`` binds to the gated graph of ``runs`` and parameter
    ``inputs`` (`parameter_inputs`): gate name -> run the blocks, and input -> tensor: its own
    ``parameters``, ``defaults`` (the full-mask graph's) for the blocks it skips. ValueError if
    ``masks`` splits a run or skips a block no gate can skip, or if its parameters hold two
    tensors where the gated graph has one input."""
    gated = {(s, b) for s, first, stop in runs for b in range(first, stop)}
    skipped = [(s, b) for s, stage in enumerate(masks) for b, keep in enumerate(stage)
               if not keep and (s, b) not in gated]
    if skipped:
        raise ValueError(f'the gated graph cannot skip block(s) {skipped}')
    gates = {}
    for run in runs:
        s, first, stop = run
        kept = {bool(masks[s][b]) for b in range(first, stop)}
        if len(kept) != 1:
            raise ValueError(f'the masks keep part of the gated run {gate_name(run)}')
        gates[gate_name(run)] = kept.pop()
    own: dict[str, str] = {}
    for key, tensor in parameters.items():
        if own.setdefault(inputs[key], tensor) != tensor:
            raise ValueError(f'two tensors for the one input {inputs[key]!r}')
    return gates, {**{inputs[k]: t for k, t in defaults.items()}, **own}


def gated_graph(model: onnx.ModelProto, stage_names: Sequence[str],
                runs: Sequence[Run]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """``model`` (the full-mask int8 graph) with each run of blocks run only when the boolean
    input ``gate_name(run)`` is true (else its input passes on), every per-ratio parameter read
    from an input (`parameter_inputs`, returned too).

    ValueError if a run is not one subgraph with one input and one output.
    """
    import onnx
    from onnx import TensorProto, helper
    gated = onnx.ModelProto()
    gated.CopyFrom(model)
    graph = gated.graph
    inputs = parameter_inputs(graph)
    types = {t.name: (t.data_type, list(t.dims)) for t in graph.initializer}
    declared = {i.name for i in graph.input}
    for node, slot, key in list(_parameter_slots(graph)):
        tensor, node.input[slot] = node.input[slot], inputs[key]
        if tensor not in types:
            raise ValueError(f'{node.name}: parameter {tensor!r} is not a constant')
        if inputs[key] not in declared:
            declared.add(inputs[key])
            graph.input.append(helper.make_tensor_value_info(inputs[key], *types[tensor]))
    constants = {t.name for t in graph.initializer} | set(inputs.values())
    nodes = list(graph.node)
    for run in runs:
        s, first, stop = run
        stage = stage_names[s]
        prefixes = tuple(f'/{stage}/{stage}.{b}/' for b in range(first, stop))
        block = [n for n in nodes if n.name.startswith(prefixes)]
        made = {o for n in block for o in n.output}
        rest = [n for n in nodes if not n.name.startswith(prefixes)]
        used = {i for n in rest for i in n.input} | {o.name for o in graph.output}
        reads = {i for n in block for i in n.input if i and i not in made | constants}
        outputs = made & used
        if not block or len(reads) != 1 or len(outputs) != 1:
            raise ValueError(f'blocks {", ".join(prefixes)} are not one subgraph with one '
                             'input and output')
        (x,), (y,) = reads, outputs
        then_nodes = []
        for n in block:
            copy = onnx.NodeProto()
            copy.CopyFrom(n)
            copy.output[:] = [f'{o}/then' if o == y else o for o in n.output]
            then_nodes.append(copy)
        gate = gate_name(run)
        branches = {
            'then_branch': helper.make_graph(then_nodes, f'{gate}/then', [], [
                helper.make_tensor_value_info(f'{y}/then', TensorProto.UINT8, None)]),
            'else_branch': helper.make_graph(
                [helper.make_node('Identity', [x], [f'{y}/else'])], f'{gate}/else', [],
                [helper.make_tensor_value_info(f'{y}/else', TensorProto.UINT8, None)])}
        at = nodes.index(block[0])
        nodes = [*rest[:at], helper.make_node('If', [gate], [y], name=f'{prefixes[0]}If',
                                              **branches), *rest[at:]]
        graph.input.append(helper.make_tensor_value_info(gate, TensorProto.BOOL, []))
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unread(graph)
    return gated, inputs


def _drop_unread(graph: Any) -> None:
    """Drops the initializers no node reads any more (the parameters that became inputs).
    The weights stay in the main graph: ONNX Runtime frees a main-graph weight once its kernels
    have packed it, but keeps a branch's own initializers (about 45 MB more for ResNet-152)."""
    read = {i for n in all_nodes(graph) for i in n.input}
    kept = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def all_graphs(graph: Any) -> Iterator[Any]:
    """``graph`` and every graph in its nodes' attributes (``If`` branches), recursively."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField('g') else []) + list(attribute.graphs):
                yield from all_graphs(sub)


def all_nodes(graph: Any) -> Iterator[Any]:
    """Every node of ``graph``, those in ``If`` branches included."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField('g') else []) + list(attribute.graphs):
                yield from all_nodes(sub)
