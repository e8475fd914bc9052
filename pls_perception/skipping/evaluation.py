"""Accuracy, loss, parameters, MACs and bs=1 latency of a SkippableResNet per keep ratio.

The numbers behind the paper's Table 1. Each batch pins its ratio with `using_ratio`, so an
evaluation never changes the model's live ratio and a concurrent user only waits for one batch.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pls_perception import paths
from pls_perception.skipping.complexity import count_macs, count_parameters
from pls_perception.skipping.network import Ratio, SkippableResNet
from pls_perception.skipping.preprocessing import Preprocessing

# Table 1 of the paper (ResNet-152 on CIFAR-10): active parameters in millions per keep ratio.
# Published reference values, printed beside ours; not measured here.
PAPER_TABLE1_PARAMS_M: dict[float, float] = {1.0: 58.16, 0.9: 54.81, 0.8: 50.06, 0.7: 46.43,
                                             0.5: 29.04, 0.3: 17.25, 0.1: 9.15}
PAPER_FULL_ACCURACY = 0.8764


class RatioEngine(Protocol):
    """What `evaluate` needs of an engine (engines.InferenceEngine; not imported: engines is a
    layer above skipping)."""

    name: str

    def set_keep_ratio(self, ratio: Any) -> None: ...

    def infer_at(self, batch: np.ndarray) -> tuple[np.ndarray, Any]: ...


@dataclass
class RatioResult:
    """One row of the table: a ratio's quality and cost."""

    ratio: Ratio
    accuracy: float          # top-1, fraction in [0, 1]
    loss: float              # mean cross-entropy
    n_images: int
    correct: int
    params: int              # active parameters
    macs: int                # multiply-accumulates per image at the evaluated input size
    bn_recalibrated: bool    # the model held recalibrated BatchNorm stats for this ratio

    def as_dict(self) -> dict:
        row = asdict(self)
        row['ratio'] = list(self.ratio) if isinstance(self.ratio, tuple) else self.ratio
        return row


def _batch(images: np.ndarray | torch.Tensor, start: int, stop: int,
           preprocessing: Preprocessing | None) -> torch.Tensor:
    chunk = images[start:stop]
    if isinstance(chunk, torch.Tensor):
        return chunk
    if preprocessing is None:
        raise ValueError('uint8 images need a preprocessing (or pass a float tensor)')
    return preprocessing.to_tensor(chunk)


def evaluate(model: SkippableResNet, images: np.ndarray | torch.Tensor,
             labels: np.ndarray | torch.Tensor, ratios: Iterable[Ratio], batch_size: int = 100,
             progress: bool = False,
             preprocessing: Preprocessing | None = None,
             engine: RatioEngine | None = None) -> list[RatioResult]:
    """Top-1 accuracy and mean cross-entropy of ``model`` at each ratio.

    ``images``: NxHxWx3 uint8 RGB (then ``preprocessing`` is required) or an Nx3xHxW float
    tensor already preprocessed. ``labels``: N class indices (all >= 0). With ``engine`` (built
    from ``model``, every ratio ready) the logits are the engine's, e.g. an int8 graph's;
    parameters and MACs are still the model's.
    """
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    n = len(labels_t)
    if n == 0 or len(images) != n:
        raise ValueError(f'need as many labels as images (> 0), got {len(images)} images and '
                         f'{n} labels')
    if int(labels_t.min()) < 0:
        raise ValueError('labels must be class indices >= 0 (unlabelled images cannot be scored)')
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size!r}')
    ratios = list(ratios)
    first = _batch(images, 0, 1, preprocessing)
    input_size = (int(first.shape[-2]), int(first.shape[-1]))
    results = []
    bar = tqdm(total=n * len(ratios), unit='img', disable=not progress, desc='evaluating')
    for ratio in ratios:
        bar.set_postfix_str(f'ratio={ratio}')
        correct, loss_sum = 0, 0.0
        for start in range(0, n, batch_size):
            x = _batch(images, start, start + batch_size, preprocessing)
            y = labels_t[start:start + batch_size]
            if engine is not None:
                logits = _engine_logits(engine, x, ratio)
            else:
                with torch.no_grad(), model.using_ratio(ratio):
                    logits = model(x)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += float(F.cross_entropy(logits.float(), y, reduction='sum'))
            bar.update(len(y))
        results.append(RatioResult(
            ratio=ratio, accuracy=correct / n, loss=loss_sum / n, n_images=n, correct=correct,
            params=count_parameters(model, ratio), macs=count_macs(model, input_size, ratio),
            bn_recalibrated=model.has_bn_state(ratio)))
    bar.close()
    return results


def _engine_logits(engine: RatioEngine, x: torch.Tensor, ratio: Ratio) -> torch.Tensor:
    """``engine``'s logits for ``x`` at ``ratio``; ValueError if it cannot serve that ratio yet
    (a score at another ratio would be filed under the wrong one)."""
    engine.set_keep_ratio(ratio)
    logits, served = engine.infer_at(x.numpy())
    if served != ratio:
        raise ValueError(f'the {engine.name} engine served keep ratio {served!r}, not {ratio!r} '
                         '(build every ratio before evaluating)')
    return torch.from_numpy(logits)


def measure_latency_ms(model: SkippableResNet, input_size: tuple[int, int], ratio: Ratio,
                       runs: int = 30, warmup: int = 5,
                       engine: RatioEngine | None = None) -> float:
    """Median wall-clock latency (ms) of a batch-1 forward pass at ``ratio`` (of ``engine``'s
    graph when given)."""
    if runs < 1 or warmup < 0:
        raise ValueError(f'runs must be >= 1 and warmup >= 0, got runs={runs} warmup={warmup}')
    parameter = next(model.parameters())
    x = torch.randn(1, 3, *input_size, dtype=parameter.dtype, device=parameter.device)
    durations = []
    with torch.no_grad(), model.using_ratio(ratio):
        for i in range(warmup + runs):
            start = time.perf_counter()
            if engine is None:
                model(x)
            else:
                _engine_logits(engine, x, ratio)
            if i >= warmup:
                durations.append(time.perf_counter() - start)
    return statistics.median(durations) * 1e3


def evaluate_accuracy(loaded: Any, ratios: Sequence[float], n_per_class: int,
                      engine: RatioEngine | None = None) -> dict[float, float]:
    """Top-1 per keep ratio on ``n_per_class`` shared CIFAR-10 test images per class (of
    ``engine``'s graphs when given)."""
    from pls_perception.io.datasets import load_cifar10
    images, labels, _ = load_cifar10(paths.cifar10_tar(), split='test', per_class=n_per_class)
    results = evaluate(loaded.model, images, labels, ratios, batch_size=50, progress=True,
                       preprocessing=loaded.preprocessing, engine=engine)
    return {float(r.ratio): r.accuracy for r in results}
