"""Benchmark: can int8 ratio sessions share their pre-packed weights, as fp32 ones share theirs?

Issue #14 asks for an int8 node holding all ten ratios in <= 250 MB. Each ONNX Runtime session
re-packs every int8 convolution's weights for its kernels, so ten per-ratio sessions hold ten
packed copies. ONNX Runtime's remedy is a shared pre-packed weights container, in its C API only
(``CreateSessionWithPrepackedWeightsContainer``). This script tries it through ``ctypes`` on the
``libonnxruntime.so`` the onnxruntime wheel ships, with the int8 graphs the node builds (reference
weights, r = 1 and 0.5, the engine's cache), and records whether session creation succeeds and
ONNX Runtime's message if not. It also measures, with the Python API, what the weights and one
ratio session add to a fresh process, three ways: weights shared via ``add_initializer`` (as
the engine shares fp32 weights) with pre-packing on and off, and mapped from the weight files
by ONNX Runtime, which frees each once packed (as the engine loads int8 graphs); and the r = 1
latency of each.

Third, the way round it that the engine takes (`pls_perception.engines.int8_gating`): one int8
graph for every ratio: the r = 1 graph with each run of blocks that the ten profile ratios skip
together behind an ``If`` (as a node serving them has it), and each ratio's quantization
parameters (activation scales and zero points, int32 biases) as inputs, bound once per ratio
with an IOBinding. Measured against one session per ratio, every session mapping its weights as
the engine's int8 sessions do: the memory each way adds to a process, the latency per ratio
(interleaved rounds), and the largest logit difference (each ratio computes what its own graph
does).

Writes bench/results/bench_int8_prepack_sharing.json.

Usage: .venv/bin/python bench/bench_int8_prepack_sharing.py [--cache-dir DIR]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
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
    """The int8 graphs of r = 1 and 0.5, then the gated graph cut for the profile ratios (all
    built on first use, as a node serving them does): index entries with their paths."""
    from pls_perception import paths
    from pls_perception.engines.int8_quantization import (DEFAULT_CALIBRATION_IMAGES,
                                                          CalibrationSet)
    from pls_perception.engines.onnxruntime_engine import OnnxRuntimeEngine
    from pls_perception.skipping.ratios import PROFILE_RATIOS
    from pls_perception.skipping.weights import load_model
    loaded = load_model(str(paths.reference_weights()))
    calibration = CalibrationSet.from_cifar10(DEFAULT_CALIBRATION_IMAGES, loaded.preprocessing)
    engine = OnnxRuntimeEngine.from_loaded(loaded, cache_dir=cache_dir, ratios=PROFILE_RATIOS,
                                           precision='int8', calibration=calibration,
                                           intra_op_threads=1)
    engine.close()
    indexes = [json.loads(p.read_text()) for p in (engine.cache_dir / 'graphs').glob('*.json')]
    for index in indexes:
        index['graph'] = str(engine.cache_dir / 'graphs' / f"{index['graph_sha256']}.onnx")
        index['weights'] = str(engine.cache_dir / 'weights')
    return sorted((i for i in indexes if i['ratio'] in (1.0, 0.5)),
                  key=lambda i: (i['key'].startswith('gated-'), -i['ratio']))


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


def _session(index: dict[str, Any], weights: dict[str, ort.OrtValue] | None,
             prepack: bool = True, warm_up: bool = True) -> ort.InferenceSession:
    """A session as the engine makes one, not re-optimised: its weights shared via
    add_initializer (kept in ``weights``), or, with ``weights`` None, mapped by ONNX Runtime
    from the weight files (`onnx_wire.with_external_data`)."""
    from pls_perception.engines.onnx_wire import with_external_data
    from pls_perception.engines.onnxruntime_engine import weight_location
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry('session.disable_prepacking', '0' if prepack else '1')
    graph: str | bytes = index['graph']
    if weights is None:
        files = {name: Path(index['weights']) / f'{name[2:]}.npy'
                 for name in index['initializers']}
        graph = with_external_data(Path(graph).read_bytes(), {
            name: weight_location(path, np.load(path, mmap_mode='r').nbytes)
            for name, path in files.items()})
        options.add_session_config_entry('session.model_external_initializers_file_folder_path',
                                         str(Path(index['weights']).parent))
    else:
        for name in index['initializers']:
            if name not in weights:        # kept here: ONNX Runtime does not keep them alive
                weights[name] = ort.OrtValue.ortvalue_from_numpy(_weight(index, name))
            options.add_initializer(name, weights[name])
    session = ort.InferenceSession(graph, options, providers=['CPUExecutionProvider'])
    if warm_up:
        session.run(None, {'input': _X})
    return session


def _median_ms(run: Callable[[], object], repeats: int) -> float:
    """Median of ``repeats`` timed runs after one untimed (warm-up) run."""
    run()
    return median_time_us(run, repeats) / 1e3


_X = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)


def session_cost(index: dict[str, Any], mode: str, repeats: int) -> dict[str, float]:
    """One ratio session through the Python API, its weights shared ('on': pre-packing on,
    'off') or 'mapped': MB it and its weights add to this process, and its median bs=1
    latency."""
    before = rss_mb()
    weights = None if mode == 'mapped' else {}    # shared ones stay alive with the session
    session = _session(index, weights, prepack=mode != 'off')
    return {'total_mb': rss_mb() - before,
            'latency_ms': _median_ms(lambda: session.run(None, {'input': _X}), repeats)}


def gated_cost(graphs: list[dict[str, Any]], gated: dict[str, Any],
               repeats: int) -> dict[str, Any]:
    """The engine's gated int8 graph (`int8_gating`, one session, each ratio's gates and
    quantization parameters bound once) against one session per ratio: memory each adds to a
    process holding the weights, latency per ratio (interleaved), largest logit difference."""
    from pls_perception.engines.int8_gating import ratio_inputs
    from pls_perception.engines.onnxruntime_engine import GatedRatio
    weights = {name: ort.OrtValue.ortvalue_from_numpy(_weight(index, name))   # the bound ones
               for index in graphs for name in index['parameters'].values()}
    before = rss_mb()
    plain = {g['ratio']: _session(g, None) for g in graphs}
    plain_mb = rss_mb() - before
    before = rss_mb()
    session = _session(gated, None, warm_up=False)
    runners = {}
    for g in graphs:
        gates, parameters = ratio_inputs(g['masks'], [tuple(r) for r in gated['runs']],
                                         gated['inputs'], gated['parameters'], g['parameters'])
        values = {**{name: ort.OrtValue.ortvalue_from_numpy(np.array(run))
                     for name, run in gates.items()},
                  **{name: weights[tensor] for name, tensor in parameters.items()}}
        runners[g['ratio']] = GatedRatio(session, values, (32, 32))
    gated_mb = rss_mb() - before
    batch = np.random.default_rng(1).standard_normal((64, 3, 32, 32)).astype(np.float32)
    diff = max(float(np.abs(runners[r].run(x) - plain[r].run(None, {'input': x})[0]).max())
               for r in plain for x in (_X, batch))
    latency: dict[float, dict[str, list[float]]] = {
        r: {'gated_ms': [], 'per_ratio_ms': []} for r in plain}
    for _ in range(5):                   # interleaved rounds: drift hits both alike
        for r in plain:
            latency[r]['per_ratio_ms'].append(
                _median_ms(lambda: plain[r].run(None, {'input': _X}), repeats))
            latency[r]['gated_ms'].append(_median_ms(lambda: runners[r].run(_X), repeats))
    return {'per_ratio_sessions_mb': plain_mb, 'gated_session_mb': gated_mb,
            'gates': len(gates), 'parameter_inputs': len(set(gated['inputs'].values())),
            'max_abs_diff': diff,
            'latency': {r: {k: float(np.median(v)) for k, v in t.items()}
                        for r, t in latency.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--cache-dir', type=Path, default=None,
                        help='ONNX cache to build the int8 graphs in (default: a temp dir)')
    parser.add_argument('--repeats', type=int, default=50, help='timed runs per session')
    parser.add_argument('--child', choices=('container', 'on', 'off', 'mapped', 'gated'),
                        help=argparse.SUPPRESS)
    parser.add_argument('--graphs', type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:                       # one measurement per fresh process (RSS, one ORT copy)
        *graphs, gated = json.loads(args.graphs.read_text())
        result: Any = (try_shared_container(graphs) if args.child == 'container'
                       else gated_cost(graphs, gated, args.repeats) if args.child == 'gated'
                       else session_cost(graphs[0], args.child, args.repeats))
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
        on, off, mapped, gated = child('on'), child('off'), child('mapped'), child('gated')
    graphs = graphs[:-1]
    r1 = graphs[0]['ratio']
    metrics = [
        metric('int8 sessions share pre-packed weights (C API container), 1 = yes',
               int(error is None), '', target_min=0.5),
        metric(f'one int8 session at r={r1:g} and its weights, shared: memory added, '
               'pre-packing on', on['total_mb'], 'MB'),
        metric('the same, pre-packing off', off['total_mb'], 'MB'),
        metric('the same, weights mapped by ONNX Runtime (freed once packed)',
               mapped['total_mb'], 'MB'),
        metric('mapped / shared memory, pre-packing on', mapped['total_mb'] / on['total_mb'],
               'x', target_max=0.75),
        metric(f'int8 bs=1 latency at r={r1:g}, pre-packing on', on['latency_ms'], 'ms'),
        metric('the same, pre-packing off', off['latency_ms'], 'ms'),
        metric('the same, weights mapped', mapped['latency_ms'], 'ms'),
        metric('pre-packing off / on latency', off['latency_ms'] / on['latency_ms'], 'x'),
    ]
    ratios = ' and '.join(f'{g["ratio"]:g}' for g in graphs)
    what = (f"the engine's gated int8 graph ({gated['gates']} gates, "
            f"{gated['parameter_inputs']} parameter inputs)")
    metrics += [
        metric(f'one int8 session per ratio (r = {ratios}): memory added',
               gated['per_ratio_sessions_mb'], 'MB'),
        metric(f'{what}, both ratios bound: memory added', gated['gated_session_mb'], 'MB'),
        *(metric(f'{what}: latency / per-ratio session at r={float(r):g}',
                 t['gated_ms'] / t['per_ratio_ms'], 'x')
          for r, t in sorted(gated['latency'].items(), reverse=True)),
        metric(f'{what}: max |logit diff| from each per-ratio graph', gated['max_abs_diff'],
               '', target_max=1e-6)]
    notes = [f'onnxruntime {ort.__version__}; shared container: '
             + ('works' if error is None else f'fails: {error}')]
    path = write_result('bench_int8_prepack_sharing', metrics, notes=notes,
                        details={'container_error': error, 'ratios': [g['ratio'] for g in graphs],
                                 'prepack_on': on, 'prepack_off': off, 'mapped': mapped,
                                 'gated_graph': gated})
    print_metrics(metrics, path)
    print(notes[0])
    return 0


if __name__ == '__main__':
    sys.exit(main())
