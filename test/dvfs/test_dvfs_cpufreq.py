"""cpufreq backend against fake sysfs trees: setspeed vs clamp, snapping, restore, errors."""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_sysfs import make_policy, read

from pls_perception.dvfs import get_backend
from pls_perception.dvfs.base import translate_os_error
from pls_perception.dvfs.cpufreq import CpufreqBackend
from pls_perception.errors import BackendError, NotSupported, PermissionDenied


def test_userspace_setspeed_and_restore(cpufreq_root: Path) -> None:
    backend = CpufreqBackend(sysfs_root=cpufreq_root)
    assert backend.available_frequencies_mhz() == [400.0, 800.0, 1200.0]
    assert backend.set_frequency_mhz(800.0) == 800.0
    for idx in (0, 4):
        pol = cpufreq_root / f'sys/devices/system/cpu/cpufreq/policy{idx}'
        assert read(pol, 'scaling_governor') == 'userspace'
        assert read(pol, 'scaling_setspeed') == '800000'
    backend.reset()
    for idx in (0, 4):
        pol = cpufreq_root / f'sys/devices/system/cpu/cpufreq/policy{idx}'
        assert read(pol, 'scaling_governor') == 'schedutil'


def test_clamp_min_max_without_userspace_and_restore(tmp_path: Path) -> None:
    pol = make_policy(tmp_path, 0, governors='schedutil performance')
    backend = CpufreqBackend(sysfs_root=tmp_path)
    backend.set_frequency_mhz(400.0)
    assert (read(pol, 'scaling_min_freq'), read(pol, 'scaling_max_freq')) == ('400000', '400000')
    backend.set_frequency_mhz(1200.0)          # raising: max must be written before min
    assert (read(pol, 'scaling_min_freq'), read(pol, 'scaling_max_freq')) == ('1200000',
                                                                              '1200000')
    assert read(pol, 'scaling_governor') == 'schedutil'
    backend.reset()
    assert (read(pol, 'scaling_min_freq'), read(pol, 'scaling_max_freq')) == ('400000', '1200000')


