"""Faults and bad input against the real graph: node executables as processes, loopback DDS.

What a deployed perception stack meets: a node that crashes and is restarted, a manager restarted
mid-run, camera drivers sending garbage, planners sending NaN budgets, operators setting wrong
parameters, corrupt files. Each must get a clear error (a reason, a log line, a counter) while the
rest of the system keeps classifying.
"""
from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from fake_sysfs import FREQS_KHZ, make_policy, read
from sensor_msgs.msg import Image

from pls_perception import paths
from pls_perception.dvfs import SimulatedBackend
from pls_perception.operating_points.optimizer import solve
from pls_perception.operating_points.profiles import load_profile
from pls_perception.testing.graph_probe import (MANAGER_MODULE, PERCEPTION_MODULE, PERCEPTION_NODE,
                                                NodeProcess, PipelineProbe, Received, make_image,
                                                probe_session, running_node, stamp_ns_of)

BUDGET_MODULE = 'pls_perception.nodes.budget_schedule_node'
# Random weights: these tests are about the plumbing (and need no ../shared).
NODE_PARAMETERS: dict[str, Any] = {'weights': 'random', 'dvfs_backend': 'simulated',
                                   'num_threads': 1,
                                   'class_names': [f'class{i}' for i in range(10)]}
BUDGET_MS = 300.0
ACCURACY_LOSS_MAX = 0.05
APPLY_TIMEOUT_S = 45.0

pytestmark = pytest.mark.timeout(300)


def _manager_parameters() -> dict[str, Any]:
    return {'profile': str(paths.config_dir() / 'profiles' / 'orin_nano_cpu.yaml'),
            'accuracy_loss_max': ACCURACY_LOSS_MAX, 'closed_loop': False,
            'retry_initial_s': 0.2, 'retry_max_s': 1.0}


def _expected_point() -> tuple[float, float]:
    """What the manager must apply for BUDGET_MS (the optimizer is tested on its own)."""
    profile = load_profile(_manager_parameters()['profile'])
    point = solve(profile, BUDGET_MS, ACCURACY_LOSS_MAX)
    # it must differ from what a fresh node runs (r = 1 at f_max), or a restart would go unseen
    assert point.feasible and (point.keep_ratio, point.freq_mhz) != (
        1.0, SimulatedBackend().max_frequency_mhz())
    return point.keep_ratio, point.freq_mhz


def _frames(n: int = 8) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _wait_point(probe: PipelineProbe, point: tuple[float, float], start: int,
                timeout_s: float = APPLY_TIMEOUT_S) -> bool:
    """True once a classification of a frame published after ``start`` runs at ``point``."""
    return probe.classifications.wait_for(
        lambda r: (r.data['keep_ratio'], r.data['frequency_mhz']) == point,
        timeout_s, start) is not None


@pytest.fixture
def probe() -> Iterator[PipelineProbe]:
    with probe_session() as p:
        yield p


def test_restarts_mid_run_restore_the_operating_point(probe: PipelineProbe,
                                                      tmp_path: Path) -> None:
    point = _expected_point()
    budget = {'schedule': f'0:{BUDGET_MS:g}', 'publish_rate_hz': 2.0}
    with running_node(BUDGET_MODULE, budget, tmp_path / 'budget'), \
            running_node(PERCEPTION_MODULE, NODE_PARAMETERS, tmp_path / 'perception_a',
                         activate_with=probe) as perception_a, \
            probe.feeding(_frames(), rate_hz=5.0):
        manager = NodeProcess(MANAGER_MODULE, _manager_parameters(),
                              log_dir=tmp_path / 'manager_1')
        try:
            assert _wait_point(probe, point, 0), manager.log_text()[-3000:]
        finally:
            manager.kill()  # crash, not a clean stop

        # Without a manager the node drifts to another point (an operator, a stale launch).
        assert all(ok for ok, _ in probe.set_parameters({'keep_ratio': 1.0,
                                                         'frequency_mhz': 0.0}))
        drifted = len(probe.classifications)
        assert _wait_point(probe, (1.0, SimulatedBackend().max_frequency_mhz()), drifted, 20.0)

        # Manager restarted: it has no state, yet re-applies the latest budget (re-published
        # by the budget source) without anyone sending a new one.
        start = len(probe.classifications)
        with running_node(MANAGER_MODULE, _manager_parameters(), tmp_path / 'manager_2'):
            assert _wait_point(probe, point, start), 'restarted manager did not re-apply'

            # Perception node crashes and is restarted: it comes up at its defaults and must be
            # driven to the operating point again.
            perception_a.kill()
            with running_node(PERCEPTION_MODULE, NODE_PARAMETERS, tmp_path / 'perception_b',
                              activate_with=probe):
                start = len(probe.classifications)
                assert _wait_point(probe, point, start), \
                    'restarted perception node never got the operating point again'


