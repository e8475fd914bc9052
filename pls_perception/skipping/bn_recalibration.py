"""Per-ratio BatchNorm recalibration: re-estimate running statistics for a skipped network.

Skipping blocks changes the distribution of every activation after the first skipped block, so
the BatchNorm running statistics learnt on the full network no longer fit there. For a ratio we
re-estimate the running mean/var of the BatchNorm layers downstream of the first skipped block
(layers before it see exactly the same inputs as in the full network and keep their trained
statistics) on N unlabelled training images, without any weight update, and store them in the
`SkippableResNet`, which swaps them in whenever it runs that ratio.

Estimation runs on a private deep copy of the model, so a live model keeps serving meanwhile.
States can be saved to and loaded from a file so a node need not recalibrate at every start; a
loaded file is checked whole (structure, layer names, shapes, finite values, variances >= 0)
before the model is touched, and any problem is one `WeightsError` naming the file.
"""
from __future__ import annotations

import copy
import math
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm import tqdm

from pls_perception import paths
from pls_perception.errors import DatasetError, WeightsError, clip
from pls_perception.io.datasets import load_cifar10
from pls_perception.skipping.network import STAGE_NAMES, BnStats, Masks, Ratio, SkippableResNet
from pls_perception.skipping.preprocessing import Preprocessing

FILE_FORMAT = 'pls_perception.bn_states/1'


def affected_bn_names(model: SkippableResNet, masks: Masks) -> list[str]:
    """BatchNorm layers that run after the first skipped block (their inputs change)."""
    stage_masks = dict(zip(STAGE_NAMES, masks))
    names: list[str] = []
    skipping = False
    for child_name, child in model.named_children():
        if child_name in stage_masks:
            parts = [(f'{child_name}.{i}', block, keep)
                     for i, (block, keep) in enumerate(zip(child, stage_masks[child_name]))]
        else:
            parts = [(child_name, child, True)]
        for prefix, module, keep in parts:
            if not keep:
                skipping = True
            elif skipping:
                names += [f'{prefix}.{n}' if n else prefix for n, m in module.named_modules()
                          if isinstance(m, _BatchNorm)]
    return names


def _batches(images: torch.Tensor | np.ndarray, batch_size: int,
             preprocessing: Preprocessing | None) -> Iterator[torch.Tensor]:
    """Batches of at least 2 images (BatchNorm cannot estimate from 1x1 maps of one image)."""
    n = len(images)
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] < 2:
        starts.pop()
    for i, start in enumerate(starts):
        stop = starts[i + 1] if i + 1 < len(starts) else n
        chunk = images[start:stop]
        if isinstance(chunk, torch.Tensor):
            yield chunk
        elif preprocessing is None:
            raise ValueError('uint8 images need a preprocessing (or pass a float tensor)')
        else:
            yield preprocessing.to_tensor(chunk)


def estimate_bn_stats(model: SkippableResNet, images: torch.Tensor | np.ndarray, ratio: Ratio,
                      batch_size: int = 64, preprocessing: Preprocessing | None = None,
                      work: SkippableResNet | None = None) -> dict[str, BnStats]:
    """Fresh (mean, var) of the affected BatchNorm layers at ``ratio``; the model is untouched.

    ``images``: Nx3xHxW preprocessed float tensor, or NxHxWx3 uint8 with ``preprocessing``.
    Statistics are the plain average over batches (momentum None). ``work`` is an optional deep
    copy of ``model`` to reuse between calls.
    """
    if len(images) < 2 or batch_size < 2:
        raise ValueError(f'need >= 2 images and batch_size >= 2, got {len(images)} images and '
                         f'batch_size={batch_size}')
    masks = model.masks_for(ratio)
    names = affected_bn_names(model, masks)
    if not names:
        return {}
    work = work if work is not None else _work_copy(model)
    modules = work.bn_modules()
    saved = {n: (modules[n].running_mean.clone(), modules[n].running_var.clone(),
                 modules[n].momentum) for n in names}
    try:
        for name in names:
            modules[name].reset_running_stats()
            modules[name].momentum = None
            modules[name].train()
        with torch.no_grad(), work.using_ratio(ratio):
            for batch in _batches(images, batch_size, preprocessing):
                work(batch)
        return {n: (modules[n].running_mean.clone(), modules[n].running_var.clone())
                for n in names}
    finally:
        for name, (mean, var, momentum) in saved.items():
            modules[name].running_mean.copy_(mean)
            modules[name].running_var.copy_(var)
            modules[name].momentum = momentum
            modules[name].eval()


def _work_copy(model: SkippableResNet) -> SkippableResNet:
    with model.using_ratio(1.0):   # consistent buffers: no forward of another thread runs
        work = copy.deepcopy(model)
    work.clear_bn_states()
    return work.eval()


def recalibrate(model: SkippableResNet, images: torch.Tensor | np.ndarray,
                ratios: Iterable[Ratio], batch_size: int = 64,
                preprocessing: Preprocessing | None = None,
                progress: bool = False) -> dict[Ratio, int]:
    """Estimate and store BatchNorm statistics for each ratio; returns layers updated per ratio.

    After this, `model` runs each ratio with its own statistics (`model.bn_state_for(ratio)`
    gives the matching state_dict). Ratios that skip nothing are left unchanged (0 layers).
    """
    ratios = list(ratios)
    work = _work_copy(model)
    updated: dict[Ratio, int] = {}
    for ratio in tqdm(ratios, desc='BN recalibration', unit='ratio', disable=not progress):
        stats = estimate_bn_stats(model, images, ratio, batch_size, preprocessing, work)
        if stats:
            model.set_bn_state(ratio, stats)
        updated[ratio] = len(stats)
    return updated


