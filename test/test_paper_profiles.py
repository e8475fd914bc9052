"""Builder of the shipped Orin Nano profiles: paper points kept, shipped GPU file up to date."""
from __future__ import annotations

import numpy as np
import pytest

from pls_perception.operating_points import paper_profiles
from pls_perception.operating_points.profiles import load_profile
from pls_perception.paths import config_dir


def test_block_latency_model_passes_through_paper_points() -> None:
    t = paper_profiles.block_latency_model([0.2, 0.5, 1.0], 13.0, 4.5, 0.2)
    assert t[0] == pytest.approx(4.5) and t[2] == pytest.approx(13.0)
    assert 4.5 < t[1] < 13.0
    assert paper_profiles.blocks_fraction(1.0) == 50 and paper_profiles.blocks_fraction(0.2) == 12


def test_shipped_gpu_profile_matches_builder() -> None:
    shipped = load_profile(config_dir() / 'profiles' / 'orin_nano_gpu.yaml')
    acc = dict(zip(shipped.ratios.tolist(), shipped.accuracy.tolist()))
    built = paper_profiles.build_gpu_profile(acc, 'test')
    np.testing.assert_allclose(built.latency_ms, shipped.latency_ms, rtol=1e-5)
    np.testing.assert_allclose(built.power_w, shipped.power_w, rtol=1e-5)
    np.testing.assert_allclose(built.power_scale, shipped.power_scale, rtol=1e-5)


def test_missing_accuracy_ratio_is_an_error() -> None:
    with pytest.raises(ValueError, match='no value for ratios'):
        paper_profiles.build_gpu_profile({1.0: 0.8}, 'test')