# ------------------------------------------------------------------------------ bad input
def _image(**fields: Any) -> Image:
    """A valid 32x32 rgb8 frame with ``fields`` overridden."""
    msg = make_image(_frames(1)[0], time.time_ns())
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


def _bad_images() -> dict[str, Image]:
    rng = np.random.default_rng(1)
    data = bytes(32 * 32 * 3)
    return {
        'unsupported encoding yuv422': _image(encoding='yuv422'),
        'unsupported encoding 32FC1': _image(encoding='32FC1'),
        'empty encoding': _image(encoding=''),
        'zero height': _image(height=0),
        'zero width': _image(width=0),
        'step shorter than a row': _image(step=32 * 3 - 1),
        'step longer than the data allows': _image(step=32 * 3 * 4),
        'data one byte short': _image(data=data[:-1]),
        'no data': _image(data=b''),
        'huge dimensions, tiny data': _image(height=2**31 - 1, width=2**31 - 1, step=2**32 - 1),
        'huge height': _image(height=10**9),
        'random bytes, random header': _image(
            encoding='bgra8', height=int(rng.integers(1, 5000)), width=int(rng.integers(1, 5000)),
            step=int(rng.integers(1, 20000)), data=rng.bytes(int(rng.integers(0, 4096)))),
    }


def _counters(classification: dict[str, Any]) -> dict[str, int]:
    return classification['frames']


def _check_classifies(probe: PipelineProbe, frame: np.ndarray) -> dict[str, Any]:
    _, classification = probe.round_trip(frame, timeout_s=30.0)
    return classification


def test_bad_input_gets_clear_errors_and_classification_continues(
        probe: PipelineProbe, tmp_path: Path) -> None:
    frames = _frames()
    good = frames[0]
    with running_node(PERCEPTION_MODULE, NODE_PARAMETERS, tmp_path / 'perception',
                      activate_with=probe) as perception:
        before = _counters(_check_classifies(probe, good))

        # Malformed frames: each rejected (or, if a good frame overtook it, dropped), counted,
        # and the node goes on classifying.
        for name, msg in _bad_images().items():
            probe.publish_raw(msg)
            time.sleep(0.3)
            after = _counters(_check_classifies(probe, good))
            handled = (after['rejected'] - before['rejected']) + (
                after['dropped'] - before['dropped'])
            assert handled == 1, (name, before, after)
            before = after
        assert before['rejected'] >= len(_bad_images()) // 2, before
        assert 'malformed frame' in perception.log_text()

        # Out-of-range and wrong-type parameters: refused with a reason, nothing changes.
        bad_parameters = [
            {'keep_ratio': 0.0}, {'keep_ratio': -0.5}, {'keep_ratio': 1.5},
            {'keep_ratio': math.nan}, {'keep_ratio': math.inf}, {'keep_ratio': 'fast'},
            {'keep_ratio': True}, {'keep_ratio': [0.5]},
            {'frequency_mhz': -1.0}, {'frequency_mhz': math.nan}, {'frequency_mhz': 'max'},
            {'weights': 'other.pt'},  # read at configure: refused while active
            {'dvfs_backend': 42},
        ]
        for values in bad_parameters:
            results = probe.set_parameters(values)
            assert len(results) == 1 and not results[0][0] and results[0][1], (values, results)
        assert probe.get_parameters(['keep_ratio', 'frequency_mhz']) == {
            'keep_ratio': 1.0, 'frequency_mhz': 0.0}
        assert _check_classifies(probe, good)['keep_ratio'] == 1.0

        # A corrupt profile: the manager refuses to start and says why; perception goes on.
        corrupt_profile = tmp_path / 'corrupt_profile.yaml'
        corrupt_profile.write_text('schema_version: 1\nratios: [0.5, 1.0\nlatency_ms: {{{\n')
        broken = NodeProcess(MANAGER_MODULE, dict(_manager_parameters(),
                                                  profile=str(corrupt_profile)),
                             log_dir=tmp_path / 'manager_corrupt')
        try:
            assert broken.proc.wait(60.0) != 0
        finally:
            broken.stop()
        assert 'corrupt_profile.yaml' in broken.log_text() and 'profile' in broken.log_text()
        _check_classifies(probe, good)

        # NaN/inf/negative/zero budgets: the manager warns and keeps the last valid point.
        point = _expected_point()
        with running_node(MANAGER_MODULE, _manager_parameters(), tmp_path / 'manager') as mgr, \
                probe.feeding(frames, rate_hz=5.0):
            deadline = time.monotonic() + APPLY_TIMEOUT_S
            start = len(probe.classifications)
            while not _wait_point(probe, point, start, 1.0):  # until the manager listens
                assert time.monotonic() < deadline, mgr.log_text()[-3000:]
                probe.publish_budget(BUDGET_MS)
            bad_budgets = [math.nan, math.inf, -math.inf, -5.0, 0.0]
            for budget_ms in bad_budgets:
                probe.publish_budget(budget_ms)
            time.sleep(2.0)
            after_bad = [r.data for r in probe.classifications.items[start:]][-3:]
            assert all((c['keep_ratio'], c['frequency_mhz']) == point for c in after_bad)
            stats = probe.diagnostics.wait_for(
                lambda r: int(probe.node_status(r, 'dvfs_manager').get('budgets_rejected', 0))
                >= len(bad_budgets), 15.0)
            assert stats is not None, mgr.log_text()[-3000:]
            assert 'rejected latency budget nan' in mgr.log_text()
        assert perception.alive()


