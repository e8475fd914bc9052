"""Model loading: a state_dict file, torchvision's ImageNet weights, or (on request) random ones.

Every way a weights file can be wrong (missing, truncated, not a state_dict, wrong architecture
or class count, NaN or infinite values) ends in one `WeightsError` that names the file and the
problem, so the node and the tools can report it in one line. The file's tensors are checked
against the architecture built on the meta device (shapes only, nothing allocated) before the
real network is built, so a header claiming a billion classes costs an error, not the memory.
Preprocessing and class names follow the weights.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from pls_perception import paths
from pls_perception.errors import WeightsError, clip
from pls_perception.io.file_inputs import sha256_of
from pls_perception.io.datasets import CIFAR10_CLASSES
from pls_perception.skipping.network import SkippableResNet
from pls_perception.skipping.preprocessing import (CIFAR10_PREPROCESSING, IMAGENET_PREPROCESSING,
                                                   Preprocessing, from_torchvision)

IMAGENET_CLASSES = 1000
_SHOWN_KEYS = 5


@dataclass
class LoadedModel:
    """A ready-to-run model (eval mode, fp32, CPU) with what is needed to feed and read it."""

    model: SkippableResNet
    preprocessing: Preprocessing
    class_names: tuple[str, ...]
    source: str            # file path, 'imagenet:<weights enum>' or 'random'
    sha256: str | None     # of the weights file, None for 'imagenet' / 'random'
    num_classes: int


def _alternatives() -> str:
    return (f"pass a state_dict file (e.g. the CIFAR-10 reference weights "
            f"{paths.reference_weights()}), 'imagenet' (torchvision weights; needs the network "
            f"once) or 'random' (with allow_random, for tests)")


RANDOM_WEIGHTS_SEED = 0


def _build(arch: str, num_classes: int) -> nn.Module:
    try:
        return torchvision.models.get_model(arch, num_classes=num_classes)
    except ValueError as e:
        raise ValueError(f'unknown torchvision architecture, got arch={arch!r}') from e


def _wrap(resnet: nn.Module, arch: str) -> SkippableResNet:
    try:
        return SkippableResNet(resnet).eval()
    except ValueError as e:
        raise ValueError(f'{arch!r} is not a ResNet-like model with layer1..layer4: {e}') from e


def _conventions(num_classes: int) -> tuple[Preprocessing, tuple[str, ...]]:
    """ImageNet models get ImageNet transforms/categories; others the CIFAR-10 conventions."""
    if num_classes == IMAGENET_CLASSES:
        categories = torchvision.models.ResNet152_Weights.DEFAULT.meta['categories']
        return IMAGENET_PREPROCESSING, tuple(categories)
    if num_classes == len(CIFAR10_CLASSES):
        return CIFAR10_PREPROCESSING, CIFAR10_CLASSES
    return CIFAR10_PREPROCESSING, tuple(f'class_{i}' for i in range(num_classes))


def _state_dict_from(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded object (plain, or under 'state_dict' / 'model')."""
    if isinstance(obj, dict):
        for key in ('state_dict', 'model'):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if (not isinstance(obj, dict) or not obj
            or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                       for k, v in obj.items())):
        raise WeightsError(f'{path}: not a state_dict (a dict of name -> tensor), got '
                           f'{type(obj).__name__}')
    for name, tensor in obj.items():
        if (tensor.layout != torch.strided or tensor.is_quantized or tensor.is_complex()
                or tensor.device.type != 'cpu'):
            raise WeightsError(f'{path}: tensor {clip(name)!r} is not a plain real CPU tensor '
                               f'(layout {tensor.layout}, dtype {tensor.dtype}, device '
                               f'{tensor.device.type})')
    return obj


def _check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    """NaN or infinite weights would publish NaN scores (not JSON); name the first tensor."""
    for name, tensor in state.items():
        if tensor.is_floating_point():
            bad = int(tensor.numel() - torch.isfinite(tensor).sum())
            if bad:
                raise WeightsError(f'{path}: tensor {name!r} holds {bad} NaN or infinite '
                                   f'values of {tensor.numel()}')


def _mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f'{k} {tuple(state[k].shape)} vs {tuple(v.shape)}' for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    parts = [f'{label} ({len(keys)}): {", ".join(clip(k) for k in keys[:_SHOWN_KEYS])}'
             + (' ...' if len(keys) > _SHOWN_KEYS else '')
             for label, keys in (('missing keys', missing), ('unexpected keys', unexpected),
                                 ('shape mismatches (file vs model)', shapes)) if keys]
    return '; '.join(parts)


