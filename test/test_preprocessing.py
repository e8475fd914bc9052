"""Preprocessing: uint8 RGB -> normalised tensors, resizing, and the CIFAR/ImageNet presets."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from torchvision.transforms import InterpolationMode, functional as TF, v2

from pls_perception.skipping.preprocessing import (CIFAR10_PREPROCESSING, IMAGENET_PREPROCESSING,
                                                   Preprocessing, from_torchvision)


def test_cifar_normalisation_matches_reference_recipe() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    x = CIFAR10_PREPROCESSING.to_tensor(images)
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    expected = (torch.from_numpy(images).permute(0, 3, 1, 2) / 255.0 - mean) / std
    torch.testing.assert_close(x, expected)
    torch.testing.assert_close(CIFAR10_PREPROCESSING.to_tensor(images[0]), expected[:1])


def test_imagenet_matches_torchvision_transforms() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)
    x = IMAGENET_PREPROCESSING.to_tensor(image)
    assert IMAGENET_PREPROCESSING.input_size == (224, 224)
    assert IMAGENET_PREPROCESSING.resize_size == 232
    reference = torchvision.models.ResNet152_Weights.DEFAULT.transforms()
    expected = reference(v2.functional.to_image(image))[None]
    # torchvision resizes the uint8 image (rounding to integers); we resize floats: <= 1 level.
    torch.testing.assert_close(x, expected, rtol=0, atol=1 / 255 / min(reference.std))


def test_plain_resize_without_crop() -> None:
    prep = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=(16, 8))
    x = prep.to_tensor(np.full((40, 40, 3), 255, np.uint8))
    assert x.shape == (1, 3, 16, 8)
    torch.testing.assert_close(x, torch.ones_like(x))


@pytest.mark.parametrize('images', [np.zeros((32, 32), np.uint8),
                                    np.zeros((2, 32, 32, 4), np.uint8),
                                    np.zeros((32, 32, 3), np.float32)])
def test_bad_images(images: np.ndarray) -> None:
    with pytest.raises(ValueError, match='uint8 RGB'):
        CIFAR10_PREPROCESSING.to_tensor(images)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match='std'):
        Preprocessing(mean=(0, 0, 0), std=(1, 0, 1), input_size=(2, 2))
    with pytest.raises(ValueError, match='input_size'):
        Preprocessing(mean=(0, 0, 0), std=(1, 1, 1), input_size=(0, 2))


def _torchvision_reference(prep: Preprocessing, frames: np.ndarray) -> torch.Tensor:
    """What to_tensor computed with torchvision from NxHxWx3 float32 frames in [0, 255]."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2) / 255.0
    if tuple(x.shape[-2:]) != prep.input_size:
        if prep.resize_size is not None:
            x = TF.center_crop(TF.resize(x, [prep.resize_size], InterpolationMode.BILINEAR,
                                         antialias=True), list(prep.input_size))
        else:
            x = TF.resize(x, list(prep.input_size), InterpolationMode.BILINEAR, antialias=True)
    return (x - torch.tensor(prep.mean).view(1, 3, 1, 1)) / torch.tensor(prep.std).view(1, 3, 1, 1)


def _whole_frame_reference(prep: Preprocessing, image: np.ndarray) -> torch.Tensor:
    """What to_tensor computed before frames were reduced: the whole frame in float32."""
    return _torchvision_reference(prep, image.astype(np.float32)[None])


