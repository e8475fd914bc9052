"""Simulated backend and get_backend: snapping, emulated stretching, auto fallback."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from fake_sysfs import make_devfreq_gpu, make_policy

from pls_perception import paths
from pls_perception.dvfs import DvfsBackend, SimulatedBackend, get_backend, snap_frequency_mhz
from pls_perception.dvfs.simulated import ORIN_NANO_CPU_FREQUENCIES_MHZ, profile_latency_model
from pls_perception.operating_points.profiles import load_profile


def test_snap_frequency() -> None:
    assert snap_frequency_mhz(500.0, [400.0, 800.0]) == 400.0
    assert snap_frequency_mhz(600.0, [400.0, 800.0]) == 800.0      # tie goes up
    for bad in (0.0, -1.0, float('nan'), float('inf')):
        with pytest.raises(ValueError, match='finite positive'):
            snap_frequency_mhz(bad, [400.0])
    with pytest.raises(ValueError, match='no available'):
        snap_frequency_mhz(400.0, [])


def test_simulated_emulates_stretch_with_sleep() -> None:
    slept: list[float] = []
    b = SimulatedBackend([500.0, 1000.0], sleep_fn=slept.append)
    assert not b.is_real and b.current_frequency_mhz() == 1000.0
    assert b.emulate(0.01) == 0.0 and slept == []
    assert b.set_frequency_mhz(480.0) == 500.0
    assert b.emulate(0.01) == pytest.approx(0.01) and slept == [pytest.approx(0.01)]
    b.reset()
    assert b.current_frequency_mhz() == 1000.0
    with pytest.raises(ValueError, match='compute_s'):
        b.emulate(float('nan'))


def test_simulated_real_sleep_stretches_wall_time() -> None:
    b = SimulatedBackend([250.0, 1000.0])
    b.set_frequency_mhz(250.0)
    t0 = time.perf_counter()
    extra = b.emulate(0.01)
    assert extra == pytest.approx(0.03)
    assert time.perf_counter() - t0 >= 0.029


def test_simulated_rejects_bad_frequency_lists() -> None:
    for bad in ([], [0.0], [float('nan')]):
        with pytest.raises(ValueError, match='frequencies_mhz'):
            SimulatedBackend(bad)


def test_auto_falls_back_to_simulated_with_warning(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        b = get_backend('auto', sysfs_root=str(tmp_path))
    assert isinstance(b, SimulatedBackend)
    assert b.available_frequencies_mhz() == list(ORIN_NANO_CPU_FREQUENCIES_MHZ)
    assert 'simulated' in caplog.text and 'cpufreq' in caplog.text
    assert get_backend('auto', sysfs_root=str(tmp_path), frequencies_mhz=[1.0, 2.0]) \
        .available_frequencies_mhz() == [1.0, 2.0]


def test_auto_prefers_real_backends(tmp_path: Path) -> None:
    make_policy(tmp_path, 0)
    assert get_backend('auto', sysfs_root=str(tmp_path)).name == 'cpufreq(policy0)'
    make_devfreq_gpu(tmp_path)
    b = get_backend('auto', sysfs_root=str(tmp_path))
    assert isinstance(b, DvfsBackend) and b.name.startswith('jetson-gpu') and b.is_real


def test_unknown_backend_name() -> None:
    with pytest.raises(ValueError, match='unknown DVFS backend'):
        get_backend('turbo')


def test_device_emulation_takes_the_profile_latency_at_ratio_and_frequency() -> None:
    profile = load_profile(paths.config_dir() / 'profiles' / 'orin_nano_cpu.yaml')
    slept: list[float] = []
    backend = SimulatedBackend(profile.frequencies_mhz, sleep_fn=slept.append,
                               latency_model=profile_latency_model(profile),
                               device_name=profile.device_name)
    assert 'emulating Jetson Orin Nano CPU' in backend.describe()
    ri, fi = profile.ratio_index(0.5), profile.frequency_index(652.8)
    backend.set_frequency_mhz(652.8)
    assert backend.emulate(0.010, keep_ratio=0.5) == pytest.approx(
        profile.latency_ms[ri, fi] / 1e3 - 0.010)
    # between two profile ratios: linear in r
    between = (profile.latency_ms[ri, fi] + profile.latency_ms[ri + 1, fi]) / 2
    assert backend.emulated_s(0.0, keep_ratio=0.55) == pytest.approx(between / 1e3)
    # a host slower than the device adds nothing
    assert backend.emulate(10.0, keep_ratio=1.0) == 0.0
    assert len(slept) == 1


def test_a_new_operating_point_cuts_the_emulated_sleep_short() -> None:
    backend = SimulatedBackend([100.0, 1000.0])
    backend.set_frequency_mhz(100.0)             # 0.05 s of compute -> 0.45 s more
    interrupt = threading.Event()
    threading.Timer(0.05, interrupt.set).start()
    slept = backend.emulate(0.05, interrupt=interrupt)
    assert 0.04 <= slept < 0.45
    assert backend.emulate(0.001, interrupt=threading.Event()) == pytest.approx(0.009, abs=0.05)
