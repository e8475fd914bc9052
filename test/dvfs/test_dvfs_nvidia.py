"""NVML backend against a fake ``pynvml`` module (no GPU here): clocks, lock, reset, errors."""
from __future__ import annotations

import sys
import types

import pytest

from pls_perception.dvfs import get_backend
from pls_perception.errors import BackendError, NotSupported, PermissionDenied


class FakeNvmlError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f'NVML error {value}')
        self.value = value


def fake_pynvml(fail_lock_with: int | None = None) -> types.ModuleType:
    mod = types.ModuleType('pynvml')
    state = {'locked': None, 'calls': []}
    mod.NVMLError = FakeNvmlError
    mod.NVML_ERROR_NOT_SUPPORTED, mod.NVML_ERROR_NO_PERMISSION = 3, 4
    mod.NVML_ERROR_LIBRARY_NOT_FOUND, mod.NVML_ERROR_UNKNOWN = 12, 999
    mod.NVML_CLOCK_GRAPHICS = 0
    mod.state = state
    mod.nvmlInit = lambda: state['calls'].append('init')
    mod.nvmlDeviceGetHandleByIndex = lambda i: f'gpu{i}'
    mod.nvmlDeviceGetSupportedMemoryClocks = lambda h: [405, 5001]
    mod.nvmlDeviceGetSupportedGraphicsClocks = \
        lambda h, mem: [1980, 1500, 1005, 210] if mem == 5001 else [210]

    def lock(h: str, lo: int, hi: int) -> None:
        if fail_lock_with is not None:
            raise FakeNvmlError(fail_lock_with)
        state['locked'] = (lo, hi)

    def reset(h: str) -> None:
        state['locked'] = None
    mod.nvmlDeviceSetGpuLockedClocks = lock
    mod.nvmlDeviceResetGpuLockedClocks = reset
    mod.nvmlDeviceGetClockInfo = lambda h, kind: (state['locked'] or (1980, 1980))[0]
    return mod


def test_clocks_lock_snap_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = fake_pynvml()
    monkeypatch.setitem(sys.modules, 'pynvml', mod)
    b = get_backend('nvidia', device_index=1)
    assert b.name == 'nvidia(gpu1)' and b.is_real
    assert b.available_frequencies_mhz() == [210.0, 1005.0, 1500.0, 1980.0]
    assert b.set_frequency_mhz(1400.0) == 1500.0
    assert mod.state['locked'] == (1500, 1500) and b.current_frequency_mhz() == 1500.0
    b.reset()
    assert mod.state['locked'] is None


@pytest.mark.parametrize('code, exc', [(4, PermissionDenied), (3, NotSupported),
                                       (999, BackendError)])
def test_nvml_errors_translated(monkeypatch: pytest.MonkeyPatch, code: int, exc: type) -> None:
    monkeypatch.setitem(sys.modules, 'pynvml', fake_pynvml(fail_lock_with=code))
    b = get_backend('nvidia')
    with pytest.raises(exc) as info:
        b.set_frequency_mhz(1980.0)
    assert type(info.value) is exc and isinstance(info.value.__cause__, FakeNvmlError)
    b._disarm_exit_restore()


def test_missing_pynvml_is_not_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, 'pynvml', None)     # import raises ImportError
    with pytest.raises(NotSupported, match='nvidia-ml-py'):
        get_backend('nvidia')
