"""Per-ratio BatchNorm recalibration: which layers, the statistics, swapping, persistence."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from pls_perception import paths
from pls_perception.errors import WeightsError
from pls_perception.skipping.bn_recalibration import (affected_bn_names, calibration_images,
                                                      estimate_bn_stats, load_bn_states,
                                                      recalibrate, save_bn_states)
from pls_perception.skipping.network import SkippableResNet, physically_pruned_copy
from pls_perception.skipping.preprocessing import CIFAR10_PREPROCESSING

torch.set_num_threads(1)


@pytest.fixture()
def model() -> SkippableResNet:
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=10)
    # Non-trivial trained-looking statistics, so that recalibration visibly changes them.
    for module in resnet.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return SkippableResNet(resnet).eval()


@pytest.fixture(scope='module')
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(24, 3, 32, 32)


def test_affected_layers_follow_first_skip(model: SkippableResNet) -> None:
    assert affected_bn_names(model, model.masks_for(1.0)) == []
    names = affected_bn_names(model, model.masks_for(0.5))   # keeps block 0 of every stage
    assert names[:3] == ['layer2.0.bn1', 'layer2.0.bn2', 'layer2.0.downsample.1']
    assert not any(n.startswith(('bn1', 'layer1.')) for n in names)
    assert not any(n.startswith(('layer2.1.', 'layer4.1.')) for n in names)
    late = affected_bn_names(model, model.masks_for((1.0, 1.0, 1.0, 0.5)))
    assert late == []   # the skipped block is the last one: nothing runs after it
    middle = affected_bn_names(model, model.masks_for((1.0, 1.0, 0.5, 1.0)))
    assert middle and all(n.startswith('layer4.') for n in middle)


def test_statistics_are_those_of_the_layer_inputs(model: SkippableResNet,
                                                  images: torch.Tensor) -> None:
    ratio = 0.5
    stats = estimate_bn_stats(model, images, ratio, batch_size=len(images))
    assert sorted(stats) == sorted(affected_bn_names(model, model.masks_for(ratio)))
    # Independent reference: the pruned network with exactly the affected layers in train mode
    # (batch statistics), recording each layer's input in one batch.
    pruned = physically_pruned_copy(model, ratio)
    recorded = {}
    for name in stats:
        bn = pruned.get_submodule(name)
        bn.train()
        bn.register_forward_hook(
            lambda m, inputs, out, name=name: recorded.__setitem__(name, inputs[0]))
    with torch.no_grad():
        pruned(images)
    for name, (mean, var) in stats.items():
        x = recorded[name].transpose(0, 1).flatten(1)
        torch.testing.assert_close(mean, x.mean(1), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(var, x.var(1, unbiased=True), rtol=1e-4, atol=1e-5)


def test_recalibrate_stores_and_swaps(model: SkippableResNet, images: torch.Tensor) -> None:
    x = images[:4]
    with torch.no_grad():
        model.set_keep_ratio(0.5)
        before_half = model(x)
        model.set_keep_ratio(1.0)
        before_full = model(x)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    updated = recalibrate(model, images, [1.0, 0.5, (1.0, 1.0, 0.5, 1.0)], batch_size=8)
    assert updated[1.0] == 0 and updated[0.5] > 0 and updated[(1.0, 1.0, 0.5, 1.0)] > 0
    assert model.has_bn_state(0.5) and not model.has_bn_state(1.0)
    assert model.has_bn_state(0.4)   # same mask as 0.5 for two-block stages
    with torch.no_grad():
        model.set_keep_ratio(0.5)
        after_half = model(x)
        model.set_keep_ratio(1.0)
        after_full = model(x)
        model.set_keep_ratio(0.5)
        expected_half = physically_pruned_copy(model, 0.5)(x)
    assert not torch.allclose(after_half, before_half, atol=1e-3)
    torch.testing.assert_close(after_full, before_full, rtol=0, atol=0)
    torch.testing.assert_close(after_half, expected_half, rtol=1e-5, atol=1e-5)
    # state_dict() is always the trained state; bn_state_for() the one of a ratio.
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0)
    half_state = model.bn_state_for(0.5)
    assert list(half_state) == list(trained)
    changed = {k for k in trained if not torch.equal(half_state[k], trained[k])}
    assert changed and all(k.endswith(('running_mean', 'running_var')) for k in changed)
    model.load_state_dict(trained)
    assert not model.has_bn_state(0.5)


def test_switching_with_bn_states_from_another_thread(model: SkippableResNet,
                                                      images: torch.Tensor) -> None:
    recalibrate(model, images, [0.5], batch_size=8)
    x = images[:1]
    with torch.no_grad():
        model.set_keep_ratio(0.5)
        half = model(x)
        model.set_keep_ratio(1.0)
        full = model(x)
    stop = threading.Event()

    def flip() -> None:
        i = 0
        while not stop.is_set():
            model.set_keep_ratio(0.5 if i % 2 else 1.0)
            i += 1

    thread = threading.Thread(target=flip)
    thread.start()
    try:
        with torch.no_grad():
            for _ in range(40):
                out = model(x)
                assert torch.allclose(out, half, atol=1e-5) or torch.allclose(out, full,
                                                                              atol=1e-5)
    finally:
        stop.set()
        thread.join(timeout=10)


def test_dtype_conversion_converts_states(model: SkippableResNet,
                                          images: torch.Tensor) -> None:
    recalibrate(model, images, [0.5], batch_size=8)
    with torch.no_grad():
        model.set_keep_ratio(0.5)
        single = model(images[:2])
        model.double()
        double = model(images[:2].double())
    assert all(mean.dtype == torch.float64 for stats in model.bn_states().values()
               for mean, _ in stats.values())
    torch.testing.assert_close(double.float(), single, rtol=1e-4, atol=1e-4)


def test_live_model_untouched_during_estimation(model: SkippableResNet,
                                                images: torch.Tensor) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    estimate_bn_stats(model, images, 0.5, batch_size=8)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not model.has_bn_state(0.5)


def test_uint8_images_and_bad_input(model: SkippableResNet) -> None:
    raw = np.random.default_rng(0).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    assert estimate_bn_stats(model, raw, 0.5, batch_size=4, preprocessing=CIFAR10_PREPROCESSING)
    with pytest.raises(ValueError, match='preprocessing'):
        estimate_bn_stats(model, raw, 0.5, batch_size=4)
    with pytest.raises(ValueError, match='>= 2 images'):
        estimate_bn_stats(model, raw[:1], 0.5)


def test_save_and_load(tmp_path: object, model: SkippableResNet, images: torch.Tensor) -> None:
    recalibrate(model, images, [0.5, 0.25], batch_size=8)
    path = tmp_path / 'bn.pt'
    save_bn_states(model, path)
    fresh = SkippableResNet(torchvision.models.resnet18(num_classes=10)).eval()
    fresh.load_state_dict(model.state_dict())
    assert load_bn_states(fresh, path) == 1   # 0.5 and 0.25 share one mask on ResNet-18
    for key, value in model.bn_state_for(0.5).items():
        assert torch.equal(fresh.bn_state_for(0.5)[key], value)
    other = SkippableResNet(torchvision.models.resnet50(num_classes=10))
    with pytest.raises(WeightsError, match='depths'):
        load_bn_states(other, path)
    bad = tmp_path / 'bad.pt'
    torch.save({'something': 1}, bad)
    with pytest.raises(WeightsError, match='not a'):
        load_bn_states(fresh, bad)
    bad.write_bytes(b'garbage')
    with pytest.raises(WeightsError, match='cannot read'):
        load_bn_states(fresh, bad)


def test_store_bn_state_validates(model: SkippableResNet) -> None:
    masks = model.masks_for(0.5)
    with pytest.raises(ValueError, match='no BatchNorm'):
        model.store_bn_state(masks, {'fc': (torch.zeros(1), torch.ones(1))})
    with pytest.raises(ValueError, match='shape'):
        model.store_bn_state(masks, {'layer2.0.bn1': (torch.zeros(3), torch.ones(3))})
    with pytest.raises(ValueError, match='depths'):
        model.store_bn_state(((True,),), {})


@pytest.mark.skipif(not paths.cifar10_tar().is_file(), reason='shared CIFAR-10 tarball missing')
def test_calibration_images_are_balanced_train_images() -> None:
    images = calibration_images(20)
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
    with pytest.raises(ValueError, match='at least 2'):
        calibration_images(1)


def _valid_bn_file(model: SkippableResNet) -> dict:
    masks = model.masks_for(0.5)
    bn = model.bn_modules()['layer2.0.bn1']
    stats = {'layer2.0.bn1': (bn.running_mean + 0.1, bn.running_var * 2.0)}
    return {'format': 'pls_perception.bn_states/1', 'depths': model.depths,
            'states': [{'masks': masks, 'stats': stats}]}


def _bad_stats(value: object) -> object:
    def mutate(doc: dict) -> None:
        doc['states'][0]['stats'] = value
    return mutate


def _bad_pair(make: object) -> object:
    def mutate(doc: dict) -> None:
        mean, var = doc['states'][0]['stats']['layer2.0.bn1']
        doc['states'][0]['stats']['layer2.0.bn1'] = make(mean.clone(), var.clone())
    return mutate


def _set(tensor: torch.Tensor, value: float) -> torch.Tensor:
    tensor[0] = value
    return tensor


@pytest.mark.parametrize('mutate, match', [
    # The review's three files: KeyError 'depths', int depths, KeyError 'stats'.
    (lambda d: d.pop('depths'), "missing keys \\['depths'\\]"),
    (lambda d: d.update(depths=5), 'depths must be a list of integers'),
    (lambda d: d['states'][0].pop('stats'), 'must be a mapping with masks and stats'),
    (lambda d: d.update(states={'masks': 1}), 'states must be a list'),
    (lambda d: d['states'].append(7), r'states\[1\] must be a mapping'),
    (lambda d: d['states'][0].update(masks=[[True]] * 4), 'masks must be one list of booleans'),
    (lambda d: d['states'][0].update(masks=[[1, 0]] * 4), 'masks must be one list of booleans'),
    (_bad_stats([1, 2]), 'stats must be a mapping'),
    (_bad_stats({'fc': (torch.zeros(1), torch.ones(1))}), 'no BatchNorm layer'),
    (_bad_stats({'layer2.0.bn1': torch.zeros(128)}), r'must be \(mean, var\)'),
    (_bad_pair(lambda m, v: (m[:3], v)), r'must be \(mean, var\)'),
    (_bad_pair(lambda m, v: (m.long(), v)), r'must be \(mean, var\)'),
    (_bad_pair(lambda m, v: (_set(m, float('nan')), v)), 'finite'),
    (_bad_pair(lambda m, v: (m, _set(v, float('inf')))), 'finite'),
    (_bad_pair(lambda m, v: (m, _set(v, -1.0))), 'variances >= 0'),
])
def test_bad_bn_files_are_one_weights_error_naming_the_file(
        tmp_path: object, model: SkippableResNet, mutate: object, match: str) -> None:
    doc = _valid_bn_file(model)
    mutate(doc)
    path = tmp_path / 'bn.pt'
    torch.save(doc, path)
    with pytest.raises(WeightsError, match=match) as info:
        load_bn_states(model, path)
    assert str(path) in str(info.value) and '\n' not in str(info.value)
    assert model.bn_states() == {}            # nothing half-stored


def test_valid_bn_file_in_another_dtype_is_converted(tmp_path: object,
                                                     model: SkippableResNet) -> None:
    doc = _valid_bn_file(model)
    entry = doc['states'][0]
    entry['stats'] = {k: (m.double(), v.double()) for k, (m, v) in entry['stats'].items()}
    path = tmp_path / 'bn.pt'
    torch.save(doc, path)
    assert load_bn_states(model, path) == 1
    assert model.bn_state_for(0.5)['layer2.0.bn1.running_mean'].dtype == torch.float32
