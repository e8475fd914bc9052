"""Active parameter and MAC counts of a SkippableResNet at a keep ratio (the paper's Table 1).

Parameters of skipped blocks do not count: with torchvision ``resnet152(num_classes=10)`` this
gives exactly the paper's 58.16M / 54.81M / 50.06M / 46.43M at r = 1 / 0.9 / 0.8 / 0.7.
BatchNorm running statistics are buffers, not parameters, and are not counted.

MACs are multiply-accumulates of convolutions and linear layers (BatchNorm, ReLU, pooling and
additions are ignored, as is customary). They are measured once per input size by forward hooks
on the full network; skipped blocks never change tensor shapes, so the count at any ratio is the
sum over the blocks that run.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

from pls_perception.skipping.network import STAGE_NAMES, Masks, Ratio, SkippableResNet

# model -> {(H, W): {module qualified name: MACs}}
_MAC_CACHE: weakref.WeakKeyDictionary[SkippableResNet, dict[tuple[int, int], dict[str, int]]] = (
    weakref.WeakKeyDictionary())


def _masks(model: SkippableResNet, ratio: Ratio | None) -> Masks:
    return model.active_masks() if ratio is None else model.masks_for(ratio)


def _skipped_prefixes(model: SkippableResNet, masks: Masks) -> tuple[str, ...]:
    return tuple(f'{stage}.{i}.' for stage, stage_masks in zip(STAGE_NAMES, masks)
                 for i, keep in enumerate(stage_masks) if not keep)


def count_parameters(model: SkippableResNet, ratio: Ratio | None = None) -> int:
    """Parameters of the blocks that run at ``ratio`` (default: the model's current ratio)."""
    skipped = _skipped_prefixes(model, _masks(model, ratio))
    return sum(p.numel() for name, p in model.named_parameters()
               if not name.startswith(skipped))


def _module_macs(model: SkippableResNet, input_size: tuple[int, int]) -> dict[str, int]:
    height, width = (int(v) for v in input_size)
    if height < 1 or width < 1:
        raise ValueError(f'input_size must be two positive ints (H, W), got {input_size!r}')
    per_size = _MAC_CACHE.setdefault(model, {})
    if (height, width) in per_size:
        return per_size[(height, width)]
    macs: dict[str, int] = {}

    def hook(name: str):  # noqa: ANN202 - returns a forward hook
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if isinstance(module, nn.Conv2d):
                k_h, k_w = module.kernel_size
                per_output = module.in_channels // module.groups * k_h * k_w
                macs[name] = output.numel() // output.shape[0] * per_output
            else:
                macs[name] = module.in_features * module.out_features
        return record

    parameter = next(model.parameters())
    x = torch.zeros(1, 3, height, width, dtype=parameter.dtype, device=parameter.device)
    with model.using_ratio(1.0):   # holds the forward lock: no foreign forward sees the hooks
        handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
                   if isinstance(m, (nn.Conv2d, nn.Linear))]
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad():
                model(x)
        finally:
            model.train(was_training)
            for handle in handles:
                handle.remove()
    per_size[(height, width)] = macs
    return macs


def count_macs(model: SkippableResNet, input_size: tuple[int, int] = (32, 32),
               ratio: Ratio | None = None) -> int:
    """Multiply-accumulates of one image of ``input_size`` (H, W) at ``ratio``."""
    skipped = _skipped_prefixes(model, _masks(model, ratio))
    return sum(v for name, v in _module_macs(model, input_size).items()
               if not name.startswith(skipped))
