"""One frame's way through the perception node, without ROS: setpoint, classify, account.

`FramePipeline` owns what a configured node owns (model, engine, DVFS backend, energy meter) and
turns an RGB array into a `Classification` at the setpoint applied between frames. `FrameWindow`
and `FrameCounters` are what /diagnostics reports. The node (nodes/perception_node.py) only feeds
it frames and publishes its results.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pls_perception.dvfs import DvfsBackend, FailoverBackend
from pls_perception.dvfs.energy import EnergyMeter
from pls_perception.engines import InferenceEngine
from pls_perception.skipping.preprocessing import Preprocessing


def _ratios_text(ratios: list) -> str:
    """Keep ratios for a diagnostics value: '1 0.5', per-stage ones as tuples, or 'none'."""
    return ' '.join(f'{r:g}' if isinstance(r, float) else str(r) for r in ratios) or 'none'


@dataclass(frozen=True)
class Setpoint:
    """What the next frame runs at. ``freq_mhz == 0`` leaves the processor alone."""

    keep_ratio: float
    freq_mhz: float


@dataclass
class FrameCounters:
    """Frames seen by the node since configure. Each field has exactly one writer thread.

    received = processed + dropped + rejected + failed + the frame waiting + the one in flight.
    """

    received: int = 0
    processed: int = 0
    dropped: int = 0
    rejected: int = 0
    failed: int = 0
    deadline_misses: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Classification:
    """One frame's result, before it is wrapped in a message."""

    class_id: int
    label: str
    score: float
    top_k: tuple[tuple[int, str, float], ...]
    keep_ratio: float
    freq_mhz: float
    preprocess_ms: float
    compute_ms: float
    emulated_ms: float
    energy_mj: float | None = None
    energy_source: str | None = None

    @property
    def latency_ms(self) -> float:
        """Network latency at the frequency in force: measured compute + emulated slow-down."""
        return self.compute_ms + self.emulated_ms


