"""Active parameter and MAC counts, including the paper's Table 1 parameter column."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from pls_perception.skipping.complexity import count_macs, count_parameters
from pls_perception.skipping.network import SkippableResNet, physically_pruned_copy

torch.set_num_threads(1)

# Table 1 of the paper, torchvision resnet152(num_classes=10), in millions (2 decimals).
PAPER_PARAMS_M = {1.0: 58.16, 0.9: 54.81, 0.8: 50.06, 0.7: 46.43}


@pytest.fixture(scope='module')
def resnet152() -> SkippableResNet:
    return SkippableResNet(torchvision.models.resnet152(num_classes=10)).eval()


@pytest.fixture(scope='module')
def resnet50() -> SkippableResNet:
    return SkippableResNet(torchvision.models.resnet50(num_classes=10)).eval()


def test_full_parameter_count(resnet152: SkippableResNet) -> None:
    assert count_parameters(resnet152) == 58_164_298


@pytest.mark.parametrize(('ratio', 'millions'), sorted(PAPER_PARAMS_M.items()))
def test_paper_table1_parameters(resnet152: SkippableResNet, ratio: float,
                                 millions: float) -> None:
    assert round(count_parameters(resnet152, ratio) / 1e6, 2) == millions


@pytest.mark.parametrize('ratio', [0.1, 0.3, 0.5, 0.7, 0.9, (0.5, 1.0, 0.2, 0.7)])
def test_counts_match_physically_pruned_network(resnet50: SkippableResNet, ratio: object) -> None:
    pruned = physically_pruned_copy(resnet50, ratio)
    assert count_parameters(resnet50, ratio) == sum(p.numel() for p in pruned.parameters())
    macs = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            macs += output.numel() * module.weight[0].numel()
        else:
            macs += module.weight.numel()

    for module in pruned.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(hook)
    with torch.no_grad():
        pruned(torch.zeros(1, 3, 48, 40))
    assert count_macs(resnet50, (48, 40), ratio) == macs


def test_counts_follow_current_ratio_and_decrease(resnet50: SkippableResNet) -> None:
    ratios = [1.0, 0.9, 0.7, 0.5, 0.3, 0.1]
    params = [count_parameters(resnet50, r) for r in ratios]
    macs = [count_macs(resnet50, (32, 32), r) for r in ratios]
    assert params == sorted(params, reverse=True) and len(set(params)) > 3
    assert macs == sorted(macs, reverse=True) and len(set(macs)) > 3
    resnet50.set_keep_ratio(0.3)
    assert count_parameters(resnet50) == params[4]
    assert count_macs(resnet50) == macs[4]
    resnet50.set_keep_ratio(1.0)


def test_resnet18_full_macs_at_imagenet_size() -> None:
    # torchvision documents 1.814 G(MAC) "ops" for ResNet-18 at 224x224 (1000 classes).
    model = SkippableResNet(torchvision.models.resnet18())
    documented = torchvision.models.ResNet18_Weights.DEFAULT.meta['_ops']
    assert round(count_macs(model, (224, 224)) / 1e9, 3) == documented
    assert model.training  # counting does not change the mode


def test_bad_input_size(resnet50: SkippableResNet) -> None:
    with pytest.raises(ValueError, match='input_size'):
        count_macs(resnet50, (0, 32))
