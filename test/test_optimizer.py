"""Optimizer: equals brute force on random profiles, edge budgets, Alg. 2 vs joint, hysteresis."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pls_perception.operating_points.optimizer import OperatingPointSelector, solve
from pls_perception.operating_points.profiles import OperatingPointProfile, load_profile
from pls_perception.paths import config_dir

OBJECTIVE_ATTR = {'edp': 'edp', 'energy': 'energy_mj', 'latency': 'latency_ms'}


def random_profile(seed: int, n_r: int, n_f: int) -> OperatingPointProfile:
    rng = np.random.default_rng(seed)
    ratios = np.sort(rng.choice(np.arange(1, 101), n_r, replace=False)) / 100.0
    freqs = np.sort(rng.choice(np.arange(100, 2000), n_f, replace=False)).astype(float)
    return OperatingPointProfile(
        device_name='random', device_kind='cpu', ratios=ratios, frequencies_mhz=freqs,
        accuracy=rng.uniform(0.5, 0.95, n_r), latency_ms=rng.uniform(1.0, 50.0, (n_r, n_f)),
        power_w=rng.uniform(0.5, 5.0, n_f), power_scale=rng.uniform(0.7, 1.0, n_r),
        reference_frequency_mhz=float(freqs[-1]),
        sources={'accuracy': 'modelled', 'latency_ms': 'modelled', 'power_w': 'modelled'})


def brute_force(prof: OperatingPointProfile, budget_ms: float, eps: float, objective: str
                ) -> float | None:
    values = getattr(prof, OBJECTIVE_ATTR[objective])
    best = None
    for i, j in itertools.product(range(prof.ratios.size), range(prof.frequencies_mhz.size)):
        if prof.accuracy[-1] - prof.accuracy[i] <= eps and prof.latency_ms[i, j] <= budget_ms:
            best = values[i, j] if best is None else min(best, values[i, j])
    return best


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 10_000), n_r=st.integers(1, 8), n_f=st.integers(1, 8),
       budget_ms=st.floats(0.5, 60.0), eps=st.floats(0.0, 0.5),
       objective=st.sampled_from(['edp', 'energy', 'latency']))
def test_joint_equals_brute_force(seed: int, n_r: int, n_f: int, budget_ms: float, eps: float,
                                  objective: str) -> None:
    prof = random_profile(seed, n_r, n_f)
    point = solve(prof, budget_ms, eps, objective=objective)
    expected = brute_force(prof, budget_ms, eps, objective)
    if expected is None:
        assert not point.feasible and 'infeasible' in point.reason
        ok = prof.accuracy_loss <= eps
        assert point.latency_ms == pytest.approx(prof.latency_ms[ok].min())
    else:
        assert point.feasible and point.latency_ms <= budget_ms
        got = getattr(prof, OBJECTIVE_ATTR[objective])[point.ratio_index, point.freq_index]
        assert got == pytest.approx(expected)
        assert point.accuracy_loss <= eps + 1e-12


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 10_000), budget_ms=st.floats(0.5, 60.0), eps=st.floats(0.0, 0.5))
def test_joint_never_worse_than_alg2(seed: int, budget_ms: float, eps: float) -> None:
    prof = random_profile(seed, 6, 6)
    joint, alg2 = solve(prof, budget_ms, eps), solve(prof, budget_ms, eps, strategy='alg2')
    if alg2.feasible:
        assert joint.feasible and joint.edp <= alg2.edp + 1e-9


@pytest.mark.parametrize('name', ['orin_nano_gpu.yaml', 'orin_nano_cpu.yaml'])
def test_alg2_vs_joint_on_shipped_profiles(name: str) -> None:
    prof = load_profile(config_dir() / 'profiles' / name)
    for budget in np.geomspace(prof.latency_ms.min(), prof.latency_ms.max() * 1.5, 25):
        for eps in (0.0, 0.01, 0.05, 0.3):
            joint = solve(prof, float(budget), eps)
            alg2 = solve(prof, float(budget), eps, strategy='alg2')
            assert joint.feasible == alg2.feasible
            if joint.feasible:
                assert joint.edp <= alg2.edp + 1e-9
                # Alg. 2 takes the largest skip within epsilon
                assert alg2.keep_ratio == prof.ratios[np.flatnonzero(prof.accuracy_loss <= eps)[0]]


@pytest.mark.parametrize('budget', [0, 0.0, -1.0, float('nan'), float('-inf'), None, '5', True])
def test_bad_budgets_rejected(budget: object) -> None:
    prof = random_profile(1, 3, 3)
    with pytest.raises(ValueError, match='budget_ms'):
        solve(prof, budget, 0.1)  # type: ignore[arg-type]


@pytest.mark.parametrize('eps', [float('nan'), -0.01, float('inf')])
def test_bad_accuracy_threshold_rejected(eps: float) -> None:
    with pytest.raises(ValueError, match='accuracy_loss_max'):
        solve(random_profile(1, 3, 3), 10.0, eps)


def test_bad_objective_and_strategy_rejected() -> None:
    prof = random_profile(1, 3, 3)
    with pytest.raises(ValueError, match='objective'):
        solve(prof, 10.0, 0.1, objective='power')
    with pytest.raises(ValueError, match='strategy'):
        solve(prof, 10.0, 0.1, strategy='greedy')


def test_tiny_and_huge_budgets() -> None:
    prof = random_profile(3, 5, 5)
    tiny = solve(prof, 1e-9, 0.2)
    assert not tiny.feasible and 'fastest' in tiny.reason
    huge = solve(prof, 1e12, 1.0)
    assert huge.feasible and huge.edp == pytest.approx(prof.edp.min())
    assert solve(prof, math.inf, 1.0).edp == huge.edp


def test_latency_objective_picks_fastest() -> None:
    prof = random_profile(4, 5, 5)
    p = solve(prof, 1e6, 1.0, objective='latency')
    assert p.latency_ms == pytest.approx(prof.latency_ms.min())


def two_speed_profile() -> OperatingPointProfile:
    """One ratio, a slow efficient point (10 ms) and a fast wasteful one (5 ms)."""
    return OperatingPointProfile(
        device_name='toy', device_kind='cpu', ratios=[1.0], frequencies_mhz=[500.0, 1000.0],
        accuracy=[0.9], latency_ms=[[10.0, 5.0]], power_w=[1.0, 5.0],
        reference_frequency_mhz=1000.0,
        sources={'accuracy': 'modelled', 'latency_ms': 'modelled', 'power_w': 'modelled'})


def test_hysteresis_keeps_point_under_jitter() -> None:
    prof = two_speed_profile()
    jitter = 10.0 + np.random.default_rng(0).uniform(-0.3, 0.3, 60)
    plain = {solve(prof, float(b), 0.0).freq_mhz for b in jitter}
    assert plain == {500.0, 1000.0}, 'without hysteresis the jitter flips the point'
    sel = OperatingPointSelector(prof, 0.0, hysteresis=0.1)
    assert {sel.update(float(b)).freq_mhz for b in jitter} == {1000.0}
    sel = OperatingPointSelector(prof, 0.0, hysteresis=0.1)
    assert sel.update(12.0).freq_mhz == 500.0            # fits with margin: efficient point
    assert {sel.update(float(b)).freq_mhz for b in np.linspace(10.0, 12.0, 9)} == {500.0}
    assert sel.update(9.9).freq_mhz == 1000.0            # violated: must switch


def test_hysteresis_rejudges_current_point_when_profile_changes() -> None:
    """A corrected profile (online latency correction) can make the kept point miss the budget."""
    sel = OperatingPointSelector(two_speed_profile(), 0.0, hysteresis=0.1)
    assert sel.update(12.0).freq_mhz == 500.0
    # the efficient point now takes 13 ms (misses a 12 ms budget) and is far cheaper in EDP
    sel.profile = OperatingPointProfile(
        device_name='toy', device_kind='cpu', ratios=[1.0], frequencies_mhz=[500.0, 1000.0],
        accuracy=[0.9], latency_ms=[[13.0, 5.0]], power_w=[0.1, 5.0],
        reference_frequency_mhz=1000.0,
        sources={'accuracy': 'modelled', 'latency_ms': 'modelled', 'power_w': 'modelled'})
    point = sel.update(12.0)
    assert point.freq_mhz == 1000.0 and point.feasible and point.latency_ms <= 12.0


def test_hysteresis_switches_when_current_violates_budget() -> None:
    prof = load_profile(config_dir() / 'profiles' / 'orin_nano_gpu.yaml')
    sel = OperatingPointSelector(prof, 0.05, hysteresis=0.1)
    first = sel.update(30.0)
    second = sel.update(first.latency_ms * 0.5)
    assert second.latency_ms <= first.latency_ms * 0.5 or not second.feasible
    with pytest.raises(ValueError, match='hysteresis'):
        OperatingPointSelector(prof, 0.05, hysteresis=1.5)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 10_000), n_r=st.integers(1, 8), n_f=st.integers(1, 8),
       budget_ms=st.floats(0.5, 60.0), eps=st.floats(0.0, 0.5))
def test_relax_accuracy_is_deadline_first(seed: int, n_r: int, n_f: int, budget_ms: float,
                                          eps: float) -> None:
    prof = random_profile(seed, n_r, n_f)
    point = solve(prof, budget_ms, eps, on_infeasible='relax_accuracy')
    if brute_force(prof, budget_ms, eps, 'edp') is not None:
        assert point == solve(prof, budget_ms, eps)     # nothing changes when feasible
        return
    assert not point.feasible
    meets = prof.latency_ms <= budget_ms
    if not meets.any():
        assert 'even with accuracy relaxed' in point.reason
        assert point.latency_ms == pytest.approx(prof.latency_ms.min())
        return
    # brute force: the least accuracy loss among points meeting the budget, then the least EDP
    candidates = [(prof.accuracy_loss[i], prof.edp[i, j])
                  for i, j in itertools.product(range(n_r), range(n_f)) if meets[i, j]]
    best_loss = min(loss for loss, _ in candidates)
    assert 'accuracy relaxed' in point.reason and point.latency_ms <= budget_ms
    assert point.accuracy_loss == pytest.approx(best_loss)
    assert point.edp == pytest.approx(min(e for loss, e in candidates
                                          if loss <= best_loss + 1e-12))


def test_relax_accuracy_on_the_orin_nano_profile_trades_ratio_for_the_deadline() -> None:
    prof = load_profile(config_dir() / 'profiles' / 'orin_nano_cpu.yaml')
    points = [solve(prof, b, 0.05, on_infeasible='relax_accuracy') for b in (400, 55, 45, 35)]
    assert all(p.latency_ms <= b for p, b in zip(points, (400, 55, 45, 35)))
    assert len({p.keep_ratio for p in points}) >= 3 and len({p.freq_mhz for p in points}) >= 3
    with pytest.raises(ValueError, match='on_infeasible'):
        solve(prof, 50.0, 0.05, on_infeasible='drop')
