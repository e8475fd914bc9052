"""Skip plans: invariants, YAML round trip and validation, learning on a small ResNet, policies."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from hypothesis import given, settings, strategies as st

from pls_perception.errors import ProfileError
from pls_perception.operating_points.profiles import PROPORTIONAL
from pls_perception.skipping.complexity import count_macs
from pls_perception.skipping.network import ProportionalPolicy, SkippableResNet
from pls_perception.skipping.plans import (PlanPolicy, SkipPlan, _FixedMasksPolicy, block_macs,
                                           learn_plan, load_plan, load_policy, policy_info,
                                           removable_blocks, save_plan)

SHA = hashlib.sha256(b'weights').hexdigest()
DEPTHS = (2, 2, 2, 2)


def _plan(depths: tuple[int, ...] = DEPTHS, macs: int = 100, **kw: object) -> SkipPlan:
    order = tuple(reversed(removable_blocks(depths)))
    fields = dict(depths=depths, order=order, block_macs=(macs,) * len(order),
                  costs=tuple(0.1 * i for i in range(len(order))), method='greedy', cost='kl',
                  calibration_size=8, weights_sha256=SHA)
    fields.update(kw)
    return SkipPlan(**fields)


@pytest.fixture(scope='module')
def resnet18() -> SkippableResNet:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    # Random BN statistics so that removing blocks changes the logits measurably.
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return SkippableResNet(net)


@pytest.fixture(scope='module')
def calibration() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(12, 3, 32, 32, generator=generator), torch.arange(12) % 10


def _check_valid(plan: SkipPlan, depths: tuple[int, ...]) -> None:
    assert sorted(plan.order) == sorted(removable_blocks(depths))
    assert all(b >= 1 for _, b in plan.order)
    assert len(set(plan.order)) == len(plan.order)


def test_removable_blocks_never_block_0() -> None:
    blocks = removable_blocks((3, 8, 36, 3))
    assert len(blocks) == 46
    assert all(b >= 1 for _, b in blocks)


def test_plan_rejects_block_0_duplicates_and_gaps() -> None:
    order = removable_blocks(DEPTHS)
    with pytest.raises(ValueError, match='exactly once'):
        _plan(order=((0, 0),) + order[1:])
    with pytest.raises(ValueError, match='twice'):
        _plan(order=(order[0],) + order[:-1])
    with pytest.raises(ValueError, match='exactly once'):
        _plan(order=order[:-1], block_macs=(1,) * 3, costs=(0.0,) * 3)
    with pytest.raises(ValueError, match='method'):
        _plan(method='random')
    with pytest.raises(ValueError, match='sha256'):
        _plan(weights_sha256='abc')
    with pytest.raises(ValueError, match='sha256'):
        _plan(weights_sha256=0)


@settings(max_examples=60, deadline=None)
@given(depths=st.lists(st.integers(1, 7), min_size=1, max_size=4).filter(
           lambda d: any(n > 1 for n in d)),
       macs=st.lists(st.integers(1, 1000), min_size=30, max_size=30),
       ratios=st.lists(st.floats(0.001, 1.0), min_size=2, max_size=6))
def test_masks_keep_block_0_and_macs_monotone_in_ratio(
        depths: list[int], macs: list[int], ratios: list[float]) -> None:
    depths_t = tuple(depths)
    order = removable_blocks(depths_t)
    plan = _plan(depths_t, block_macs=tuple(macs[:len(order)]), order=order,
                 costs=(0.0,) * len(order))
    kept_before = -1.0
    removed_before: set[tuple[int, int]] | None = None
    for ratio in sorted(ratios):
        masks = plan.masks(ratio)
        assert tuple(len(m) for m in masks) == depths_t
        assert all(m[0] for m in masks)
        kept = plan.removable_fraction(masks)
        assert kept == pytest.approx(plan.kept_fraction(ratio))
        assert kept <= ratio + 1e-9
        assert kept >= kept_before
        removed = {(s, b) for s, m in enumerate(masks) for b, keep in enumerate(m) if not keep}
        # A higher ratio removes a prefix of what a lower ratio removes.
        assert removed_before is None or removed <= removed_before
        assert removed == set(order[:len(removed)])
        kept_before, removed_before = kept, removed
    assert plan.masks(1.0) == tuple((True,) * n for n in depths_t)


def test_plan_removes_until_kept_fraction_is_at_most_ratio() -> None:
    plan = _plan()   # 4 removable blocks of equal MACs
    assert plan.removed_count(1.0) == 0
    assert plan.removed_count(0.99) == 1
    assert plan.removed_count(0.75) == 1
    assert plan.removed_count(0.74) == 2
    assert plan.removed_count(0.5) == 2
    assert plan.removed_count(0.01) == 4
    assert plan.kept_fraction(0.6) == 0.5
    # A ratio computed from kept blocks (e.g. PLS's) maps back to exactly that many blocks.
    big = _plan((3, 8, 36, 3), macs=4456448)
    assert all(big.removed_count(kept / 46) == 46 - kept for kept in range(1, 47))
    # matching_ratio: the plan keeps as many removable MACs as given masks, even none.
    pls_masks = ProportionalPolicy().masks(0.5, (3, 8, 36, 3))
    assert big.removable_fraction(big.masks(big.matching_ratio(pls_masks))) == pytest.approx(
        big.removable_fraction(pls_masks))
    none_kept = ProportionalPolicy().masks(0.01, DEPTHS)
    assert plan.masks(plan.matching_ratio(none_kept)) == none_kept
    with pytest.raises(ValueError, match='got 0'):
        plan.masks(0)
    with pytest.raises(ValueError, match='one global'):
        plan.masks((0.5, 0.5, 0.5, 0.5))


def test_yaml_round_trip(tmp_path: Path) -> None:
    plan = _plan(bn_recalibration=True, costs=(0.5, 0.25, 0.125, 1.0))
    path = tmp_path / 'sub' / 'plan.yaml'
    save_plan(plan, path)
    assert load_plan(path) == plan
    assert load_plan(path, weights_sha256=SHA) == plan


def test_mismatched_weights_hash_rejected(tmp_path: Path) -> None:
    path = tmp_path / 'plan.yaml'
    save_plan(_plan(), path)
    with pytest.raises(ProfileError, match='sha256'):
        load_plan(path, weights_sha256='0' * 64)
    with pytest.raises(ProfileError, match='sha256'):
        load_policy(str(path), '0' * 64)
    save_plan(_plan(weights_sha256=None), path)
    with pytest.raises(ProfileError, match='sha256'):
        load_plan(path, weights_sha256=SHA)


@pytest.mark.parametrize('mutate, message', [
    (lambda d: d.pop('removal_order'), 'removal_order'),
    (lambda d: d.update(format='other'), 'format'),
    (lambda d: d['removal_order'][0].update(block=0), 'exactly once'),
    (lambda d: d['removal_order'][0].update(macs='many'), 'macs'),
    (lambda d: d.update(calibration_size=0), 'calibration_size'),
    (lambda d: d.update(cost='l2'), 'cost'),
])
def test_invalid_plan_files_raise_profile_error(tmp_path: Path, mutate, message: str) -> None:
    doc = _plan().to_dict()
    mutate(doc)
    path = tmp_path / 'plan.yaml'
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ProfileError, match=message):
        load_plan(path)


def test_unreadable_plan_files_raise_profile_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match='cannot read'):
        load_plan(tmp_path / 'missing.yaml')
    (tmp_path / 'bad.yaml').write_text('a: [1, 2\n')
    with pytest.raises(ProfileError, match='not valid YAML'):
        load_plan(tmp_path / 'bad.yaml')
    (tmp_path / 'list.yaml').write_text('- 1\n')
    with pytest.raises(ProfileError, match='mapping'):
        load_plan(tmp_path / 'list.yaml')


def test_load_policy(tmp_path: Path) -> None:
    assert isinstance(load_policy('proportional', SHA), ProportionalPolicy)
    path = tmp_path / 'my_plan.yaml'
    save_plan(_plan(), path)
    policy = load_policy(str(path), SHA)
    assert isinstance(policy, PlanPolicy)
    assert policy.name == 'plan:my_plan'
    assert load_policy(str(path), None).plan == _plan()


def test_fingerprint_identifies_the_removal_order(tmp_path: Path) -> None:
    plan = _plan()
    path = tmp_path / 'plan.yaml'
    save_plan(plan, path)
    assert load_plan(path).fingerprint == plan.fingerprint
    assert len(plan.fingerprint) == 64
    # the search costs and calibration do not change which blocks are skipped, the order does
    assert _plan(costs=(1.0, 2.0, 3.0, 4.0), calibration_size=99).fingerprint == plan.fingerprint
    assert _plan(order=removable_blocks(DEPTHS)).fingerprint != plan.fingerprint


def test_ratio_removing_is_short_and_exact() -> None:
    big = _plan((3, 8, 36, 3), macs=4456448)
    for count in range(47):
        ratio = big.ratio_removing(count)
        assert big.removed_count(ratio) == count
        assert ratio == round(ratio, 6)         # survives 6-digit rounding in YAML and tables
    assert [big.ratio_removing(k) for k in (0, 3, 12, 24, 46)] == [1.0, 0.94, 0.74, 0.48, 0.01]
    assert big.masks_removing(3) == big.masks(0.94)
    with pytest.raises(ValueError, match='0..46'):
        big.masks_removing(47)


def test_policy_info(tmp_path: Path) -> None:
    assert policy_info('proportional') == (PROPORTIONAL, None)
    path = tmp_path / 'my_plan.yaml'
    save_plan(_plan(), path)
    info, plan = policy_info(str(path), SHA)
    assert plan == _plan()
    assert (info.name, info.plan_fingerprint, info.weights_sha256, info.plan_file) == (
        'plan:my_plan', plan.fingerprint, SHA, str(path))
    with pytest.raises(ProfileError, match='sha256'):
        policy_info(str(path), '0' * 64)


def test_plan_policy_caches_masks_and_checks_depths() -> None:
    policy = PlanPolicy(_plan())
    first = policy.masks(0.5, DEPTHS)
    assert policy.masks(0.5, DEPTHS) is first
    with pytest.raises(ValueError, match='depths'):
        policy.masks(0.5, (3, 4, 6, 3))


def test_block_macs_match_count_macs(resnet18: SkippableResNet) -> None:
    macs = block_macs(resnet18)
    assert set(macs) == set(removable_blocks(resnet18.depths))
    # BasicBlocks without downsample: channels double as the area quarters -> equal MACs.
    assert len(set(macs.values())) == 1
    assert sum(macs.values()) == count_macs(resnet18, ratio=1.0) - count_macs(resnet18,
                                                                                ratio=0.01)
    assert isinstance(resnet18.policy, ProportionalPolicy)


@pytest.mark.parametrize('method, cost, bn', [
    ('oneshot', 'kl', False), ('greedy', 'kl', False), ('greedy', 'accuracy', True)])
def test_learned_plans_are_valid_and_serve_the_model(
        resnet18: SkippableResNet, calibration: tuple[torch.Tensor, torch.Tensor],
        method: str, cost: str, bn: bool, tmp_path: Path) -> None:
    images, labels = calibration
    state = {k: v.clone() for k, v in resnet18.state_dict().items()}
    plan = learn_plan(resnet18, images, method=method, cost=cost, labels=labels,
                      bn_recalibration=bn, weights_sha256=SHA, arch='resnet18')
    _check_valid(plan, resnet18.depths)
    assert (plan.method, plan.cost, plan.calibration_size, plan.bn_recalibration) == (
        method, cost, 12, bn)
    assert all(c >= 0 for c in plan.costs) if cost == 'kl' else True
    # The search leaves weights and BN buffers untouched.
    assert all(torch.equal(v, resnet18.state_dict()[k]) for k, v in state.items())
    save_plan(plan, tmp_path / 'p.yaml')
    resnet18.set_policy(load_policy(str(tmp_path / 'p.yaml'), SHA))
    try:
        resnet18.set_keep_ratio(0.5)
        assert resnet18.active_masks() == plan.masks(0.5)
        assert resnet18(images[:2]).shape == (2, 10)
    finally:
        resnet18.set_policy(ProportionalPolicy())
        resnet18.set_keep_ratio(1.0)


def test_oneshot_scores_match_direct_evaluation(
        resnet18: SkippableResNet, calibration: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The cached search's cost for a block equals the KL measured through the model itself."""
    images, _ = calibration
    plan = learn_plan(resnet18, images, method='oneshot', cost='kl')
    assert list(plan.costs) == sorted(plan.costs)
    with torch.inference_mode():
        full = torch.log_softmax(resnet18(images), 1)
        for block, cost in zip(plan.order[:3], plan.costs[:3]):
            masks = tuple(tuple((s, b) != block for b in range(n))
                          for s, n in enumerate(resnet18.depths))
            resnet18.set_policy(_FixedMasksPolicy(masks))
            logits = torch.log_softmax(resnet18(images), 1)
            kl = torch.nn.functional.kl_div(logits, full, log_target=True, reduction='batchmean')
            assert float(kl) == pytest.approx(cost, rel=1e-4, abs=1e-7)
    resnet18.set_policy(ProportionalPolicy())


