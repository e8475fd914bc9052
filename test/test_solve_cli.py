"""pls-solve prints both strategies for a shipped profile, compares skip policies (one profile
each) with the optimizer's own choices; bad input exits with code 2."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from pls_perception.operating_points.optimizer import solve
from pls_perception.operating_points.profiles import (OperatingPointProfile, SkipPolicyInfo,
                                                      load_profile, resolve_profile_path,
                                                      save_profile)
from pls_perception.tools import solve_cli


def test_table_shows_both_strategies(capsys: pytest.CaptureFixture[str]) -> None:
    assert solve_cli.main(['orin_nano_gpu', '--budget-ms', '15', '--accuracy-loss-max',
                           '0.02']) == 0
    out = capsys.readouterr().out
    assert 'joint' in out and 'alg2' in out and 'keep_ratio' in out and 'freq_mhz' in out


def test_json_output_matches_solver(capsys: pytest.CaptureFixture[str]) -> None:
    assert solve_cli.main(['orin_nano_cpu', '--budget-ms', '1000', '--accuracy-loss-max', '0',
                           '--strategy', 'joint', '--json']) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data) == ['joint'] and data['joint']['feasible'] is True
    assert data['joint']['freq_mhz'] == 499.2


@pytest.mark.parametrize('argv, match', [
    (['orin_nano_gpu', '--budget-ms', 'nan'], 'budget_ms'),
    (['orin_nano_gpu', '--budget-ms', '0'], 'budget_ms'),
    (['no_such_profile', '--budget-ms', '10'], 'no profile'),
])
def test_errors_exit_2(argv: list[str], match: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert solve_cli.main(argv) == 2
    assert match in capsys.readouterr().err


# --- comparing skip policies --------------------------------------------------------------------

PLAN = SkipPolicyInfo(name='plan:toy', plan_fingerprint='a' * 64)


def _toy_profiles(tmp_path: Path, seed: int) -> tuple[Path, Path]:
    """Same device, same cost grid; the plan is at least as accurate as PLS at every ratio."""
    rng = np.random.default_rng(seed)
    ratios = np.linspace(0.1, 1.0, 10)
    freqs = np.array([300.0, 600.0, 900.0, 1200.0])
    latency = (5 + 50 * ratios)[:, None] * (1200.0 / freqs)[None, :] ** rng.uniform(0.3, 1.0)
    pls = 0.9 - rng.uniform(0.3, 1.0) * (1 - ratios) ** 2 - rng.uniform(0, 0.02, 10)
    pls[-1] = 0.9
    plan = np.minimum(pls + rng.uniform(0, 0.05, 10), 0.9)
    paths = []
    for name, acc, policy in (('pls', pls, SkipPolicyInfo()), ('plan', plan, PLAN)):
        paths.append(save_profile(OperatingPointProfile(
            device_name='toy', device_kind='cpu', ratios=ratios, frequencies_mhz=freqs,
            accuracy=acc, latency_ms=latency, power_w=0.5 + (freqs / 1000) ** 2,
            sources={'accuracy': 'measured', 'latency_ms': 'modelled', 'power_w': 'modelled'},
            reference_frequency_mhz=1200.0, notes=('toy',), skip_policy=policy),
            tmp_path / f'{name}.yaml'))
    return paths[0], paths[1]


def _check_rows_are_the_optimizers(rows: list[dict], names: dict[str, Path], eps: float) -> None:
    for row in rows:
        profile = load_profile(names[row['profile']])
        point = solve(profile, row['budget_ms'], eps, 'edp', row['strategy'])
        assert row['policy'] == profile.skip_policy.name
        for key in ('keep_ratio', 'freq_mhz', 'latency_ms', 'energy_mj', 'edp', 'accuracy',
                    'accuracy_loss', 'feasible'):
            assert row[key] == pytest.approx(getattr(point, key)), key
        assert row['power_w'] == pytest.approx(point.energy_mj / point.latency_ms)


@pytest.mark.parametrize('seed', range(5))
def test_compare_two_policies_picks_the_optimizers_points(tmp_path: Path, seed: int,
                                                          capsys) -> None:
    pls, plan = _toy_profiles(tmp_path, seed)
    budgets = ['15', '25', '35', '50', '80']
    out = tmp_path / 'cmp'
    assert solve_cli.main([str(pls), str(plan), '--budget-ms', *budgets, '--accuracy-loss-max',
                           '0.05', '--strategy', 'both', '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'plan:toy' in printed and 'proportional' in printed and 'EDP' in printed
    data = json.loads((out / 'policy_compare.json').read_text())
    rows = data['rows']
    assert len(rows) == len(budgets) * 2 * 2 and data['accuracy_loss_max'] == 0.05
    assert [p['skip_policy'] for p in data['profiles']] == ['proportional', PLAN.to_dict()]
    _check_rows_are_the_optimizers(rows, {'pls': pls, 'plan': plan}, 0.05)
    with (out / 'policy_compare.csv').open() as f:
        table = list(csv.DictReader(f))
    assert [(r['profile'], float(r['edp'])) for r in table] == pytest.approx(
        [(r['profile'], r['edp']) for r in rows])
    assert (out / 'policy_compare.md').read_text().count('\n') == len(rows) + 2
    # more accurate at every ratio => a superset of accuracy-feasible points => EDP no worse
    for budget in budgets:
        by = {r['profile']: r for r in rows
              if r['budget_ms'] == float(budget) and r['strategy'] == 'joint'}
        if by['pls']['feasible']:
            assert by['plan']['feasible'] and by['plan']['edp'] <= by['pls']['edp'] + 1e-9
            assert by['plan']['edp_vs_first'] <= 1e-9


def test_compare_shipped_orin_cpu_policies(capsys) -> None:
    names = ['orin_nano_cpu', 'orin_nano_cpu_plan_greedy']
    assert solve_cli.main([*names, '--budget-ms', '50', '60', '80', '--accuracy-loss-max',
                           '0.01', '--strategy', 'joint', '--json']) == 0
    rows = json.loads(capsys.readouterr().out)['rows']
    _check_rows_are_the_optimizers(rows, {n: resolve_profile_path(n) for n in names}, 0.01)
    for pls, plan in zip(rows[::2], rows[1::2]):
        assert (pls['policy'], plan['policy']) == (
            'proportional', 'plan:resnet152_cifar10_ref_greedy')
        if pls['feasible']:
            assert plan['edp'] <= pls['edp'] and plan['accuracy_loss'] <= 0.01


def test_compare_rejects_duplicate_names(capsys) -> None:
    assert solve_cli.main(['orin_nano_cpu', 'orin_nano_cpu', '--budget-ms', '50']) == 2
    assert 'must differ' in capsys.readouterr().err


def test_help_works(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        solve_cli.main(['--help'])
    assert exit_info.value.code == 0
    assert 'policy_compare' in capsys.readouterr().out
