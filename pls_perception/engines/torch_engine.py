"""The eager PyTorch engine: the reference every other engine is checked against."""
from __future__ import annotations

import numpy as np
import torch

from pls_perception.engines.base import InferenceEngine, check_batch
from pls_perception.skipping.network import SkippableResNet


class TorchEngine(InferenceEngine):
    """Runs a ``SkippableResNet`` eagerly under ``torch.inference_mode``.

    The ratio switch is the model's own (thread-safe, applied between forward passes), so this
    engine adds no locking of its own.
    """

    name = 'torch'

    def __init__(self, model: SkippableResNet, device: str | torch.device = 'cpu') -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @property
    def keep_ratio(self) -> float:
        return self.model.keep_ratio

    def set_keep_ratio(self, ratio: float) -> None:
        self.model.set_keep_ratio(ratio)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(check_batch(batch)).to(self.device)
        with torch.inference_mode():
            logits = self.model(x)
        return logits.float().cpu().numpy()
