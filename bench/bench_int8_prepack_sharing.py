"""Benchmark: can int8 ratio sessions share their pre-packed weights, as fp32 ones share theirs?

Issue #14 asks for an int8 node holding all ten ratios in <= 250 MB. Each ONNX Runtime session
re-packs every int8 convolution's weights for its kernels, so ten per-ratio sessions hold ten
packed copies. ONNX Runtime's remedy is a shared pre-packed weights container, in its C API only
(``CreateSessionWithPrepackedWeightsContainer``). This script tries it through ``ctypes`` on the
``libonnxruntime.so`` the onnxruntime wheel ships, with the int8 graphs the node builds (reference
weights, r = 1 and 0.5, the engine's cache), and records whether session creation succeeds and
ONNX Runtime's message if not. It also measures, with the Python API, what one ratio session adds
to the process (weights shared via ``add_initializer``, as in the engine) with pre-packing on and
off, and the r = 1 latency each way.

Third, the way round it: one int8 graph for every ratio, made from the r = 1 graph by putting each
skippable block (all but the first of a stage) behind an ``If`` on a boolean input, so each block's
weights are packed once. Measured: what that one session adds, its latency at r = 1 and 0.5 over
the per-ratio graphs', and its largest logit difference from the r = 1 graph. Its activation
scales are r = 1's at every ratio (the per-ratio graphs are calibrated per ratio), so its accuracy
at r < 1 is not the per-ratio graphs'; this measures only the cost of the structure. So it is
measured a second time with every per-ratio quantization parameter (activation scales and zero
points, int32 biases: what per-ratio calibration changes) turned into a graph input fed from
each ratio's own graph: logits against each per-ratio graph's, and latency.

Writes bench/results/bench_int8_prepack_sharing.json.

Usage: .venv/bin/python bench/bench_int8_prepack_sharing.py [--cache-dir DIR]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import (median_time_us, metric, print_metrics, rss_mb,  # noqa: E402
                      write_result)

# Slots of `struct OrtApi` (onnxruntime_c_api.h; append-only, so fixed for API version >= 13).
_API_VERSION = 13
_SLOTS = {'GetErrorMessage': 2, 'CreateEnv': 3, 'CreateSessionOptions': 10,
          'SetSessionLogSeverityLevel': 22, 'SetSessionGraphOptimizationLevel': 23,
          'SetIntraOpNumThreads': 24, 'CreateTensorWithDataAsOrtValue': 49,
          'CreateCpuMemoryInfo': 69, 'ReleaseStatus': 93, 'AddInitializer': 150,
          'CreatePrepackedWeightsContainer': 166,
          'CreateSessionWithPrepackedWeightsContainer': 168}
_ONNX_FLOAT, _ONNX_INT8, _ONNX_INT32, _ONNX_UINT8 = 1, 3, 6, 2
_DTYPES = {np.dtype(np.float32): _ONNX_FLOAT, np.dtype(np.uint8): _ONNX_UINT8,
           np.dtype(np.int8): _ONNX_INT8, np.dtype(np.int32): _ONNX_INT32}


def _graphs(cache_dir: Path | None) -> list[dict[str, Any]]:
    """The int8 graphs of r = 1 and 0.5 (built on first use): index entries with their paths."""
    from pls_perception import paths
    from pls_perception.engines.int8_quantization import (DEFAULT_CALIBRATION_IMAGES,
                                                          CalibrationSet)
    from pls_perception.engines.onnxruntime_engine import OnnxRuntimeEngine
    from pls_perception.skipping.weights import load_model
    loaded = load_model(str(paths.reference_weights()))
    calibration = CalibrationSet.from_cifar10(DEFAULT_CALIBRATION_IMAGES, loaded.preprocessing)
    engine = OnnxRuntimeEngine.from_loaded(loaded, cache_dir=cache_dir, ratios=(1.0, 0.5),
                                           precision='int8', calibration=calibration,
                                           intra_op_threads=1)
    engine.close()
    indexes = [json.loads(p.read_text()) for p in (engine.cache_dir / 'graphs').glob('*.json')]
    for index in indexes:
        index['graph'] = str(engine.cache_dir / 'graphs' / f"{index['graph_sha256']}.onnx")
        index['weights'] = str(engine.cache_dir / 'weights')
    return sorted(indexes, key=lambda i: -i['ratio'])


def _weight(index: dict[str, Any], name: str) -> np.ndarray:
    return np.load(Path(index['weights']) / f'{name[2:]}.npy')


def try_shared_container(graphs: list[dict[str, Any]]) -> str | None:
    """Create every graph's session with one shared container: None if it works, else why."""
    lib = ctypes.CDLL(str(Path(ort.__file__).parent / 'capi'
                          / f'libonnxruntime.so.{ort.__version__}'))

    class ApiBase(ctypes.Structure):
        _fields_ = [('GetApi', ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_uint32)),
                    ('GetVersionString', ctypes.CFUNCTYPE(ctypes.c_char_p))]
    lib.OrtGetApiBase.restype = ctypes.POINTER(ApiBase)
    table = ctypes.cast(lib.OrtGetApiBase().contents.GetApi(_API_VERSION),
                        ctypes.POINTER(ctypes.c_void_p))
    p, out = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
    signatures = {
        'GetErrorMessage': (ctypes.c_char_p, p), 'ReleaseStatus': (None, p),
        'CreateEnv': (p, ctypes.c_int, ctypes.c_char_p, out), 'CreateSessionOptions': (p, out),
        'SetSessionLogSeverityLevel': (p, p, ctypes.c_int),
        'SetSessionGraphOptimizationLevel': (p, p, ctypes.c_int),
        'SetIntraOpNumThreads': (p, p, ctypes.c_int),
        'CreateTensorWithDataAsOrtValue': (p, p, p, ctypes.c_size_t,
                                           ctypes.POINTER(ctypes.c_int64), ctypes.c_size_t,
                                           ctypes.c_int, out),
        'CreateCpuMemoryInfo': (p, ctypes.c_int, ctypes.c_int, out),
        'AddInitializer': (p, p, ctypes.c_char_p, p),
        'CreatePrepackedWeightsContainer': (p, out),
        'CreateSessionWithPrepackedWeightsContainer': (p, p, ctypes.c_char_p, p, p, out)}
    api = {name: ctypes.CFUNCTYPE(*signatures[name])(table[slot])
           for name, slot in _SLOTS.items()}

    def call(name: str, *args: object) -> None:
        status = api[name](*args)
        if status:
            message = api['GetErrorMessage'](status).decode(errors='replace')
            api['ReleaseStatus'](status)
            raise RuntimeError(message)

    env, memory, container = p(), p(), p()
    call('CreateEnv', 3, b'pls-bench', ctypes.byref(env))
    call('CreateCpuMemoryInfo', 0, 0, ctypes.byref(memory))
    call('CreatePrepackedWeightsContainer', ctypes.byref(container))
    values: dict[str, tuple[np.ndarray, ctypes.c_void_p]] = {}   # arrays stay alive with them
    try:
        for index in graphs:
            options = p()
            call('CreateSessionOptions', ctypes.byref(options))
            call('SetIntraOpNumThreads', options, 1)
            call('SetSessionGraphOptimizationLevel', options, 0)   # optimised offline
            call('SetSessionLogSeverityLevel', options, 3)
            for name in index['initializers']:
                if name not in values:
                    array = np.ascontiguousarray(_weight(index, name))
                    shape = (ctypes.c_int64 * array.ndim)(*array.shape)
                    value = p()
                    call('CreateTensorWithDataAsOrtValue', memory, array.ctypes.data,
                         array.nbytes, shape, array.ndim, _DTYPES[array.dtype],
                         ctypes.byref(value))
                    values[name] = (array, value)
                call('AddInitializer', options, name.encode(), values[name][1])
            session = p()
            call('CreateSessionWithPrepackedWeightsContainer', env, index['graph'].encode(),
                 options, container, ctypes.byref(session))
    except RuntimeError as e:
        return str(e)
    return None


