"""ONNX Runtime engine: the same PLS network, exported once per skip mask, about 5x faster at bs=1.

Eager PyTorch pays per-operator Python and dispatch overhead that dominates a ResNet-152 on 32x32
inputs; ONNX Runtime runs the same graph with fused convolutions in blocked (NCHWc) layout.

How the ratios share one copy of the weights
--------------------------------------------
Every skip mask gets its own graph: `physically_pruned_copy` (kept blocks only, with the
BatchNorm statistics the model uses at that ratio, so BN recalibration carries over) is exported
(`onnx_export`) with the TorchScript exporter and optimised offline by ONNX Runtime (BN folding,
NCHWc weight reordering). Every initializer of the optimised graph is then renamed after the
SHA-256 of its contents and stored once in a content-addressed weight store; the graph file keeps
only placeholders. At load time each distinct tensor becomes one `OrtValue`, handed to every session
that uses it with `SessionOptions.add_initializer`, which ONNX Runtime uses in place. The sessions
run with graph optimisation off (the graphs are already optimised), so nothing re-copies them:
with all ten ratios of ResNet-152 loaded, memory stays close to one session's.

Cache layout (``cache_dir``: argument, else $PLS_ONNX_CACHE, else ~/.cache/pls_perception/onnx)::

    <cache_dir>/<model_key>/          weights id, input size, onnxruntime version, CPU, providers;
                                      int8: precision and calibration set (int8_quantization)
        manifest.json                 what the key was made of (for humans)
        graphs/<graph_key>.json       index: key, masks, ratio, policy, the graph's digest, the
                                      initializer names (int8: also the per-ratio parameters and
                                      each node's constants), and the digest of all that
        graphs/gated-<key>-<runs>.json  int8: index of the gated graph every ratio shares, made
                                      from ratio 1's graph <key> and gated for the engine's
                                      ratios (<runs>: a digest of its gated runs; `int8_gating`)
        graphs/<sha256>.onnx          graph-only model (initializers are placeholders)
        graphs/placeholder.bin        sparse file the placeholders point at (never read)
        weights/<sha256>.npy          one file per distinct tensor, shared by every graph

``graph_key`` hashes the skip masks and the BatchNorm statistics used at that mask, so ratios
with the same masks share a graph, and recalibrated statistics get their own.

The cache verifies itself
-------------------------
Graph and weight files are named by the SHA-256 of their contents (a tensor's digest covers its
dtype, shape and bytes), and every file is checked against its name when loaded; an index must
match its own digest, name the key, masks and graph it is filed under, and list exactly the
graph's placeholders, each a ``w_<64 hex>`` name (so no name leads out of the weight store). A
file that fails is logged once with its path, removed and rebuilt; a build also re-checks tensor
files it finds already stored. Every file is written to a temp file and renamed, the index last,
so processes sharing a cache see a whole entry or none. Each tensor is hashed once per engine,
however many ratios share it: a warm load reads and hashes the weights once.

int8 sessions cannot share their weights: each packs them for its kernels, so our shared copy
would only add to the packed ones. An int8 session is instead handed its graph with every
placeholder pointed at the weight's own file (`onnx_wire.with_external_data`): ONNX Runtime maps
the files and frees each weight once it is packed. Every int8 ratio that skips blocks is served,
where it can be, by one gated graph (`int8_gating`) whose quantization parameters are inputs,
bound per ratio once (`GatedRatio`): one packed copy of the weights for all of them. Its gates
are cut for the ratios the engine is given (``keep_ratio``, ``ratios``, ``background_ratios``,
``gate_ratios``); a ratio is served by it if it keeps or skips each gated run of blocks whole and
skips no ungated block, else by a session of its own. Ratio 1 always has its own: the gates
would slow it (14 % in bench/bench_int8_prepack_sharing.py) to save one packed copy (~60 MB).

Switching ratio is a dictionary look-up under a lock. A ratio whose graph is not loaded yet is
built on a background thread while the previous ratio keeps serving; `status()` says so.
``background_ratios`` are loaded or built on that thread too, one at a time, after any ratio that
is asked for: a cold start builds only what the first frame needs. The build thread is a daemon
that `close` does not wait for, so a process can stop while a graph is being exported (every
cache write is atomic, so an interrupted build leaves no partial entry).

Serving without PyTorch
-----------------------
Only building a graph needs PyTorch (`onnx_export`) and ``onnx``; both are imported then, not
before. Graph keys are derived from the model, so an engine given a `serving_record` (ratio ->
masks, graph key, written by earlier engines) and a model *loader* serves cached graphs without
the model, reading them with `onnx_wire`, and loads the model only when a graph must be built.

Over 500 lines: the content-addressed store, its verification on load and the sessions
that share its tensors are one mechanism whose invariants (names are digests, placeholders point
into the store) must change together.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import platform
import re
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import onnxruntime as ort

from pls_perception.engines.base import InferenceEngine, check_batch
from pls_perception.engines.build_worker import BuildWorker
from pls_perception.engines.int8_gating import Run, gated_runs, ratio_inputs
from pls_perception.engines.int8_quantization import (PRECISIONS, CalibrationSet,
                                                      quantize_in_subprocess)
from pls_perception.engines.onnx_wire import initializers, with_external_data
from pls_perception.errors import BackendError
from pls_perception.skipping.ratios import PROFILE_RATIOS, Masks, Ratio

if TYPE_CHECKING:
    import onnx

    from pls_perception.engines.serving_record import ServingRecord
    from pls_perception.skipping.network import SkippableResNet
    from pls_perception.skipping.weights import LoadedModel

_LOG = logging.getLogger(__name__)
CACHE_ENV = 'PLS_ONNX_CACHE'
OPSET = 17
INPUT_NAME = 'input'
OUTPUT_NAME = 'logits'
_PLACEHOLDER = 'placeholder.bin'
# Bumped when the export or cache format changes, so stale caches are never reused.
_FORMAT_VERSION = 2
# Bumped when int8 entries change (2: per-ratio parameters for the gated graph).
_INT8_FORMAT_VERSION = 2
# Part of the gated graph's key, bumped when its layout changes (2: weights out of the branches).
_GATED_LAYOUT = 2
# An initializer name in a cached graph: the digest of the tensor in weights/<digest>.npy.
_WEIGHT_NAME = re.compile(r'w_([0-9a-f]{64})')
_SHA256 = re.compile(r'[0-9a-f]{64}')
# Far above any index or graph-only model (ResNet-152: ~40 kB and ~300 kB): read no further.
_MAX_INDEX_BYTES = 16 * 2**20
_MAX_GRAPH_BYTES = 256 * 2**20


def default_cache_dir() -> Path:
    """$PLS_ONNX_CACHE, else ~/.cache/pls_perception/onnx."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / '.cache' / 'pls_perception' / 'onnx'


