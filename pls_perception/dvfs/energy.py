"""Energy per window (e.g. per frame): measured with zeus where sensors exist, else modelled.

``zeus`` (ZeusMonitor: NVIDIA/AMD GPUs, Intel/AMD CPU RAPL, Jetson rails) is optional and imported
lazily; it is used only with a real DVFS backend, because on the simulated backend the hardware
does not actually run at the set frequency. Otherwise energy = P_model(f) * t with the frequency
read from the backend when the window opens. Every reading carries ``source`` = 'measured' or
'modelled'.
"""
from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pls_perception.dvfs.base import DvfsBackend
from pls_perception.operating_points.profiles import OperatingPointProfile

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnergyReading:
    energy_mj: float
    duration_s: float
    source: str              # 'measured' (zeus) or 'modelled' (P_model(f) * t)
    freq_mhz: float
    detail: str = ''

    @property
    def power_w(self) -> float:
        return self.energy_mj / 1000.0 / self.duration_s if self.duration_s > 0 else 0.0

    def lasting(self, duration_s: float) -> EnergyReading:
        """A modelled reading at the same power over ``duration_s`` (a measured one as is).

        A modelled frame's energy is P(f) x the latency the frame reports: the window's wall
        time also holds the time its thread waited for a core on a loaded machine.
        """
        if self.source != 'modelled':
            return self
        return replace(self, energy_mj=self.power_w * duration_s * 1000.0,
                       duration_s=duration_s)


def profile_power_fn(profile: OperatingPointProfile,
                     keep_ratio: float | None = None) -> Callable[[float], float]:
    """P(f) from a profile: its power model if any, else interpolation of power_w; scaled by
    the profile's power_scale for ``keep_ratio`` when given."""
    scale = 1.0 if keep_ratio is None else float(
        profile.power_scale[profile.ratio_index(keep_ratio)])
    model = profile.power_model
    freqs, power = profile.frequencies_mhz, profile.power_w
    if model is not None:
        return lambda f: scale * float(model.power_w(f))
    return lambda f: scale * float(np.interp(f, freqs, power))


def _zeus_monitor(gpu_indices: Sequence[int] | None, cpu_indices: Sequence[int] | None
                  ) -> Any | None:
    try:
        monitor_mod = importlib.import_module('zeus.monitor')
    except ImportError:
        return None
    try:
        monitor = monitor_mod.ZeusMonitor(gpu_indices=gpu_indices, cpu_indices=cpu_indices)
    except Exception as e:  # noqa: BLE001 - zeus raises many types when sensors are absent
        LOG.info('zeus is installed but found no usable sensors (%s); energy is modelled', e)
        return None
    if not (getattr(monitor, 'gpu_indices', None) or getattr(monitor, 'cpu_indices', None)):
        return None
    return monitor


class EnergyMeter:
    """Open/close named windows; each close returns an :class:`EnergyReading`."""

    def __init__(self, power_fn: Callable[[float], float], backend: DvfsBackend,
                 use_zeus: bool = True, gpu_indices: Sequence[int] | None = None,
                 cpu_indices: Sequence[int] | None = None) -> None:
        self.power_fn = power_fn
        self.backend = backend
        self._zeus = _zeus_monitor(gpu_indices, cpu_indices) \
            if use_zeus and backend.is_real else None
        self._open: dict[str, tuple[float, float, bool]] = {}
        self._lock = threading.Lock()

    @property
    def source(self) -> str:
        return 'measured' if self._measuring() else 'modelled'

    def _measuring(self) -> bool:
        """zeus measures only while the backend is real (a failed-over one emulates)."""
        return self._zeus is not None and self.backend.is_real

    def begin_window(self, key: str) -> None:
        with self._lock:
            if key in self._open:
                raise ValueError(f'energy window {key!r} is already open')
            measuring = self._measuring()
            self._open[key] = (time.perf_counter(), self.backend.current_frequency_mhz(),
                               measuring)
        if measuring:
            self._zeus.begin_window(key)

    def end_window(self, key: str) -> EnergyReading:
        with self._lock:
            if key not in self._open:
                raise ValueError(f'energy window {key!r} was not opened')
            t0, freq_mhz, measuring = self._open.pop(key)
        duration_s = time.perf_counter() - t0
        if measuring:
            m = self._zeus.end_window(key)
            return EnergyReading(energy_mj=float(m.total_energy) * 1000.0,
                                 duration_s=float(m.time), source='measured',
                                 freq_mhz=freq_mhz, detail='zeus ZeusMonitor')
        power_w = self.power_fn(freq_mhz)
        return EnergyReading(energy_mj=power_w * duration_s * 1000.0, duration_s=duration_s,
                             source='modelled', freq_mhz=freq_mhz,
                             detail=f'P_model({freq_mhz:g} MHz) = {power_w:.3f} W x t')

    @contextmanager
    def window(self, key: str) -> Iterator[list[EnergyReading]]:
        """``with meter.window('frame') as out: ...`` then ``out[0]`` is the reading."""
        out: list[EnergyReading] = []
        self.begin_window(key)
        try:
            yield out
        finally:
            out.append(self.end_window(key))