def test_corrupt_weights_fail_configure_clearly_then_node_recovers(probe: PipelineProbe,
                                                                    tmp_path: Path) -> None:
    corrupt = tmp_path / 'corrupt_weights.pt'
    corrupt.write_bytes(np.random.default_rng(2).bytes(4096))
    parameters = dict(NODE_PARAMETERS, weights=str(corrupt))
    with running_node(PERCEPTION_MODULE, parameters, tmp_path / 'perception') as node:
        with pytest.raises(RuntimeError, match='configure transition failed'):
            probe.activate()
        assert probe.lifecycle_state() == 'unconfigured'
        log = node.log_text()
        assert 'configure failed' in log and 'corrupt_weights.pt' in log, log[-3000:]
        # Fix the parameter and configure again: the same process classifies.
        assert probe.set_parameters({'weights': 'random'}) == [(True, '')]
        probe.activate()
        frame = _frames(1)[0]
        _, classification = probe.round_trip(frame, timeout_s=60.0)
        assert stamp_ns_of(classification) > 0 and classification['label'].startswith('class')


# ------------------------------------------------------------------------------ DVFS faults
CPUFREQ_POLICIES = (0, 4)
CPUFREQ_NAME = 'cpufreq(policy0,policy4)'
FAILOVER_LOG = 'running on the simulated backend from now on'


def _delete_cpufreq_files(root: Path) -> None:
    """Every cpufreq file disappears (driver unloaded, CPUs offline)."""
    shutil.rmtree(root / 'sys/devices/system/cpu/cpufreq')


def _setspeed_becomes_a_directory(root: Path) -> None:
    """policy0's scaling_setspeed can no longer be written: a real EISDIR on the next write (as
    root a chmod would not stop the write, and this needs no uid change)."""
    setspeed = root / 'sys/devices/system/cpu/cpufreq/policy0/scaling_setspeed'
    setspeed.unlink()
    setspeed.mkdir()


def _inference_status(received: Received) -> DiagnosticStatus | None:
    """The perception node's status in one received DiagnosticArray (None if absent)."""
    for status in received.data.status:
        if status.name.lstrip('/').split(':', 1)[0].strip() == PERCEPTION_NODE:
            return status
    return None


def _values(status: DiagnosticStatus | None) -> dict[str, str]:
    return {} if status is None else {kv.key: kv.value for kv in status.values}


def _wait_frequency(probe: PipelineProbe, freq_mhz: float, start: int,
                    timeout_s: float = 30.0) -> Received | None:
    """A classification after index ``start`` reporting ``freq_mhz`` as the frequency in force."""
    return probe.classifications.wait_for(lambda r: r.data['frequency_mhz'] == freq_mhz,
                                          timeout_s, start)


@pytest.mark.timeout(240)
@pytest.mark.parametrize('break_backend', [_delete_cpufreq_files, _setspeed_becomes_a_directory],
                         ids=['files_deleted', 'file_became_directory'])
