"""NVIDIA discrete GPU backend through NVML (the optional ``nvidia-ml-py`` package, ``pynvml``).

Lists the supported graphics clocks at the highest memory clock, locks the graphics clock with
``nvmlDeviceSetGpuLockedClocks(f, f)`` and resets it with ``nvmlDeviceResetGpuLockedClocks``
(also at exit). ``pynvml`` is imported lazily, only when this backend is created, so machines
without it still import the package; NVML errors become NotSupported / PermissionDenied.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from pls_perception.dvfs.base import DvfsBackend
from pls_perception.errors import BackendError, NotSupported, PermissionDenied

T = TypeVar('T')


def _import_pynvml() -> Any:
    try:
        return importlib.import_module('pynvml')
    except ImportError as e:
        raise NotSupported('NVML is not available: install the optional nvidia-ml-py package '
                           '(pip install nvidia-ml-py) on a machine with an NVIDIA GPU') from e


class NvmlBackend(DvfsBackend):
    name = 'nvidia'
    is_real = True

    def __init__(self, device_index: int = 0) -> None:
        self._nvml = _import_pynvml()
        self._call(self._nvml.nvmlInit)
        self._handle = self._call(self._nvml.nvmlDeviceGetHandleByIndex, int(device_index))
        mem_clocks = self._call(self._nvml.nvmlDeviceGetSupportedMemoryClocks, self._handle)
        if not mem_clocks:
            raise NotSupported(f'GPU {device_index} reports no supported memory clocks')
        clocks = self._call(self._nvml.nvmlDeviceGetSupportedGraphicsClocks, self._handle,
                            max(mem_clocks))
        if not clocks:
            raise NotSupported(f'GPU {device_index} reports no supported graphics clocks')
        self._clocks_mhz = sorted({float(c) for c in clocks})
        self.name = f'nvidia(gpu{int(device_index)})'

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run an NVML call, translating NVMLError by its code (``raise ... from e``)."""
        nvml = self._nvml
        try:
            return fn(*args)
        except nvml.NVMLError as e:
            code = getattr(e, 'value', None)
            if code == getattr(nvml, 'NVML_ERROR_NO_PERMISSION', object()):
                raise PermissionDenied(f'NVML {fn.__name__}: no permission ({e}); clock locking '
                                       f'needs root or admin rights') from e
            if code in {getattr(nvml, n, object()) for n in (
                    'NVML_ERROR_NOT_SUPPORTED', 'NVML_ERROR_LIBRARY_NOT_FOUND',
                    'NVML_ERROR_DRIVER_NOT_LOADED', 'NVML_ERROR_NOT_FOUND',
                    'NVML_ERROR_INVALID_ARGUMENT')}:
                raise NotSupported(f'NVML {fn.__name__}: not supported here ({e})') from e
            raise BackendError(f'NVML {fn.__name__} failed: {e}') from e

    def available_frequencies_mhz(self) -> list[float]:
        return list(self._clocks_mhz)

    def current_frequency_mhz(self) -> float:
        return float(self._call(self._nvml.nvmlDeviceGetClockInfo, self._handle,
                                self._nvml.NVML_CLOCK_GRAPHICS))

    def _apply_frequency_mhz(self, freq_mhz: float) -> None:
        self._arm_exit_restore()
        mhz = int(round(freq_mhz))
        self._call(self._nvml.nvmlDeviceSetGpuLockedClocks, self._handle, mhz, mhz)

    def reset(self) -> None:
        if getattr(self, '_exit_hook', False):
            self._call(self._nvml.nvmlDeviceResetGpuLockedClocks, self._handle)
        self._disarm_exit_restore()