def _session(index: dict[str, Any], graph: str | bytes, weights: dict[str, ort.OrtValue],
             prepack: bool = True) -> ort.InferenceSession:
    """A session as the engine makes one: weights shared via add_initializer, no re-optimising."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry('session.disable_prepacking', '0' if prepack else '1')
    for name in index['initializers']:
        if name not in weights:        # kept here: ONNX Runtime does not keep them alive
            weights[name] = ort.OrtValue.ortvalue_from_numpy(_weight(index, name))
        options.add_initializer(name, weights[name])
    return ort.InferenceSession(graph, options, providers=['CPUExecutionProvider'])


def _median_ms(run: Callable[[], object], repeats: int) -> float:
    """Median of ``repeats`` timed runs after one untimed (warm-up) run."""
    run()
    return median_time_us(run, repeats) / 1e3


_X = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)


def session_cost(index: dict[str, Any], prepack: bool, repeats: int) -> dict[str, float]:
    """One ratio session through the Python API: MB it adds, and its median bs=1 latency."""
    weights: dict[str, ort.OrtValue] = {}
    _session(index, index['graph'], weights).run(None, {'input': _X})    # weights loaded
    before = rss_mb()
    session = _session(index, index['graph'], weights, prepack)
    session.run(None, {'input': _X})
    added = rss_mb() - before
    return {'session_mb': added,
            'latency_ms': _median_ms(lambda: session.run(None, {'input': _X}), repeats)}


def multi_ratio_graph(graph_path: str) -> tuple[bytes, list[tuple[str, int, str]]]:
    """The r = 1 int8 graph with every skippable block behind an If: (model, [(stage, block,
    input name)]); the else branch passes the block's input on."""
    import onnx
    from onnx import TensorProto, helper

    from pls_perception.skipping.ratios import RESNET152_DEPTHS, STAGE_NAMES
    model = onnx.load(graph_path, load_external_data=False)
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    nodes = list(graph.node)
    gates = []
    for stage, depth in zip(STAGE_NAMES, RESNET152_DEPTHS):
        for b in range(1, depth):
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
                copy.output[:] = [f'{o}_then' if o == y else o for o in n.output]
                then_nodes.append(copy)
            gate = f'keep_{stage}_{b}'
            branch = {
                'then_branch': helper.make_graph(then_nodes, f'{gate}_then', [], [
                    helper.make_tensor_value_info(f'{y}_then', TensorProto.UINT8, None)]),
                'else_branch': helper.make_graph(
                    [helper.make_node('Identity', [x], [f'{y}_else'])], f'{gate}_else', [],
                    [helper.make_tensor_value_info(f'{y}_else', TensorProto.UINT8, None)])}
            at = nodes.index(block[0])
            nodes = [*rest[:at], helper.make_node('If', [gate], [y], name=f'{prefix}If',
                                                  **branch), *rest[at:]]
            graph.input.append(helper.make_tensor_value_info(gate, TensorProto.BOOL, []))
            gates.append((stage, b, gate))
    del graph.node[:]
    graph.node.extend(nodes)
    return model.SerializeToString(), gates


