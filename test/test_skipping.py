"""Proportional Layer Skipping: block counts, equivalence with a pruned network, thread safety."""
from __future__ import annotations

import copy
import math
import pickle
import statistics
import threading
import time

import pytest
import torch
import torchvision
from hypothesis import given, settings, strategies as st
from torch import nn

from pls_perception.skipping.network import SkippableResNet, physically_pruned_copy
from pls_perception.skipping.ratios import (RESNET152_DEPTHS, STAGE_NAMES, ProportionalPolicy,
                                            SkipPolicy, blocks_kept)

torch.set_num_threads(1)

RATIOS = [0.01, 0.05, 0.1, 0.2, 0.25, 0.3, 0.33, 1 / 3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8,
          0.85, 0.9, 0.95, 0.99, 1.0]
DEPTHS = {'resnet18': (2, 2, 2, 2), 'resnet50': (3, 4, 6, 3), 'resnet152': RESNET152_DEPTHS}


@pytest.fixture(scope='module')
def models() -> dict[str, SkippableResNet]:
    torch.manual_seed(0)
    return {arch: SkippableResNet(torchvision.models.get_model(arch, num_classes=10)).eval()
            for arch in DEPTHS}


@pytest.fixture()
def small() -> SkippableResNet:
    torch.manual_seed(1)
    return SkippableResNet(torchvision.models.resnet18(num_classes=10)).eval()


@pytest.mark.parametrize(('n', 'ratio', 'expected'), [
    (3, 1.0, 3), (3, 0.9, 3), (3, 0.7, 3), (3, 0.5, 2), (3, 0.3, 1), (3, 0.1, 1),
    (8, 0.9, 8), (8, 0.8, 7), (8, 0.7, 6), (8, 0.5, 4), (8, 0.1, 1),
    (36, 0.9, 33), (36, 0.8, 29), (36, 0.7, 26), (36, 0.5, 18), (36, 0.3, 11), (36, 0.1, 4),
    (10, 0.7, 7), (10, 0.3, 3), (1, 0.01, 1), (5, 1e-9, 1)])
def test_blocks_kept_values(n: int, ratio: float, expected: int) -> None:
    assert blocks_kept(n, ratio) == expected


@given(n=st.integers(1, 60), ratio=st.floats(0.0, 1.0, exclude_min=True))
@settings(max_examples=300, deadline=None)
def test_blocks_kept_is_clamped_ceil(n: int, ratio: float) -> None:
    kept = blocks_kept(n, ratio)
    assert 1 <= kept <= n
    assert kept >= ratio * n - 1e-6
    assert kept == 1 or kept - 1 < ratio * n


@pytest.mark.parametrize('bad', [0, 0.0, -0.1, 1.0001, 2, float('nan'), float('inf'), True,
                                 '0.5', None])
def test_bad_ratios_raise(bad: object, small: SkippableResNet) -> None:
    with pytest.raises(ValueError, match='keep ratio'):
        blocks_kept(4, bad)
    with pytest.raises(ValueError):
        small.set_keep_ratio(bad)
    assert small.keep_ratio == 1.0


@pytest.mark.parametrize('bad', [0, -1, 2.0, True])
def test_bad_block_counts_raise(bad: object) -> None:
    with pytest.raises(ValueError, match='n_blocks'):
        blocks_kept(bad, 0.5)


@pytest.mark.parametrize('arch', sorted(DEPTHS))
@pytest.mark.parametrize('ratio', RATIOS)
def test_block_counts_per_stage(models: dict[str, SkippableResNet], arch: str,
                                ratio: float) -> None:
    model = models[arch]
    assert model.depths == DEPTHS[arch]
    model.set_keep_ratio(ratio)
    masks = model.active_masks()
    for n, stage_mask in zip(DEPTHS[arch], masks):
        kept = math.ceil(round(ratio * n, 9))
        assert stage_mask == tuple([True] * kept + [False] * (n - kept))
    model.set_keep_ratio(1.0)


