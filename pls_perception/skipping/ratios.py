"""Keep ratios, skip masks and the policies between them: the torch-free vocabulary of skipping.

Parameters, the ONNX Runtime engine and its serving records speak in ratios and masks without
needing the network; keeping them here lets a node that serves cached graphs start without
importing PyTorch (`skipping.network` builds on them).
"""
from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from numbers import Real
from typing import Union

# The keep ratios the shipped profiles (and the node's prebuilt graphs) cover.
PROFILE_RATIOS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 11))
STAGE_NAMES = ('layer1', 'layer2', 'layer3', 'layer4')
# Blocks per stage of torchvision's ResNet-152.
RESNET152_DEPTHS = (3, 8, 36, 3)
# A keep ratio: one value for every stage, or one value per stage.
Ratio = Union[float, tuple[float, ...]]
# Per stage, per block: True = the block runs.
Masks = tuple[tuple[bool, ...], ...]
# Rounding guard so that e.g. 0.7 * 10 = 7.000000000000001 keeps 7 blocks, not 8.
_RATIO_DIGITS = 9


def _check_ratio_value(ratio: object) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, Real):
        raise ValueError(f'keep ratio must be a number in (0, 1], got {ratio!r}')
    value = float(ratio)
    if not 0.0 < value <= 1.0:
        raise ValueError(f'keep ratio must be in (0, 1], got {ratio!r}')
    return value


def normalize_ratio(ratio: object, n_stages: int) -> Ratio:
    """Validate a global ratio (float) or a per-stage tuple; return float or tuple of floats."""
    if isinstance(ratio, (tuple, list)):
        if len(ratio) != n_stages:
            raise ValueError(
                f'per-stage keep ratios need one value per stage ({n_stages}), got {ratio!r}')
        return tuple(_check_ratio_value(r) for r in ratio)
    return _check_ratio_value(ratio)


def ratio_key(ratio: object, n_stages: int) -> str:
    """A ratio as a JSON text (0.5 and 1/2 alike): how files written by one process name it
    for another. ValueError for an invalid ratio."""
    return json.dumps(normalize_ratio(ratio, n_stages))


def blocks_kept(n_blocks: int, ratio: float) -> int:
    """Number of blocks a stage of ``n_blocks`` keeps at ``ratio``: ceil(r*n) clamped to [1, n]."""
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 1:
        raise ValueError(f'a stage needs at least one block, got n_blocks={n_blocks!r}')
    value = _check_ratio_value(ratio)
    return min(n_blocks, max(1, math.ceil(round(value * n_blocks, _RATIO_DIGITS))))


class SkipPolicy(ABC):
    """Decides which blocks run for a keep ratio. Block 0 of every stage must run."""

    name: str = ''

    @abstractmethod
    def masks(self, ratio: Ratio, depths: tuple[int, ...]) -> Masks:
        """Per stage, per block: True = run the block. Raises ValueError for a bad ratio."""


class ProportionalPolicy(SkipPolicy):
    """The paper's rule: keep the first ceil(r*n) blocks of each stage (global or per-stage r)."""

    name = 'proportional'

    def masks(self, ratio: Ratio, depths: tuple[int, ...]) -> Masks:
        ratios = normalize_ratio(ratio, len(depths))
        if isinstance(ratios, float):
            ratios = (ratios,) * len(depths)
        return tuple(
            tuple(i < blocks_kept(n, r) for i in range(n)) for n, r in zip(depths, ratios))

    def __repr__(self) -> str:
        return 'ProportionalPolicy()'