# Inputs that per-ratio calibration changes, by operator (the weights and their scales do not).
_RATIO_SLOTS = {'QLinearConv': (1, 2, 6, 7, 8), 'QLinearAdd': (1, 2, 4, 5, 6, 7),
                'QGemm': (1, 2, 6, 7, 8), 'QLinearGlobalAveragePool': (1, 2, 3, 4),
                'QuantizeLinear': (1, 2), 'DequantizeLinear': (1, 2)}
_OPTIMISER_SUFFIX = re.compile(r'_token_\d+$')   # node names differ only by it across ratios


def _parameter_slots(graph: Any) -> Iterator[tuple[Any, int, str]]:
    """(node, input slot, input name it gets) of ``graph``'s per-ratio parameters, If branches
    included."""
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField('g'):
                yield from _parameter_slots(attribute.g)
        for slot in _RATIO_SLOTS.get(node.op_type, ()):
            if slot < len(node.input) and node.input[slot]:
                yield node, slot, f'q{_OPTIMISER_SUFFIX.sub("", node.name)}/{slot}'


def ratio_parameters(graph: Any) -> dict[str, str]:
    """``graph``'s per-ratio parameters: input name -> the tensor the graph holds there."""
    return {name: node.input[slot] for node, slot, name in _parameter_slots(graph)}