def execution_providers(device: str) -> list[str]:
    """ONNX Runtime providers for ``device``: TensorRT/CUDA first when cuda and available.

    A cuda device without onnxruntime-gpu falls back to the CPU provider with a warning, so the
    same configuration runs on any machine.
    """
    if device not in ('cpu', 'cuda') and not device.startswith('cuda:'):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    if device == 'cpu':
        return ['CPUExecutionProvider']
    available = ort.get_available_providers()
    gpu = [p for p in ('TensorrtExecutionProvider', 'CUDAExecutionProvider') if p in available]
    if not gpu:
        _LOG.warning('device %r asked for, but onnxruntime has no CUDA provider (install '
                     'onnxruntime-gpu); running on the CPU', device)
    return gpu + ['CPUExecutionProvider']


def _cpu_signature() -> str:
    """What the offline NCHWc optimisation depends on: the CPU model and its ISA flags."""
    fields: dict[str, str] = {}
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            for line in f:
                key, _, value = line.partition(':')
                key = key.strip()
                if key in ('model name', 'flags', 'Features', 'CPU part') and key not in fields:
                    fields[key] = value.strip()
    except OSError:
        pass
    return f'{platform.machine()}|' + '|'.join(f'{k}={fields[k]}' for k in sorted(fields))


def content_digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _array_digest(array: np.ndarray) -> str:
    """SHA-256 of dtype, shape and bytes: a weight file's name (hashed in place, no copy)."""
    digest = hashlib.sha256(f'{array.dtype.str}{array.shape}'.encode())
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