def test_per_stage_ratios(models: dict[str, SkippableResNet]) -> None:
    model = models['resnet152']
    model.set_keep_ratio((1.0, 0.5, 0.25, 0.1))
    assert [sum(m) for m in model.active_masks()] == [3, 4, 9, 1]
    assert model.keep_ratio == (1.0, 0.5, 0.25, 0.1)
    with pytest.raises(ValueError, match='one value per stage'):
        model.set_keep_ratio((0.5, 0.5))
    with pytest.raises(ValueError, match='keep ratio'):
        model.set_keep_ratio((0.5, 0.5, 0.0, 0.5))
    model.set_keep_ratio(1.0)


@given(a=st.floats(0.01, 1.0), b=st.floats(0.01, 1.0))
@settings(max_examples=100, deadline=None)
def test_masks_monotone_in_ratio(a: float, b: float) -> None:
    low, high = sorted((a, b))
    policy = ProportionalPolicy()
    for m_low, m_high in zip(policy.masks(low, RESNET152_DEPTHS),
                             policy.masks(high, RESNET152_DEPTHS)):
        assert m_low[0] and m_high[0]
        assert all(h or not lo for lo, h in zip(m_low, m_high))


@pytest.mark.parametrize('arch', sorted(DEPTHS))
def test_state_dict_keys_unchanged(models: dict[str, SkippableResNet], arch: str) -> None:
    reference = torchvision.models.get_model(arch, num_classes=10)
    assert list(models[arch].state_dict()) == list(reference.state_dict())
    # The very same modules: no weight was copied.
    assert models[arch].layer1[0].conv1.weight.data_ptr() == next(
        iter(models[arch].layer1[0].conv1.parameters())).data_ptr()