def test_greedy_first_choice_is_the_oneshot_best(
        resnet18: SkippableResNet, calibration: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, _ = calibration
    oneshot = learn_plan(resnet18, images, method='oneshot')
    greedy = learn_plan(resnet18, images, method='greedy')
    assert greedy.order[0] == oneshot.order[0]
    assert greedy.costs[0] == pytest.approx(oneshot.costs[0])


def test_learn_plan_rejects_bad_arguments(
        resnet18: SkippableResNet, calibration: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = calibration
    with pytest.raises(ValueError, match='labels'):
        learn_plan(resnet18, images, cost='accuracy')
    with pytest.raises(ValueError, match='method'):
        learn_plan(resnet18, images, method='random')
    with pytest.raises(ValueError, match='labels must have shape'):
        learn_plan(resnet18, images, labels=labels[:3])



RESNET152 = (3, 8, 36, 3)


def test_absurd_depth_is_rejected_before_anything_is_built(tmp_path: Path) -> None:
    """The review's plan: one depth of 3e8 once ran configure into the OOM killer (~20 GB)."""
    from memory_probe import run
    doc = _plan(RESNET152).to_dict()
    doc['depths'] = [3, 8, 36, 300000000]
    path = tmp_path / 'absurd.yaml'
    path.write_text(yaml.safe_dump(doc))
    for model_depths in ('', f', depths={RESNET152!r}'):
        outcome = run('from pls_perception.skipping.plans import load_plan',
                      f'load_plan({str(path)!r}{model_depths})', cap_mb=1024)
        assert outcome['error'] == 'ProfileError', outcome
        assert str(path) in outcome['message'] and '300000000' in outcome['message']
        assert len(outcome['message']) < 600 and outcome['peak_mb'] < 50, outcome


def test_plan_must_fit_the_model_depths(tmp_path: Path) -> None:
    path = tmp_path / 'plan.yaml'
    save_plan(_plan(), path)
    assert load_plan(path, depths=DEPTHS) == _plan()
    with pytest.raises(ProfileError, match=r'for depths \(2, 2, 2, 2\), the model has'):
        load_plan(path, depths=RESNET152)
    with pytest.raises(ProfileError, match='the model has'):
        load_policy(str(path), SHA, RESNET152)


@pytest.mark.parametrize('mutate, message', [
    (lambda d: d.update(depths=5), 'depths must be a list'),
    (lambda d: d.update(depths=[2, 2, 2, -1]), 'depths must be positive'),
    (lambda d: d.update(depths=[2, 2, 2, 2.5]), 'depths must be an integer'),
    (lambda d: d.update(removal_order={'stage': 0}), 'removal_order must be a list'),
    (lambda d: d['removal_order'][0].pop('macs'), 'entries must be mappings with'),
    (lambda d: d['removal_order'][0].update(cost=10**400), 'cost must be finite'),
    (lambda d: d['removal_order'][0].update(cost=float('nan')), 'finite'),
    (lambda d: d['removal_order'][0].update(cost='0.5'), 'cost must be a number'),
    (lambda d: d['removal_order'][0].update(macs=-3), 'positive count'),
    (lambda d: d['removal_order'].append(d['removal_order'][0]), 'exactly once'),
    (lambda d: d.update(method=['greedy']), 'method must be a string'),
    (lambda d: d.update(input_size=[32]), 'input_size'),
    (lambda d: d.pop('weights_sha256'), 'missing required keys'),
])
def test_absurd_plan_content_is_one_line_profile_error(tmp_path: Path, mutate,
                                                      message: str) -> None:
    doc = _plan().to_dict()
    mutate(doc)
    path = tmp_path / 'plan.yaml'
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ProfileError, match=message) as info:
        load_plan(path)
    assert str(path) in str(info.value) and '\n' not in str(info.value)


def test_non_utf8_plan_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / 'latin1.yaml'
    path.write_bytes(yaml.safe_dump(_plan().to_dict()).encode() + b'# caf\xe9\n')
    with pytest.raises(ProfileError, match='not UTF-8') as info:
        load_plan(path)
    assert str(path) in str(info.value)


def test_long_values_from_a_plan_are_clipped_in_errors(tmp_path: Path) -> None:
    doc = _plan().to_dict()
    doc['format'] = 'x' * 1000
    path = tmp_path / 'plan.yaml'
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ProfileError, match='more characters') as info:
        load_plan(path)
    assert len(str(info.value)) < 400