def test_snapping_logs_and_applies_nearest(cpufreq_root: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    backend = get_backend('cpufreq', sysfs_root=str(cpufreq_root))
    with caplog.at_level(logging.INFO):
        assert backend.set_frequency_mhz(950.0) == 800.0
    assert 'snapped to 800.000 MHz' in caplog.text
    with pytest.raises(ValueError, match='finite positive'):
        backend.set_frequency_mhz(float('nan'))
    backend.reset()


def test_policy_selection_and_missing_tree(cpufreq_root: Path, tmp_path: Path) -> None:
    backend = CpufreqBackend(sysfs_root=cpufreq_root, policies=[4])
    assert backend.name == 'cpufreq(policy4)'
    with pytest.raises(NotSupported, match='policy2'):
        CpufreqBackend(sysfs_root=cpufreq_root, policies=[2])
    with pytest.raises(NotSupported, match='no cpufreq policies'):
        CpufreqBackend(sysfs_root=tmp_path / 'empty')


def test_no_frequency_table_uses_cpuinfo_range(tmp_path: Path) -> None:
    make_policy(tmp_path, 0, table=False)
    backend = CpufreqBackend(sysfs_root=tmp_path)
    assert backend.available_frequencies_mhz()[0] == 400.0
    assert backend.available_frequencies_mhz()[-1] == 1200.0


def test_reset_registered_at_exit_until_reset(cpufreq_root: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    registered: list[object] = []
    monkeypatch.setattr(atexit, 'register', registered.append)
    monkeypatch.setattr(atexit, 'unregister', registered.remove)
    backend = CpufreqBackend(sysfs_root=cpufreq_root)
    assert registered == []
    backend.set_frequency_mhz(400.0)
    backend.set_frequency_mhz(800.0)
    assert registered == [backend.reset]
    backend.reset()
    assert registered == []


def test_reset_restores_every_policy_it_can_then_names_the_failures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two of three policies cannot be restored (a directory where scaling_governor was: a real
    EISDIR): the third is restored anyway, one error names both, and a later reset retries."""
    registered: list[object] = []
    monkeypatch.setattr(atexit, 'register', registered.append)
    monkeypatch.setattr(atexit, 'unregister', registered.remove)
    pols = {idx: make_policy(tmp_path, idx) for idx in (0, 2, 4)}
    backend = CpufreqBackend(sysfs_root=tmp_path)
    backend.set_frequency_mhz(400.0)
    for idx in (0, 2):
        (pols[idx] / 'scaling_governor').unlink()
        (pols[idx] / 'scaling_governor').mkdir()
    with pytest.raises(BackendError) as info:
        backend.reset()
    message = str(info.value)
    assert message.startswith(f'{backend.name}: could not restore 2 of 3 policies: policy0: ')
    assert '; policy2: ' in message and 'policy4' not in message.replace(backend.name, '')
    assert 'scaling_governor' in message and isinstance(info.value.__cause__, NotSupported)
    assert read(pols[4], 'scaling_governor') == 'schedutil'
    assert read(pols[4], 'scaling_setspeed') == '400000'
    assert registered == [backend.reset]         # still armed: the exit reset retries them
    for idx in (0, 2):                           # the files come back (CPUs online again)
        (pols[idx] / 'scaling_governor').rmdir()
        (pols[idx] / 'scaling_governor').write_text('userspace\n')
    backend.reset()
    assert [read(pols[idx], 'scaling_governor') for idx in (0, 2, 4)] == ['schedutil'] * 3
    assert registered == []


def test_missing_file_is_not_supported(cpufreq_root: Path) -> None:
    pol = cpufreq_root / 'sys/devices/system/cpu/cpufreq/policy0'
    (pol / 'scaling_setspeed').unlink()
    (pol / 'scaling_min_freq').unlink()
    (pol / 'scaling_min_freq').mkdir()         # a directory where a file should be
    backend = CpufreqBackend(sysfs_root=cpufreq_root, policies=[0])
    with pytest.raises(NotSupported, match='scaling_min_freq') as info:
        backend.set_frequency_mhz(800.0)
    assert isinstance(info.value.__cause__, OSError)


def test_translate_os_error() -> None:
    err = translate_os_error(PermissionError(13, 'Permission denied'), '/x')
    assert isinstance(err, PermissionDenied) and '/x' in str(err)
    assert isinstance(translate_os_error(FileNotFoundError(2, 'No such file'), '/y'),
                      NotSupported)


def _set_as_nobody(root: Path) -> str:
    """Fork, drop to uid 65534 in the child, try to set a frequency; return what it reported."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:                                # child: never returns into pytest
        code = 1
        try:
            os.close(read_fd)
            os.setuid(65534)
            try:
                CpufreqBackend(sysfs_root=root).set_frequency_mhz(800.0)
                msg = 'no error'
            except PermissionDenied as e:
                cause = type(e.__cause__).__name__
                msg = f'PermissionDenied({cause}): {e}'
            except Exception as e:  # noqa: BLE001 - report anything else to the parent
                msg = f'unexpected {e!r}'
            msg += f" | auto={get_backend('auto', sysfs_root=str(root)).name}"
            os.write(write_fd, msg.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        out = fh.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return out


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A temp dir user nobody can traverse (pytest's tmp_path lives under a 0700 dir)."""
    root = Path(tempfile.mkdtemp(prefix='pls_fake_sysfs_'))
    root.chmod(0o755)
    yield root
    for path in root.rglob('*'):
        path.chmod(0o755)
    shutil.rmtree(root)


def test_permission_denied_is_real_and_clear(world_readable_dir: Path) -> None:
    """A genuinely read-only sysfs file: as root, the backend runs as user nobody in a fork."""
    root = world_readable_dir
    pol = make_policy(root, 0)
    for path in root.rglob('*'):
        path.chmod(0o755 if path.is_dir() else 0o444)
    if os.geteuid() == 0:
        out = _set_as_nobody(root)
    else:
        with pytest.raises(PermissionDenied) as info:
            CpufreqBackend(sysfs_root=root).set_frequency_mhz(800.0)
        out = f'PermissionDenied({type(info.value.__cause__).__name__}): {info.value}'
        out += f" | auto={get_backend('auto', sysfs_root=str(root)).name}"
    assert out.endswith(' | auto=simulated'), 'auto must skip a read-only cpufreq'
    assert out.startswith('PermissionDenied(PermissionError): permission denied on'), out
    assert 'root' in out
    assert read(pol, 'scaling_governor') == 'schedutil'
