"""PLS-aware fine-tuning core: recipe pieces, a tiny run, determinism, resume, divergence."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from tiny_cifar import make_tiny_cifar

from pls_perception.skipping.bn_recalibration import load_bn_states
from pls_perception.skipping.training import (CHECKPOINT_NAME, CURVE_CSV, CURVE_JSON, TrainConfig,
                                              TrainData, Trainer, TrainingDiverged, augment,
                                              export_weights, load_train_data, lr_factor,
                                              per_class_indices)
from pls_perception.skipping.weights import load_model

torch.set_num_threads(1)
RATIOS = (1.0, 0.5)
DEEP_RATIOS = (1.0, 0.75, 0.5, 0.25)


@pytest.fixture(scope='module')
def tiny_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_cifar(tmp_path_factory.mktemp('data') / 'tiny.tar.gz', per_class=12)


@pytest.fixture(scope='module')
def data(tiny_tar: Path) -> TrainData:
    return load_train_data(tiny_tar, val_images=6)


@pytest.fixture(scope='module')
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded starting weights: resnet18 (stages of 2 blocks: one skipped mask) and resnet34
    (3, 4, 6, 3: ratios 0.75, 0.5 and 0.25 keep different blocks)."""
    directory = tmp_path_factory.mktemp('weights')
    for arch in ('resnet18', 'resnet34'):
        torch.manual_seed(0)
        torch.save(torchvision.models.get_model(arch, num_classes=10).state_dict(),
                   directory / f'{arch}.pt')
    return directory