def _textured(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random scene with per-pixel noise (sigma 20 grey levels)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.integers(0, 256, (3, height // 40 + 2, width // 40 + 2))
                              .astype(np.float32))[None]
    scene = TF.resize(coarse, [height, width], InterpolationMode.BILINEAR, antialias=False)
    noisy = scene[0].permute(1, 2, 0).numpy() + rng.normal(0, 20, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


@pytest.mark.parametrize('prep', [CIFAR10_PREPROCESSING, IMAGENET_PREPROCESSING],
                         ids=['cifar10', 'imagenet'])
@pytest.mark.parametrize('size', [(480, 640), (1080, 1920), (3000, 4000), (41, 2000),
                                  (2000, 41)])
def test_large_frames_stay_within_two_grey_levels_of_the_whole_frame(
        prep: Preprocessing, size: tuple[int, int]) -> None:
    image = _textured(*size, seed=sum(size))
    x = prep.to_tensor(image)
    reference = _whole_frame_reference(prep, image)
    assert x.shape == reference.shape == (1, 3, *prep.input_size)
    grey_level = 1 / 255 / min(prep.std)
    assert float((x - reference).abs().mean()) < 2 * grey_level


def test_cifar_frames_convert_exactly_as_the_whole_frame() -> None:
    """Normal inputs are untouched: 32x32 frames are neither cropped nor reduced."""
    images = np.random.default_rng(2).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    assert CIFAR10_PREPROCESSING.reduction(32, 32) == (1, 1)
    expected = torch.cat([_whole_frame_reference(CIFAR10_PREPROCESSING, im) for im in images])
    torch.testing.assert_close(CIFAR10_PREPROCESSING.to_tensor(images), expected, rtol=0, atol=0)


@pytest.mark.parametrize('prep', [CIFAR10_PREPROCESSING, IMAGENET_PREPROCESSING],
                         ids=['cifar10', 'imagenet'])
def test_reduction_keeps_three_to_six_resize_outputs(prep: Preprocessing) -> None:
    for height, width in ((32, 32), (700, 700), (1080, 1920), (8192, 8192), (3, 50000)):
        fy, fx = prep.reduction(height, width)
        out_h, out_w = prep.resized_size(height, width)
        for size, factor, out in ((height, fy, out_h), (width, fx, out_w)):
            assert factor >= 1 and (factor == 1 or 3 * out <= size // factor < 6 * out)


_RESIZE_ONLY = Preprocessing(mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25), input_size=(16, 40))
# Shorter side to 29, crop 24x24: (29 - 24) / 2 rounds half to even, like torchvision.
_ODD_CROP = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(24, 24),
                          resize_size=29)
# A crop larger than the resize: torchvision pads with zeros (before normalising).
_PADDED_CROP = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(24, 21),
                             resize_size=18)
_PRESETS = {'cifar10': CIFAR10_PREPROCESSING, 'imagenet': IMAGENET_PREPROCESSING,
            'resize_only': _RESIZE_ONLY, 'odd_crop': _ODD_CROP, 'padded_crop': _PADDED_CROP}


@pytest.mark.parametrize('preset, shape', [
    ('cifar10', (1, 100, 70)),          # downscale
    ('cifar10', (1, 20, 20)),           # upscale
    ('cifar10', (3, 17, 45)),           # up one axis, down the other; a batch
    ('cifar10', (2, 33, 31)),           # odd, nearly the input size
    ('cifar10', (2, 32, 32)),           # no resize
    ('cifar10', (1, 1080, 1920)),       # box-filtered first
    ('imagenet', (1, 480, 640)),
    ('imagenet', (2, 300, 260)),
    ('imagenet', (1, 231, 233)),        # odd, shorter side just under 232
    ('imagenet', (1, 17, 45)),          # upscale
    ('imagenet', (1, 224, 224)),        # no resize
    ('imagenet', (1, 1080, 1920)),
    ('imagenet', (1, 41, 2000)),        # cut to the centre crops first
    ('resize_only', (2, 100, 70)),
    ('resize_only', (1, 10, 13)),
    ('resize_only', (1, 16, 40)),
    ('odd_crop', (1, 40, 61)),
    ('odd_crop', (2, 61, 40)),
    ('padded_crop', (1, 30, 20)),
    ('padded_crop', (1, 19, 57)),
])
def test_to_array_matches_torchvision(preset: str, shape: tuple[int, int, int]) -> None:
    """The numpy resize and crop compute what torchvision's do (on the same reduced frame)."""
    prep = _PRESETS[preset]
    images = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    x = prep.to_array(images)
    assert x.dtype == np.float32 and x.flags.c_contiguous
    expected = _torchvision_reference(prep, prep._bounded(images))
    assert x.shape == tuple(expected.shape) == (shape[0], 3, *prep.input_size)
    np.testing.assert_allclose(x, expected.numpy(), rtol=0, atol=1e-4)
    torch.testing.assert_close(prep.to_tensor(images), torch.from_numpy(x), rtol=0, atol=0)


def test_importing_and_to_array_do_not_import_torch() -> None:
    """The torch-free serving path preprocesses with this module."""
    code = ('import sys; from pls_perception.skipping.preprocessing import CIFAR10_PREPROCESSING, '
            'IMAGENET_PREPROCESSING; import numpy as np; '
            'CIFAR10_PREPROCESSING.to_array(np.zeros((40,50,3),np.uint8)); '
            'IMAGENET_PREPROCESSING.to_array(np.zeros((300,400,3),np.uint8)); '
            "print('torch' in sys.modules, 'torchvision' in sys.modules)")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ['False', 'False']


def test_imagenet_literal_is_the_torchvision_preprocessing() -> None:
    """IMAGENET_PREPROCESSING is written out (no torchvision import); it must not drift."""
    assert IMAGENET_PREPROCESSING == from_torchvision(torchvision.models.ResNet152_Weights.DEFAULT)
