"""Fake sysfs trees (cpufreq policies, Jetson devfreq GPU) for the DVFS backend tests and the
node fault tests (test/ is on sys.path through test/conftest.py, like tiny_cifar)."""
from __future__ import annotations

from pathlib import Path

FREQS_KHZ = (400000, 800000, 1200000)


def read(node: Path, name: str) -> str:
    """The stripped content of sysfs file ``name`` in directory ``node``."""
    return (node / name).read_text().strip()


def make_policy(root: Path, index: int, governors: str = 'userspace schedutil performance',
                table: bool = True) -> Path:
    pol = root / 'sys/devices/system/cpu/cpufreq' / f'policy{index}'
    pol.mkdir(parents=True)
    files = {
        'scaling_available_governors': governors, 'scaling_governor': 'schedutil',
        'scaling_min_freq': str(FREQS_KHZ[0]), 'scaling_max_freq': str(FREQS_KHZ[-1]),
        'scaling_cur_freq': str(FREQS_KHZ[-1]), 'cpuinfo_min_freq': str(FREQS_KHZ[0]),
        'cpuinfo_max_freq': str(FREQS_KHZ[-1]), 'scaling_setspeed': '<unsupported>'}
    if table:
        files['scaling_available_frequencies'] = ' '.join(map(str, FREQS_KHZ)) + ' '
    for name, value in files.items():
        (pol / name).write_text(value + '\n')
    return pol


def make_devfreq_gpu(root: Path, name: str = '17000000.gpu') -> Path:
    node = root / 'sys/class/devfreq' / name
    node.mkdir(parents=True)
    hz = (306000000, 408000000, 510000000, 612000000, 624750000)
    for fname, value in {'available_frequencies': ' '.join(map(str, hz)),
                         'min_freq': str(hz[0]), 'max_freq': str(hz[-1]),
                         'cur_freq': str(hz[-1]), 'governor': 'nvhost_podgov'}.items():
        (node / fname).write_text(value + '\n')
    return node
