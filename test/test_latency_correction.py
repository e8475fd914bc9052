"""Online latency correction: convergence, propagation to unvisited points, recovery."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pls_perception.operating_points.latency_correction import LatencyCorrection

RATIOS = (0.25, 0.5, 1.0)
FREQS_MHZ = (500.0, 1000.0)
TABLE_MS = np.array([[4.0, 2.0], [8.0, 4.0], [16.0, 8.0]])


@dataclasses.dataclass(frozen=True)
class _Profile:
    ratios: tuple[float, ...]
    frequencies_mhz: tuple[float, ...]
    latency_ms: np.ndarray


def _feed(c: LatencyCorrection, i: int, j: int, factor: float, n: int) -> None:
    for _ in range(n):
        assert c.update(RATIOS[i], FREQS_MHZ[j], TABLE_MS[i, j] * factor, TABLE_MS[i, j])


def test_uniform_slowdown_converges_and_propagates() -> None:
    c = LatencyCorrection(RATIOS, FREQS_MHZ)
    _feed(c, 1, 1, 3.0, 40)
    np.testing.assert_allclose(c.factor_at(0.5, 1000.0), 3.0, rtol=0.02)
    # Points never measured inherit the global slowdown.
    assert c.factors()[0, 0] == pytest.approx(c.global_factor)
    assert c.global_factor > 2.5
    np.testing.assert_allclose(c.corrected_latency_ms(TABLE_MS)[1, 1], 12.0, rtol=0.02)


def test_slowdown_ends_and_factors_recover() -> None:
    c = LatencyCorrection(RATIOS, FREQS_MHZ)
    _feed(c, 2, 0, 2.0, 30)
    _feed(c, 2, 0, 1.0, 60)
    np.testing.assert_allclose(c.factors(), 1.0, atol=0.05)


def test_frequency_sensitivity_is_learnt_and_interpolated() -> None:
    # The profile says latency does not depend on the clock; the processor is 1/f.
    flat = np.repeat(TABLE_MS[:, 1:], 3, axis=1)
    freqs = (500.0, 1000.0, 1500.0)
    c = LatencyCorrection(RATIOS, freqs, alpha_global=0.3, alpha_freq=0.2)
    for _ in range(100):
        for f in (500.0, 1500.0):
            c.update(0.5, f, flat[1, 0] * 1500.0 / f, flat[1, 0])
    truth = flat * (1500.0 / np.array(freqs))[None, :]
    corrected = c.corrected_latency_ms(flat)
    np.testing.assert_allclose(corrected[:, [0, 2]], truth[:, [0, 2]], rtol=0.05)
    # 1000 MHz was never measured: interpolated between 500 and 1500 MHz (truth 1.5x, the raw
    # profile says 1x).
    assert 1.2 < corrected[1, 1] / flat[1, 1] < 2.2


def test_ratio_deviation_is_learnt() -> None:
    c = LatencyCorrection(RATIOS, FREQS_MHZ, alpha_global=0.3, alpha_ratio=0.2)
    for _ in range(200):
        _feed(c, 0, 0, 1.0, 1)
        _feed(c, 2, 0, 2.0, 1)
    assert c.factor_at(0.25, 500.0) < 1.2
    assert c.factor_at(1.0, 500.0) > 1.7
    assert 1.2 < c.factor_at(0.5, 500.0) < 1.7     # interpolated between the measured ratios


def test_one_spike_moves_the_model_by_at_most_step_max() -> None:
    c = LatencyCorrection(RATIOS, FREQS_MHZ, alpha_global=1.0, step_max=2.0)
    _feed(c, 1, 1, 1.0, 5)
    _feed(c, 1, 1, 20.0, 1)
    assert c.factor_at(0.5, 1000.0) <= 2.0 * 1.0001


def test_visiting_two_corners_blames_frequency_not_ratio() -> None:
    # Truth: the profile's ratio shape is right, the clock matters 3x more than it says.
    c = LatencyCorrection(RATIOS, FREQS_MHZ)
    for _ in range(60):
        _feed(c, 1, 0, 3.0, 1)      # (0.5, 500 MHz): 3x slower than the profile
        _feed(c, 2, 1, 1.0, 1)      # (1.0, 1000 MHz): as the profile says
    assert c.factor_at(1.0, 500.0) > 2.2       # unvisited, slow clock: mostly the column
    assert c.factor_at(0.5, 1000.0) < 1.4      # unvisited, fast clock


def test_off_grid_and_invalid_measurements_are_ignored() -> None:
    c = LatencyCorrection(RATIOS, FREQS_MHZ)
    assert c.cell_of(0.5, 1020.0) == (1, 1)
    assert not c.update(0.4, 1000.0, 10.0, 4.0)
    assert not c.update(0.5, 700.0, 10.0, 4.0)
    assert not c.update(0.5, 0.0, 10.0, 4.0)
    assert not c.update(0.5, 1000.0, float('nan'), 4.0)
    assert not c.update(0.5, 1000.0, -1.0, 4.0)
    assert not c.update(0.5, 1000.0, 3.0, 0.0)
    assert c.total_samples == 0
    np.testing.assert_array_equal(c.factors(), 1.0)


def test_extreme_measurements_are_clipped() -> None:
    c = LatencyCorrection(RATIOS, FREQS_MHZ, alpha_global=1.0, alpha_freq=1.0, step_max=1e6)
    for _ in range(5):
        c.update(1.0, 500.0, 1e9, 1.0)
    assert np.all(np.isfinite(c.factors())) and c.factors().max() <= 50.0 * 1.0001


def test_apply_returns_corrected_copy() -> None:
    profile = _Profile(RATIOS, FREQS_MHZ, TABLE_MS)
    c = LatencyCorrection(RATIOS, FREQS_MHZ)
    _feed(c, 0, 1, 2.0, 50)
    corrected = c.apply(profile)
    assert corrected.ratios == RATIOS and profile.latency_ms is TABLE_MS
    assert np.all(corrected.latency_ms > TABLE_MS * 1.8)
    c.reset()
    np.testing.assert_array_equal(c.apply(profile).latency_ms, TABLE_MS)
    with pytest.raises(ValueError, match='shape'):
        c.corrected_latency_ms(TABLE_MS[:2])


@pytest.mark.parametrize('kw', [{'alpha_global': 0.0}, {'alpha_freq': 1.5},
                                {'alpha_ratio': -0.1}, {'step_max': 1.0}])
def test_rejects_bad_settings(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match='alpha|step_max'):
        LatencyCorrection(RATIOS, FREQS_MHZ, **kw)


def test_rejects_empty_grid() -> None:
    with pytest.raises(ValueError, match='grids'):
        LatencyCorrection((), FREQS_MHZ)