class CorruptEntry(Exception):
    """A cache file failed verification: it is removed and its entry rebuilt."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f'{path}: {reason}')
        self.path = path
        self.reason = reason


def _read_tensor(path: Path, digest: str) -> np.ndarray:
    """The array in the ``.npy`` file ``path``, which must hash to ``digest``.

    The header is checked (plain numeric C-order array, data size equal to the file's) before
    anything of the size it claims is allocated. CorruptEntry for anything else.
    """
    try:
        with open(path, 'rb') as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f'unsupported .npy version {version}')
            if dtype.hasobject or fortran:
                raise ValueError(f'not a plain C-order numeric array (dtype {dtype})')
            expected = math.prod(shape) * dtype.itemsize
            stored = os.fstat(f.fileno()).st_size - f.tell()
            if stored != expected:
                raise ValueError(f'{stored} bytes of data for a {dtype} array of shape {shape}')
            array = np.fromfile(f, dtype=dtype, count=math.prod(shape)).reshape(shape)
    except FileNotFoundError:
        raise CorruptEntry(path, 'missing') from None
    except (OSError, ValueError, SyntaxError) as e:   # SyntaxError: a garbled header literal
        raise CorruptEntry(path, f'unreadable ({e})') from e
    if _array_digest(array) != digest:
        raise CorruptEntry(path, 'its contents do not match its name')
    return array


def _read_graph(path: Path) -> bytes:
    """A cached graph's bytes, which must hash to its name (CorruptEntry)."""
    data = read_capped(path, _MAX_GRAPH_BYTES)
    if hashlib.sha256(data).hexdigest() != path.stem:
        raise CorruptEntry(path, 'its contents do not match its name')
    return data


def weight_location(path: Path, length: int) -> tuple[str, int, int]:
    """Where a weight file's data lies, for `onnx_wire.with_external_data`: (the file relative
    to the cache directory, offset, length); the data ends the file, after the .npy header."""
    return f'{path.parent.name}/{path.name}', path.stat().st_size - length, length


def read_capped(path: Path, limit: int) -> bytes:
    """A cache file's bytes; CorruptEntry if missing, unreadable or beyond ``limit`` bytes."""
    try:
        with open(path, 'rb') as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise CorruptEntry(path, 'missing') from None
    except OSError as e:
        raise CorruptEntry(path, f'unreadable ({e.strerror or e})') from e
    if len(data) > limit:
        raise CorruptEntry(path, f'larger than {limit} bytes')
    return data


@dataclass(frozen=True)
class _Entry:
    """A verified cache entry: the graph file, its initializer names, the placeholder size;
    int8 graphs also list their per-ratio parameters and their nodes' constants, the gated
    graph the input each parameter is read from (`int8_gating`)."""

    graph_path: Path
    names: list[str]
    placeholder_bytes: int
    parameters: dict[str, str] | None = None
    fixed: dict[str, list[str]] | None = None
    inputs: dict[str, str] | None = None


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file + rename, so a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class GatedRatio:
    """One ratio served by the shared gated int8 graph: its gates and quantization parameters
    bound to the session once, so a frame binds only its image."""

    def __init__(self, session: ort.InferenceSession, values: dict[str, ort.OrtValue],
                 input_size: tuple[int, int]) -> None:
        self._session = session
        self._binding = session.io_binding()
        for name, value in values.items():
            self._binding.bind_ortvalue_input(name, value)
        self._lock = threading.Lock()         # a binding holds one run's input and output
        self.run(np.zeros((1, 3, *input_size), np.float32))    # warm up, as `_session` does

    def run(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            self._binding.bind_cpu_input(INPUT_NAME, x)
            self._binding.clear_binding_outputs()    # else the last run's shape is kept
            self._binding.bind_output(OUTPUT_NAME)
            self._session.run_with_iobinding(self._binding)
            return self._binding.copy_outputs_to_cpu()[0]


@dataclass(frozen=True)
class _Graph:
    """One loaded ratio graph: its session (or its ratio of the gated int8 graph) and what it
    was built for."""

    masks: Masks
    ratio: Ratio
    session: ort.InferenceSession
    gated: GatedRatio | None = None

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.gated is not None:
            return self.gated.run(x)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


class OnnxRuntimeEngine(InferenceEngine):
    """Runs a `SkippableResNet` through ONNX Runtime, one session per skip mask.

    ``weights_id`` names the weights in the cache key (the weights file's SHA-256; see
    `from_loaded`). ``ratios`` are built (or loaded from the cache) before the constructor
    returns, as is ``keep_ratio``; ``background_ratios`` are loaded or built afterwards on the
    build thread, and any other ratio on first use. ``intra_op_threads`` = 0 lets ONNX Runtime
    pick (one thread per core); ``spinning`` lets idle intra-op threads busy-wait for work
    (ONNX Runtime's default: faster on idle cores, slower when another process needs them; see
    bench/bench_threading.py). ``precision`` 'int8' quantizes every graph statically
    (`int8_quantization`), calibrated on ``calibration``, which then keys the cache too; with
    ``share_int8_graph`` every int8 ratio that can is served by one gated graph, gated for
    ``keep_ratio``, ``ratios``, ``background_ratios`` and ``gate_ratios`` (default: the ten
    profile ratios, which the DVFS manager picks from, so that one asked for later shares it too;
    `int8_gating`: one copy of the packed weights instead of one per ratio, 1-5 ms slower
    per frame; ratio 1 keeps its own session).

    ``model`` may be None and ``model_loader`` a function that loads it: with a ``serving`` record
    that knows the ratios' masks and graph keys, cached graphs are then served without the model
    (and without torch), which is loaded on the first graph that must be built. The record
    learns every ratio this engine loads or builds.
    """

    name = 'onnxruntime'

    def __init__(self, model: SkippableResNet | None, weights_id: str,
                 input_size: tuple[int, int] = (32, 32), ratios: Iterable[Ratio] = (),
                 keep_ratio: Ratio = 1.0, cache_dir: str | Path | None = None,
                 device: str = 'cpu', intra_op_threads: int = 0, spinning: bool = True,
                 background_ratios: Iterable[Ratio] = (), precision: str = 'fp32',
                 calibration: CalibrationSet | None = None, share_int8_graph: bool = True,
                 gate_ratios: Iterable[Ratio] = PROFILE_RATIOS,
                 serving: ServingRecord | None = None,
                 model_loader: Callable[[], SkippableResNet] | None = None) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
        if precision == 'int8' and calibration is None:
            raise ValueError("precision 'int8' needs a calibration set (train-split images)")
        if len(input_size) != 2 or min(input_size) < 1:
            raise ValueError(f'input_size must be (H, W) > 0, got {input_size!r}')
        if intra_op_threads < 0:
            raise ValueError(f'intra_op_threads must be >= 0, got {intra_op_threads!r}')
        if model is None and model_loader is None:
            raise ValueError('the onnxruntime engine needs a model or a model_loader')
        ratios, background_ratios = list(ratios), list(background_ratios)
        self._model = model.eval() if model is not None else None
        self._model_loader = model_loader
        self._model_lock = threading.Lock()
        self.serving = serving
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.device = device
        self.providers = execution_providers(device)
        self.intra_op_threads = intra_op_threads
        self.spinning = spinning
        self.precision = precision
        self.calibration = calibration if precision == 'int8' else None
        on_gpu = self.providers[0] != 'CPUExecutionProvider'
        # Offline NCHWc optimisation is CPU-specific; GPU providers optimise at session time.
        self._offline_level = 'basic' if on_gpu else 'all'
        base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        key_parts = {'format': _FORMAT_VERSION, 'weights': weights_id,
                     'input_size': self.input_size, 'onnxruntime': ort.__version__,
                     'opset': OPSET, 'cpu': _cpu_signature(), 'offline': self._offline_level}
        if self.calibration is not None:     # fp32 keys stay as they were
            key_parts.update(precision=precision, calibration=self.calibration.key,
                             int8_format=_INT8_FORMAT_VERSION)
        self.cache_dir = base / content_digest(key_parts)[:16]
        self._graph_dir = self.cache_dir / 'graphs'
        self._weight_dir = self.cache_dir / 'weights'
        self._graph_dir.mkdir(parents=True, exist_ok=True)
        self._weight_dir.mkdir(parents=True, exist_ok=True)
        manifest = self.cache_dir / 'manifest.json'
        if not manifest.exists():
            write_atomic(manifest, json.dumps(key_parts, indent=2).encode())

        self._lock = threading.Lock()          # guards the fields below; held for microseconds
        self._build_lock = threading.Lock()    # one export at a time (torch + memory heavy)
        self._graphs: dict[Masks, _Graph] = {}
        self._weights: dict[str, ort.OrtValue] = {}
        # int8: name -> (file under cache_dir, data offset, length), verified (`_weight_file`)
        self._files: dict[str, tuple[str, int, int]] = {}
        self._pending: dict[Masks, Ratio] = {}
        self._queued: dict[Masks, Ratio] = {}  # on the build thread's queues, or building
        self._errors: dict[Masks, str] = {}    # masks -> 'ratio: error'
        # ratio -> (policy, masks): a switch is a look-up; a new model policy invalidates it.
        self._mask_cache: dict[Ratio, tuple[object, Masks]] = {}
        self._worker: BuildWorker | None = BuildWorker()
        # int8: the graph all ratios share (entry, session, its gated runs), or why there is
        # none; its gates are cut for the ratios the engine is given.
        self._gated: tuple[_Entry, ort.InferenceSession, list[Run]] | None = None
        self._gated_for = [keep_ratio, *ratios, *background_ratios, *gate_ratios]
        self._gated_error: str | None = None if share_int8_graph else 'turned off'
        self._closed = False

        self.prepare([keep_ratio, *ratios])
        first = self._masks(keep_ratio)
        self._active = self._graphs[first]
        self._requested: Ratio = keep_ratio
        for ratio in background_ratios:
            self._queue_build(self._masks(ratio), ratio, urgent=False)

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, device: str = 'cpu', **kw: Any) -> OnnxRuntimeEngine:
        """Engine for a `LoadedModel`: weights id = file SHA-256 (else a digest of the state)."""
        if loaded.sha256 is not None:
            weights_id = loaded.sha256
        else:
            from pls_perception.engines.onnx_export import state_digest
            weights_id = f'state:{state_digest(loaded.model.state_dict())}'
        kw.setdefault('input_size', loaded.preprocessing.input_size)
        return cls(loaded.model, weights_id, device=device, **kw)

    @property
    def model(self) -> SkippableResNet:
        """The network, loaded (with torch) on first use when the engine was given a loader."""
        with self._model_lock:
            if self._model is None:
                assert self._model_loader is not None
                _LOG.info('loading the model in PyTorch: a graph must be built')
                self._model = self._model_loader().eval()
            return self._model

    # -- InferenceEngine ---------------------------------------------------------------------
    @property
    def keep_ratio(self) -> Ratio:
        """The ratio the next `infer` runs at (may lag `requested_ratio` while building)."""
        return self._active.ratio

    @property
    def requested_ratio(self) -> Ratio:
        """The ratio last asked for with `set_keep_ratio`."""
        return self._requested

    @property
    def active_ratio(self) -> Ratio:
        return self._active.ratio

    @property
    def pending_ratios(self) -> tuple[Ratio, ...]:
        """Ratios whose graphs are being built (the previous ratio serves meanwhile)."""
        with self._lock:
            return tuple(self._pending.values())

    @property
    def ready_ratios(self) -> tuple[Ratio, ...]:
        with self._lock:
            return tuple(g.ratio for g in self._graphs.values())

    def set_keep_ratio(self, ratio: Ratio) -> None:
        """Switch to ``ratio`` at once if its graph is loaded, else build it in the background.

        Thread-safe; ValueError for an invalid ratio. Until the graph is ready the previous
        ratio keeps serving and `pending_ratios` lists it.
        """
        masks = self._masks(ratio)
        with self._lock:
            self._check_open()
            self._requested = ratio
            graph = self._graphs.get(masks)
            if graph is not None:
                self._active = graph if graph.ratio == ratio else replace(graph, ratio=ratio)
                return
            if masks in self._pending:
                return
            self._errors.pop(masks, None)
        self._queue_build(masks, ratio, urgent=True)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.infer_at(batch)[0]

    def infer_at(self, batch: np.ndarray) -> tuple[np.ndarray, Ratio]:
        x = check_batch(batch)
        if x.shape[2:] != self.input_size:
            raise ValueError(
                f'batch must be Nx3x{self.input_size[0]}x{self.input_size[1]}, got {x.shape!r}')
        graph = self._active     # one read: the build thread may switch it meanwhile
        return graph.run(x), graph.ratio

    def close(self) -> None:
        """Drop the sessions; queued builds are cancelled, one in flight is not waited for."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            worker, self._worker = self._worker, None
            self._pending.clear()
            self._queued.clear()
        if worker is not None:
            worker.stop()
        with self._lock:
            self._graphs.clear()
            self._weights.clear()
            self._files.clear()

    def status(self) -> dict[str, Any]:
        """For /diagnostics: active, requested, pending and ready ratios, build errors, cache;
        int8: the ratios the shared gated graph serves, or why it serves none."""
        with self._lock:
            shared = {} if self.precision != 'int8' else {'int8_shared_graph': {
                'ratios': [g.ratio for g in self._graphs.values() if g.gated is not None],
                'error': self._gated_error}}
            return {'engine': self.name,
                    'active_ratio': self._active.ratio,
                    'requested_ratio': self._requested,
                    'pending_ratios': list(self._pending.values()),
                    'background_ratios': [r for m, r in self._queued.items()
                                          if m not in self._pending],
                    'ready_ratios': [g.ratio for g in self._graphs.values()],
                    'build_errors': list(self._errors.values()),
                    'precision': self.precision,
                    'torch_model_loaded': self._model is not None,
                    'providers': list(self.providers),
                    'cache_dir': str(self.cache_dir), **shared}

    # -- building ----------------------------------------------------------------------------
    def prepare(self, ratios: Iterable[Ratio]) -> None:
        """Load or build the graphs for ``ratios`` now, in the calling thread (blocking)."""
        for ratio in ratios:
            masks = self._masks(ratio)
            with self._lock:
                self._check_open()
                if masks in self._graphs:
                    continue
            self._add_graph(self._load_or_build(masks, ratio))

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Block until no graph is pending or building in the background (True) or
        ``timeout_s`` passes (False)."""
        with self._lock:
            worker = self._worker
        if worker is None:
            return not self._pending
        return worker.wait_idle(timeout_s) and not self.pending_ratios

    def _masks(self, ratio: Ratio) -> Masks:
        """The model's skip masks for ``ratio`` under its current policy (ValueError if bad);
        the serving record's while the model is not loaded."""
        if self._model is None and self.serving is not None:
            masks = self.serving.masks(ratio)
            if masks is not None:
                return masks
        if isinstance(ratio, bool) or not isinstance(ratio, (float, int, tuple)):
            return self.model.masks_for(ratio)     # rejects bools; lists are unhashable
        policy = self.model.policy
        cached = self._mask_cache.get(ratio)
        if cached is not None and cached[0] is policy:
            return cached[1]
        masks = self.model.masks_for(ratio)
        if len(self._mask_cache) > 1024:
            self._mask_cache.clear()
        self._mask_cache[ratio] = (policy, masks)
        return masks

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError('the onnxruntime engine is closed')

    def _add_graph(self, graph: _Graph) -> None:
        with self._lock:
            self._graphs.setdefault(graph.masks, graph)

    def _queue_build(self, masks: Masks, ratio: Ratio, urgent: bool) -> None:
        """Have the build thread load or build ``masks``; ``urgent`` = someone waits for it."""
        with self._lock:
            if self._closed or masks in self._graphs or masks in self._pending:
                return
            if urgent:
                self._pending[masks] = ratio   # jumps the background queue; a duplicate no-ops
            elif masks in self._queued:
                return
            self._queued[masks] = ratio
            worker = self._worker
        assert worker is not None
        worker.submit(lambda: self._run_build(masks, ratio), urgent=urgent)

    def _run_build(self, masks: Masks, ratio: Ratio) -> None:
        """On the build thread: load or build, then switch to it if it is the ratio asked for."""
        with self._lock:
            if self._closed or masks in self._graphs:
                return
        try:
            graph: _Graph | None = self._load_or_build(masks, ratio)
            error = None
        except Exception as e:  # noqa: BLE001 - reported in status() and the log
            graph, error = None, e
        with self._lock:
            self._queued.pop(masks, None)
            self._pending.pop(masks, None)
            if self._closed:
                return
            if graph is None:
                self._errors[masks] = f'{ratio}: {error}'
                _LOG.error('building the ONNX graph for keep ratio %r failed: %s', ratio, error)
                return
            self._graphs.setdefault(masks, graph)
            if self._requested == ratio or self._masks(self._requested) == masks:
                self._active = replace(graph, ratio=self._requested)

    def _graph_key(self, masks: Masks, ratio: Ratio) -> str:
        """Skip masks + the BN statistics used at them: from the serving record when it has
        them (no model needed), else computed from the model."""
        if self._model is None and self.serving is not None:
            key = self.serving.graph_key(masks)
            if key is not None:
                return key
        from pls_perception.engines.onnx_export import bn_digest
        return content_digest([list(m) for m in masks], bn_digest(self.model, ratio))[:16]

    def _load_or_build(self, masks: Masks, ratio: Ratio) -> _Graph:
        """The graph of ``masks`` from the cache, verified; else (or if it fails) built. An
        int8 ratio that skips blocks is served by the gated graph when it can be, else by a
        session of its own; one that skips none always has its own (see the module docstring)."""
        def load(rebuild: bool) -> _Graph:
            entry = self._entry(masks, ratio, rebuild)
            skips = not _runs_every_block(masks)
            gated = self._gated_graph() if self.precision == 'int8' and skips else None
            values = gated and self._gated_values(gated[0], gated[2], entry, masks)
            if gated is not None and values is not None:
                return _Graph(masks, ratio, gated[1],
                              GatedRatio(gated[1], values, self.input_size))
            if gated is not None:
                _LOG.warning('int8 keep ratio %r gets a session of its own: the shared graph '
                          'cannot run it (other BatchNorm statistics, or skips it was not '
                          'cut for)', ratio)
            return _Graph(masks, ratio, self._session(entry))
        with self._build_lock:
            return _healed(load)

    def _entry(self, masks: Masks, ratio: Ratio, rebuild: bool = False) -> _Entry:
        """The cache entry of ``masks``: read and verified (CorruptEntry), or built if missing
        or ``rebuild``. Under ``_build_lock``."""
        key = self._graph_key(masks, ratio)
        index_path = self._graph_dir / f'{key}.json'
        if not rebuild and index_path.exists():
            entry = self._read_entry(index_path, key, masks)
        else:
            entry = self._build(masks, ratio, index_path)
        if self.serving is not None:
            self.serving.add(ratio, masks, key)
        return entry

    # -- the gated int8 graph (int8_gating) ---------------------------------------------------
    def _gated_graph(self) -> tuple[_Entry, ort.InferenceSession, list[Run]] | None:
        """The int8 graph every ratio can share, made from keep ratio 1's graph on first use,
        gated for the engine's ratios (`int8_gating.gated_runs`); None (logged once) if this
        model's graphs cannot share one. Under ``_build_lock``."""
        if self._gated is not None or self._gated_error is not None:
            return self._gated
        try:
            full = self._masks(1.0)
            if not _runs_every_block(full):
                raise ValueError('keep ratio 1 does not run every block under this skip policy')

            runs = gated_runs([full, *map(self._masks, self._gated_for)])
            if not runs:
                self._gated_error = 'nothing to share: none of its ratios skips a block'
                _LOG.info('int8: %s', self._gated_error)
                return None

            def load(rebuild: bool) -> tuple[_Entry, ort.InferenceSession, list[Run]]:
                full_entry = self._entry(full, 1.0, rebuild)
                key = (f'gated-{self._graph_key(full, 1.0)}-'
                       f'{content_digest(runs, _GATED_LAYOUT)[:8]}')
                index_path = self._graph_dir / f'{key}.json'
                if not rebuild and index_path.exists():
                    entry = self._read_entry(index_path, key, full)
                else:
                    entry = self._build_gated(full_entry, full, runs, index_path)
                if entry.parameters is None or entry.fixed is None or entry.inputs is None \
                        or set(entry.parameters) != set(entry.inputs):
                    if rebuild:
                        raise ValueError(f'{index_path} lists no parameters or inputs')
                    raise CorruptEntry(index_path, 'its parameters and inputs do not match')
                return entry, self._session(entry, warm_up=False), runs
            self._gated = _healed(load)
        except (ValueError, BackendError) as e:    # BackendError: ratio 1 failed to build
            self._gated_error = str(e)
            _LOG.warning('int8 ratios cannot share one graph, each gets its own session: %s', e)
        return self._gated

    def _build_gated(self, full: _Entry, masks: Masks, runs: list[Run],
                     index_path: Path) -> _Entry:
        """The gated graph of `int8_gating` made from the full-mask graph ``full``, cached."""
        import onnx     # building only
        from pls_perception.engines.int8_gating import gated_graph
        from pls_perception.skipping.ratios import STAGE_NAMES
        if full.parameters is None or full.fixed is None:
            raise ValueError(f'the graph of keep ratio 1 ({full.graph_path}) lists no '
                             'per-ratio parameters')
        _LOG.info('building the int8 graph that serves the keep ratios that skip blocks')
        model, inputs = gated_graph(onnx.load(str(full.graph_path), load_external_data=False),
                                    STAGE_NAMES, runs)
        extra = {'gated_from': full.graph_path.stem, 'runs': runs, 'inputs': inputs,
                 'parameters': full.parameters, 'fixed': full.fixed}
        return self._write_entry(model, index_path, masks, 1.0, extra)

    def _gated_values(self, gated: _Entry, runs: list[Run], entry: _Entry,
                      masks: Masks) -> dict[str, ort.OrtValue] | None:
        """What ``entry``'s ratio binds to the gated graph: its gates and its quantization
        parameters (the full-mask graph's for blocks it skips); None if its nodes hold other
        constants (another BatchNorm state), it lists no parameters, or the gates cannot
        skip what it skips (a ratio the graph was not cut for)."""
        assert gated.parameters is not None and gated.fixed is not None \
            and gated.inputs is not None
        if entry.parameters is None or entry.fixed is None \
                or not set(entry.parameters) <= set(gated.inputs) \
                or any(gated.fixed.get(k) != v for k, v in entry.fixed.items()):
            return None
        try:
            gates, parameters = ratio_inputs(masks, runs, gated.inputs, gated.parameters,
                                             entry.parameters)
        except ValueError:
            return None
        return {**{name: ort.OrtValue.ortvalue_from_numpy(np.array(run))
                   for name, run in gates.items()},
                **{name: self._shared_weight(tensor) for name, tensor in parameters.items()}}

    def _read_entry(self, index_path: Path, key: str, masks: Masks) -> _Entry:
        """The cache entry an index describes, index and graph verified (CorruptEntry)."""
        try:
            index = json.loads(read_capped(index_path, _MAX_INDEX_BYTES))
        except (ValueError, RecursionError) as e:
            raise CorruptEntry(index_path, f'not JSON ({e})') from e
        if not isinstance(index, dict) or index.get('digest') != content_digest(
                {k: v for k, v in index.items() if k != 'digest'}):
            raise CorruptEntry(index_path, 'its contents do not match its digest')
        if index.get('key') != key or index.get('masks') != [list(m) for m in masks]:
            raise CorruptEntry(index_path, f'it describes another graph than {key}')
        graph_sha, names = index.get('graph_sha256'), index.get('initializers')
        if (not isinstance(graph_sha, str) or not _SHA256.fullmatch(graph_sha)
                or not isinstance(names, list)
                or not all(isinstance(n, str) and _WEIGHT_NAME.fullmatch(n) for n in names)
                or len(set(names)) != len(names)):
            raise CorruptEntry(index_path, 'malformed graph digest or initializer names')
        graph_path = self._graph_dir / f'{graph_sha}.onnx'
        data = _read_graph(graph_path)
        try:
            placeholders = initializers(data)
        except ValueError as e:
            raise CorruptEntry(graph_path, f'not an ONNX model ({e})') from e
        lengths = {}
        for name, external in placeholders.items():
            length = external.get('length', '')
            if external.get('location') != _PLACEHOLDER or not length.isdigit():
                raise CorruptEntry(graph_path, f'initializer {name[:80]!r} is not a placeholder')
            lengths[name] = int(length)
        if set(lengths) != set(names):
            raise CorruptEntry(index_path, "its initializer names are not the graph's")
        parameters, fixed, inputs = (index.get(k) for k in ('parameters', 'fixed', 'inputs'))
        if not _optional_gating_fields(parameters, fixed, inputs):
            raise CorruptEntry(index_path, 'malformed int8 parameters, constants or inputs')
        return _Entry(graph_path, names, max(lengths.values(), default=0), parameters, fixed,
                      inputs)

    def _export(self, ratio: Ratio) -> bytes:
        """The kept blocks (with this ratio's BN statistics) as an ONNX model in memory."""
        from pls_perception.engines.onnx_export import export_ratio   # torch: only to build
        return export_ratio(self.model, ratio, self.input_size, self.cache_dir)

    def _optimize(self, model_bytes: bytes) -> onnx.ModelProto:
        """ONNX Runtime's offline graph optimisation (BN folding, fusions, NCHWc on CPU)."""
        import onnx     # building only: serving reads graphs without it (onnx_wire)
        options = ort.SessionOptions()
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL if self._offline_level == 'all'
            else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
        options.log_severity_level = 3      # the "hardware specific" notice: we key on the CPU
        options.intra_op_num_threads = 1
        with tempfile.TemporaryDirectory(dir=self.cache_dir) as tmp:
            out = Path(tmp) / 'optimized.onnx'
            options.optimized_model_filepath = str(out)
            ort.InferenceSession(model_bytes, options, providers=['CPUExecutionProvider'])
            return onnx.load(str(out))

    def _build(self, masks: Masks, ratio: Ratio, index_path: Path) -> _Entry:
        """Export + optimise (+ quantize) one mask and cache it (`_write_entry`)."""
        _LOG.info('building the %s ONNX graph for keep ratio %r', self.precision, ratio)
        model_bytes = self._export(ratio)
        if self.calibration is not None:
            _LOG.info('quantizing keep ratio %r to int8, calibrated on %s', ratio,
                      self.calibration.source)
            model_bytes = quantize_in_subprocess(
                model_bytes, self.calibration.images(self.input_size), INPUT_NAME,
                self.cache_dir)
        model = self._optimize(model_bytes)
        extra: dict[str, Any] = {'policy': self.model.policy.name,
                                 'bn_recalibrated': self.model.has_bn_state(ratio)}
        if self.calibration is not None:
            from pls_perception.engines.int8_gating import fixed_inputs, ratio_parameters
            try:
                extra.update(parameters=ratio_parameters(model.graph),
                             fixed=fixed_inputs(model.graph))
            except ValueError as e:
                _LOG.warning('keep ratio %r cannot share the gated int8 graph: %s', ratio, e)
        return self._write_entry(model, index_path, masks, ratio, extra)

    def _write_entry(self, model: onnx.ModelProto, index_path: Path, masks: Masks,
                     ratio: Ratio, extra: dict[str, Any]) -> _Entry:
        """Move ``model``'s tensors to the weight store (placeholders into it stay as they
        are), write its graph, then its index with ``extra`` (last, so a reader never finds an
        index without its files). Tensor names in ``extra``'s parameters and constants are
        renamed with the tensors."""
        from onnx import TensorProto, numpy_helper

        from pls_perception.engines.int8_gating import all_graphs, all_nodes
        renames: dict[str, str] = {}
        names: dict[str, None] = {}          # every graph's, ``If`` branches' included
        largest = 0
        for graph in all_graphs(model.graph):
            kept: dict[str, TensorProto] = {}
            for init in graph.initializer:
                if (init.data_location == TensorProto.EXTERNAL
                        and _WEIGHT_NAME.fullmatch(init.name)):
                    nbytes = int({e.key: e.value for e in init.external_data}['length'])
                    name = init.name             # already in the store (the gated graph's)
                    placeholder = init
                else:
                    array = numpy_helper.to_array(init)
                    name = f'w_{_array_digest(array)}'
                    nbytes = array.nbytes
                    self._store_weight(name, array)
                    placeholder = TensorProto(name=name, data_type=init.data_type,
                                              dims=init.dims, data_location=TensorProto.EXTERNAL)
                    for k, v in (('location', _PLACEHOLDER), ('offset', '0'),
                                 ('length', str(nbytes))):
                        entry = placeholder.external_data.add()
                        entry.key, entry.value = k, v
                renames[init.name] = name
                if name in kept:
                    continue                     # identical tensor twice in one graph
                kept[name] = placeholder
                names[name] = None
                largest = max(largest, nbytes)
            del graph.initializer[:]
            graph.initializer.extend(kept.values())
        for node in all_nodes(model.graph):
            for i, name in enumerate(node.input):
                if name in renames:
                    node.input[i] = renames[name]
        if 'parameters' in extra:
            extra = {**extra,
                     'parameters': {k: renames.get(v, v) for k, v in extra['parameters'].items()},
                     'fixed': {k: [renames.get(n, n) for n in v]
                               for k, v in extra['fixed'].items()}}
        data = model.SerializeToString()
        graph_sha = hashlib.sha256(data).hexdigest()
        graph_path = self._graph_dir / f'{graph_sha}.onnx'
        write_atomic(graph_path, data)
        index = {'key': index_path.stem, 'ratio': ratio, 'masks': [list(m) for m in masks],
                 'input_size': self.input_size, 'precision': self.precision,
                 'graph_sha256': graph_sha, 'initializers': list(names), **extra}
        index['digest'] = content_digest(index)
        write_atomic(index_path, json.dumps(index).encode())
        return _Entry(graph_path, list(names), largest, extra.get('parameters'),
                      extra.get('fixed'), extra.get('inputs'))

    def _weight_path(self, name: str) -> Path:
        """weights/<digest>.npy of a ``w_<digest>`` name (no other name reaches the disk)."""
        match = _WEIGHT_NAME.fullmatch(name)
        if match is None:
            raise ValueError(f'not a weight name: {name[:80]!r}')
        return self._weight_dir / f'{match.group(1)}.npy'

    def _store_weight(self, name: str, array: np.ndarray) -> None:
        """Make ``array`` the shared tensor ``name``, stored in the weight store.

        A tensor file already stored is kept if it verifies, else logged and rewritten; the
        array itself becomes the shared value (it is the tensor the file holds), except for
        int8, whose sessions map the file.
        """
        with self._lock:
            if name in self._weights or name in self._files:
                return                       # loaded or stored (so verified) by this engine
        path = self._weight_path(name)
        if path.exists():
            try:
                _read_tensor(path, name[2:])
            except CorruptEntry as e:
                warn_corrupt(e)             # removes it: written afresh below
        if not path.exists():
            buffer = io.BytesIO()
            np.save(buffer, array, allow_pickle=False)
            write_atomic(path, buffer.getvalue())
        if self.precision == 'int8':        # its sessions map the file (`_session`)
            with self._lock:
                self._files[name] = weight_location(path, array.nbytes)
            return
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))
        with self._lock:
            self._weights.setdefault(name, value)

    def _weight_file(self, name: str) -> tuple[str, int, int]:
        """Where tensor ``name``'s data lies: (its file relative to ``cache_dir``, offset,
        length), the file verified on first use (CorruptEntry); the array is not kept."""
        with self._lock:
            found = self._files.get(name)
        if found is None:
            path = self._weight_path(name)
            found = weight_location(path, _read_tensor(path, name[2:]).nbytes)   # verified
            with self._lock:
                self._files[name] = found
        return found

    def _grow_placeholder(self, size_bytes: int) -> None:
        """The sparse file placeholders point at; ONNX Runtime checks it exists, never reads it."""
        path = self._graph_dir / _PLACEHOLDER
        with open(path, 'ab') as f:
            if f.seek(0, os.SEEK_END) < size_bytes:
                f.truncate(size_bytes)

    def _shared_weight(self, name: str) -> ort.OrtValue:
        """The one OrtValue of tensor ``name``, read and verified on first use (CorruptEntry)."""
        with self._lock:
            value = self._weights.get(name)
        if value is None:
            array = _read_tensor(self._weight_path(name), name[2:])
            value = ort.OrtValue.ortvalue_from_numpy(array)
            with self._lock:
                value = self._weights.setdefault(name, value)
        return value

    def _session(self, entry: _Entry, warm_up: bool = True) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.add_session_config_entry('session.intra_op.allow_spinning',
                                         '1' if self.spinning else '0')
        options.log_severity_level = 3
        if self._offline_level == 'all':
            # Already optimised offline; optimising again would copy the shared weights.
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        model: str | bytes = str(entry.graph_path)
        if self.precision == 'int8':
            # int8 kernels pack their weights, so sharing our copies would keep one copy more
            # per process; ONNX Runtime frees a weight it loaded itself once it is packed, and
            # maps the weight files (no read), so each is pointed at its file.
            model = with_external_data(_read_graph(entry.graph_path),
                                       {n: self._weight_file(n) for n in entry.names})
            options.add_session_config_entry(
                'session.model_external_initializers_file_folder_path', str(self.cache_dir))
        else:
            for name in entry.names:
                options.add_initializer(name, self._shared_weight(name))
            self._grow_placeholder(entry.placeholder_bytes)
        session = ort.InferenceSession(model, options, providers=self.providers)
        if warm_up:     # the first run allocates the arena: here, not on a camera frame
            session.run([OUTPUT_NAME],
                        {INPUT_NAME: np.zeros((1, 3, *self.input_size), np.float32)})
        return session


