"""Image preprocessing that follows the weights: uint8 RGB images -> normalised float arrays.

CIFAR-10 models (the shared reference weights) take 32x32 images scaled to [0, 1] and normalised
with the CIFAR-10 mean/std, no resizing. ImageNet models take torchvision's transforms for their
weights (ResNet152_Weights.IMAGENET1K_V2: resize the shorter side to 232, centre-crop 224).

numpy only: the torch-free serving path (the ONNX Runtime engines) preprocesses with `to_array`
and must not import torch or torchvision. The resize reproduces torchvision's antialiased bilinear
resize of float tensors (torch's ``_upsample_bilinear2d_aa``, Pillow's algorithm) and its centre
crop as two matrix products; `to_tensor` wraps the same array for torch callers.

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
from typing import TYPE_CHECKING

import numpy as np

from pls_perception.io.image_conversion import box_sum

if TYPE_CHECKING:
    import torch
    from torchvision.models import WeightsEnum

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
        `to_array`: the reduced frame stays at least 3 times what the resize makes of it."""
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
            return np.asarray(array, dtype=np.float32)
        return (box_sum(array, fy, fx) / (fy * fx)).astype(np.float32)

    def to_array(self, images: np.ndarray) -> np.ndarray:
        """HxWx3 or NxHxWx3 uint8 RGB -> Nx3xHxW float32 (C-contiguous), resized if needed,
        normalised: torchvision's result, without torch.

        Memory and time are bounded by the network input, not by the frame (module docstring).
        """
        array = np.asarray(images)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
            raise ValueError(
                f'images must be HxWx3 or NxHxWx3 uint8 RGB, got shape {array.shape} '
                f'dtype {array.dtype}')
        x = self._bounded(array)
        n, height, width = x.shape[:3]
        if (height, width) == tuple(self.input_size):
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        else:
            rows, cols = (_crop_weights(size, resized, crop) for size, resized, crop in
                          zip((height, width), self.resized_size(height, width), self.input_size))
            r0, r1 = _nonzero_span(rows)
            c0, c1 = _nonzero_span(cols)
            # Rows first, on the frame as it is (channels last, not copied), then columns; only
            # the pixels with a weight (those that reach the crop) are read.
            x = x[:, r0:r1].reshape(n, r1 - r0, 3 * width)[..., 3 * c0:3 * c1]
            x = (rows[:, r0:r1] @ x).reshape(n, len(rows), c1 - c0, 3)
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
            x = x @ np.ascontiguousarray(cols[:, c0:c1].T)
        # torchvision's order (to [0, 1], then normalise) keeps unresized frames bit-identical
        # to it; resizing before the division saves a pass over the frame (last float bit only).
        x /= np.float32(255)
        x -= np.asarray(self.mean, np.float32).reshape(3, 1, 1)
        x /= np.asarray(self.std, np.float32).reshape(3, 1, 1)
        return x

    def to_tensor(self, images: np.ndarray) -> torch.Tensor:
        """`to_array` as a torch tensor, for torch callers (torch is imported here only, so the
        module stays torch-free)."""
        import torch
        return torch.from_numpy(self.to_array(images))


def _crop_weights(size: int, resized: int, crop: int) -> np.ndarray:
    """crop x size float32 weights: the resize of one axis to ``resized``, then torchvision's
    centre crop to ``crop`` (rows cut, or zero rows for its zero padding when crop > resized)."""
    weights = _resize_weights(size, resized)
    if crop > resized:
        before = (crop - resized) // 2
        weights = np.pad(weights, ((before, crop - resized - before), (0, 0)))
    else:
        top = int(round((resized - crop) / 2.0))
        weights = weights[top:top + crop]
    return weights


def _resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """out_size x in_size float32 weights of torch's antialiased bilinear resize of float32
    tensors (``_upsample_bilinear2d_aa``, Pillow's algorithm; align_corners=False).

    Computed with torch's float32 and float64 roundings, step by step: its float32 pixel centres
    are off by up to half an ulp of the input size, which moves upscaled results by ~1e-4.
    """
    f32, f64 = np.float32, np.float64
    scale = f32(in_size) / f32(out_size)
    support, invscale = (scale, f32(1 / f64(scale))) if scale >= 1 else (f32(1), f32(1))
    center = (f64(scale) * (np.arange(out_size) + 0.5)).astype(f32)[:, None]
    xmin = np.maximum(((center - support).astype(f64) + 0.5).astype(np.int64), 0)
    xmax = np.minimum(((center + support).astype(f64) + 0.5).astype(np.int64), in_size)
    # torch caps the taps at this count (a rounding can make the window one wider).
    taps = xmin + np.arange(2 * math.ceil(support) + 1)
    distance = ((taps.astype(f32) - center).astype(f64) + 0.5) * f64(invscale)
    tap_weights = np.maximum(f32(0), f32(1) - np.abs(distance.astype(f32)))
    tap_weights[taps >= xmax] = 0
    total = tap_weights[:, 0].copy()
    for column in tap_weights.T[1:]:        # torch's summation order
        total += column
    tap_weights /= total[:, None]
    weights = np.zeros((out_size, in_size + taps.shape[1]), f32)
    np.put_along_axis(weights, taps, tap_weights, axis=1)
    return weights[:, :in_size]


def _nonzero_span(weights: np.ndarray) -> tuple[int, int]:
    """The first and past-the-last columns with a non-zero weight."""
    used = np.flatnonzero(weights.any(axis=0))
    return int(used[0]), int(used[-1]) + 1


def from_torchvision(weights: WeightsEnum) -> Preprocessing:
    """The preprocessing of torchvision classification weights (their ``transforms()``)."""
    transforms = weights.transforms()
    crop = int(transforms.crop_size[0])
    return Preprocessing(mean=tuple(transforms.mean), std=tuple(transforms.std),
                         input_size=(crop, crop), resize_size=int(transforms.resize_size[0]))


# Values from ../shared/models/README.md (the reference weights were trained with them).
CIFAR10_PREPROCESSING = Preprocessing(mean=(0.4914, 0.4822, 0.4465),
                                      std=(0.2470, 0.2435, 0.2616), input_size=(32, 32))
# from_torchvision(torchvision.models.ResNet152_Weights.DEFAULT), written out so that importing
# this module does not import torchvision (test_preprocessing checks they agree).
IMAGENET_PREPROCESSING = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                                       input_size=(224, 224), resize_size=232)
