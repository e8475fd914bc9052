"""Simulated DVFS for machines without frequency control (like the CI machine).

The processor really runs at its own (maximum) clock; to make latency behave as if it ran at the
set frequency f, each inference's measured compute time t is stretched to t * f_max / f by sleeping
t * (f_max / f - 1) afterwards. Energy for such runs comes from the power model and is always
reported as modelled. The backend says ``is_real = False`` everywhere it is described.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence

from pls_perception.dvfs.base import DvfsBackend

# Jetson Orin Nano CPU cpufreq table (kHz / 1000), 268.8 MHz .. 1.51 GHz: the paper's CPU range.
ORIN_NANO_CPU_FREQUENCIES_MHZ: tuple[float, ...] = (
    268.8, 345.6, 422.4, 499.2, 576.0, 652.8, 729.6, 806.4, 883.2, 960.0, 1036.8, 1113.6,
    1190.4, 1267.2, 1344.0, 1420.8, 1497.6, 1510.4)
# Jetson Orin Nano GPU devfreq table (Hz / 1e6).
ORIN_NANO_GPU_FREQUENCIES_MHZ: tuple[float, ...] = (306.0, 408.0, 510.0, 612.0, 624.75)


class SimulatedBackend(DvfsBackend):
    """Frequency is bookkeeping plus a sleep in :meth:`emulate`; starts at the maximum."""

    name = 'simulated'
    is_real = False

    def __init__(self, frequencies_mhz: Sequence[float] | None = None,
                 sleep_fn: Callable[[float], None] = time.sleep) -> None:
        freqs = ORIN_NANO_CPU_FREQUENCIES_MHZ if frequencies_mhz is None else frequencies_mhz
        cleaned = sorted({float(f) for f in freqs})
        if not cleaned or any(not math.isfinite(f) or f <= 0 for f in cleaned):
            raise ValueError(
                f'frequencies_mhz must be non-empty finite positive values, '
                f'got {frequencies_mhz!r}')
        self._frequencies_mhz = cleaned
        self._lock = threading.Lock()
        self._freq_mhz = cleaned[-1]
        self._sleep = sleep_fn

    def available_frequencies_mhz(self) -> list[float]:
        return list(self._frequencies_mhz)

    def current_frequency_mhz(self) -> float:
        with self._lock:
            return self._freq_mhz

    def _apply_frequency_mhz(self, freq_mhz: float) -> None:
        with self._lock:
            self._freq_mhz = freq_mhz

    def reset(self) -> None:
        self._apply_frequency_mhz(self._frequencies_mhz[-1])

    def stretch_factor(self) -> float:
        """f_max / f: how much longer an inference takes at the current frequency."""
        return self._frequencies_mhz[-1] / self.current_frequency_mhz()

    def emulate(self, compute_s: float) -> float:
        """Sleep ``compute_s * (f_max / f - 1)`` and return the seconds slept."""
        if not math.isfinite(compute_s) or compute_s < 0:
            raise ValueError(
                f'compute_s must be a finite non-negative duration, got {compute_s!r}')
        extra_s = compute_s * (self.stretch_factor() - 1.0)
        if extra_s > 0:
            self._sleep(extra_s)
        return extra_s