_T = TypeVar('_T')


def _runs_every_block(masks: Masks) -> bool:
    return all(all(stage) for stage in masks)


def _healed(load: Callable[[bool], _T]) -> _T:
    """``load(False)``; if a cache file fails verification, logged, ``load(rebuild=True)``."""
    try:
        return load(False)
    except CorruptEntry as e:
        warn_corrupt(e)
    return load(True)


def _optional_gating_fields(parameters: object, fixed: object, inputs: object) -> bool:
    """Whether an index's int8 fields, where present, are well formed: parameter keys ->
    weight names, node -> constants (weight names or ''), parameter keys -> input names."""
    def weight(name: object) -> bool:
        return isinstance(name, str) and _WEIGHT_NAME.fullmatch(name) is not None
    return ((parameters is None or isinstance(parameters, dict) and all(
                isinstance(k, str) and weight(v) for k, v in parameters.items()))
            and (fixed is None or isinstance(fixed, dict) and all(
                isinstance(k, str) and isinstance(v, list)
                and all(n == '' or weight(n) for n in v) for k, v in fixed.items()))
            and (inputs is None or isinstance(inputs, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in inputs.items())))


def warn_corrupt(error: CorruptEntry, what: str = 'ONNX cache file') -> None:
    """One warning per bad cache file; the file goes, so the rebuild writes it afresh."""
    _LOG.warning('%s %s failed verification (%s); removing it and rebuilding', what,
                 error.path, error.reason)
    error.path.unlink(missing_ok=True)
