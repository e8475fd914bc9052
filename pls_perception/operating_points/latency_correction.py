"""Online correction of a profile's latency table from measured latencies (closed loop).

A profile is measured once, on an idle machine (or read off a paper for another machine). Under
CPU contention, thermal throttling, or on different hardware the real latency of an operating
point differs, so a budget chosen from the raw profile is missed (or energy is wasted). The DVFS
manager feeds every measured latency here and re-solves on the corrected table.

Model, in logs: ``measured[r, f] = profile[r, f] * exp(g + row[r] + col[f])``.

* ``g`` (fast EWMA) is what hits every point alike: contention, throttling, a slower machine.
* ``col[f]`` (slower EWMA) is how the real frequency sensitivity differs from the profile's (e.g.
  a profile that says latency hardly depends on the clock, on a processor where it does).
* ``row[r]`` (much slower EWMA) is the same for the keep ratio. The ratio shape of a profile
  (compute proportional to the blocks kept) carries over between machines far better than the
  frequency shape, and with few points visited a row and a column effect cannot be told apart,
  so rows learn slowly: the frequency axis takes the blame first.

Each measurement moves the model by at most a factor ``step_max`` (a contention spike of one
frame must not make every point look infeasible).

Rows and columns are learnt only where measured and kept at mean 0 over the measured ones (their
common part belongs to ``g``). An unmeasured frequency or ratio gets the value interpolated
between its measured neighbours (constant beyond them), so one measurement at a low and one at a
high clock already predicts the clocks in between, and a slowdown seen at one point reaches all.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

LOG_FACTOR_MAX = math.log(50.0)   # no point is ever corrected by more than 50x


class LatencyCorrection:
    """Smoothed measured/predicted latency factors over a (ratio, frequency) grid."""

    def __init__(self, ratios: Sequence[float], frequencies_mhz: Sequence[float],
                 alpha_global: float = 0.3, alpha_freq: float = 0.15,
                 alpha_ratio: float = 0.03, step_max: float = 2.0,
                 freq_tolerance: float = 0.05, ratio_tolerance: float = 1e-3) -> None:
        for name, alpha in (('alpha_global', alpha_global), ('alpha_freq', alpha_freq),
                            ('alpha_ratio', alpha_ratio)):
            if not 0.0 < alpha <= 1.0:
                raise ValueError(f'{name} must be in (0, 1], got {alpha!r}')
        if not step_max > 1.0:
            raise ValueError(f'step_max must be > 1, got {step_max!r}')
        self.ratios = np.asarray(ratios, dtype=float)
        self.frequencies_mhz = np.asarray(frequencies_mhz, dtype=float)
        if self.ratios.ndim != 1 or self.frequencies_mhz.ndim != 1 or not (
                self.ratios.size and self.frequencies_mhz.size):
            raise ValueError(f'need non-empty 1-D ratio and frequency grids, got '
                             f'{ratios!r} and {frequencies_mhz!r}')
        self.alpha_global = float(alpha_global)
        self.alpha_freq = float(alpha_freq)
        self.alpha_ratio = float(alpha_ratio)
        self._log_step_max = math.log(step_max)
        self.freq_tolerance = float(freq_tolerance)
        self.ratio_tolerance = float(ratio_tolerance)
        self.reset()

    def reset(self) -> None:
        """Forget every measurement (all factors back to 1)."""
        self._g = 0.0
        self._row = np.zeros(self.ratios.size)
        self._col = np.zeros(self.frequencies_mhz.size)
        self.samples = np.zeros((self.ratios.size, self.frequencies_mhz.size), dtype=np.int64)

    @property
    def total_samples(self) -> int:
        return int(self.samples.sum())

    @property
    def global_factor(self) -> float:
        """The part of the correction common to every operating point."""
        return math.exp(self._g)

    def cell_of(self, keep_ratio: float, freq_mhz: float) -> tuple[int, int] | None:
        """Grid indices of the operating point, or None when it is not on the grid."""
        i = int(np.argmin(np.abs(self.ratios - keep_ratio)))
        j = int(np.argmin(np.abs(self.frequencies_mhz - freq_mhz)))
        if abs(self.ratios[i] - keep_ratio) > self.ratio_tolerance:
            return None
        if abs(self.frequencies_mhz[j] - freq_mhz) > self.freq_tolerance * self.frequencies_mhz[j]:
            return None
        return i, j

    def update(self, keep_ratio: float, freq_mhz: float, measured_ms: float,
               predicted_ms: float) -> bool:
        """Fold in one measurement at a grid point; False (ignored) when off-grid or invalid."""
        cell = self.cell_of(keep_ratio, freq_mhz)
        if cell is None or not all(math.isfinite(v) and v > 0.0
                                   for v in (measured_ms, predicted_ms)):
            return False
        i, j = cell
        model = self._g + self._row[i] + self._col[j]
        target = model + float(np.clip(math.log(measured_ms / predicted_ms) - model,
                                       -self._log_step_max, self._log_step_max))
        # Gauss-Seidel: each term takes its share of what is left, so the model moves towards
        # the (clipped) target and never past it.
        self._g += self.alpha_global * (target - self._g - self._row[i] - self._col[j])
        self._col[j] += self.alpha_freq * (target - self._g - self._row[i] - self._col[j])
        self._row[i] += self.alpha_ratio * (target - self._g - self._row[i] - self._col[j])
        self.samples[i, j] += 1
        for axis, seen in ((self._row, self.samples.any(axis=1)),
                           (self._col, self.samples.any(axis=0))):
            common = float(axis[seen].mean())
            axis[seen] -= common
            self._g += common
        self._g = float(np.clip(self._g, -LOG_FACTOR_MAX, LOG_FACTOR_MAX))
        return True

    @staticmethod
    def _interpolated(axis: np.ndarray, grid: np.ndarray, seen: np.ndarray) -> np.ndarray:
        if not seen.any():
            return np.zeros_like(axis)
        return np.interp(grid, grid[seen], axis[seen])

    def factors(self) -> np.ndarray:
        """The multiplicative correction of every grid point, shape (R, F)."""
        row = self._interpolated(self._row, self.ratios, self.samples.any(axis=1))
        col = self._interpolated(self._col, self.frequencies_mhz, self.samples.any(axis=0))
        return np.exp(self._g + row[:, None] + col[None, :])

    def factor_at(self, keep_ratio: float, freq_mhz: float) -> float:
        """Correction of one grid point (the global factor when off-grid)."""
        cell = self.cell_of(keep_ratio, freq_mhz)
        return self.global_factor if cell is None else float(self.factors()[cell])

    def corrected_latency_ms(self, latency_ms: np.ndarray) -> np.ndarray:
        latency_ms = np.asarray(latency_ms, dtype=float)
        if latency_ms.shape != self.samples.shape:
            raise ValueError(f'latency table must have shape {self.samples.shape}, '
                             f'got {latency_ms.shape!r}')
        return latency_ms * self.factors()

    def apply(self, profile: Any) -> Any:
        """A copy of an OperatingPointProfile (a dataclass) with the corrected latency table."""
        return dataclasses.replace(
            profile, latency_ms=self.corrected_latency_ms(profile.latency_ms))