def calibration_images(n_images: int, tar_path: str | Path | None = None) -> np.ndarray:
    """``n_images`` unlabelled CIFAR-10 training images, balanced over classes, deterministic.

    DatasetError naming the tarball if it is missing, damaged or not a CIFAR-10 layout.
    """
    if n_images < 2:
        raise ValueError(f'need at least 2 calibration images, got {n_images!r}')
    tar = Path(tar_path) if tar_path is not None else paths.cifar10_tar()
    try:
        images, _, _ = load_cifar10(tar, split='train', per_class=math.ceil(n_images / 10),
                                    limit=n_images)
    except (OSError, ValueError, EOFError, tarfile.TarError, zlib.error) as e:
        raise DatasetError(f'calibration set {str(tar)!r}: {clip(str(e), 200)}') from e
    return images


def save_bn_states(model: SkippableResNet, path: str | Path) -> None:
    """Write the model's per-mask BatchNorm states to ``path`` (torch.save)."""
    states = [{'masks': masks, 'stats': stats} for masks, stats in model.bn_states().items()]
    torch.save({'format': FILE_FORMAT, 'depths': model.depths, 'states': states}, Path(path))


def load_bn_states(model: SkippableResNet, path: str | Path) -> int:
    """Store the BatchNorm states of a `save_bn_states` file in ``model``; returns how many.

    The whole file is validated first: WeightsError naming the file and the problem, and the
    model unchanged, for anything but a complete, fitting file.
    """
    path = Path(path)
    try:
        data = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for damaged files
        raise WeightsError(f'{path}: cannot read BatchNorm states: {type(e).__name__}: '
                           f'{clip(str(e), 200)}') from e
    try:
        states = _checked_states(data, model)
    except ValueError as e:
        raise WeightsError(f'{path}: not a valid {FILE_FORMAT} file for this model: {e}') from e
    for masks, stats in states:
        model.store_bn_state(masks, stats)
    return len(states)


def _checked_states(data: object, model: SkippableResNet
                    ) -> list[tuple[Masks, dict[str, BnStats]]]:
    """The (masks, stats) entries of a loaded file; ValueError saying what is wrong."""
    if not isinstance(data, dict) or data.get('format') != FILE_FORMAT:
        raise ValueError(f'not a mapping with format {FILE_FORMAT!r}')
    missing = [k for k in ('depths', 'states') if k not in data]
    if missing:
        raise ValueError(f'missing keys {missing!r}')
    depths = data['depths']
    if (not isinstance(depths, (list, tuple))
            or any(isinstance(n, bool) or not isinstance(n, int) for n in depths)):
        raise ValueError(f'depths must be a list of integers, got {clip(repr(depths))}')
    if tuple(depths) != model.depths:
        raise ValueError(f'states are for depths {clip(repr(tuple(depths)))}, the model has '
                         f'{model.depths}')
    if not isinstance(data['states'], (list, tuple)):
        raise ValueError(f'states must be a list, got {type(data["states"]).__name__}')
    modules = model.bn_modules()
    checked = []
    for i, entry in enumerate(data['states']):
        if not isinstance(entry, dict) or not {'masks', 'stats'} <= set(entry):
            raise ValueError(f'states[{i}] must be a mapping with masks and stats, got '
                             f'{clip(repr(entry))}')
        checked.append((_checked_masks(entry['masks'], model.depths, i),
                        _checked_stats(entry['stats'], modules, i)))
    return checked


def _checked_masks(masks: object, depths: tuple[int, ...], i: int) -> Masks:
    if (not isinstance(masks, (list, tuple)) or len(masks) != len(depths)
            or any(not isinstance(stage, (list, tuple)) or len(stage) != n
                   or not all(isinstance(b, bool) for b in stage)
                   for stage, n in zip(masks, depths))):
        raise ValueError(f'states[{i}].masks must be one list of booleans per stage, of '
                         f'lengths {depths}, got {clip(repr(masks))}')
    return tuple(tuple(stage) for stage in masks)


def _checked_stats(stats: object, modules: dict[str, _BatchNorm], i: int) -> dict[str, BnStats]:
    if not isinstance(stats, dict):
        raise ValueError(f'states[{i}].stats must be a mapping of layer -> (mean, var), got '
                         f'{type(stats).__name__}')
    checked: dict[str, BnStats] = {}
    for name, pair in stats.items():
        where = f'states[{i}].stats[{clip(repr(name))}]'
        if not isinstance(name, str) or name not in modules:
            raise ValueError(f'{where}: the model has no BatchNorm layer of that name')
        expected = tuple(modules[name].running_mean.shape)
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(t, torch.Tensor) and t.layout == torch.strided
                           and t.is_floating_point() and t.device.type == 'cpu'
                           and tuple(t.shape) == expected for t in pair)):
            raise ValueError(f'{where} must be (mean, var), two float tensors of shape '
                             f'{expected}')
        dtype = modules[name].running_mean.dtype
        mean, var = (t.to(dtype) for t in pair)
        finite = bool(torch.isfinite(mean).all()) and bool(torch.isfinite(var).all())
        if not finite or bool((var < 0).any()):
            raise ValueError(f'{where}: statistics must be finite, variances >= 0')
        checked[name] = (mean, var)
    return checked
