"""Image preprocessing that follows the weights: uint8 RGB images -> normalised float tensors.

CIFAR-10 models (the shared reference weights) take 32x32 images scaled to [0, 1] and normalised
with the CIFAR-10 mean/std, no resizing. ImageNet models take torchvision's transforms for their
weights (ResNet152_Weights.IMAGENET1K_V2: resize the shorter side to 232, centre-crop 224).

Cost bounded by the network input, not by the frame: before any float conversion a large frame
is box-filtered in integers (`image_conversion.box_sum`, straight from a view of the message
buffer) to between 3 and 6 times the size the resize makes of it per side. Like Pillow's
``reducing_gap=3``, the antialiased resize still does the final filtering: the result is on
average within two grey levels of resizing the whole frame. With a centre crop, a frame resized
to more than 4 crops along one side (a panorama, a slit) is first cut to its centre 4 crops. The
float copy is then under 36 resize outputs: 442 kB for CIFAR-10, 41 MB for an ImageNet model on
16:9 frames, 90 MB on panoramas. Frames that need neither (32x32 CIFAR frames) are converted
exactly as they are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torchvision
from torchvision.transforms import InterpolationMode, functional as TF

from pls_perception.io.image_conversion import box_sum

# A frame is box-filtered to no less than this many times the resize's output per axis, so the
# antialiased resize still does the final (smooth) filtering.
_BOX_MARGIN = 3
# With a centre crop, a frame resized to more than this many crop widths is cut to its centre
# that many crops wide first (nothing else would reach the crop).
_CROP_MARGIN = 4


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

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) the resize step makes of a (height, width) frame, as torchvision computes it."""
        if self.resize_size is None:
            return self.input_size
        if height <= width:
            return self.resize_size, int(self.resize_size * width / height)
        return int(self.resize_size * height / width), self.resize_size

    def reduction(self, height: int, width: int) -> tuple[int, int]:
        """Box-filter factors (rows, columns) a (height, width) frame may be reduced by before
        `to_tensor`: the reduced frame stays at least 3 times what the resize makes of it."""
        out_h, out_w = self.resized_size(height, width)
        return (max(1, height // (_BOX_MARGIN * out_h)),
                max(1, width // (_BOX_MARGIN * out_w)))

    def _window(self, height: int, width: int) -> tuple[slice, slice]:
        """The centre rows and columns of a frame that can reach the centre crop (all of them,
        but for frames resized to more than _CROP_MARGIN crops along one side)."""
        if self.resize_size is None:
            return slice(None), slice(None)
        window = []
        for size, resized, crop in zip((height, width), self.resized_size(height, width),
                                       self.input_size):
            keep = min(size, math.ceil(size * _CROP_MARGIN * crop / resized))
            keep += (size - keep) % 2        # an even margin on both sides keeps the centre
            start = (size - keep) // 2
            window.append(slice(start, start + keep))
        return window[0], window[1]

    def _bounded(self, array: np.ndarray) -> np.ndarray:
        """NxHxWx3 float32 in [0, 255]: the part that can reach the network, box-filtered when
        it is large (integer sums, no full-size float copy), else the frame as it is."""
        rows, cols = self._window(*array.shape[1:3])
        array = array[:, rows, cols]
        fy, fx = self.reduction(*array.shape[1:3])
        if (fy, fx) == (1, 1):
            # numpy makes the float copy: camera frames arrive as read-only views of the message
            # buffer, which torch.from_numpy would wrap (with a warning) rather than copy.
            return np.asarray(array, dtype=np.float32)
        return (box_sum(array, fy, fx) / (fy * fx)).astype(np.float32)

    def to_tensor(self, images: np.ndarray) -> torch.Tensor:
        """HxWx3 or NxHxWx3 uint8 RGB -> Nx3xHxW float32, resized if needed, normalised.

        Memory and time are bounded by the network input, not by the frame (module docstring).
        """
        array = np.asarray(images)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
            raise ValueError(
                f'images must be HxWx3 or NxHxWx3 uint8 RGB, got shape {array.shape} '
                f'dtype {array.dtype}')
        x = torch.from_numpy(self._bounded(array)).permute(0, 3, 1, 2).div_(255.0)
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
