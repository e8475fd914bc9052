"""Simulated DVFS for machines without frequency control (like the CI machine).

The processor really runs at its own (maximum) clock. Two ways to make a frame take as long as it
would at the set frequency f, by sleeping after the real inference:

* stretch (default): the measured compute time t becomes t * f_max / f;
* device emulation (``latency_model``): the frame takes the latency a device profile gives for
  (keep ratio, f), e.g. the Jetson Orin Nano CPU's, whenever this host is faster than that device;
  so the paper's device runs in real time on a PC. Labelled ``emulating <device>`` everywhere.

A sleep can be cut short (``interrupt``) when a new operating point arrives mid-frame, as a real
clock change would shorten the frame in flight. Energy for such runs comes from the power model
and is always reported as modelled. The backend says ``is_real = False`` everywhere.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from pls_perception.dvfs.base import DvfsBackend
from pls_perception.operating_points.paper_profiles import ORIN_NANO_CPU_FREQUENCIES_MHZ
from pls_perception.operating_points.profiles import OperatingPointProfile

# (keep ratio, frequency MHz) -> latency ms of the emulated device.
LatencyModel = Callable[[float, float], float]



def profile_latency_model(profile: OperatingPointProfile) -> LatencyModel:
    """The profile's latency at (r, f): linear in r between its ratios, at the nearest listed f.

    Below the smallest ratio the smallest ratio's latency is used (the stem and head run anyway).
    """
    ratios = np.asarray(profile.ratios, dtype=float)
    freqs = np.asarray(profile.frequencies_mhz, dtype=float)
    latency = np.asarray(profile.latency_ms, dtype=float)

    def latency_ms(keep_ratio: float, freq_mhz: float) -> float:
        column = latency[:, int(np.abs(freqs - freq_mhz).argmin())]
        return float(np.interp(keep_ratio, ratios, column))
    return latency_ms


class SimulatedBackend(DvfsBackend):
    """Frequency is bookkeeping plus a sleep in :meth:`emulate`; starts at the maximum.

    ``latency_model`` (with ``device_name``) switches from stretching to device emulation;
    ``sleep_fn`` replaces the interruptible sleep (tests).
    """

    name = 'simulated'
    is_real = False

    def __init__(self, frequencies_mhz: Sequence[float] | None = None,
                 sleep_fn: Callable[[float], None] | None = None,
                 latency_model: LatencyModel | None = None, device_name: str = '') -> None:
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
        self.latency_model = latency_model
        self.device_name = device_name or 'a device profile'

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

    @property
    def emulation(self) -> str:
        """'stretch', or 'emulating <device>' with a latency model."""
        return 'stretch' if self.latency_model is None else f'emulating {self.device_name}'

    def describe(self) -> str:
        return f'{super().describe()[:-1]}, {self.emulation})'

    def emulated_s(self, compute_s: float, keep_ratio: float = 1.0) -> float:
        """Seconds to add to a frame that computed for ``compute_s`` at ``keep_ratio``."""
        if not math.isfinite(compute_s) or compute_s < 0:
            raise ValueError(
                f'compute_s must be a finite non-negative duration, got {compute_s!r}')
        if self.latency_model is None:
            return compute_s * (self.stretch_factor() - 1.0)
        target_s = self.latency_model(keep_ratio, self.current_frequency_mhz()) / 1e3
        return max(0.0, target_s - compute_s)

    def emulate(self, compute_s: float, keep_ratio: float = 1.0,
                interrupt: threading.Event | None = None) -> float:
        """Sleep for `emulated_s`; return the seconds slept (less if ``interrupt`` is set)."""
        extra_s = self.emulated_s(compute_s, keep_ratio)
        if extra_s <= 0:
            return 0.0
        if self._sleep is not None:
            self._sleep(extra_s)
            return extra_s
        t0 = time.perf_counter()
        if interrupt is None:
            time.sleep(extra_s)
        else:
            interrupt.wait(extra_s)
        return min(extra_s, time.perf_counter() - t0)
