"""Choose the operating point (keep ratio r, frequency f) for a latency budget.

Pure functions of a profile: no hardware. Two strategies so they can be compared on one profile:

* ``joint``: exact search of the whole (r, f) grid, minimising the objective (``edp``, ``energy``
  or ``latency``) subject to accuracy loss <= epsilon and latency <= budget.
* ``alg2``: the paper's Algorithm 2: the largest skip (smallest r) whose accuracy loss is within
  epsilon, then, at that r, the frequency meeting the budget with the least objective.

If nothing meets the budget, both return a point flagged ``feasible=False`` with a reason:
``on_infeasible='fastest'`` (the paper's constraint order) gives the fastest accuracy-feasible
point; ``'relax_accuracy'`` (deadline first, for hard real-time users) gives the most accurate
point that meets the budget, least objective among equals, else the fastest point of all.
:class:`OperatingPointSelector` adds hysteresis so budget jitter
does not make the point flip back and forth. All work is numpy on the whole grid (< 1 ms for
100 x 100, see bench/bench_optimizer.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pls_perception.operating_points.profiles import OperatingPointProfile

OBJECTIVES: tuple[str, ...] = ('edp', 'energy', 'latency')
STRATEGIES: tuple[str, ...] = ('joint', 'alg2')
ON_INFEASIBLE: tuple[str, ...] = ('fastest', 'relax_accuracy')


@dataclass(frozen=True)
class OperatingPoint:
    keep_ratio: float
    freq_mhz: float
    latency_ms: float
    energy_mj: float
    edp: float
    feasible: bool
    reason: str
    accuracy: float = float('nan')
    accuracy_loss: float = float('nan')
    ratio_index: int = -1
    freq_index: int = -1
    strategy: str = ''
    objective: str = ''

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _objective_matrix(profile: OperatingPointProfile, objective: str) -> np.ndarray:
    if objective == 'edp':
        return profile.edp
    if objective == 'energy':
        return profile.energy_mj
    if objective == 'latency':
        return profile.latency_ms
    raise ValueError(f'objective must be one of {OBJECTIVES}, got {objective!r}')


def check_budget_ms(budget_ms: float) -> float:
    """A budget must be a positive number of ms (+inf = no deadline); NaN, 0, < 0 are errors."""
    if isinstance(budget_ms, bool) or not isinstance(budget_ms, (int, float, np.floating)):
        raise ValueError(f'budget_ms must be a number, got {budget_ms!r}')
    if math.isnan(budget_ms) or budget_ms <= 0:
        raise ValueError(f'budget_ms must be > 0 (inf allowed), got {budget_ms!r}')
    return float(budget_ms)


def check_accuracy_loss_max(accuracy_loss_max: float) -> float:
    if (isinstance(accuracy_loss_max, bool)
            or not isinstance(accuracy_loss_max, (int, float, np.floating))
            or not math.isfinite(accuracy_loss_max) or accuracy_loss_max < 0):
        raise ValueError(f'accuracy_loss_max must be a finite fraction >= 0, '
                         f'got {accuracy_loss_max!r}')
    return float(accuracy_loss_max)


def _argmin_masked(values: np.ndarray, latency: np.ndarray, mask: np.ndarray) -> int | None:
    """Flat index of the masked minimum; ties broken by lower latency, then grid order."""
    if not mask.any():
        return None
    masked = np.where(mask, values, np.inf)
    best = masked.min()
    ties = mask & (masked <= best)
    if np.count_nonzero(ties) == 1:
        return int(np.flatnonzero(ties)[0])
    return int(np.argmin(np.where(ties, latency, np.inf)))


def _point(profile: OperatingPointProfile, flat: int, feasible: bool, reason: str,
           strategy: str, objective: str) -> OperatingPoint:
    ri, fi = np.unravel_index(flat, profile.latency_ms.shape)
    return OperatingPoint(
        keep_ratio=float(profile.ratios[ri]), freq_mhz=float(profile.frequencies_mhz[fi]),
        latency_ms=float(profile.latency_ms[ri, fi]), energy_mj=float(profile.energy_mj[ri, fi]),
        edp=float(profile.edp[ri, fi]), feasible=feasible, reason=reason,
        accuracy=float(profile.accuracy[ri]), accuracy_loss=float(profile.accuracy_loss[ri]),
        ratio_index=int(ri), freq_index=int(fi), strategy=strategy, objective=objective)


def solve(profile: OperatingPointProfile, budget_ms: float, accuracy_loss_max: float,
          objective: str = 'edp', strategy: str = 'joint',
          on_infeasible: str = 'fastest') -> OperatingPoint:
    """Best (r, f) of ``profile`` for ``budget_ms`` and an accuracy loss <= ``accuracy_loss_max``
    (fraction, relative to the largest ratio). See the module docstring for the strategies and
    ``on_infeasible``."""
    budget_ms = check_budget_ms(budget_ms)
    eps = check_accuracy_loss_max(accuracy_loss_max)
    values = _objective_matrix(profile, objective)
    if strategy not in STRATEGIES:
        raise ValueError(f'strategy must be one of {STRATEGIES}, got {strategy!r}')
    if on_infeasible not in ON_INFEASIBLE:
        raise ValueError(f'on_infeasible must be one of {ON_INFEASIBLE}, got {on_infeasible!r}')
    latency = profile.latency_ms
    acc_ok = profile.accuracy_loss <= eps + 1e-12          # [R]; the largest ratio always passes
    acc_grid = np.broadcast_to(acc_ok[:, None], latency.shape)
    if strategy == 'joint':
        mask = acc_grid & (latency <= budget_ms)
    else:
        r_star = int(np.flatnonzero(acc_ok)[0])            # largest skip within epsilon
        mask = np.zeros(latency.shape, dtype=bool)
        mask[r_star] = latency[r_star] <= budget_ms
    flat = _argmin_masked(values, latency, mask)
    if flat is not None:
        return _point(profile, flat, True, f'min {objective} within {budget_ms:g} ms',
                      strategy, objective)
    if on_infeasible == 'relax_accuracy':
        return _relaxed(profile, budget_ms, eps, values, strategy, objective)
    fastest = _argmin_masked(latency, latency, acc_grid)
    assert fastest is not None                             # acc_ok is never empty
    point = _point(profile, fastest, False, '', strategy, objective)
    reason = (f'infeasible: no point with accuracy loss <= {eps:g} meets {budget_ms:g} ms; '
              f'fastest accuracy-feasible point takes {point.latency_ms:.3f} ms')
    return _point(profile, fastest, False, reason, strategy, objective)


def _relaxed(profile: OperatingPointProfile, budget_ms: float, eps: float, values: np.ndarray,
             strategy: str, objective: str) -> OperatingPoint:
    """Deadline first: the most accurate point within ``budget_ms``, else the fastest point."""
    latency = profile.latency_ms
    meets = latency <= budget_ms
    if meets.any():
        best_loss = profile.accuracy_loss[meets.any(axis=1)].min()
        rows = np.broadcast_to((profile.accuracy_loss <= best_loss + 1e-12)[:, None],
                               latency.shape)
        flat = _argmin_masked(values, latency, meets & rows)
        assert flat is not None
        point = _point(profile, flat, False, '', strategy, objective)
        reason = (f'accuracy relaxed: no point with accuracy loss <= {eps:g} meets '
                  f'{budget_ms:g} ms; the most accurate one that does loses '
                  f'{point.accuracy_loss:.4g}')
    else:
        flat = int(np.argmin(latency))
        point = _point(profile, flat, False, '', strategy, objective)
        reason = (f'infeasible: no point meets {budget_ms:g} ms, even with accuracy relaxed; '
                  f'the fastest takes {point.latency_ms:.3f} ms')
    return _point(profile, flat, False, reason, strategy, objective)


class OperatingPointSelector:
    """Stateful :func:`solve` with hysteresis.

    New points are chosen against a tightened budget ``budget * (1 - hysteresis)`` so that a small
    drop of the budget does not immediately violate them, and the current point is kept while it
    still meets the (untightened) budget unless the new optimum improves the objective by more
    than the ``hysteresis`` fraction. ``hysteresis=0`` gives plain :func:`solve`.
    """

    def __init__(self, profile: OperatingPointProfile, accuracy_loss_max: float,
                 objective: str = 'edp', strategy: str = 'joint',
                 hysteresis: float = 0.05, on_infeasible: str = 'fastest') -> None:
        if not (isinstance(hysteresis, (int, float)) and 0 <= hysteresis < 1):
            raise ValueError(f'hysteresis must be a fraction in [0, 1), got {hysteresis!r}')
        _objective_matrix(profile, objective)
        if strategy not in STRATEGIES:
            raise ValueError(f'strategy must be one of {STRATEGIES}, got {strategy!r}')
        if on_infeasible not in ON_INFEASIBLE:
            raise ValueError(
                f'on_infeasible must be one of {ON_INFEASIBLE}, got {on_infeasible!r}')
        self.on_infeasible = on_infeasible
        self.profile = profile
        self.accuracy_loss_max = check_accuracy_loss_max(accuracy_loss_max)
        self.objective = objective
        self.strategy = strategy
        self.hysteresis = float(hysteresis)
        self.current: OperatingPoint | None = None

    def _solve(self, budget_ms: float) -> OperatingPoint:
        return solve(self.profile, budget_ms, self.accuracy_loss_max, self.objective,
                     self.strategy, self.on_infeasible)

    def update(self, budget_ms: float) -> OperatingPoint:
        budget_ms = check_budget_ms(budget_ms)
        candidate = self._solve(budget_ms * (1.0 - self.hysteresis))
        if not candidate.feasible:
            candidate = self._solve(budget_ms)
        cur = self.current
        # The profile may have changed since (online latency correction): judge the current
        # point by its latency in the profile in force now, not by the one it was chosen with.
        if cur is not None and cur.feasible and candidate.feasible \
                and self.profile.latency_ms[cur.ratio_index, cur.freq_index] <= budget_ms:
            cur_value = _objective_matrix(self.profile, self.objective)[
                cur.ratio_index, cur.freq_index]
            new_value = _objective_matrix(self.profile, self.objective)[
                candidate.ratio_index, candidate.freq_index]
            if new_value >= cur_value * (1.0 - self.hysteresis):
                self.current = _point(
                    self.profile, int(np.ravel_multi_index(
                        (cur.ratio_index, cur.freq_index), self.profile.latency_ms.shape)),
                    True, f'kept (hysteresis {self.hysteresis:g}) within {budget_ms:g} ms',
                    self.strategy, self.objective)
                return self.current
        self.current = candidate
        return candidate