def _load_file(path: Path, arch: str, num_classes: int | None) -> LoadedModel:
    if not path.exists():
        raise WeightsError(f'weights file {path} does not exist; {_alternatives()}')
    if not path.is_file():
        raise WeightsError(f'weights path {path} is not a file; {_alternatives()}')
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for damaged files
        raise WeightsError(f'{path}: cannot be read as a torch.save file (truncated or corrupt?): '
                           f'{type(e).__name__}: {e}') from e
    state = _state_dict_from(obj, path)
    fc_weight = state.get('fc.weight')
    if fc_weight is None or fc_weight.dim() != 2:
        first = [clip(k) for k in list(state)[:_SHOWN_KEYS]]
        raise WeightsError(f'{path}: no 2-D fc.weight tensor, so not a torchvision ResNet '
                           f'state_dict (keys start {first})')
    found = int(fc_weight.shape[0])
    if num_classes is not None and num_classes != found:
        raise WeightsError(f'{path}: the file has {found} classes (fc.weight), but '
                           f'num_classes={num_classes} was requested')
    if found < 1:
        raise WeightsError(f'{path}: fc.weight has shape {tuple(fc_weight.shape)}: no classes')
    with torch.device('meta'):       # shapes only: the real network is built once they fit
        problem = _mismatch(_build(arch, found), state)
    if problem:
        raise WeightsError(f'{path}: does not match torchvision {arch}(num_classes={found}): '
                           f'{problem}')
    _check_finite(state, path)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    resnet = _build(arch, found)
    resnet.load_state_dict(state)
    preprocessing, class_names = _conventions(found)
    return LoadedModel(_wrap(resnet, arch), preprocessing, class_names, str(path),
                       sha256_of(path), found)


def _load_imagenet(arch: str, num_classes: int | None) -> LoadedModel:
    if num_classes not in (None, IMAGENET_CLASSES):
        raise WeightsError(f"'imagenet' weights have {IMAGENET_CLASSES} classes, got "
                           f'num_classes={num_classes}')
    try:
        enum = torchvision.models.get_model_weights(arch).DEFAULT
    except ValueError as e:
        raise ValueError(f'unknown torchvision architecture, got arch={arch!r}') from e
    try:
        state = enum.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # noqa: BLE001 - URLError, OSError, hash errors ...
        cached = Path(torch.hub.get_dir()) / 'checkpoints' / Path(enum.url).name
        raise WeightsError(
            f"cannot get torchvision's ImageNet weights {enum} for {arch} from {enum.url} "
            f'(offline? {type(e).__name__}: {e}); they are cached at {cached} once downloaded. '
            f'Alternatives: {_alternatives()}') from e
    resnet = _build(arch, IMAGENET_CLASSES)
    resnet.load_state_dict(state)
    return LoadedModel(_wrap(resnet, arch), from_torchvision(enum),
                       tuple(enum.meta['categories']), f'imagenet:{enum}', None, IMAGENET_CLASSES)


def load_model(weights: str, arch: str = 'resnet152', num_classes: int | None = None,
               allow_random: bool = False) -> LoadedModel:
    """Load ``weights`` (state_dict path | 'imagenet' | 'random') into a SkippableResNet.

    A file's class count comes from its fc.weight (``num_classes``, if given, must agree); fp16
    files are converted to fp32. 'random' needs ``allow_random`` and warns. Raises WeightsError.
    """
    if num_classes is not None and (isinstance(num_classes, bool)
                                    or not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f'num_classes must be a positive int or None, got {num_classes!r}')
    if not isinstance(weights, (str, Path)) or not str(weights).strip():
        raise WeightsError(f'no weights given (got {weights!r}); {_alternatives()}')
    if weights == 'imagenet':
        return _load_imagenet(arch, num_classes)
    if weights == 'random':
        if not allow_random:
            raise WeightsError("'random' weights were requested but allow_random is False; "
                               f'{_alternatives()}')
        count = num_classes if num_classes is not None else len(CIFAR10_CLASSES)
        warnings.warn(f'using RANDOM weights for {arch} ({count} classes): predictions are '
                      'meaningless', stacklevel=2)
        preprocessing, class_names = _conventions(count)
        # Seeded: the same 'random' network every time, so runs compare and caches keyed by
        # the weights (ONNX graphs) are reused instead of rebuilt.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            resnet = _build(arch, count)
        return LoadedModel(_wrap(resnet, arch), preprocessing, class_names, 'random', None,
                           count)
    return _load_file(Path(weights).expanduser(), arch, num_classes)