class FrameWindow:
    """Latency and energy of the last ``size`` frames, summarised for the diagnostics."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f'the window needs at least one frame, got {size!r}')
        self._frames: deque[tuple[float, float]] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, latency_ms: float, energy_mj: float | None) -> None:
        with self._lock:
            self._frames.append((latency_ms, math.nan if energy_mj is None else energy_mj))

    def summary(self) -> dict[str, float | int]:
        """Latency p50/p95/max and mean energy (NaN when unknown) over the window."""
        with self._lock:
            frames = np.asarray(self._frames, dtype=float).reshape(-1, 2)
        if frames.shape[0] == 0:
            return {'latency_p50_ms': math.nan, 'latency_p95_ms': math.nan,
                    'latency_max_ms': math.nan, 'energy_per_frame_mj': math.nan, 'frames': 0}
        latency, energy = frames[:, 0], frames[:, 1]
        p50, p95 = np.percentile(latency, [50, 95])
        known = energy[~np.isnan(energy)]
        return {'latency_p50_ms': float(p50), 'latency_p95_ms': float(p95),
                'latency_max_ms': float(latency.max()),
                'energy_per_frame_mj': float(known.mean()) if known.size else math.nan,
                'frames': int(frames.shape[0])}


class FramePipeline:
    """Everything a configured node owns and frees at cleanup: engine (and model), DVFS backend.

    ROS-free: ``classify`` takes an RGB array. ``apply`` moves the network and the processor
    to a setpoint; call it between frames (the node does, from the inference thread).
    """

    def __init__(self, preprocessing: Preprocessing, engine: InferenceEngine,
                 backend: DvfsBackend, class_names: Sequence[str], top_k: int,
                 meter: EnergyMeter | None = None, info: Mapping[str, Any] | None = None,
                 ) -> None:
        self.preprocessing = preprocessing
        self.engine = engine
        self.backend = backend
        self.meter = meter
        self.class_names = tuple(class_names)
        self.top_k = min(top_k, len(self.class_names))
        self.applied: Setpoint | None = None
        self.info = dict(info or {})   # what each frame's report carries (engine, policy, ...)
        # The hardware as configured: a backend that fails over later keeps this identity.
        self.hardware_id = backend.name
        # How the simulated backend makes frames last ('none' on real hardware).
        self.emulation = 'none' if backend.is_real else getattr(
            getattr(backend, 'wrapped', backend), 'emulation', 'stretch')

    def apply(self, setpoint: Setpoint) -> None:
        """Set the keep ratio and frequency; ``freq_mhz == 0`` hands the processor back."""
        if self.applied is not None and setpoint == self.applied:
            return
        self.engine.set_keep_ratio(setpoint.keep_ratio)
        if setpoint.freq_mhz > 0:
            self.backend.set_frequency_mhz(setpoint.freq_mhz)
        elif self.applied is not None and self.applied.freq_mhz > 0:
            self.backend.reset()
        self.applied = setpoint

    def warm_up(self, frames: int) -> None:
        """Run ``frames`` dummy inferences so the first real frame is not an outlier."""
        height, width = self.preprocessing.input_size
        black = np.zeros((height, width, 3), dtype=np.uint8)
        batch = self.preprocessing.to_array(black)
        for _ in range(frames):
            self.engine.infer(batch)

    def classify(self, rgb: np.ndarray,
                 interrupt: threading.Event | None = None) -> Classification:
        """Preprocess, infer, stretch latency to the set frequency, rank the classes.

        Energy covers inference plus emulated slow-down (the meter's window); ``interrupt`` set
        (a new operating point) cuts the emulated slow-down short.
        """
        t0 = time.perf_counter()
        batch = self.preprocessing.to_array(rgb)
        window = (self.meter.window('frame') if self.meter is not None
                  else contextlib.nullcontext([]))
        with window as readings:
            t1 = time.perf_counter()
            output, ratio = self.engine.infer_at(batch)
            logits = output[0]
            compute_s = time.perf_counter() - t1
            emulated_s = self.backend.emulate(compute_s, ratio, interrupt)
        energy = readings[0].lasting(compute_s + emulated_s) if readings else None
        shifted = logits.astype(np.float64) - logits.max()
        probs = np.exp(shifted) / np.exp(shifted).sum()
        order = np.argsort(-probs, kind='stable')[: self.top_k]
        top = tuple((int(i), self.class_names[i], float(probs[i])) for i in order)
        return Classification(
            class_id=top[0][0], label=top[0][1], score=top[0][2], top_k=top,
            keep_ratio=float(ratio),
            freq_mhz=float(self.backend.current_frequency_mhz()),
            preprocess_ms=(t1 - t0) * 1e3, compute_ms=compute_s * 1e3,
            emulated_ms=emulated_s * 1e3,
            energy_mj=None if energy is None else energy.energy_mj,
            energy_source=None if energy is None else energy.source)

    def health(self, requested: Setpoint, values: dict[str, str], problems: list[str]
               ) -> str | None:
        """Add this pipeline's diagnostics to ``values`` and ``problems``; the DVFS fault if any.

        A problem is a requested ratio still being built, or an engine build error; a fault is
        a real backend that failed (the frames run on the simulated one since).
        """
        backend, engine = self.backend, self.engine
        values.update({
            'keep_ratio': f'{engine.keep_ratio:g}',
            'frequency_mhz': f'{backend.current_frequency_mhz():g}',
            'frequency_requested_mhz': f'{requested.freq_mhz:g}',
            'dvfs_backend': backend.name,
            'dvfs_kind': 'real' if backend.is_real else 'simulated',
            'dvfs_emulation': self.emulation,
            'engine': engine.name,
            'skip_policy': self.info.get('skip_policy', ''),
            'energy_source': self.meter.source if self.meter else 'none',
            # a warm onnxruntime start serves cached graphs without it (serving_record.py)
            'pytorch': 'imported' if 'torch' in sys.modules else 'not imported',
        })
        status = engine.status()
        pending = status.get('pending_ratios', [])
        values['engine_pending_ratios'] = _ratios_text(pending)
        values['engine_background_builds'] = _ratios_text(status.get('background_ratios', []))
        shared = status.get('int8_shared_graph')
        if shared is not None:
            values['engine_int8_shared_graph'] = _ratios_text(shared['ratios']) + (
                f" ({shared['error']})" if shared['error'] else '')
        if pending:
            problems.append(f'building the graph of ratio {status["requested_ratio"]:g}, '
                            f'serving {status["active_ratio"]:g} meanwhile')
        if status.get('build_errors'):
            values['engine_build_errors'] = '; '.join(status['build_errors'])
            problems.append(f'engine build errors: {values["engine_build_errors"]}')
        if isinstance(backend, FailoverBackend) and backend.fault is not None:
            values['dvfs_fault'] = backend.fault
            return f'DVFS backend failed ({backend.fault}): running on the simulated backend'
        return None

    def close(self) -> None:
        """Free the engine and give the processor back to its original settings."""
        try:
            self.engine.close()
        finally:
            self.backend.reset()