def with_parameter_inputs(model_bytes: bytes) -> tuple[bytes, dict[str, str]]:
    """``model_bytes`` with every per-ratio parameter slot read from a graph input of its own:
    (model, input name -> the tensor it replaced)."""
    import onnx
    from onnx import helper
    model = onnx.load_model_from_string(model_bytes)
    constants = {t.name: t for t in model.graph.initializer}
    replaced = {}
    for node, slot, name in list(_parameter_slots(model.graph)):
        replaced[name] = node.input[slot]
        node.input[slot] = name
    for name, tensor in replaced.items():
        model.graph.input.append(helper.make_tensor_value_info(
            name, constants[tensor].data_type, list(constants[tensor].dims)))
    return model.SerializeToString(), replaced


def multi_ratio_cost(graphs: list[dict[str, Any]], repeats: int) -> dict[str, Any]:
    """The If-gated graph against the per-ratio graphs: memory, latency, r = 1 agreement; then
    with per-ratio parameters as inputs: latency and agreement at every ratio."""
    import onnx

    from pls_perception.skipping.ratios import RESNET152_DEPTHS, STAGE_NAMES, blocks_kept
    full = graphs[0]
    model, gates = multi_ratio_graph(full['graph'])
    depth = dict(zip(STAGE_NAMES, RESNET152_DEPTHS))
    weights: dict[str, ort.OrtValue] = {}
    plain = {g['ratio']: _session(g, g['graph'], weights) for g in graphs}
    # the graph's placeholders point at placeholder.bin beside the per-ratio graphs
    multi_path = Path(full['graph']).with_name('multi_ratio.onnx')
    multi_path.write_bytes(model)
    before = rss_mb()
    multi = _session(full, str(multi_path), weights)

    def feeds(ratio: float) -> dict[str, np.ndarray]:
        return {'input': _X, **{gate: np.array(b < blocks_kept(depth[stage], ratio))
                                for stage, b, gate in gates}}
    multi.run(None, feeds(1.0))
    added = rss_mb() - before
    multi_path.unlink()
    diff = float(np.abs(multi.run(None, feeds(1.0))[0]
                        - plain[1.0].run(None, {'input': _X})[0]).max())
    latency = {}
    for g in graphs:
        r, f = g['ratio'], feeds(g['ratio'])
        latency[r] = {'multi_ms': _median_ms(lambda: multi.run(None, f), repeats),
                      'per_ratio_ms': _median_ms(
                          lambda: plain[r].run(None, {'input': _X}), repeats)}
    # the same with per-ratio quantization parameters as inputs, each ratio's own fed
    fed, replaced = with_parameter_inputs(model)
    fed_path = multi_path.with_name('multi_ratio_fed.onnx')
    fed_path.write_bytes(fed)
    fed_session = _session(full, str(fed_path), weights)
    fed_path.unlink()
    fed_diff = 0.0
    for g in graphs:
        r = g['ratio']
        tensors = {**replaced, **ratio_parameters(
            onnx.load(g['graph'], load_external_data=False).graph)}
        f = {**feeds(r), **{name: _weight(g, tensors[name]) for name in replaced}}
        fed_diff = max(fed_diff, float(np.abs(fed_session.run(None, f)[0]
                                              - plain[r].run(None, {'input': _X})[0]).max()))
        latency[r]['fed_ms'] = _median_ms(lambda: fed_session.run(None, f), repeats)
    return {'session_mb': added, 'gates': len(gates), 'max_abs_diff_r1': diff,
            'latency': latency, 'parameter_inputs': len(replaced),
            'fed_max_abs_diff': fed_diff}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--cache-dir', type=Path, default=None,
                        help='ONNX cache to build the int8 graphs in (default: a temp dir)')
    parser.add_argument('--repeats', type=int, default=50, help='timed runs per session')
    parser.add_argument('--child', choices=('container', 'on', 'off', 'multi'),
                        help=argparse.SUPPRESS)
    parser.add_argument('--graphs', type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:                       # one measurement per fresh process (RSS, one ORT copy)
        graphs = json.loads(args.graphs.read_text())
        result: Any = (try_shared_container(graphs) if args.child == 'container'
                       else multi_ratio_cost(graphs, args.repeats) if args.child == 'multi'
                       else session_cost(graphs[0], args.child == 'on', args.repeats))
        print(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory(prefix='pls_prepack_') as tmp:
        graphs = _graphs(args.cache_dir or Path(tmp))
        listing = Path(tmp) / 'graphs.json'
        listing.write_text(json.dumps(graphs))

        def child(mode: str) -> Any:
            done = subprocess.run([sys.executable, __file__, '--child', mode, '--graphs',
                                   str(listing), '--repeats', str(args.repeats)],
                                  check=True, capture_output=True, text=True)
            return json.loads(done.stdout.strip().splitlines()[-1])
        error = child('container')
        on, off, multi = child('on'), child('off'), child('multi')
    r1 = graphs[0]['ratio']
    metrics = [
        metric('int8 sessions share pre-packed weights (C API container), 1 = yes',
               int(error is None), '', target_min=0.5),
        metric(f'one int8 session at r={r1:g}: memory added, pre-packing on',
               on['session_mb'], 'MB'),
        metric('the same, pre-packing off', off['session_mb'], 'MB'),
        metric(f'int8 bs=1 latency at r={r1:g}, pre-packing on', on['latency_ms'], 'ms'),
        metric('the same, pre-packing off', off['latency_ms'], 'ms'),
        metric('pre-packing off / on latency', off['latency_ms'] / on['latency_ms'], 'x'),
        metric(f"one If-gated int8 graph for all ratios ({multi['gates']} gates): memory added",
               multi['session_mb'], 'MB'),
    ]
    for r, t in sorted(multi['latency'].items(), reverse=True):
        metric_name = f'If-gated graph / per-ratio graph latency at r={float(r):g}'
        metrics.append(metric(metric_name, t['multi_ms'] / t['per_ratio_ms'], 'x'))
    metrics.append(metric(f'If-gated graph vs r={r1:g} graph: max |logit diff|',
                          multi['max_abs_diff_r1'], '', target_max=1e-6))
    fed = f"If-gated graph, {multi['parameter_inputs']} per-ratio parameters as inputs"
    for r, t in sorted(multi['latency'].items(), reverse=True):
        metrics.append(metric(f'{fed}: latency / per-ratio graph at r={float(r):g}',
                              t['fed_ms'] / t['per_ratio_ms'], 'x'))
    metrics.append(metric(f'{fed}: max |logit diff| from each per-ratio graph',
                          multi['fed_max_abs_diff'], '', target_max=1e-6))
    notes = [f'onnxruntime {ort.__version__}; shared container: '
             + ('works' if error is None else f'fails: {error}')]
    path = write_result('bench_int8_prepack_sharing', metrics, notes=notes,
                        details={'container_error': error, 'ratios': [g['ratio'] for g in graphs],
                                 'prepack_on': on, 'prepack_off': off,
                                 'multi_ratio_graph': multi})
    print_metrics(metrics, path)
    print(notes[0])
    return 0


if __name__ == '__main__':
    sys.exit(main())
