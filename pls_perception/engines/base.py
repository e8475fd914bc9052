"""The engine interface: one object that runs the PLS network, whatever executes it.

The perception node and the profiling tools only talk to an ``InferenceEngine``, so the eager
PyTorch reference and faster back ends (ONNX Runtime) are interchangeable behind the ``engine``
parameter. Every engine switches keep ratio quickly and thread-safely: the node changes the ratio
from a parameter callback while another thread is inside ``infer``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class InferenceEngine(ABC):
    """Runs a (skippable) classifier on preprocessed batches.

    ``infer`` takes an Nx3xHxW float32 array (already normalised, see
    ``pls_perception.skipping.preprocessing``) and returns NxC float32 logits.
    ``set_keep_ratio`` takes
    effect at the next ``infer`` call, never in the middle of one.
    """

    name: str = 'base'

    @property
    @abstractmethod
    def keep_ratio(self) -> float:
        """The keep ratio the next ``infer`` call runs at."""

    @abstractmethod
    def set_keep_ratio(self, ratio: float) -> None:
        """Select the keep ratio (0, 1]; thread-safe and fast. ValueError outside (0, 1]."""

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run the network: Nx3xHxW float32 in, NxC float32 logits out."""

    def infer_at(self, batch: np.ndarray) -> tuple[np.ndarray, Any]:
        """`infer`, and the keep ratio it ran at (an engine that switches ratios on another
        thread, such as a background build finishing, overrides this to read both at once)."""
        return self.infer(batch), self.keep_ratio

    @property
    def pending_ratios(self) -> tuple[Any, ...]:
        """Ratios asked for but not servable yet (engines that build per ratio override this)."""
        return ()

    def status(self) -> dict[str, Any]:
        """Key facts for /diagnostics: engine name, the ratio served, ratios still pending."""
        return {'engine': self.name, 'active_ratio': self.keep_ratio,
                'requested_ratio': self.keep_ratio, 'pending_ratios': list(self.pending_ratios)}

    def close(self) -> None:
        """Release resources (sessions, threads). The engine must not be used afterwards."""

    def __enter__(self) -> InferenceEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_batch(batch: np.ndarray) -> np.ndarray:
    """Validate an engine input and return it as a C-contiguous float32 array."""
    if not isinstance(batch, np.ndarray):
        raise ValueError(f'batch must be a numpy array, got {type(batch).__name__!r}')
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f'batch must be Nx3xHxW, got shape {batch.shape!r}')
    return np.ascontiguousarray(batch, dtype=np.float32)