@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
def test_full_ratio_equals_torchvision(arch: str) -> None:
    torch.manual_seed(2)
    resnet = torchvision.models.get_model(arch, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = resnet(x)
        got = SkippableResNet(resnet)(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
@pytest.mark.parametrize('ratio', [0.1, 0.3, 0.5, 0.7, 0.9, 1.0, (1.0, 0.3, 0.6, 0.1)])
def test_equals_physically_pruned_copy(models: dict[str, SkippableResNet], arch: str,
                                       ratio: object) -> None:
    model = models[arch]
    pruned = physically_pruned_copy(model, ratio)
    assert not any(isinstance(m, SkippableResNet) for m in pruned.modules())
    kept = sum(sum(m) for m in model.masks_for(ratio))
    assert sum(len(getattr(pruned, s)) for s in STAGE_NAMES) == kept
    torch.manual_seed(3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.set_keep_ratio(ratio)
        got = model(x)
        model.set_keep_ratio(1.0)
        full = model(x)
        expected = pruned(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if kept < sum(model.depths):
        assert not torch.allclose(full, expected, atol=1e-4)


def test_pruned_copy_is_independent(small: SkippableResNet) -> None:
    pruned = physically_pruned_copy(small, 0.5)
    assert set(pruned.state_dict()) < set(small.state_dict())
    with torch.no_grad():
        pruned.fc.weight.zero_()
    assert small.fc.weight.abs().sum() > 0


def test_switch_never_lands_mid_forward(small: SkippableResNet) -> None:
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        small.set_keep_ratio(0.5)
        half = small(x)
        small.set_keep_ratio(1.0)
        full = small(x)
        # Switch from inside the forward pass, right after the first block ran.
        handle = small.layer1[0].register_forward_hook(lambda *_: small.set_keep_ratio(0.5))
        during = small(x)
        handle.remove()
        after = small(x)
    torch.testing.assert_close(during, full, rtol=0, atol=0)
    torch.testing.assert_close(after, half, rtol=0, atol=0)
    assert small.keep_ratio == 0.5


def test_switch_from_another_thread_is_safe(small: SkippableResNet) -> None:
    ratios = [0.5, 1.0, (1.0, 0.5, 1.0, 0.5), (0.5, 1.0, 0.5, 1.0)]
    torch.manual_seed(4)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        valid = []
        for ratio in ratios:
            small.set_keep_ratio(ratio)
            valid.append(small(x))
    for i, a in enumerate(valid):
        for b in valid[i + 1:]:
            assert not torch.allclose(a, b, atol=1e-4)
    stop = threading.Event()
    switches = 0

    def flip() -> None:
        nonlocal switches
        while not stop.is_set():
            small.set_keep_ratio(ratios[switches % len(ratios)])
            switches += 1

    thread = threading.Thread(target=flip)
    thread.start()
    seen = set()
    try:
        with torch.no_grad():
            for _ in range(60):
                out = small(x)
                matches = [i for i, v in enumerate(valid) if torch.allclose(out, v, atol=1e-5)]
                assert matches, 'output matches no valid ratio: a switch landed mid-forward'
                seen.add(matches[0])
    finally:
        stop.set()
        thread.join(timeout=10)
    assert switches > 60
    assert len(seen) >= 2


def test_switch_is_fast(models: dict[str, SkippableResNet]) -> None:
    model = models['resnet152']
    durations = []
    for i in range(2000):
        start = time.perf_counter()
        model.set_keep_ratio(0.1 + 0.1 * (i % 10) if i % 10 else 1.0)
        durations.append(time.perf_counter() - start)
    assert statistics.median(durations) < 1e-3
    model.set_keep_ratio(1.0)


def test_using_ratio_pins_without_switching(small: SkippableResNet) -> None:
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        small.set_keep_ratio(0.5)
        half = small(x)
        small.set_keep_ratio(1.0)
        with small.using_ratio(0.5):
            pinned = small(x)
            assert small.keep_ratio == 1.0
    torch.testing.assert_close(pinned, half, rtol=0, atol=0)


class _KeepLastPolicy(SkipPolicy):
    """Keeps block 0 and the last block of every stage (differs from proportional)."""

    name = 'first_last'

    def masks(self, ratio: object, depths: tuple[int, ...]) -> tuple[tuple[bool, ...], ...]:
        return tuple(tuple(i in (0, n - 1) for i in range(n)) for n in depths)


class _BrokenPolicy(SkipPolicy):
    name = 'broken'

    def masks(self, ratio: object, depths: tuple[int, ...]) -> tuple[tuple[bool, ...], ...]:
        return tuple((False,) * n for n in depths)


def test_set_policy(models: dict[str, SkippableResNet]) -> None:
    model = models['resnet50']
    model.set_policy(_KeepLastPolicy())
    assert model.active_masks()[2] == (True, False, False, False, False, True)
    with pytest.raises(ValueError, match='block 0'):
        model.set_policy(_BrokenPolicy())
    assert model.policy.name == 'first_last'
    model.set_policy(ProportionalPolicy())
    assert all(all(m) for m in model.active_masks())


class _Block(nn.Module):
    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.skip = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out \
            else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)) + self.skip(x)


class _TinyResNetLike(nn.Module):
    """Not a torchvision ResNet: different stem, depths (2, 3, 1, 4), and no maxpool."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        widths = [(4, 4), (4, 8), (8, 8), (8, 6)]
        for name, depth, (c_in, c_out) in zip(STAGE_NAMES, (2, 3, 1, 4), widths):
            self.add_module(name, nn.Sequential(
                _Block(c_in, c_out), *[_Block(c_out, c_out) for _ in range(depth - 1)]))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.head(torch.flatten(self.pool(x), 1))


def test_any_resnet_like_model() -> None:
    torch.manual_seed(5)
    tiny = _TinyResNetLike().eval()
    model = SkippableResNet(tiny)
    assert model.depths == (2, 3, 1, 4)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tiny(x))
        model.set_keep_ratio(0.5)
        torch.testing.assert_close(model(x), physically_pruned_copy(model, 0.5)(x))
    with pytest.raises(ValueError, match='layer1'):
        SkippableResNet(nn.Sequential(nn.Linear(2, 2)))


def test_copy_and_pickle(small: SkippableResNet) -> None:
    small.set_keep_ratio(0.5)
    x = torch.randn(1, 3, 32, 32)
    for clone in (copy.deepcopy(small), pickle.loads(pickle.dumps(small))):
        assert clone.keep_ratio == 0.5
        with torch.no_grad():
            torch.testing.assert_close(clone(x), small(x))
        clone.set_keep_ratio(1.0)
        assert small.keep_ratio == 0.5
