"""pls-profile: latency grid on simulated and (fake) real backends, accuracy tables per skip
policy (mismatches rejected), plan profiles measured and derived, and the CLI end to end."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from pls_perception.dvfs import SimulatedBackend
from pls_perception.errors import ProfileError
from pls_perception.operating_points.policy_profiles import load_accuracy_table
from pls_perception.operating_points.profiles import (OperatingPointProfile, SkipPolicyInfo,
                                                      load_profile, save_profile)
from pls_perception.paths import config_dir
from pls_perception.skipping.plans import SkipPlan, load_plan, policy_info, save_plan
from pls_perception.tools import profile_cli

PROFILES = config_dir() / 'profiles'
PLAN = config_dir() / 'plans' / 'resnet152_cifar10_ref_greedy.yaml'
RESULTS = Path(__file__).resolve().parents[1] / 'docs' / 'results' / 'plans'


class CountingEngine:
    """Engine stand-in whose latency is known: 1 ms per unit of keep ratio, from a fake clock."""

    name = 'counting'

    def __init__(self, backend: SimulatedBackend | None = None) -> None:
        self.keep_ratio = 1.0
        self.backend = backend
        self.now = 0.0
        self.calls = 0

    def set_keep_ratio(self, ratio: float) -> None:
        self.keep_ratio = ratio

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        scale = 1.0 if self.backend is None else self.backend.stretch_factor()
        self.now += 1e-3 * self.keep_ratio * scale
        return np.zeros((1, 10), np.float32)

    def clock(self) -> float:
        return self.now


class FakeRealBackend(SimulatedBackend):
    name, is_real = 'fake-real', True


def test_measure_engine_latency_median_and_warmup() -> None:
    engine = CountingEngine()
    ms = profile_cli.measure_engine_latency_ms(engine, np.zeros((1, 3, 8, 8), np.float32), 0.5,
                                               repeats=5, warmup=2, clock=engine.clock)
    assert ms == pytest.approx(0.5) and engine.calls == 7
    with pytest.raises(ValueError, match='repeats'):
        profile_cli.measure_engine_latency_ms(engine, np.zeros(1), 0.5, repeats=0, warmup=0)


def test_grid_simulated_measures_reference_and_scales() -> None:
    engine = CountingEngine()
    backend = SimulatedBackend([500.0, 1000.0])
    lat, src = profile_cli.measure_latency_grid(engine, np.zeros(1), [0.5, 1.0], backend,
                                                [500.0, 1000.0], 3, 1, progress=False,
                                                clock=engine.clock)
    np.testing.assert_allclose(lat, [[1.0, 0.5], [2.0, 1.0]])
    assert src.tolist() == [['scaled', 'measured'], ['scaled', 'measured']]


def test_grid_real_backend_sweeps_every_frequency() -> None:
    backend = FakeRealBackend([250.0, 1000.0])
    engine = CountingEngine(backend)          # the 'hardware' slows down at lower frequency
    lat, src = profile_cli.measure_latency_grid(engine, np.zeros(1), [1.0], backend,
                                                [250.0, 1000.0], 3, 0, progress=False,
                                                clock=engine.clock)
    np.testing.assert_allclose(lat, [[4.0, 1.0]])
    assert (src == 'measured').all()
    assert backend.current_frequency_mhz() == 1000.0      # reset after the sweep


def test_load_accuracy_table_formats(tmp_path: Path) -> None:
    a = tmp_path / 'a.json'
    a.write_text(json.dumps({'accuracy': {'0.5': 0.4, '1.0': 0.8}}))
    assert load_accuracy_table(a).accuracy == {0.5: 0.4, 1.0: 0.8}
    a.write_text(json.dumps({'results': [{'ratio': 0.5, 'accuracy': 0.4}]}))
    assert load_accuracy_table(a).accuracy == {0.5: 0.4}
    # pls-eval's table1.json: string ratio labels, per-stage rows and BN-only rows are skipped
    a.write_text(json.dumps({'weights_sha256': SHA, 'n_images': 100, 'rows': [
        {'ratio': '1', 'accuracy': 0.8}, {'ratio': '0.5', 'accuracy': 0.4},
        {'ratio': '0.5/0.5/1/1', 'accuracy': 0.5}, {'ratio': '0.3', 'accuracy': None}]}))
    table = load_accuracy_table(a, weights_sha256=SHA)
    assert table.accuracy == {1.0: 0.8, 0.5: 0.4} and table.weights_sha256 == SHA
    assert table.at([1.0, 0.5]) == [0.8, 0.4]
    with pytest.raises(ValueError, match=r'no accuracy for ratios \[0.3\]'):
        table.at([0.3])
    with pytest.raises(ProfileError, match='measured on weights'):
        load_accuracy_table(a, weights_sha256='0' * 64)
    a.write_text('{"neither": 1}')
    with pytest.raises(ProfileError, match='not an accuracy table'):
        load_accuracy_table(a)


# --- skip plans: a 4-block plan on depths (3, 3) and pls-plan compare style tables ------------

DEPTHS = (3, 3)
SHA = hashlib.sha256(b'weights').hexdigest()


def _plan(order=((0, 1), (1, 1), (0, 2), (1, 2)), sha: str | None = SHA) -> SkipPlan:
    return SkipPlan(depths=DEPTHS, order=order, block_macs=(10,) * 4, costs=(0.0,) * 4,
                    method='greedy', cost='kl', calibration_size=8, weights_sha256=sha)


def _compare_table(path: Path, plan: SkipPlan, accuracy: dict[int, float],
                   **meta: object) -> Path:
    """A plan_comparison.json as pls-plan compare writes it: plan rows per removed count."""
    rows = [{'policy': 'proportional', 'bn_recalibration': False, 'pls_ratio': 1.0,
             'policy_ratio': 1.0, 'blocks_kept': [3, 3], 'accuracy': 0.9, 'n_images': 50}]
    for count, acc in accuracy.items():
        for bn in (False, True):
            rows.append({'policy': 'plan', 'bn_recalibration': bn, 'pls_ratio': 0.0,
                         'policy_ratio': round(1 - count / 4, 6),
                         'blocks_kept': [sum(m) for m in plan.masks_removing(count)],
                         'accuracy': acc + (0.05 if bn else 0.0), 'n_images': 50})
    meta = {'weights_sha256': plan.weights_sha256, 'plan_fingerprint': plan.fingerprint,
            'plan_method': plan.method, 'plan_cost': plan.cost, **meta}
    path.write_text(json.dumps({'meta': meta, 'rows': rows}))
    return path


def _saved_plan(tmp_path: Path, plan: SkipPlan | None = None) -> tuple[Path, SkipPolicyInfo]:
    path = tmp_path / 'toy_plan.yaml'
    save_plan(plan or _plan(), path)
    return path, policy_info(str(path))[0]


def test_plan_table_keyed_by_blocks_removed(tmp_path: Path) -> None:
    plan = _plan()
    _, info = _saved_plan(tmp_path, plan)
    made = _compare_table(tmp_path / 't.json', plan, {0: 0.9, 2: 0.7, 4: 0.2})
    table = load_accuracy_table(made, plan, info, SHA)
    assert table.ratios == [0.1, 0.5, 1.0] and table.policy == info
    # any ratio removing the same blocks finds the row; BN-recalibrated rows are not used
    assert table.at([0.5, 0.55, 0.74, 1.0]) == [0.7, 0.7, 0.7, 0.9]
    assert table.n_images == 50 and 'plan:toy_plan' in table.note
    # the same table read for PLS gives its proportional rows
    assert load_accuracy_table(tmp_path / 't.json').accuracy == {1.0: 0.9}
    # CSV (no meta): still checked row by row against the plan's blocks
    rows = json.loads((tmp_path / 't.json').read_text())['rows']
    with (tmp_path / 't.csv').open('w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert load_accuracy_table(tmp_path / 't.csv', plan, info).accuracy == table.accuracy


@pytest.mark.parametrize('make, match', [
    # made with another plan: says so in its meta ...
    (lambda p, d: _compare_table(d, p, {0: 0.9}, plan_fingerprint='f' * 64), 'another skip plan'),
    (lambda p, d: _compare_table(d, p, {0: 0.9}, plan_method='oneshot'), 'another skip plan'),
    # ... or its rows ran other blocks than this plan at the same compute
    (lambda p, d: _compare_table(d, _plan(((1, 1), (0, 1), (1, 2), (0, 2))), {1: 0.8},
                                 plan_fingerprint=None), 'not made with this plan'),
    # other weights
    (lambda p, d: _compare_table(d, p, {0: 0.9}, weights_sha256='0' * 64), 'measured on weights'),
    # PLS only (pls-eval): nothing about the plan
    (lambda p, d: d.write_text(json.dumps({'accuracy': {'1.0': 0.9}})), 'no accuracy rows'),
])
def test_plan_table_mismatch_rejected(tmp_path: Path, make, match: str) -> None:
    plan = _plan()
    _, info = _saved_plan(tmp_path, plan)
    make(plan, tmp_path / 't.json')
    with pytest.raises(ProfileError, match=match):
        load_accuracy_table(tmp_path / 't.json', plan, info, SHA)


def test_cli_profiles_a_plan(tmp_path: Path) -> None:
    """--skip-policy: resnet18 (random weights) timed under a plan, accuracy from its table."""
    plan = SkipPlan(depths=(2, 2, 2, 2), order=((3, 1), (2, 1), (1, 1), (0, 1)),
                    block_macs=(10,) * 4, costs=(0.0,) * 4, method='greedy', cost='kl',
                    calibration_size=8, weights_sha256=None)
    plan_path, info = _saved_plan(tmp_path, plan)
    table = _compare_table(tmp_path / 't.json', plan, {0: 0.8, 2: 0.6})
    out = tmp_path / 'prof.yaml'
    argv = ['--weights', 'random', '--arch', 'resnet18', '--repeats', '1', '--warmup', '0',
            '--backend', 'simulated', '--frequencies', '500,1000', '--skip-policy',
            str(plan_path), '--accuracy', str(table), '--out', str(out), '--no-progress']
    with pytest.warns(UserWarning, match='RANDOM'):
        assert profile_cli.main(argv) == 0
    prof = load_profile(out)
    assert prof.skip_policy == info and prof.skip_policy.plan_fingerprint == plan.fingerprint
    assert prof.ratios.tolist() == [0.5, 1.0] and prof.accuracy.tolist() == [0.6, 0.8]
    assert any('plan:toy_plan' in note for note in prof.notes)
    # a table made with another plan is refused before anything is measured
    _compare_table(tmp_path / 't.json', plan, {0: 0.8}, plan_fingerprint='f' * 64)
    with pytest.warns(UserWarning):
        assert profile_cli.main(argv) == 2


def _base_profile(path: Path) -> Path:
    """A PLS profile for depths (3, 3): ratio 0.3 keeps no removable block, 0.5 one per stage."""
    save_profile(OperatingPointProfile(
        device_name='toy', device_kind='cpu', ratios=[0.3, 0.5, 1.0],
        frequencies_mhz=[500.0, 1000.0], accuracy=[0.2, 0.5, 0.9],
        latency_ms=[[4.0, 2.0], [6.0, 3.0], [10.0, 5.0]], power_w=[1.0, 2.0],
        sources={'accuracy': 'measured', 'latency_ms': 'measured', 'power_w': 'modelled'},
        reference_frequency_mhz=1000.0, notes=('Latency measured.', 'Accuracy: PLS.')), path)
    return path


def test_cli_derives_a_plan_profile_from_a_pls_one(tmp_path: Path, capsys) -> None:
    plan_path, info = _saved_plan(tmp_path)
    table = _compare_table(tmp_path / 't.json', _plan(), {0: 0.9, 2: 0.8, 4: 0.2})
    out = tmp_path / 'plan_prof.yaml'
    argv = ['--from-profile', str(_base_profile(tmp_path / 'base.yaml')), '--skip-policy',
            str(plan_path), '--accuracy', str(table), '--out', str(out)]
    assert profile_cli.main(argv) == 0
    prof = load_profile(out)
    assert prof.skip_policy == info
    assert prof.ratios.tolist() == [0.1, 0.5, 1.0] and prof.accuracy.tolist() == [0.2, 0.8, 0.9]
    # each plan ratio runs the MACs of one PLS ratio and takes its latency; where its blocks
    # differ from that PLS row's (plan 0.5 removes block 1 of each stage, PLS 0.5 block 2) the
    # entries become modelled
    np.testing.assert_allclose(prof.latency_ms, [[4.0, 2.0], [6.0, 3.0], [10.0, 5.0]])
    assert prof.sources['latency_ms'][:, 0].tolist() == ['measured', 'modelled', 'measured']
    assert 'Accuracy: PLS.' not in prof.notes and any('0.5->0.5' in n for n in prof.notes)
    # a plan ratio with no PLS row of the same MACs cannot be derived
    _compare_table(tmp_path / 't1.json', _plan(), {0: 0.9, 1: 0.85})
    assert profile_cli.main(argv[:4] + ['--accuracy', str(tmp_path / 't1.json'), '--out',
                                        str(out), '--ratios', '0.75,1.0']) == 2
    assert 'no ratio of base.yaml' in capsys.readouterr().err
    # the base must be a PLS profile, and --from-profile needs a plan and a table
    assert profile_cli.main(['--from-profile', str(out), '--skip-policy', str(plan_path),
                             '--accuracy', str(table), '--out', str(out)]) == 2
    assert profile_cli.main(argv[:2] + ['--accuracy', str(table), '--out', str(out)]) == 2
    assert profile_cli.main(argv[:4] + ['--accuracy-images', '1', '--out', str(out)]) == 2


def test_shipped_plan_profiles_follow_from_their_sources(tmp_path: Path) -> None:
    """config/profiles/*_plan_greedy.yaml = the PLS profile + the plan's measured accuracies."""
    measured = json.loads((RESULTS / 'plan_comparison.json').read_text())['rows']
    plan_accuracy = sorted(r['accuracy'] for r in measured
                           if r['policy'] == 'plan' and not r['bn_recalibration'])
    for device in ('cpu', 'gpu'):
        shipped = load_profile(PROFILES / f'orin_nano_{device}_plan_greedy.yaml')
        out = tmp_path / f'{device}.yaml'
        assert profile_cli.main(['--from-profile', f'orin_nano_{device}', '--skip-policy',
                                 str(PLAN), '--accuracy', str(RESULTS / 'plan_comparison.json'),
                                 '--out', str(out)]) == 0
        rebuilt = load_profile(out)
        assert shipped.skip_policy.name == 'plan:resnet152_cifar10_ref_greedy'
        assert shipped.skip_policy.plan_fingerprint == load_plan(PLAN).fingerprint
        np.testing.assert_allclose(shipped.latency_ms, rebuilt.latency_ms, rtol=1e-5)
        np.testing.assert_allclose(shipped.energy_mj, rebuilt.energy_mj, rtol=1e-5)
        assert shipped.ratios.tolist() == rebuilt.ratios.tolist()
        assert sorted(shipped.accuracy.tolist()) == plan_accuracy


def test_help_works(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        profile_cli.main(['--help'])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert '--skip-policy' in out and '--from-profile' in out


def test_cli_end_to_end_random_resnet18(tmp_path: Path) -> None:
    acc = tmp_path / 'acc.json'
    acc.write_text(json.dumps({'accuracy': {'0.5': 0.4, '1.0': 0.8}}))
    out = tmp_path / 'prof.yaml'
    argv = ['--weights', 'random', '--arch', 'resnet18', '--ratios', '0.5,1.0', '--repeats', '2',
            '--warmup', '0', '--backend', 'simulated', '--frequencies', '500,1000',
            '--accuracy', str(acc), '--out', str(out), '--no-progress']
    with pytest.warns(UserWarning, match='RANDOM'):
        assert profile_cli.main(argv) == 0
    prof = load_profile(out)
    assert prof.frequencies_mhz.tolist() == [500.0, 1000.0]
    assert prof.sources['latency_ms'][:, 1].tolist() == ['measured', 'measured']
    assert prof.latency_ms[0, 0] == pytest.approx(2 * prof.latency_ms[0, 1])
    assert prof.model['engine'] == 'torch' and prof.model['dvfs_backend'] == 'simulated'
    assert prof.sources['power_w'][0] == 'modelled'


def test_cli_missing_accuracy_ratio_exits_2(tmp_path: Path) -> None:
    acc = tmp_path / 'acc.json'
    acc.write_text(json.dumps({'accuracy': {'1.0': 0.8}}))
    with pytest.warns(UserWarning):
        assert profile_cli.main(['--weights', 'random', '--arch', 'resnet18', '--ratios',
                                 '0.5,1.0', '--accuracy', str(acc), '--backend', 'simulated',
                                 '--out', str(tmp_path / 'p.yaml'), '--no-progress']) == 2


def test_cli_int8_scores_and_times_the_int8_graphs(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from pls_perception import paths
    if not paths.cifar10_tar().is_file():
        pytest.skip(f'needs CIFAR-10 in {paths.shared_dir()} (calibration and accuracy)')
    common = ['--weights', 'random', '--arch', 'resnet18', '--ratios', '0.5,1.0',
              '--repeats', '2', '--warmup', '0', '--backend', 'simulated', '--frequencies',
              '1000', '--out', str(tmp_path / 'int8.yaml'), '--no-progress',
              '--precision', 'int8']
    fp32_table = tmp_path / 'table1.json'
    fp32_table.write_text(json.dumps({'precision': 'fp32', 'rows': []}))
    for extra, error in ((['--accuracy-images', '1'], '--precision int8 needs --engine onnx'),
                         (['--engine', 'onnxruntime', '--accuracy', str(fp32_table)],
                          'was not measured on int8 graphs')):
        with pytest.warns(UserWarning, match='RANDOM'):
            assert profile_cli.main([*common, *extra]) == 2
        assert error in capsys.readouterr().err
    with pytest.warns(UserWarning, match='RANDOM'):
        assert profile_cli.main([*common, '--engine', 'onnxruntime', '--accuracy-images', '2',
                                 '--int8-calibration-images', '20']) == 0
    prof = load_profile(tmp_path / 'int8.yaml')
    assert (prof.model['engine'], prof.model['precision']) == ('onnxruntime', 'int8')
    assert 'on the int8 graphs' in ' '.join(prof.notes)
    assert prof.accuracy.shape == (2,) and ((prof.accuracy >= 0) & (prof.accuracy <= 1)).all()
    assert (prof.latency_ms > 0).all()
