"""FailoverBackend against real fake cpufreq trees: files vanish, permission is revoked, reads and
resets fail mid-run; the fault is recorded and work continues on the simulated backend."""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import subprocess
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_sysfs import make_policy, read

from pls_perception.dvfs import FailoverBackend, get_backend
from pls_perception.dvfs.cpufreq import CpufreqBackend

POLICIES = 'cpufreq(policy0,policy4)'


def policy(root: Path, index: int = 0) -> Path:
    return root / 'sys/devices/system/cpu/cpufreq' / f'policy{index}'


def failover(root: Path, slept: list[float] | None = None) -> FailoverBackend:
    """The wrapped cpufreq backend, via get_backend; ``slept`` records emulated sleeps."""
    if slept is not None:
        return FailoverBackend(CpufreqBackend(sysfs_root=root), sleep_fn=slept.append)
    backend = get_backend('cpufreq', sysfs_root=str(root), failover=True)
    assert isinstance(backend, FailoverBackend)
    return backend


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


@contextlib.contextmanager
def write_protected(files: list[Path]) -> Iterator[None]:
    """Revoke write permission on ``files`` for this process for the block: chmod 0o444, and as
    root (which writes through file modes) the immutable attribute, which refuses root too."""
    for f in files:
        f.chmod(0o444)
    immutable = os.geteuid() == 0
    if immutable:
        done = subprocess.run(['chattr', '+i', *map(str, files)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f'running as root and chattr +i is not supported here, so write '
                        f'permission cannot be revoked: {done.stderr.strip()}')
    try:
        yield
    finally:
        if immutable:
            subprocess.run(['chattr', '-i', *map(str, files)], check=True)
        for f in files:
            f.chmod(0o644)


def assert_failed_over(backend: FailoverBackend, what: str, freq_mhz: float) -> None:
    assert backend.fault is not None and backend.fault.startswith(f'{what}: ')
    assert backend.fault_monotonic is not None and backend.fault_monotonic <= time.monotonic()
    assert not backend.is_real
    assert backend.name == f'simulated ({POLICIES} failed: {backend.fault})'
    assert backend.describe() == f'{backend.name} at {freq_mhz:.1f} MHz'
    assert backend.current_frequency_mhz() == freq_mhz
    assert backend.available_frequencies_mhz() == [400.0, 800.0, 1200.0]
    assert backend.max_frequency_mhz() == 1200.0 and backend.writable()


def test_healthy_backend_is_passed_through(cpufreq_root: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    backend = failover(cpufreq_root)
    assert isinstance(backend.wrapped, CpufreqBackend)
    assert backend.is_real and backend.name == POLICIES and backend.writable()
    assert backend.set_frequency_mhz(790.0) == 800.0
    for idx in (0, 4):
        assert read(policy(cpufreq_root, idx), 'scaling_setspeed') == '800000'
        assert read(policy(cpufreq_root, idx), 'scaling_governor') == 'userspace'
    (policy(cpufreq_root) / 'scaling_cur_freq').write_text('800000\n')
    assert backend.current_frequency_mhz() == 800.0
    assert backend.describe() == backend.wrapped.describe() == f'{POLICIES} (real, 800.0 MHz)'
    assert backend.emulate(0.01) == 0.0
    with pytest.raises(ValueError, match='finite positive'):
        backend.set_frequency_mhz(float('nan'))
    backend.reset()
    assert read(policy(cpufreq_root), 'scaling_governor') == 'schedutil'
    assert backend.fault is None and backend.reset_error is None and backend.is_real
    assert errors(caplog) == []


@pytest.mark.parametrize(('governors', 'vanished'), [
    ('userspace schedutil', 'scaling_setspeed'),
    ('schedutil performance', 'scaling_max_freq'),
    ('schedutil performance', 'scaling_min_freq'),
    ('userspace schedutil', ''),                # the whole policy directory (CPU hotplug)
])
def test_files_vanish_mid_run(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                              governors: str, vanished: str) -> None:
    for idx in (0, 4):
        make_policy(tmp_path, idx, governors=governors)
    slept: list[float] = []
    backend = failover(tmp_path, slept)
    assert backend.set_frequency_mhz(800.0) == 800.0
    target = policy(tmp_path) / vanished
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    assert backend.set_frequency_mhz(400.0) == 400.0         # completed on the simulated one
    assert_failed_over(backend, 'set_frequency_mhz', 400.0)
    assert (vanished or 'policy0') in backend.fault
    assert backend.emulate(0.01) == pytest.approx(0.02) and slept == [pytest.approx(0.02)]
    assert backend.set_frequency_mhz(1200.0) == 1200.0 and backend.emulate(0.01) == 0.0
    untouched = 'scaling_setspeed' if 'userspace' in governors else 'scaling_max_freq'
    assert read(policy(tmp_path, 4), untouched) == '800000'      # real files are left alone
    backend.reset()
    assert backend.current_frequency_mhz() == 1200.0
    [error] = errors(caplog)
    assert 'simulated' in error.getMessage() and POLICIES in error.getMessage()


def test_permission_revoked_mid_run(tmp_path: Path,
                                    caplog: pytest.LogCaptureFixture) -> None:
    """A genuine permission error: chmod 0o444 (and, as root, chattr +i)."""
    root = tmp_path
    for idx in (0, 4):
        make_policy(root, idx)
    backend = failover(root)
    backend.set_frequency_mhz(800.0)
    with write_protected([policy(root) / n for n in ('scaling_setspeed', 'scaling_governor')]):
        assert backend.set_frequency_mhz(400.0) == 400.0
        assert_failed_over(backend, 'set_frequency_mhz', 400.0)
        assert 'permission denied on' in backend.fault and 'scaling_setspeed' in backend.fault
        backend.reset()                          # the real reset fails too: swallowed, recorded
    assert backend.reset_error is not None and 'scaling_governor' in backend.reset_error
    assert backend.current_frequency_mhz() == 1200.0
    assert read(policy(root), 'scaling_setspeed') == '800000'
    assert len(errors(caplog)) == 1


def test_current_frequency_read_failing(cpufreq_root: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    backend = failover(cpufreq_root)
    backend.set_frequency_mhz(800.0)
    (policy(cpufreq_root) / 'scaling_cur_freq').unlink()
    assert backend.current_frequency_mhz() == 800.0        # re-applied last request
    assert_failed_over(backend, 'current_frequency_mhz', 800.0)
    assert 'scaling_cur_freq' in backend.fault
    assert len(errors(caplog)) == 1


def test_reset_failing_never_raises_and_is_tried_once(cpufreq_root: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    registered: list[object] = []
    monkeypatch.setattr(atexit, 'register', registered.append)
    monkeypatch.setattr(atexit, 'unregister', registered.remove)
    backend = failover(cpufreq_root)
    backend.set_frequency_mhz(400.0)
    assert registered == [backend.wrapped.reset]
    (policy(cpufreq_root) / 'scaling_governor').unlink()
    backend.reset()                              # healthy until now: the reset itself faults
    assert_failed_over(backend, 'reset', 1200.0)
    assert backend.reset_error is not None and 'scaling_governor' in backend.reset_error
    assert registered == []                      # no failing real reset at interpreter exit
    (policy(cpufreq_root) / 'scaling_governor').write_text('performance\n')
    backend.set_frequency_mhz(800.0)
    backend.reset()                              # already tried once: not again
    assert read(policy(cpufreq_root), 'scaling_governor') == 'performance'
    assert backend.current_frequency_mhz() == 1200.0
    assert len(errors(caplog)) == 1


def test_reset_after_fault_restores_real_settings_once(cpufreq_root: Path) -> None:
    backend = failover(cpufreq_root)
    backend.set_frequency_mhz(400.0)
    (policy(cpufreq_root) / 'scaling_setspeed').unlink()
    backend.set_frequency_mhz(800.0)
    assert read(policy(cpufreq_root, 4), 'scaling_governor') == 'userspace'
    backend.reset()
    for idx in (0, 4):
        assert read(policy(cpufreq_root, idx), 'scaling_governor') == 'schedutil'
    assert backend.reset_error is None and backend.current_frequency_mhz() == 1200.0


def test_threads_share_one_failover(cpufreq_root: Path,
                                    caplog: pytest.LogCaptureFixture) -> None:
    """Inference thread and diagnostics timer: one fault, one ERROR, no exception anywhere;
    the emulated sleep does not hold the lock (diagnostics read the frequency meanwhile)."""
    seen: list[float] = []

    def sleep_reading_frequency(_: float) -> None:
        reader = threading.Thread(target=lambda: seen.append(backend.current_frequency_mhz()))
        reader.start()
        reader.join(timeout=5)

    backend = FailoverBackend(CpufreqBackend(sysfs_root=cpufreq_root),
                              sleep_fn=sleep_reading_frequency)
    failures: list[BaseException] = []

    def hammer(freq: float) -> None:
        try:
            for _ in range(50):
                backend.set_frequency_mhz(freq)
                backend.current_frequency_mhz()
                backend.describe()
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=hammer, args=(f,)) for f in (400.0, 800.0)]
    for t in threads:
        t.start()
    (policy(cpufreq_root) / 'scaling_setspeed').unlink()
    for t in threads:
        t.join(timeout=30)
    backend.set_frequency_mhz(400.0)
    assert failures == [] and backend.fault is not None and len(errors(caplog)) == 1
    assert backend.emulate(0.01) == pytest.approx(0.02) and seen == [400.0]


def test_wrapping_a_simulated_backend_is_harmless() -> None:
    backend = get_backend('simulated', failover=True, frequencies_mhz=[500.0, 1000.0])
    assert isinstance(backend, FailoverBackend)
    assert backend.name == 'simulated' and not backend.is_real and backend.fault is None
    assert backend.set_frequency_mhz(480.0) == 500.0 and backend.current_frequency_mhz() == 500.0
    backend.reset()
    assert backend.current_frequency_mhz() == 1000.0
    assert not isinstance(get_backend('simulated'), FailoverBackend)
