"""NVIDIA Jetson GPU backend through its devfreq node (``/sys/class/devfreq/<gpu>``).

The GPU frequency is pinned by clamping devfreq ``min_freq``/``max_freq`` (in Hz) to the target;
the original limits are restored by :meth:`reset` and at exit. The Jetson CPU is an ordinary
cpufreq device: use the ``cpufreq`` backend for it.
"""
from __future__ import annotations

from pathlib import Path

from pls_perception.dvfs.base import DvfsBackend
from pls_perception.dvfs.sysfs import MinMaxLimits, read_int, read_text, resolve
from pls_perception.errors import NotSupported

DEVFREQ_DIR = '/sys/class/devfreq'
# devfreq node names of Jetson integrated GPUs (Orin: 17000000.ga10b / .gpu, Xavier: .gv11b).
GPU_NODE_MARKERS: tuple[str, ...] = ('gpu', 'ga10b', 'gv11b', 'gp10b', 'gm20b')


def find_gpu_devfreq(sysfs_root: str | Path = '/') -> Path | None:
    base = resolve(sysfs_root, DEVFREQ_DIR)
    if not base.is_dir():
        return None
    for node in sorted(base.iterdir()):
        if any(marker in node.name for marker in GPU_NODE_MARKERS) \
                and (node / 'available_frequencies').is_file():
            return node
    return None


class JetsonGpuBackend(DvfsBackend):
    name = 'jetson-gpu'
    is_real = True

    def __init__(self, sysfs_root: str | Path = '/', device: str | None = None) -> None:
        node = (resolve(sysfs_root, DEVFREQ_DIR) / device) if device else \
            find_gpu_devfreq(sysfs_root)
        if node is None or not (node / 'available_frequencies').is_file():
            raise NotSupported(f'no Jetson GPU devfreq node under '
                               f'{resolve(sysfs_root, DEVFREQ_DIR)} (device={device!r})')
        self.node = node
        self.name = f'jetson-gpu({node.name})'
        self.limits = MinMaxLimits(node / 'min_freq', node / 'max_freq')
        self._available_hz = sorted({int(v) for v in
                                     read_text(node / 'available_frequencies').split()})
        if not self._available_hz:
            raise NotSupported(f'{node}/available_frequencies is empty')

    def available_frequencies_mhz(self) -> list[float]:
        return [hz / 1e6 for hz in self._available_hz]

    def current_frequency_mhz(self) -> float:
        return read_int(self.node / 'cur_freq') / 1e6

    def _apply_frequency_mhz(self, freq_mhz: float) -> None:
        self._arm_exit_restore()
        target_hz = round(freq_mhz * 1e6)
        self.limits.clamp(min(self._available_hz, key=lambda a: abs(a - target_hz)))

    def writable(self) -> bool:
        return self.limits.writable()

    def reset(self) -> None:
        self.limits.restore()
        self._disarm_exit_restore()
