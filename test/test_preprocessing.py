"""Preprocessing: uint8 RGB -> normalised tensors, resizing, and the CIFAR/ImageNet presets."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torchvision.transforms import v2

from pls_perception.preprocessing import (CIFAR10_PREPROCESSING, IMAGENET_PREPROCESSING,
                                          Preprocessing)


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
