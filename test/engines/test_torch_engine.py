"""TorchEngine: the eager reference wraps a SkippableResNet without changing its results."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pls_perception.engines import TorchEngine
from pls_perception.skipping.network import SkippableResNet


def test_infer_matches_model_forward_at_each_ratio(small_model: SkippableResNet,
                                                  batch: np.ndarray) -> None:
    model = small_model
    engine = TorchEngine(model)
    for ratio in (1.0, 0.5):
        engine.set_keep_ratio(ratio)
        assert engine.keep_ratio == model.keep_ratio == ratio
        logits = engine.infer(batch)
        assert logits.dtype == np.float32 and logits.shape == (4, 10)
        with torch.inference_mode():
            expected = model(torch.from_numpy(batch)).numpy()
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-6)
    engine.set_keep_ratio(1.0)
    full = engine.infer(batch)
    engine.set_keep_ratio(0.5)
    assert not np.allclose(full, engine.infer(batch)), 'skipping blocks must change the output'


def test_rejects_bad_ratio_and_batch(small_model: SkippableResNet, batch: np.ndarray) -> None:
    engine = TorchEngine(small_model)
    with pytest.raises(ValueError, match='keep ratio'):
        engine.set_keep_ratio(1.5)
    assert engine.keep_ratio == 1.0
    with pytest.raises(ValueError, match='Nx3xHxW'):
        engine.infer(batch[0])
    with pytest.raises(ValueError, match='numpy'):
        engine.infer(torch.from_numpy(batch))  # type: ignore[arg-type]


def test_accepts_float64_and_non_contiguous_batches(small_model: SkippableResNet,
                                                    batch: np.ndarray) -> None:
    engine = TorchEngine(small_model)
    expected = engine.infer(batch)
    np.testing.assert_allclose(engine.infer(batch.astype(np.float64)), expected, atol=1e-5)
    transposed = np.ascontiguousarray(batch.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    np.testing.assert_allclose(engine.infer(transposed), expected, atol=1e-6)


def test_status_reports_the_served_ratio(small_model: SkippableResNet) -> None:
    engine = TorchEngine(small_model)
    engine.set_keep_ratio(0.5)
    assert engine.pending_ratios == ()
    assert engine.status() == {'engine': 'torch', 'active_ratio': 0.5, 'requested_ratio': 0.5,
                               'pending_ratios': []}
