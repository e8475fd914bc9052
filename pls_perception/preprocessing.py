"""Image preprocessing that follows the weights: uint8 RGB images -> normalised float tensors.

CIFAR-10 models (the shared reference weights) take 32x32 images scaled to [0, 1] and normalised
with the CIFAR-10 mean/std, no resizing. ImageNet models take torchvision's transforms for their
weights (ResNet152_Weights.IMAGENET1K_V2: resize the shorter side to 232, centre-crop 224).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchvision
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF


@dataclass(frozen=True)
class Preprocessing:
    """Normalisation and geometry of a model's input.

    ``input_size`` is (H, W) of the network input. Images of another size are resized: with
    ``resize_size`` set, the shorter side goes to ``resize_size`` and the centre is cropped to
    ``input_size`` (torchvision's ImageNet recipe); otherwise they are resized to ``input_size``.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int]
    resize_size: int | None = None

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(
                f'mean and std need 3 values (std > 0), got mean={self.mean!r} std={self.std!r}')
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ValueError(f'input_size must be (H, W) > 0, got {self.input_size!r}')

    def to_tensor(self, images: np.ndarray) -> torch.Tensor:
        """HxWx3 or NxHxWx3 uint8 RGB -> Nx3xHxW float32, resized if needed, normalised."""
        array = np.asarray(images)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
            raise ValueError(
                f'images must be HxWx3 or NxHxWx3 uint8 RGB, got shape {array.shape} '
                f'dtype {array.dtype}')
        # The float copy is made by numpy: camera frames arrive as read-only views of the message
        # buffer, which torch.from_numpy would wrap (with a warning) rather than copy.
        x = torch.from_numpy(np.asarray(array, dtype=np.float32)).permute(0, 3, 1, 2).div_(255.0)
        if tuple(x.shape[-2:]) != tuple(self.input_size):
            if self.resize_size is not None:
                x = TF.resize(x, [self.resize_size], InterpolationMode.BILINEAR, antialias=True)
                x = TF.center_crop(x, list(self.input_size))
            else:
                x = TF.resize(x, list(self.input_size), InterpolationMode.BILINEAR,
                              antialias=True)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std).contiguous()


def from_torchvision(weights: torchvision.models.WeightsEnum) -> Preprocessing:
    """The preprocessing of torchvision classification weights (their ``transforms()``)."""
    transforms = weights.transforms()
    crop = int(transforms.crop_size[0])
    return Preprocessing(mean=tuple(transforms.mean), std=tuple(transforms.std),
                         input_size=(crop, crop), resize_size=int(transforms.resize_size[0]))


# Values from ../shared/models/README.md (the reference weights were trained with them).
CIFAR10_PREPROCESSING = Preprocessing(mean=(0.4914, 0.4822, 0.4465),
                                      std=(0.2470, 0.2435, 0.2616), input_size=(32, 32))
IMAGENET_PREPROCESSING = from_torchvision(torchvision.models.ResNet152_Weights.DEFAULT)
