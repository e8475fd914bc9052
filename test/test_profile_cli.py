"""pls-profile: latency grid on simulated and (fake) real backends, and the CLI end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pls_perception.dvfs import SimulatedBackend
from pls_perception.profiles import load_profile
from pls_perception.tools import profile_cli


class CountingEngine:
    """Engine stand-in whose latency is known: 1 ms per unit of keep ratio, from a fake clock."""

    name = 'counting'

    def __init__(self, backend: SimulatedBackend | None = None) -> None:
        self.keep_ratio = 1.0
        self.backend = backend
        self.now = 0.0
        self.calls = 0

    def set_keep_ratio(self, ratio: float) -> None:
        self.keep_ratio = ratio

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        scale = 1.0 if self.backend is None else self.backend.stretch_factor()
        self.now += 1e-3 * self.keep_ratio * scale
        return np.zeros((1, 10), np.float32)

    def clock(self) -> float:
        return self.now


class FakeRealBackend(SimulatedBackend):
    name, is_real = 'fake-real', True


def test_measure_engine_latency_median_and_warmup() -> None:
    engine = CountingEngine()
    ms = profile_cli.measure_engine_latency_ms(engine, np.zeros((1, 3, 8, 8), np.float32), 0.5,
                                               repeats=5, warmup=2, clock=engine.clock)
    assert ms == pytest.approx(0.5) and engine.calls == 7
    with pytest.raises(ValueError, match='repeats'):
        profile_cli.measure_engine_latency_ms(engine, np.zeros(1), 0.5, repeats=0, warmup=0)


def test_grid_simulated_measures_reference_and_scales() -> None:
    engine = CountingEngine()
    backend = SimulatedBackend([500.0, 1000.0])
    lat, src = profile_cli.measure_latency_grid(engine, np.zeros(1), [0.5, 1.0], backend,
                                                [500.0, 1000.0], 3, 1, progress=False,
                                                clock=engine.clock)
    np.testing.assert_allclose(lat, [[1.0, 0.5], [2.0, 1.0]])
    assert src.tolist() == [['scaled', 'measured'], ['scaled', 'measured']]


def test_grid_real_backend_sweeps_every_frequency() -> None:
    backend = FakeRealBackend([250.0, 1000.0])
    engine = CountingEngine(backend)          # the 'hardware' slows down at lower frequency
    lat, src = profile_cli.measure_latency_grid(engine, np.zeros(1), [1.0], backend,
                                                [250.0, 1000.0], 3, 0, progress=False,
                                                clock=engine.clock)
    np.testing.assert_allclose(lat, [[4.0, 1.0]])
    assert (src == 'measured').all()
    assert backend.current_frequency_mhz() == 1000.0      # reset after the sweep


def test_load_accuracy_file_formats(tmp_path: Path) -> None:
    a = tmp_path / 'a.json'
    a.write_text(json.dumps({'accuracy': {'0.5': 0.4, '1.0': 0.8}}))
    assert profile_cli.load_accuracy_file(a) == {0.5: 0.4, 1.0: 0.8}
    a.write_text(json.dumps({'results': [{'ratio': 0.5, 'accuracy': 0.4}]}))
    assert profile_cli.load_accuracy_file(a) == {0.5: 0.4}


def test_cli_end_to_end_random_resnet18(tmp_path: Path) -> None:
    acc = tmp_path / 'acc.json'
    acc.write_text(json.dumps({'accuracy': {'0.5': 0.4, '1.0': 0.8}}))
    out = tmp_path / 'prof.yaml'
    argv = ['--weights', 'random', '--arch', 'resnet18', '--ratios', '0.5,1.0', '--repeats', '2',
            '--warmup', '0', '--backend', 'simulated', '--frequencies', '500,1000',
            '--accuracy', str(acc), '--out', str(out), '--no-progress']
    with pytest.warns(UserWarning, match='RANDOM'):
        assert profile_cli.main(argv) == 0
    prof = load_profile(out)
    assert prof.frequencies_mhz.tolist() == [500.0, 1000.0]
    assert prof.sources['latency_ms'][:, 1].tolist() == ['measured', 'measured']
    assert prof.latency_ms[0, 0] == pytest.approx(2 * prof.latency_ms[0, 1])
    assert prof.model['engine'] == 'torch' and prof.model['dvfs_backend'] == 'simulated'
    assert prof.sources['power_w'][0] == 'modelled'


def test_cli_missing_accuracy_ratio_exits_2(tmp_path: Path) -> None:
    acc = tmp_path / 'acc.json'
    acc.write_text(json.dumps({'accuracy': {'1.0': 0.8}}))
    with pytest.warns(UserWarning):
        assert profile_cli.main(['--weights', 'random', '--arch', 'resnet18', '--ratios',
                                 '0.5,1.0', '--accuracy', str(acc), '--backend', 'simulated',
                                 '--out', str(tmp_path / 'p.yaml'), '--no-progress']) == 2
