"""Profile validation, YAML round trip, and the paper facts in the shipped Orin Nano files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from pls_perception.errors import ProfileError
from pls_perception.operating_points.optimizer import solve
from pls_perception.operating_points.profiles import (PROPORTIONAL, SkipPolicyInfo, load_profile,
                                                      profile_from_dict, save_profile)
from pls_perception.paths import config_dir

PROFILES = config_dir() / 'profiles'


def small_dict() -> dict:
    return {
        'schema_version': 1, 'device': {'name': 'toy', 'kind': 'cpu'},
        'ratios': [0.5, 1.0], 'frequencies_mhz': [500.0, 1000.0],
        'reference_frequency_mhz': 1000.0,
        'accuracy': {'values': [0.8, 0.9], 'source': 'measured'},
        'latency_ms': {'values': [[4.0, 2.0], [8.0, 4.0]],
                       'source': [['scaled', 'measured'], ['scaled', 'measured']]},
        'power_w': {'values': [1.0, 3.0], 'source': 'modelled'},
    }


def test_roundtrip_and_derived_quantities(tmp_path: Path) -> None:
    prof = profile_from_dict(small_dict())
    np.testing.assert_allclose(prof.energy_mj, [[4.0, 6.0], [8.0, 12.0]])
    np.testing.assert_allclose(prof.edp, [[16.0, 12.0], [64.0, 48.0]])
    np.testing.assert_allclose(prof.accuracy_loss, [0.1, 0.0])
    assert prof.sources['latency_ms'][0, 0] == 'scaled'
    assert prof.energy_source(0, 1) == 'modelled'
    again = load_profile(save_profile(prof, tmp_path / 'p.yaml'))
    np.testing.assert_allclose(again.latency_ms, prof.latency_ms)
    assert again.sources['latency_ms'].tolist() == prof.sources['latency_ms'].tolist()


@pytest.mark.parametrize('mutate, match', [
    (lambda d: d.pop('power_w'), 'missing required keys'),
    (lambda d: d.update(schema_version=2), 'schema_version'),
    (lambda d: d['device'].update(kind='tpu'), 'device kind'),
    (lambda d: d.update(ratios=[1.0, 0.5]), 'strictly increasing'),
    (lambda d: d.update(ratios=[0.5, 1.5]), 'strictly increasing'),
    (lambda d: d['latency_ms'].update(values=[[1.0, 2.0]]), r'shape \(2, 2\)'),
    (lambda d: d['latency_ms'].update(values=[[1.0, -2.0], [1.0, 1.0]]), 'positive'),
    (lambda d: d['power_w'].update(values=[1.0, float('nan')]), 'finite'),
    (lambda d: d['power_w'].update(source='guessed'), 'source must be one of'),
    (lambda d: d['accuracy'].pop('source'), 'needs a source'),
    (lambda d: d['accuracy'].update(values=[80.0, 90.0]), 'fractions'),
    (lambda d: d.update(reference_frequency_mhz=700.0), 'reference_frequency_mhz'),
    (lambda d: d['power_w'].update(model={'kind': 'two_zone', 'p_static_w': 0.0}), 'missing'),
])
def test_validation_errors(mutate, match: str) -> None:
    d = small_dict()
    mutate(d)
    with pytest.raises(ProfileError, match=match):
        profile_from_dict(d, where='toy.yaml')


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match='cannot read profile'):
        load_profile(tmp_path / 'missing.yaml')
    bad = tmp_path / 'bad.yaml'
    bad.write_text('a: [1, 2')
    with pytest.raises(ProfileError, match='not valid YAML'):
        load_profile(bad)
    bad.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ProfileError, match='mapping'):
        load_profile(bad)


PLAN_POLICY = {'name': 'plan:toy', 'plan_fingerprint': 'a' * 64, 'weights_sha256': 'b' * 64,
               'plan_file': 'config/plans/toy.yaml'}


def test_skip_policy_round_trip_and_default(tmp_path: Path) -> None:
    old = profile_from_dict(small_dict())            # written before the field existed
    assert old.skip_policy == PROPORTIONAL and old.skip_policy.is_proportional
    assert old.to_dict()['skip_policy'] == 'proportional'
    d = small_dict()
    d['skip_policy'] = dict(PLAN_POLICY)
    prof = profile_from_dict(d)
    assert prof.skip_policy == SkipPolicyInfo(**PLAN_POLICY)
    again = load_profile(save_profile(prof, tmp_path / 'p.yaml'))
    assert again.skip_policy == prof.skip_policy and not again.skip_policy.is_proportional
    np.testing.assert_allclose(again.accuracy, prof.accuracy)
    d['skip_policy'] = 'proportional'
    assert profile_from_dict(d).skip_policy == PROPORTIONAL


@pytest.mark.parametrize('value, match', [
    ('greedy', 'skip_policy must be'),
    ({'name': 'plan:toy'}, 'plan_fingerprint'),
    (dict(PLAN_POLICY, plan_fingerprint='XYZ'), 'plan_fingerprint'),
    (dict(PLAN_POLICY, weights_sha256='short'), 'weights_sha256'),
    (dict(PLAN_POLICY, name='toy'), "'plan:<name>'"),
    (dict(PLAN_POLICY, colour='red'), 'unknown keys'),
    ({'name': 'proportional', 'plan_fingerprint': 'a' * 64}, 'takes no'),
])
def test_skip_policy_validation(value, match: str) -> None:
    d = small_dict()
    d['skip_policy'] = value
    with pytest.raises(ProfileError, match=match):
        profile_from_dict(d, where='toy.yaml')


def test_skip_policy_must_match_the_profiled_weights() -> None:
    d = small_dict()
    d['skip_policy'] = dict(PLAN_POLICY)
    d['model'] = {'sha256': 'c' * 64}
    with pytest.raises(ProfileError, match='learned on weights'):
        profile_from_dict(d)
    d['model'] = {'sha256': 'b' * 64}
    assert profile_from_dict(d).skip_policy.weights_sha256 == 'b' * 64


# --- the shipped Jetson Orin Nano profiles reproduce the paper facts -----------------------

@pytest.fixture(scope='module')
def gpu():
    return load_profile(PROFILES / 'orin_nano_gpu.yaml')


@pytest.fixture(scope='module')
def cpu():
    return load_profile(PROFILES / 'orin_nano_cpu.yaml')


def test_gpu_latency_facts(gpu) -> None:
    full, pls20 = gpu.ratio_index(1.0), gpu.ratio_index(0.2)
    f612, f306 = gpu.frequency_index(612.0), gpu.frequency_index(306.0)
    assert gpu.latency_ms[full, f612] == pytest.approx(13.0)
    assert gpu.latency_ms[full, f306] == pytest.approx(26.5)
    assert gpu.latency_ms[pls20, f612] == pytest.approx(4.5)
    assert gpu.latency_ms[pls20, f306] == pytest.approx(9.0)
    assert gpu.sources['latency_ms'][full, f612] == 'paper'
    assert gpu.frequencies_mhz.min() == 306.0 and gpu.frequencies_mhz.max() == 624.75


def test_gpu_energy_facts(gpu) -> None:
    full, pls20 = gpu.ratio_index(1.0), gpu.ratio_index(0.2)
    f612 = gpu.frequency_index(612.0)
    assert gpu.energy_mj[full, f612] == pytest.approx(35.0, rel=0.03)
    assert gpu.energy_mj[pls20, f612] == pytest.approx(11.0, rel=0.03)
    spread = gpu.energy_mj.max(axis=1) / gpu.energy_mj.min(axis=1)
    assert np.all(spread < 1.06), 'energy/frame should be nearly independent of frequency'


def test_cpu_energy_cut_36_percent(cpu) -> None:
    full = cpu.ratio_index(1.0)
    e = cpu.energy_mj[full]
    cut = 1.0 - e[cpu.frequency_index(729.6)] / e[cpu.frequency_index(1510.4)]
    assert cut == pytest.approx(0.36, abs=0.01)
    assert cpu.frequencies_mhz.min() == 268.8 and cpu.frequencies_mhz.max() == 1510.4


def test_cpu_energy_linear_below_1ghz_faster_above(cpu) -> None:
    f, e = cpu.frequencies_mhz, cpu.energy_mj[cpu.ratio_index(1.0)]
    low, high = f <= 1000.0, f >= 1000.0
    assert np.all(np.diff(e) > 0)
    slope_lo, icpt = np.polyfit(f[low], e[low], 1)
    resid = e[low] - (slope_lo * f[low] + icpt)
    assert 1 - (resid ** 2).sum() / ((e[low] - e[low].mean()) ** 2).sum() > 0.97
    assert np.polyfit(f[high], e[high], 1)[0] > 1.2 * slope_lo


def test_cpu_edp_optimum_at_499_mhz(cpu) -> None:
    full = cpu.ratio_index(1.0)
    assert cpu.frequencies_mhz[np.argmin(cpu.edp[full])] == 499.2
    # the unconstrained EDP solve picks that frequency too (whatever ratio epsilon allows)
    assert solve(cpu, float('inf'), 0.0, objective='edp').freq_mhz == 499.2


@pytest.mark.parametrize('name', ['orin_nano_gpu.yaml', 'orin_nano_cpu.yaml'])
def test_shipped_profiles_state_their_derivation(name: str) -> None:
    prof = load_profile(PROFILES / name)
    assert prof.notes and prof.power_model is not None
    assert prof.power_model.power_w(prof.frequencies_mhz) == pytest.approx(prof.power_w, rel=1e-5)


@pytest.mark.parametrize('path', sorted(PROFILES.glob('*.yaml')), ids=lambda p: p.name)
def test_every_shipped_profile_is_valid_and_says_how_it_was_made(path: Path) -> None:
    prof = load_profile(path)
    assert prof.notes, f'{path.name} must state how its numbers were derived'
    assert prof.accuracy_loss[-1] == 0.0 and np.all(prof.energy_mj > 0)
