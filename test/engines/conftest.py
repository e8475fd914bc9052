"""Fixtures for the engine tests: a small random skippable ResNet and a per-session ONNX cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from pls_perception.skipping.network import SkippableResNet
from pls_perception.skipping.preprocessing import CIFAR10_PREPROCESSING
from pls_perception.skipping.weights import LoadedModel


def _small_model() -> SkippableResNet:
    """A random ResNet-18 (2 blocks per stage): exports in about a second."""
    torch.manual_seed(0)
    return SkippableResNet(torchvision.models.resnet18(num_classes=10)).eval()


@pytest.fixture()
def small_model() -> SkippableResNet:
    return _small_model()


@pytest.fixture(scope='session')
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp('onnx_cache')


@pytest.fixture()
def loaded_small() -> LoadedModel:
    return LoadedModel(model=_small_model(), preprocessing=CIFAR10_PREPROCESSING,
                       class_names=tuple(f'c{i}' for i in range(10)), source='random',
                       sha256=None, num_classes=10)


@pytest.fixture()
def batch() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
