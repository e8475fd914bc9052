"""EnergyMeter: modelled P(f)*t on the simulated backend, measured via a fake zeus module."""
from __future__ import annotations

import sys
import time
import types

import pytest

from pls_perception.dvfs import SimulatedBackend
from pls_perception.dvfs.energy import EnergyMeter, profile_power_fn
from pls_perception.operating_points.profiles import load_profile
from pls_perception.paths import config_dir


class FakeBackend(SimulatedBackend):
    name = 'fake-real'
    is_real = True


def fake_zeus(gpus: list[int]) -> types.ModuleType:
    mod = types.ModuleType('zeus.monitor')

    class Measurement:
        time, total_energy = 0.5, 2.0

    class ZeusMonitor:
        def __init__(self, gpu_indices=None, cpu_indices=None) -> None:
            self.gpu_indices, self.cpu_indices = gpus, []

        def begin_window(self, key: str) -> None:
            self.key = key

        def end_window(self, key: str) -> Measurement:
            assert key == self.key
            return Measurement()
    mod.ZeusMonitor = ZeusMonitor
    return mod


def test_modelled_energy_is_power_times_time() -> None:
    backend = SimulatedBackend([500.0, 1000.0])
    backend.set_frequency_mhz(500.0)
    meter = EnergyMeter(lambda f: f / 100.0, backend)
    assert meter.source == 'modelled'
    with meter.window('frame') as out:
        time.sleep(0.02)
    reading = out[0]
    assert reading.source == 'modelled' and reading.freq_mhz == 500.0
    assert reading.energy_mj == pytest.approx(5.0 * reading.duration_s * 1000.0)
    assert reading.power_w == pytest.approx(5.0)
    with pytest.raises(ValueError, match='not opened'):
        meter.end_window('frame')
    # a frame's modelled energy covers the latency it reports, at the same power
    frame = reading.lasting(0.1)
    assert (frame.energy_mj, frame.duration_s, frame.power_w) == pytest.approx((500.0, 0.1, 5.0))


def test_measured_with_zeus_on_real_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, 'zeus', types.ModuleType('zeus'))
    monkeypatch.setitem(sys.modules, 'zeus.monitor', fake_zeus([0]))
    meter = EnergyMeter(lambda f: 1.0, FakeBackend([1000.0]))
    meter.begin_window('w')
    reading = meter.end_window('w')
    assert reading.source == 'measured' and reading.energy_mj == 2000.0
    assert reading.lasting(0.1) == reading  # a measurement is not rescaled
    # the simulated backend never uses zeus: its frequency is not real
    assert EnergyMeter(lambda f: 1.0, SimulatedBackend([1000.0])).source == 'modelled'


def test_zeus_without_sensors_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, 'zeus', types.ModuleType('zeus'))
    monkeypatch.setitem(sys.modules, 'zeus.monitor', fake_zeus([]))
    assert EnergyMeter(lambda f: 1.0, FakeBackend([1000.0])).source == 'modelled'


def test_profile_power_fn_uses_model_and_scale() -> None:
    prof = load_profile(config_dir() / 'profiles' / 'orin_nano_gpu.yaml')
    fn = profile_power_fn(prof)
    assert fn(612.0) == pytest.approx(prof.power_w[prof.frequency_index(612.0)], rel=1e-5)
    scaled = profile_power_fn(prof, keep_ratio=0.2)
    assert scaled(612.0) == pytest.approx(fn(612.0) * prof.power_scale[1])
