"""Linux cpufreq backend: per-policy frequency control through sysfs.

Uses the ``userspace`` governor and ``scaling_setspeed`` where the policy offers them, otherwise
clamps ``scaling_min_freq``/``scaling_max_freq`` to the target. The original governor and limits
are remembered on the first change and restored by :meth:`reset` and at interpreter exit. The
sysfs root is configurable so tests run against a fake tree. sysfs frequencies are in kHz.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from pls_perception.dvfs.base import DvfsBackend
from pls_perception.dvfs.sysfs import MinMaxLimits, read_int, read_text, resolve, write_text
from pls_perception.errors import BackendError, NotSupported

LOG = logging.getLogger(__name__)
CPUFREQ_DIR = '/sys/devices/system/cpu/cpufreq'
STEP_KHZ_WITHOUT_TABLE = 100_000


class CpufreqPolicy:
    """One ``policyN`` directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        self.limits = MinMaxLimits(path / 'scaling_min_freq', path / 'scaling_max_freq')
        self.original_governor: str | None = None
        governors = path / 'scaling_available_governors'
        self.use_setspeed = (governors.is_file() and 'userspace' in read_text(governors).split()
                             and (path / 'scaling_setspeed').is_file())
        self.available_khz = self._available_khz()

    def _available_khz(self) -> list[int]:
        table = self.path / 'scaling_available_frequencies'
        if table.is_file():
            values = sorted({int(v) for v in read_text(table).split()})
            if values:
                return values
        lo = read_int(self.path / 'cpuinfo_min_freq')
        hi = read_int(self.path / 'cpuinfo_max_freq')
        return sorted(set(range(lo, hi, STEP_KHZ_WITHOUT_TABLE)) | {hi})

    def current_khz(self) -> int:
        return read_int(self.path / 'scaling_cur_freq')

    def apply_khz(self, khz: int) -> None:
        if self.use_setspeed:
            if self.original_governor is None:
                self.original_governor = read_text(self.path / 'scaling_governor')
                write_text(self.path / 'scaling_governor', 'userspace')
            write_text(self.path / 'scaling_setspeed', str(khz))
        else:
            self.limits.clamp(khz)

    def restore(self) -> None:
        if self.original_governor is not None:
            write_text(self.path / 'scaling_governor', self.original_governor)
            self.original_governor = None
        self.limits.restore()


def cpufreq_policies(sysfs_root: str | Path = '/') -> list[Path]:
    base = resolve(sysfs_root, CPUFREQ_DIR)
    if not base.is_dir():
        return []
    return sorted((p for p in base.glob('policy*') if p.is_dir()),
                  key=lambda p: int(p.name[len('policy'):] or 0))


class CpufreqBackend(DvfsBackend):
    """Controls the given cpufreq policies (default: all) together.

    The available list is the first policy's; each policy gets the frequency snapped to its own
    table. ``current_frequency_mhz`` reads the first policy's ``scaling_cur_freq``.
    """

    name = 'cpufreq'
    is_real = True

    def __init__(self, sysfs_root: str | Path = '/', policies: Sequence[int] | None = None
                 ) -> None:
        found = cpufreq_policies(sysfs_root)
        if policies is not None:
            wanted = {f'policy{int(i)}' for i in policies}
            missing = wanted - {p.name for p in found}
            if missing:
                raise NotSupported(f'cpufreq policies {sorted(missing)} not found under '
                                   f'{resolve(sysfs_root, CPUFREQ_DIR)}')
            found = [p for p in found if p.name in wanted]
        if not found:
            raise NotSupported(f'no cpufreq policies under {resolve(sysfs_root, CPUFREQ_DIR)}')
        self.policies = [CpufreqPolicy(p) for p in found]
        self.name = f"cpufreq({','.join(p.name for p in self.policies)})"

    def available_frequencies_mhz(self) -> list[float]:
        return [khz / 1000.0 for khz in self.policies[0].available_khz]

    def current_frequency_mhz(self) -> float:
        return self.policies[0].current_khz() / 1000.0

    def _apply_frequency_mhz(self, freq_mhz: float) -> None:
        target_khz = round(freq_mhz * 1000)
        self._arm_exit_restore()
        for policy in self.policies:
            khz = min(policy.available_khz, key=lambda a: (abs(a - target_khz), -a))
            policy.apply_khz(khz)
            LOG.debug('%s: %d kHz (%s)', policy.name, khz,
                      'setspeed' if policy.use_setspeed else 'min/max clamp')

    def writable(self) -> bool:
        return all(p.limits.writable() for p in self.policies)

    def reset(self) -> None:
        """Restore every policy it can, then raise one BackendError naming those that failed.

        One failing policy (offline CPU, revoked permission) must not leave the later ones on
        the userspace governor. A policy that failed keeps what it remembered, so a later reset
        (or the one at interpreter exit, still armed then) retries it.
        """
        failed: list[tuple[str, BackendError]] = []
        for policy in self.policies:
            try:
                policy.restore()
            except BackendError as e:
                failed.append((policy.name, e))
        if failed:
            raise BackendError(f'{self.name}: could not restore {len(failed)} of '
                               f'{len(self.policies)} policies: '
                               + '; '.join(f'{name}: {e}' for name, e in failed)) \
                from failed[0][1]
        self._disarm_exit_restore()
