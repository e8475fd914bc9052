"""DVFS backends: one small interface, one module per backend, picked by :func:`get_backend`.

``auto`` tries the real backends in order (Jetson devfreq, NVIDIA NVML, Linux cpufreq) and falls
back to the simulated backend with a warning. ``failover=True`` wraps the result in a
:class:`FailoverBackend`, which switches to the simulated backend if the real one fails mid-run.
Vendor libraries are imported lazily, so a CPU-only machine imports this package without NVML.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from pls_perception.dvfs.base import DvfsBackend, snap_frequency_mhz
from pls_perception.dvfs.failover import FailoverBackend
from pls_perception.dvfs.simulated import SimulatedBackend
from pls_perception.errors import BackendError

LOG = logging.getLogger(__name__)

BACKEND_NAMES: tuple[str, ...] = ('auto', 'jetson', 'nvidia', 'cpufreq', 'simulated')

__all__ = ['BACKEND_NAMES', 'DvfsBackend', 'FailoverBackend', 'SimulatedBackend', 'get_backend',
           'snap_frequency_mhz']


def _make_jetson(sysfs_root: str, **kw: object) -> DvfsBackend:
    from pls_perception.dvfs.jetson import JetsonGpuBackend
    return JetsonGpuBackend(sysfs_root=sysfs_root, **kw)


def _make_nvidia(sysfs_root: str, **kw: object) -> DvfsBackend:
    from pls_perception.dvfs.nvidia import NvmlBackend
    return NvmlBackend(**kw)


def _make_cpufreq(sysfs_root: str, **kw: object) -> DvfsBackend:
    from pls_perception.dvfs.cpufreq import CpufreqBackend
    return CpufreqBackend(sysfs_root=sysfs_root, **kw)


def _make_simulated(sysfs_root: str, **kw: object) -> DvfsBackend:
    return SimulatedBackend(**kw)


_FACTORIES: dict[str, Callable[..., DvfsBackend]] = {
    'jetson': _make_jetson, 'nvidia': _make_nvidia, 'cpufreq': _make_cpufreq,
    'simulated': _make_simulated}


def get_backend(name: str = 'auto', sysfs_root: str = '/', failover: bool = False,
                **kw: object) -> DvfsBackend:
    """Create the backend ``name``; ``auto`` = first real backend this process may write to,
    else simulated (with a warning saying why each real backend was skipped).

    ``failover=True`` returns it wrapped in a :class:`FailoverBackend` (errors while *creating*
    the backend still raise; only later faults fall back to simulated).

    Extra keyword arguments go to the backend (e.g. ``frequencies_mhz`` for the simulated one,
    ``policies`` for cpufreq, ``device`` for Jetson, ``device_index`` for NVML); with ``auto``
    they only reach the simulated fallback (real backends are probed with their defaults).
    Raises ValueError for an unknown name and NotSupported/PermissionDenied when an explicitly
    named real backend cannot be used.
    """
    backend = _create_backend(name, sysfs_root, **kw)
    return FailoverBackend(backend) if failover else backend


def _create_backend(name: str, sysfs_root: str, **kw: object) -> DvfsBackend:
    if name not in BACKEND_NAMES:
        raise ValueError(f'unknown DVFS backend {name!r}; choose one of {BACKEND_NAMES}')
    if name != 'auto':
        return _FACTORIES[name](sysfs_root, **kw)
    reasons = []
    for candidate in ('jetson', 'nvidia', 'cpufreq'):
        try:
            backend = _FACTORIES[candidate](sysfs_root)
        except BackendError as e:
            reasons.append(f'{candidate}: {e}')
            continue
        if not backend.writable():
            reasons.append(f'{candidate}: {backend.name} is read-only for this user (needs root)')
            continue
        LOG.info('DVFS backend auto-selected: %s', backend.name)
        return backend
    LOG.warning('no real DVFS backend available (%s); using the simulated backend, latency is '
                'emulated with sleeps and energy is modelled', '; '.join(reasons))
    return SimulatedBackend(**kw)

