"""Two-zone power model: evaluation, and a least-squares fit recovering known coefficients."""
from __future__ import annotations

import numpy as np
import pytest

from pls_perception.operating_points.power_model import TwoZonePowerModel, fit_two_zone


def test_two_zone_shape_linear_below_cubic_above() -> None:
    m = TwoZonePowerModel(p_static_w=0.3, c_w_per_mhz=0.002, f_knee_mhz=800.0)
    assert m.power_w(400.0) == pytest.approx(0.3 + 0.8)
    assert m.power_w(1600.0) == pytest.approx(0.3 + 0.002 * 1600 * 4)


@pytest.mark.parametrize('knee', [500.0, 900.0, 1300.0])
def test_fit_recovers_known_coefficients(knee: float) -> None:
    truth = TwoZonePowerModel(p_static_w=0.5, c_w_per_mhz=0.0015, f_knee_mhz=knee)
    f = np.linspace(300.0, 1500.0, 17)
    noise = np.random.default_rng(0).normal(0.0, 1e-4, f.size)
    fit = fit_two_zone(f, truth.power_w(f) + noise)
    assert fit.p_static_w == pytest.approx(0.5, abs=0.01)
    assert fit.c_w_per_mhz == pytest.approx(0.0015, rel=0.01)
    assert fit.f_knee_mhz == pytest.approx(knee, rel=0.01)
    assert fit.fit_rmse_w < 1e-3 and fit.fit_points == 17


def test_fit_reports_error_for_data_off_model() -> None:
    f = np.array([300.0, 600.0, 900.0, 1200.0])
    fit = fit_two_zone(f, [1.0, 0.5, 2.0, 1.5])
    assert fit.fit_rmse_w > 0.1


def test_fixed_knee_and_roundtrip_dict() -> None:
    fit = fit_two_zone([306.0, 612.0], [1.32, 2.69], f_knee_mhz=624.75)
    assert fit.f_knee_mhz == 624.75
    assert TwoZonePowerModel.from_dict(fit.to_dict()) == fit


@pytest.mark.parametrize('f, p', [([1.0], [1.0]), ([1.0, np.nan], [1.0, 2.0]),
                                  ([100.0, 200.0], [2.0, 1.0]), ([0.0, 1.0], [1.0, 2.0])])
def test_fit_rejects_bad_input(f: list[float], p: list[float]) -> None:
    with pytest.raises(ValueError):
        fit_two_zone(f, p)


def test_model_rejects_bad_coefficients() -> None:
    with pytest.raises(ValueError, match='c_w_per_mhz'):
        TwoZonePowerModel(p_static_w=0.0, c_w_per_mhz=-1.0, f_knee_mhz=1.0)
    with pytest.raises(ValueError, match='kind'):
        TwoZonePowerModel.from_dict({'kind': 'cubic'})
