"""Jetson GPU devfreq backend on a fake tree: Hz units, clamp, snapping, restore."""
from __future__ import annotations

from pathlib import Path

import pytest
from fake_sysfs import make_devfreq_gpu

from pls_perception.dvfs import get_backend
from pls_perception.dvfs.jetson import JetsonGpuBackend
from pls_perception.errors import NotSupported


def test_clamp_snap_and_restore(tmp_path: Path) -> None:
    node = make_devfreq_gpu(tmp_path)
    b = get_backend('jetson', sysfs_root=str(tmp_path))
    assert b.available_frequencies_mhz() == [306.0, 408.0, 510.0, 612.0, 624.75]
    assert b.current_frequency_mhz() == 624.75
    assert b.set_frequency_mhz(600.0) == 612.0
    assert (node / 'min_freq').read_text() == '612000000'
    assert (node / 'max_freq').read_text() == '612000000'
    b.set_frequency_mhz(306.0)
    b.reset()
    assert (node / 'min_freq').read_text() == '306000000'
    assert (node / 'max_freq').read_text() == '624750000'


def test_named_device_and_missing(tmp_path: Path) -> None:
    make_devfreq_gpu(tmp_path, name='17000000.ga10b')
    assert JetsonGpuBackend(tmp_path, device='17000000.ga10b').name == 'jetson-gpu(17000000.ga10b)'
    with pytest.raises(NotSupported, match='devfreq'):
        JetsonGpuBackend(tmp_path, device='nope')
    with pytest.raises(NotSupported, match='devfreq'):
        JetsonGpuBackend(tmp_path / 'empty')
