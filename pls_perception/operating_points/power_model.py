"""Processor power as a function of frequency: the paper's two-zone V/F model (eqs. 4-5).

Below a knee frequency the supply voltage stays at its floor V0; above it V rises proportionally
to f. Dynamic power is k*f*V^2, so with c = k*V0^2:

    P(f) = P_static + c * f * g(f)^2,   g(f) = max(1, f / f_knee)

i.e. linear in f below the knee and cubic above. Only the product k*V0^2 is identifiable from
(f, P) measurements, which is why the model is parameterised by ``c_w_per_mhz``. The fit is linear
least squares in (P_static, c) for each candidate knee, with the knee chosen by the least squared
error over a dense grid (or fixed by the caller when the data cannot identify it).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_KNEE_GRID_POINTS = 2001


@dataclass(frozen=True)
class TwoZonePowerModel:
    """P(f) = p_static_w + c_w_per_mhz * f * max(1, f/f_knee_mhz)^2 (f in MHz, P in W)."""

    p_static_w: float
    c_w_per_mhz: float
    f_knee_mhz: float
    fit_rmse_w: float | None = None
    fit_max_rel_error: float | None = None
    fit_points: int = 0

    def __post_init__(self) -> None:
        for name in ('p_static_w', 'c_w_per_mhz', 'f_knee_mhz'):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f'{name} must be a finite number, got {value!r}')
        if self.p_static_w < 0 or self.c_w_per_mhz <= 0 or self.f_knee_mhz <= 0:
            raise ValueError(
                f'need p_static_w >= 0, c_w_per_mhz > 0, f_knee_mhz > 0, got '
                f'({self.p_static_w!r}, {self.c_w_per_mhz!r}, {self.f_knee_mhz!r})')

    def voltage_factor(self, freq_mhz: np.ndarray | float) -> np.ndarray:
        """V(f)/V0: 1 below the knee, f/f_knee above it."""
        return np.maximum(1.0, np.asarray(freq_mhz, dtype=float) / self.f_knee_mhz)

    def power_w(self, freq_mhz: np.ndarray | float) -> np.ndarray:
        f = np.asarray(freq_mhz, dtype=float)
        return self.p_static_w + self.c_w_per_mhz * f * self.voltage_factor(f) ** 2

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            'kind': 'two_zone', 'p_static_w': float(self.p_static_w),
            'c_w_per_mhz': float(self.c_w_per_mhz), 'f_knee_mhz': float(self.f_knee_mhz)}
        if self.fit_rmse_w is not None:
            out['fit'] = {'rmse_w': float(self.fit_rmse_w),
                          'max_rel_error': float(self.fit_max_rel_error or 0.0),
                          'points': int(self.fit_points)}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> TwoZonePowerModel:
        if data.get('kind', 'two_zone') != 'two_zone':
            raise ValueError(f"power model kind must be 'two_zone', got {data.get('kind')!r}")
        fit = data.get('fit') or {}
        if not isinstance(fit, dict):
            raise ValueError(f'power model fit must be a mapping, got {fit!r}')
        return cls(p_static_w=_num(data, 'p_static_w'), c_w_per_mhz=_num(data, 'c_w_per_mhz'),
                   f_knee_mhz=_num(data, 'f_knee_mhz'), fit_rmse_w=fit.get('rmse_w'),
                   fit_max_rel_error=fit.get('max_rel_error'),
                   fit_points=int(fit.get('points', 0)))


def _num(data: dict[str, object], key: str) -> float:
    if key not in data:
        raise ValueError(f'power model is missing {key!r}, got keys {sorted(data)!r}')
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f'power model {key} must be a number, got {value!r}')
    return float(value)


def _lstsq_for_knees(f: np.ndarray, p: np.ndarray, knees: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form 2-parameter least squares for every knee at once (P_static clamped >= 0)."""
    x = f[None, :] * np.maximum(1.0, f[None, :] / knees[:, None]) ** 2   # (K, N)
    n = f.size
    sx, sp = x.sum(axis=1), p.sum()
    sxx, sxp = (x * x).sum(axis=1), (x * p[None, :]).sum(axis=1)
    det = n * sxx - sx * sx
    with np.errstate(divide='ignore', invalid='ignore'):
        c = np.where(det > 0, (n * sxp - sx * sp) / det, sxp / sxx)
        p0 = (sp - c * sx) / n
    through_origin = sxp / sxx                 # refit with P_static = 0 where it went negative
    c = np.where(p0 < 0, through_origin, c)
    p0 = np.maximum(p0, 0.0)
    sse = ((p0[:, None] + c[:, None] * x - p[None, :]) ** 2).sum(axis=1)
    return p0, c, sse


def fit_two_zone(freq_mhz: Sequence[float], power_w: Sequence[float],
                 f_knee_mhz: float | None = None) -> TwoZonePowerModel:
    """Least-squares fit of the two-zone model to measured (f, P) points.

    With ``f_knee_mhz`` None the knee is searched on a dense grid from the lowest to 2x the highest
    measured frequency (a knee above every point means 'all in the linear zone'). Needs at least
    two distinct frequencies (three to identify the knee). The fit error is stored on the model.
    """
    f = np.asarray(freq_mhz, dtype=float)
    p = np.asarray(power_w, dtype=float)
    if f.shape != p.shape or f.ndim != 1:
        raise ValueError(f'freq_mhz and power_w must be 1-D of equal length, got {f.shape} '
                         f'and {p.shape}')
    if not (np.all(np.isfinite(f)) and np.all(np.isfinite(p)) and np.all(f > 0)
            and np.all(p >= 0)):
        raise ValueError(f'need finite f > 0 and P >= 0, got f={f.tolist()!r}, P={p.tolist()!r}')
    if np.unique(f).size < 2:
        raise ValueError(f'need at least two distinct frequencies to fit, got {f.tolist()!r}')
    if f_knee_mhz is None:
        knees = np.linspace(f.min(), 2.0 * f.max(), _KNEE_GRID_POINTS)
    else:
        if not math.isfinite(f_knee_mhz) or f_knee_mhz <= 0:
            raise ValueError(f'f_knee_mhz must be finite and positive, got {f_knee_mhz!r}')
        knees = np.array([float(f_knee_mhz)])
    p0, c, sse = _lstsq_for_knees(f, p, knees)
    valid = c > 0
    if not np.any(valid):
        raise ValueError(f'power does not increase with frequency, cannot fit: '
                         f'f={f.tolist()!r}, P={p.tolist()!r}')
    best = int(np.argmin(np.where(valid, sse, np.inf)))
    if f_knee_mhz is None:                     # refine between the neighbours of the coarse best
        lo, hi = knees[max(best - 1, 0)], knees[min(best + 1, knees.size - 1)]
        knees = np.linspace(lo, hi, _KNEE_GRID_POINTS)
        p0, c, sse = _lstsq_for_knees(f, p, knees)
        valid = c > 0
        best = int(np.argmin(np.where(valid, sse, np.inf)))
    pred = p0[best] + c[best] * f * np.maximum(1.0, f / knees[best]) ** 2
    with np.errstate(divide='ignore', invalid='ignore'):
        rel = np.where(p > 0, np.abs(pred - p) / p, 0.0)
    return TwoZonePowerModel(
        p_static_w=float(p0[best]), c_w_per_mhz=float(c[best]), f_knee_mhz=float(knees[best]),
        fit_rmse_w=float(math.sqrt(sse[best] / f.size)), fit_max_rel_error=float(rel.max()),
        fit_points=int(f.size))
