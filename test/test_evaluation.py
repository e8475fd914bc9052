"""Evaluation: accuracy/loss per ratio equal a direct computation; the shared test slice."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from pls_perception import paths
from pls_perception.io.datasets import load_cifar10
from pls_perception.skipping.complexity import count_macs, count_parameters
from pls_perception.skipping.evaluation import evaluate, measure_latency_ms
from pls_perception.skipping.network import SkippableResNet, physically_pruned_copy
from pls_perception.skipping.preprocessing import CIFAR10_PREPROCESSING
from pls_perception.skipping.weights import load_model

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def model() -> SkippableResNet:
    torch.manual_seed(0)
    return SkippableResNet(torchvision.models.resnet18(num_classes=10)).eval()


@pytest.fixture(scope='module')
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (23, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, 23).astype(np.int64))


@pytest.mark.parametrize('batch_size', [1, 7, 100])
def test_matches_direct_computation(model: SkippableResNet, data: tuple,
                                    batch_size: int) -> None:
    images, labels = data
    model.set_keep_ratio(0.7)
    results = evaluate(model, images, labels, [1.0, 0.5], batch_size,
                       preprocessing=CIFAR10_PREPROCESSING)
    assert model.keep_ratio == 0.7   # evaluation pins ratios, it does not switch them
    x = CIFAR10_PREPROCESSING.to_tensor(images)
    y = torch.from_numpy(labels)
    for result in results:
        with torch.no_grad():
            logits = physically_pruned_copy(model, result.ratio)(x)
        correct = int((logits.argmax(1) == y).sum())
        assert result.correct == correct and result.n_images == 23
        assert result.accuracy == pytest.approx(correct / 23)
        assert result.loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-4)
        assert result.params == count_parameters(model, result.ratio)
        assert result.macs == count_macs(model, (32, 32), result.ratio)
        assert not result.bn_recalibrated
    model.set_keep_ratio(1.0)


def test_tensor_input(model: SkippableResNet, data: tuple) -> None:
    images, labels = data
    x = CIFAR10_PREPROCESSING.to_tensor(images)
    from_tensor = evaluate(model, x, labels, [0.5], 10)[0]
    from_uint8 = evaluate(model, images, labels, [0.5], 10,
                          preprocessing=CIFAR10_PREPROCESSING)[0]
    assert from_tensor == from_uint8


def test_bad_inputs(model: SkippableResNet, data: tuple) -> None:
    images, labels = data
    with pytest.raises(ValueError, match='preprocessing'):
        evaluate(model, images, labels, [1.0])
    with pytest.raises(ValueError, match='as many labels'):
        evaluate(model, images, labels[:3], [1.0], preprocessing=CIFAR10_PREPROCESSING)
    with pytest.raises(ValueError, match='>= 0'):
        evaluate(model, images, -np.ones(23, np.int64), [1.0],
                 preprocessing=CIFAR10_PREPROCESSING)
    with pytest.raises(ValueError, match='batch_size'):
        evaluate(model, images, labels, [1.0], 0, preprocessing=CIFAR10_PREPROCESSING)
    with pytest.raises(ValueError, match='keep ratio'):
        evaluate(model, images, labels, [0.0], preprocessing=CIFAR10_PREPROCESSING)


def test_latency(model: SkippableResNet) -> None:
    assert measure_latency_ms(model, (32, 32), 0.5, runs=3, warmup=1) > 0
    with pytest.raises(ValueError, match='runs'):
        measure_latency_ms(model, (32, 32), 0.5, runs=0)


@pytest.mark.skipif(not (paths.reference_weights().is_file() and paths.cifar10_tar().is_file()),
                    reason='shared reference weights or CIFAR-10 tarball missing')
def test_reference_weights_on_shared_test_slice() -> None:
    images, labels, _ = load_cifar10(per_class=20)   # 200 images, all classes
    loaded = load_model(str(paths.reference_weights()))
    full, half = evaluate(loaded.model, images, labels, [1.0, 0.5], 100,
                          preprocessing=loaded.preprocessing)
    # The README of the weights gives 79.01 % on all 10,000 test images.
    assert 0.65 <= full.accuracy <= 0.92
    assert 0.1 < half.accuracy < full.accuracy
    # Direct computation, independent of our loading and skipping code.
    state = torch.load(paths.reference_weights(), map_location='cpu', weights_only=True)
    resnet = torchvision.models.resnet152(num_classes=10)
    resnet.load_state_dict({k: v.float() for k, v in state.items()})
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        predictions = torch.cat([resnet.eval()(x[i:i + 100]).argmax(1) for i in (0, 100)])
    assert full.correct == int((predictions == torch.from_numpy(labels)).sum())