def _trainer(weights_dir: Path, data: TrainData, out: Path, arch: str = 'resnet18',
             **overrides: object) -> Trainer:
    settings = dict(steps=6, batch_size=8, lr=0.003, ratios=RATIOS, bn_calibration_images=16)
    settings.update(overrides)
    loaded = load_model(str(weights_dir / f'{arch}.pt'), arch)
    return Trainer(loaded.model, loaded.preprocessing, data, TrainConfig(**settings), out,
                   {'arch': arch, 'weights': loaded.sha256})


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_config_rejects_bad_values() -> None:
    assert TrainConfig(steps=5, ratios=(0.5, 1.0, 0.5)).ratios == (1.0, 0.5)
    assert TrainConfig(steps=200).warmup == 10
    for bad in (dict(steps=0), dict(steps=5, ratios=(0.5,)), dict(steps=5, ratios=(1.0, 0.0)),
                dict(steps=5, lr=float('nan')), dict(steps=5, bn_mode='train'),
                dict(steps=5, warmup_steps=6), dict(steps=5, label_smoothing=1.0),
                dict(steps=5, per_ratio_bn=True, bn_calibration_images=1)):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_lr_warms_up_then_decays_to_zero() -> None:
    factors = [lr_factor(s, 100, 10) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[:10] == sorted(factors[:10])
    assert factors[10:] == sorted(factors[10:], reverse=True) and factors[-1] < 0.001


def test_train_data_is_train_split_only_with_a_balanced_hold_out(tiny_tar: Path,
                                                                 data: TrainData) -> None:
    with pytest.raises(ValueError, match='train split only.*test'):
        load_train_data(tiny_tar, split='test')
    assert len(data.train_images) == 30 and len(data.val_images) == 6
    assert np.unique(data.val_labels, return_counts=True)[1].tolist() == [2, 2, 2]
    # Colour channel 2 is 200 for test-split images (tiny_cifar): none may appear.
    assert data.train_images[..., 2].max() < 100 and data.val_images[..., 2].max() < 100
    train_set = {im.tobytes() for im in data.train_images}
    assert not any(im.tobytes() in train_set for im in data.val_images)
    assert per_class_indices(np.array([0, 0, 0, 1, 1]), 3, from_end=False).tolist() == [0, 1, 3]


def test_augment_is_seeded_crop_and_flip() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    first = augment(x, torch.Generator().manual_seed(1), padding=2)
    assert torch.equal(first, augment(x, torch.Generator().manual_seed(1), padding=2))
    assert first.shape == x.shape
    outcomes = {augment(x, torch.Generator().manual_seed(s), padding=2).sum().item()
                for s in range(20)}
    assert len(outcomes) > 1
    flat = torch.full((1, 3, 8, 8), 0.5)
    assert torch.equal(augment(flat, torch.Generator().manual_seed(0)), flat)


def test_sub_ratios_are_the_smallest_plus_random_distinct_masks(weights_dir: Path,
                                                                data: TrainData,
                                                                tmp_path: Path) -> None:
    shallow = _trainer(weights_dir, data, tmp_path, ratios=(1.0, 0.9, 0.5, 0.1),
                       random_ratios=2)
    # resnet18 stages have 2 blocks: 0.5 and 0.1 keep the same single block, 0.9 keeps both.
    assert {tuple(shallow.sub_ratios(torch.Generator().manual_seed(s)))
            for s in range(5)} == {(0.1,)}
    deep = _trainer(weights_dir, data, tmp_path, 'resnet34', ratios=DEEP_RATIOS)
    drawn = [tuple(deep.sub_ratios(torch.Generator().manual_seed(s))) for s in range(20)]
    assert set(drawn) == {(0.75, 0.25), (0.5, 0.25)}


def test_tiny_run_learns_and_exports_loadable_weights(weights_dir: Path, data: TrainData,
                                                      tmp_path: Path) -> None:
    trainer = _trainer(weights_dir, data, tmp_path, steps=12, ratios=(1.0, 0.75, 0.5))
    trainer.run(checkpoint_every=4, eval_every=4)
    curve = trainer.curve
    assert [row['step'] for row in curve] == [0, 4, 8, 12]
    assert curve[-1]['train_loss']['1'] < curve[1]['train_loss']['1']
    assert curve[-1]['val_loss']['1'] < curve[0]['val_loss']['1']
    assert set(curve[1]['train_loss']) == {'1', '0.5'}
    saved = json.loads((tmp_path / CURVE_JSON).read_text())
    assert [row['step'] for row in saved['rows']] == [0, 4, 8, 12]
    header = (tmp_path / CURVE_CSV).read_text().splitlines()[0].split(',')
    assert {'train_loss_r0.5', 'val_accuracy_r0.75', 'val_loss_r1'} <= set(header)
    assert curve[-1]['val_accuracy']['0.75'] == curve[-1]['val_accuracy']['1']   # same blocks

    out = tmp_path / 'pls.pt'
    export_weights(trainer.model, out, torch.float32)
    reloaded = load_model(str(out), 'resnet18')
    x = torch.randn(2, 3, 32, 32)
    trainer.model.eval()
    for ratio in (1.0, 0.5):
        with torch.no_grad(), trainer.model.using_ratio(ratio), \
                reloaded.model.using_ratio(ratio):
            assert torch.allclose(reloaded.model(x), trainer.model(x), atol=1e-5)
    export_weights(trainer.model, out, torch.float16)
    state = torch.load(out, weights_only=True)
    assert state['fc.weight'].dtype == torch.float16
    assert set(state) == set(torchvision.models.resnet18(num_classes=10).state_dict())
    load_model(str(out), 'resnet18')


@pytest.mark.parametrize('bn_mode, per_ratio_bn', [('frozen', False), ('batch', True)])
def test_resume_is_bit_identical_to_an_uninterrupted_run(
        weights_dir: Path, data: TrainData, tmp_path: Path, bn_mode: str,
        per_ratio_bn: bool) -> None:
    options = dict(arch='resnet34', ratios=DEEP_RATIOS, bn_mode=bn_mode,
                   per_ratio_bn=per_ratio_bn)
    straight = _trainer(weights_dir, data, tmp_path / 'a', **options)
    straight.run(checkpoint_every=100, eval_every=2)
    first = _trainer(weights_dir, data, tmp_path / 'b', **options)
    first.run(until=3, checkpoint_every=100, eval_every=2)
    assert first.checkpoint_step == 3
    resumed = _trainer(weights_dir, data, tmp_path / 'b', **options)
    resumed.restore()
    assert resumed.step == 3
    resumed.run(checkpoint_every=100, eval_every=2)
    expected, got = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    states_a, states_b = straight.model.bn_states(), resumed.model.bn_states()
    assert len(states_a) == (3 if per_ratio_bn else 0) and states_a.keys() == states_b.keys()
    for masks, stats in states_a.items():
        assert all(torch.equal(a, b) for name in stats
                   for a, b in zip(stats[name], states_b[masks][name]))
    assert ([r['val_loss'] for r in straight.curve if 'val_loss' in r]
            == [r['val_loss'] for r in resumed.curve if 'val_loss' in r])
    other_seed = _trainer(weights_dir, data, tmp_path / 'c', seed=1, **options)
    other_seed.run(until=1)
    changed = other_seed.model.state_dict()
    assert not torch.equal(changed['conv1.weight'], first.model.state_dict()['conv1.weight'])


def test_resume_refuses_another_setup(weights_dir: Path, data: TrainData,
                                      tmp_path: Path) -> None:
    _trainer(weights_dir, data, tmp_path).run(until=1)
    other = _trainer(weights_dir, data, tmp_path, lr=0.01)
    with pytest.raises(ValueError, match=r"lr: checkpoint 0.003, now 0.01"):
        other.restore()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(weights_dir: Path, data: TrainData,
                                                           tmp_path: Path) -> None:
    trainer = _trainer(weights_dir, data, tmp_path)
    trainer.run(until=2, checkpoint_every=2)
    checkpoint = tmp_path / CHECKPOINT_NAME
    before = _sha(checkpoint)
    good = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with torch.no_grad():
        trainer.model.conv1.weight[0, 0, 0, 0] = float('nan')    # a poisoned weight
    with pytest.raises(TrainingDiverged,
                       match=r"step 3: the full network's cross-entropy loss is nan; "
                             r"stopped, the last good checkpoint is .*checkpoint.pt \(step 2\)"):
        trainer.run(checkpoint_every=1)
    assert _sha(checkpoint) == before
    restored = _trainer(weights_dir, data, tmp_path)
    restored.restore()
    assert restored.step == 2
    state = restored.model.state_dict()
    assert all(torch.equal(good[k], state[k]) for k in good)


def test_per_ratio_bn_file_loads_into_a_fresh_model(weights_dir: Path, data: TrainData,
                                                    tmp_path: Path) -> None:
    trainer = _trainer(weights_dir, data, tmp_path, steps=2, per_ratio_bn=True)
    trainer.run()
    weights, bn_file = tmp_path / 'w.pt', tmp_path / 'w_bn_states.pt'
    export_weights(trainer.model, weights, bn_path=bn_file)
    fresh = load_model(str(weights), 'resnet18')
    assert load_bn_states(fresh.model, bn_file) == 1
    assert fresh.model.has_bn_state(0.5) and not fresh.model.has_bn_state(1.0)
    stored = trainer.model.bn_states()[trainer.model.masks_for(0.5)]
    loaded = fresh.model.bn_states()[fresh.model.masks_for(0.5)]
    assert all(torch.equal(stored[name][0], loaded[name][0]) for name in stored)