def test_dvfs_backend_failing_mid_run_fails_over_and_classification_continues(
        probe: PipelineProbe, tmp_path: Path, break_backend: Any) -> None:
    """A real (fake-sysfs) cpufreq backend breaks while frames flow: the node stays up on the
    simulated backend, says so in /diagnostics (ERROR, dvfs_fault) and still takes parameters."""
    root = tmp_path / 'sysfs'
    policies = [make_policy(root, idx) for idx in CPUFREQ_POLICIES]
    low_mhz, set_mhz, high_mhz = (khz / 1000.0 for khz in FREQS_KHZ)
    parameters = dict(NODE_PARAMETERS, dvfs_backend='cpufreq', dvfs_sysfs_root=str(root),
                      frequency_mhz=set_mhz)
    with running_node(PERCEPTION_MODULE, parameters, tmp_path / 'perception',
                      activate_with=probe) as perception, \
            probe.feeding(_frames(), rate_hz=5.0):
        # Healthy: the node drives the cpufreq files.
        first = probe.classifications.wait_for(lambda r: True, 60.0)
        assert first is not None, perception.log_text()[-3000:]
        assert (first.data['dvfs_backend'], first.data['dvfs_real']) == (CPUFREQ_NAME, True)
        assert first.data['frequency_requested_mhz'] == set_mhz
        for pol in policies:
            assert read(pol, 'scaling_governor') == 'userspace'
            assert read(pol, 'scaling_setspeed') == str(FREQS_KHZ[1])
            (pol / 'scaling_cur_freq').write_text(f'{FREQS_KHZ[1]}\n')   # the kernel's part
        assert _wait_frequency(probe, set_mhz, len(probe.classifications)) is not None
        healthy = probe.diagnostics.wait_for(
            lambda r: _values(_inference_status(r)).get('frequency_mhz') == f'{set_mhz:g}', 20.0,
            len(probe.diagnostics))
        assert healthy is not None
        status = _inference_status(healthy)
        assert status is not None and status.level != DiagnosticStatus.ERROR, status
        values = _values(status)
        assert (values['dvfs_kind'], values['dvfs_backend']) == ('real', CPUFREQ_NAME)
        assert 'dvfs_fault' not in values

        # The backend breaks mid-run; a frequency change touches it.
        break_backend(root)
        start, diagnostics_start = len(probe.classifications), len(probe.diagnostics)
        assert probe.set_parameters({'frequency_mhz': low_mhz}) == [(True, '')]
        after = _wait_frequency(probe, low_mhz, start)    # only the simulated one reports it
        assert after is not None, perception.log_text()[-3000:]
        assert after.data['frames']['failed'] == 0
        faulted = probe.diagnostics.wait_for(
            lambda r: 'dvfs_fault' in _values(_inference_status(r)), 20.0, diagnostics_start)
        assert faulted is not None, perception.log_text()[-3000:]
        status = _inference_status(faulted)
        assert status is not None and status.level == DiagnosticStatus.ERROR, status
        assert status.message.startswith('DVFS backend failed ('), status.message
        values = _values(status)
        fault = values['dvfs_fault']
        assert values['dvfs_kind'] == 'simulated'
        assert values['dvfs_backend'] == f'simulated ({CPUFREQ_NAME} failed: {fault})'
        assert '/cpufreq/policy0/' in fault, fault
        if break_backend is _setspeed_becomes_a_directory:
            assert fault.startswith('set_frequency_mhz: ') and 'scaling_setspeed' in fault
            assert 'Is a directory' in fault, fault
        else:
            assert fault.split(':', 1)[0] in ('set_frequency_mhz', 'current_frequency_mhz')
            assert 'No such file or directory' in fault, fault

        # Still serving: parameter requests succeed and take effect, frames are classified.
        start = len(probe.classifications)
        assert probe.set_parameters({'frequency_mhz': high_mhz}) == [(True, '')]
        assert probe.get_parameters(['frequency_mhz']) == {'frequency_mhz': high_mhz}
        latest = _wait_frequency(probe, high_mhz, start)
        assert latest is not None and latest.data['frames']['failed'] == 0
        later = probe.diagnostics.wait_for(
            lambda r: _values(_inference_status(r)).get('frequency_mhz') == f'{high_mhz:g}', 20.0,
            len(probe.diagnostics))
        assert later is not None
        status = _inference_status(later)
        assert status is not None and status.level == DiagnosticStatus.ERROR
        assert _values(status)['dvfs_fault'] == fault          # one fault, kept
        assert perception.alive()
        assert perception.log_text().count(FAILOVER_LOG) == 1
    if break_backend is _setspeed_becomes_a_directory:
        # Stopped cleanly: the abandoned real backend was still reset (governors handed back).
        assert [read(pol, 'scaling_governor') for pol in policies] == ['schedutil'] * 2
