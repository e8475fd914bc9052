"""PLS-aware fine-tuning: teach a ResNet to run well at every keep ratio of the proportional rule.

A network trained with all of its blocks degrades sharply when PLS drops the trailing ones (the
reference ResNet-152: 79 % at r = 1, 44 % at r = 0.5). Networks trained with blocks removed
(stochastic depth, LayerDrop) or with several sub-networks per step (the sandwich rule of
slimmable networks) degrade gracefully. The recipe here is the sandwich rule with in-place
distillation, applied to depth and to exactly the sub-networks PLS deploys:

- Each step runs the full network (r = 1) on the labels with label-smoothed cross-entropy (0.1, as
  the reference was trained), then the smallest ratio of the set and ``random_ratios`` others
  drawn from it, each distilled (KL at temperature T) from the full network's detached soft
  outputs. Gradients of all of them accumulate into one SGD step. Unlike stochastic depth, which
  drops random blocks anywhere, every step is spent on a network that PLS will actually run.
- BatchNorm is frozen by default (``bn_mode='frozen'``): every forward uses the running
  statistics, exactly as at inference, while the affine weights still learn. The targets are for
  the weights file alone, i.e. one set of statistics shared by every ratio. With batch statistics
  the sub-networks would learn to rely on a per-batch normalisation they never get at inference,
  and each sub-network forward would pull the shared running statistics away from the full
  network's. Frozen BN makes the trained function the deployed one at every ratio.
  ``bn_mode='batch'`` is the classic alternative: batch statistics in training, running
  statistics updated by the full network only (or by each ratio's own, with per-ratio BN).
- Per-ratio BN (``per_ratio_bn``): statistics re-estimated per ratio on train images before
  the first step (`bn_recalibration`), then frozen (or tracked, in batch mode) and saved in the
  package's BN file format, which `pls-eval` and the node's ``bn_recalibration`` parameter load.
- A low peak learning rate with linear warm-up, then cosine decay to 0 (the feasibility run saw
  r = 1 collapse at a peak of 0.01); Nesterov SGD; weight decay on conv and fc weights only (not
  on BatchNorm or biases, as slimmable networks do).

Reproducibility: every random draw of step s (crop offsets, flips, the random ratios) comes from a
generator seeded with (seed, s), and the batch order of epoch e from one seeded with (seed, e), so
the same seed, data and thread count give the same weights, and a run resumed from a checkpoint
(model, optimizer, scheduler, BN states, RNG state, step) continues bit-identically.
Only the train split is ever used; a held-out part of it gives the learning curve.

Over 500 lines: the training step, its checkpoints and the determinism that makes resume
bit-identical have to change together.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm import tqdm

from pls_perception.errors import PlsError
from pls_perception.io.datasets import load_cifar10
from pls_perception.skipping.bn_recalibration import recalibrate, save_bn_states
from pls_perception.skipping.evaluation import evaluate
from pls_perception.skipping.network import SkippableResNet
from pls_perception.skipping.preprocessing import Preprocessing
from pls_perception.skipping.ratios import PROFILE_RATIOS, normalize_ratio

TRAIN_SPLIT = 'train'
BN_MODES = ('frozen', 'batch')
CHECKPOINT_FORMAT = 'pls_perception.train_checkpoint/1'
CHECKPOINT_NAME = 'checkpoint.pt'
CURVE_JSON, CURVE_CSV = 'learning_curve.json', 'learning_curve.csv'
CROP_PADDING = 4
EVAL_BATCH_SIZE = 200


class TrainingDiverged(PlsError):
    """A loss, gradient or weight became NaN/inf; the run stopped before saving it."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run's result (a resume must use the same values)."""

    steps: int
    ratios: tuple[float, ...] = PROFILE_RATIOS
    batch_size: int = 64
    lr: float = 0.004
    warmup_steps: int | None = None      # None: 5 % of the steps
    momentum: float = 0.9
    weight_decay: float = 5e-5
    label_smoothing: float = 0.1
    random_ratios: int = 1
    temperature: float = 1.0
    bn_mode: str = 'frozen'
    per_ratio_bn: bool = False
    bn_calibration_images: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ('steps', 'batch_size'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive int, got {value!r}')
        if not self.ratios:
            raise ValueError(f'ratios must not be empty, got {self.ratios!r}')
        ratios = tuple(normalize_ratio(r, 1) for r in self.ratios)
        if any(isinstance(r, tuple) for r in ratios) or 1.0 not in ratios:
            raise ValueError(f'ratios must be global keep ratios in (0, 1] including 1.0 (the '
                             f'teacher), got {self.ratios!r}')
        object.__setattr__(self, 'ratios', tuple(sorted(set(ratios), reverse=True)))
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f'lr must be a positive number, got {self.lr!r}')
        if self.warmup_steps is not None and not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f'warmup_steps must be in [0, steps={self.steps}], got '
                             f'{self.warmup_steps!r}')
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f'label_smoothing must be in [0, 1), got {self.label_smoothing!r}')
        if self.random_ratios < 0 or self.temperature <= 0:
            raise ValueError(f'random_ratios must be >= 0 and temperature > 0, got '
                             f'{self.random_ratios!r} and {self.temperature!r}')
        if self.momentum < 0 or self.weight_decay < 0:
            raise ValueError(f'momentum and weight_decay must be >= 0, got {self.momentum!r} '
                             f'and {self.weight_decay!r}')
        if self.bn_mode not in BN_MODES:
            raise ValueError(f'bn_mode must be one of {BN_MODES}, got {self.bn_mode!r}')
        if self.per_ratio_bn and self.bn_calibration_images < 2:
            raise ValueError(f'per-ratio BN needs >= 2 calibration images, got '
                             f'{self.bn_calibration_images!r}')

    @property
    def warmup(self) -> int:
        return (self.warmup_steps if self.warmup_steps is not None
                else max(1, round(0.05 * self.steps)))


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Learning-rate multiplier of optimizer step ``step`` (0-based): linear warm-up, cosine."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass(frozen=True)
class TrainData:
    """Train-split images (NxHxWx3 uint8) for the steps, and a held-out part for the curve."""

    train_images: np.ndarray = field(repr=False)
    train_labels: np.ndarray = field(repr=False)
    val_images: np.ndarray = field(repr=False)
    val_labels: np.ndarray = field(repr=False)
    source: str
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256()
        for array in (self.train_images, self.train_labels, self.val_images, self.val_labels):
            digest.update(str(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        object.__setattr__(self, 'fingerprint', digest.hexdigest())


def per_class_indices(labels: np.ndarray, count: int, from_end: bool) -> np.ndarray:
    """``count`` indices balanced over the classes present: the first (or last) of each class."""
    classes = np.unique(labels)
    if count < 0 or count > len(labels):
        raise ValueError(f'count must be in [0, {len(labels)}], got {count!r}')
    base, extra = divmod(count, len(classes)) if len(classes) else (0, 0)
    chosen: list[np.ndarray] = []
    for i, label in enumerate(classes):
        members = np.flatnonzero(labels == label)
        k = min(len(members), base + (1 if i < extra else 0))
        chosen.append(members[len(members) - k:] if from_end else members[:k])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def load_train_data(tar_path: str | Path | None, split: str = TRAIN_SPLIT,
                    val_images: int = 1000, limit: int | None = None) -> TrainData:
    """The train split of a CIFAR-10-layout tarball, minus ``val_images`` held out (balanced).

    The held-out images are the last of each class (by file name), independent of the seed, so
    runs with different seeds share them. ``limit`` keeps N images, balanced over classes, before
    the hold-out. Any other split is refused: the test split is only for `pls-eval`.
    """
    if split != TRAIN_SPLIT:
        raise ValueError(f'training and BN calibration use the train split only (the test split '
                         f'is for pls-eval), got split={split!r}')
    per_class = math.ceil(limit / 10) if limit else None
    images, labels, _ = load_cifar10(tar_path, split=TRAIN_SPLIT, per_class=per_class,
                                     limit=limit)
    if not 0 <= val_images < len(images):
        raise ValueError(f'val_images must leave training images (0 <= n < {len(images)}), got '
                         f'{val_images!r}')
    held_out = per_class_indices(labels, val_images, from_end=True)
    keep = np.setdiff1d(np.arange(len(images)), held_out)
    return TrainData(images[keep], labels[keep], images[held_out], labels[held_out],
                     str(tar_path))


def augment(x: torch.Tensor, generator: torch.Generator,
            padding: int = CROP_PADDING) -> torch.Tensor:
    """Random crop (reflect padding) and horizontal flip of an Nx3xHxW batch, as the reference."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, mode='reflect')
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).tolist()
    flip = (torch.rand(n, generator=generator) < 0.5).tolist()
    crops = [padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)]
    return torch.stack([c.flip(-1) if f else c for c, f in zip(crops, flip)])


def _generator(seed: int, *keys: object) -> torch.Generator:
    """An independent generator per (seed, keys): a draw never depends on earlier steps."""
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], 'little'))


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` to a temp file beside ``path``, fsync, then rename: never a partial file."""
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    try:
        write(tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_torch_save(obj: object, path: Path) -> None:
    _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def export_weights(model: SkippableResNet, path: Path, dtype: torch.dtype = torch.float16,
                   bn_path: Path | None = None) -> None:
    """A plain torchvision state_dict (``dtype`` floats) and, if given, the per-ratio BN file.

    The weights file is what `weights.load_model` (pls-eval, pls-plan, pls-profile, the node)
    reads; the BN file is what `bn_recalibration.load_bn_states` reads.
    """
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().clone()
             for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state, path)
    if bn_path is not None:
        _atomic_write(bn_path, lambda tmp: save_bn_states(model, tmp))


def _ratio_label(ratio: float) -> str:
    return f'{ratio:g}'


def _decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv and fc weights only, not on BatchNorm parameters or biases."""
    decay = [p for p in model.parameters() if p.dim() > 1]
    rest = [p for p in model.parameters() if p.dim() <= 1]
    return [{'params': decay, 'weight_decay': weight_decay},
            {'params': rest, 'weight_decay': 0.0}]


class Trainer:
    """Runs the steps of one fine-tuning run, with checkpoints, a learning curve and resume.

    ``identity`` describes what is not in ``config`` but must not change on resume (e.g. the
    architecture and the starting weights' sha256). Files go to ``out_dir``: the checkpoint and
    the learning curve (JSON and CSV, rewritten at every evaluation).
    """

    def __init__(self, model: SkippableResNet, preprocessing: Preprocessing, data: TrainData,
                 config: TrainConfig, out_dir: str | Path,
                 identity: Mapping[str, object] | None = None) -> None:
        self.model = model
        self.preprocessing = preprocessing
        self.data = data
        self.config = config
        self.out_dir = Path(out_dir)
        self.identity = {**(identity or {}), 'data_sha256': data.fingerprint}
        self.steps_per_epoch = len(data.train_images) // config.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f'batch_size {config.batch_size} exceeds the '
                             f'{len(data.train_images)} training images')
        self.optimizer = torch.optim.SGD(
            _decay_groups(model, config.weight_decay), lr=config.lr, momentum=config.momentum,
            nesterov=config.momentum > 0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, config.steps, config.warmup))
        self.step = 0
        self.curve: list[dict] = []
        self.train_seconds = 0.0
        self.checkpoint_step: int | None = None
        self._started = False
        self._interval: dict = self._empty_interval()
        self._perm: tuple[int, np.ndarray] | None = None
        self._full_masks = model.masks_for(1.0)
        self._smallest = min(config.ratios,
                             key=lambda r: (sum(map(sum, model.masks_for(r))), r))
        seen = {self._full_masks, model.masks_for(self._smallest)}
        self._candidates: list[float] = []
        for ratio in config.ratios:
            masks = model.masks_for(ratio)
            if masks not in seen:
                seen.add(masks)
                self._candidates.append(ratio)
        self._val_x = (preprocessing.to_tensor(data.val_images) if len(data.val_images)
                       else None)

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    # -- one step ----------------------------------------------------------------------------
    def _batch_indices(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            order = torch.randperm(len(self.data.train_images),
                                   generator=_generator(self.config.seed, 'epoch', epoch))
            self._perm = (epoch, order.numpy())
        size = self.config.batch_size
        return self._perm[1][i * size:(i + 1) * size]

    def sub_ratios(self, generator: torch.Generator) -> list[float]:
        """The smallest ratio plus ``random_ratios`` drawn among the other distinct masks."""
        order = torch.randperm(len(self._candidates), generator=generator).tolist()
        drawn = [self._candidates[i] for i in order[:self.config.random_ratios]]
        if self.model.masks_for(self._smallest) != self._full_masks:
            drawn.append(self._smallest)
        return sorted(drawn, reverse=True)

    @contextmanager
    def _sub_network_bn(self) -> Iterator[None]:
        """Batch mode with shared BN: sub-networks normalise by batch, but leave the running
        statistics to the full network (which the weights file carries for every ratio)."""
        if self.config.bn_mode != 'batch' or self.config.per_ratio_bn:
            yield
            return
        layers = [m for m in self.model.modules() if isinstance(m, _BatchNorm)]
        for layer in layers:
            layer.track_running_stats = False
        try:
            yield
        finally:
            for layer in layers:
                layer.track_running_stats = True

    def _diverged(self, step: int, what: str) -> TrainingDiverged:
        where = (f'the last good checkpoint is {self.checkpoint_path} (step '
                 f'{self.checkpoint_step})' if self.checkpoint_step is not None
                 else 'no checkpoint was written yet')
        return TrainingDiverged(f'step {step}: {what}; stopped, {where}')

    def _finite(self, value: torch.Tensor, what: str) -> float:
        number = float(value.detach())
        if not math.isfinite(number):
            raise self._diverged(self.step + 1, f'{what} is {number}')
        return number

    def _train_step(self) -> None:
        cfg = self.config
        generator = _generator(cfg.seed, 'step', self.step)
        index = self._batch_indices(self.step)
        x = augment(self.preprocessing.to_tensor(self.data.train_images[index]), generator)
        y = torch.from_numpy(self.data.train_labels[index])
        subs = self.sub_ratios(generator)
        self.model.train(cfg.bn_mode == 'batch')
        self.optimizer.zero_grad(set_to_none=True)
        with self.model.using_ratio(1.0):
            logits = self.model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        losses = {1.0: self._finite(loss, 'the full network\'s cross-entropy loss')}
        loss.backward()
        soft = F.softmax(logits.detach() / cfg.temperature, dim=1)
        for ratio in subs:
            with self._sub_network_bn(), self.model.using_ratio(ratio):
                out = self.model(x)
            kl = F.kl_div(F.log_softmax(out / cfg.temperature, dim=1), soft,
                          reduction='batchmean') * cfg.temperature ** 2
            losses[ratio] = self._finite(kl, f'the distillation loss at keep ratio {ratio:g}')
            kl.backward()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        grad_norm = self._finite(norm, 'the gradient norm')
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        interval = self._interval
        interval['steps'] += 1
        interval['grad_norm'] += grad_norm
        for ratio, value in losses.items():
            label = _ratio_label(ratio)
            interval['loss'][label] = interval['loss'].get(label, 0.0) + value
            interval['count'][label] = interval['count'].get(label, 0) + 1

    @staticmethod
    def _empty_interval() -> dict:
        return {'steps': 0, 'grad_norm': 0.0, 'loss': {}, 'count': {}}

    # -- evaluation and the curve ------------------------------------------------------------
    def evaluate_held_out(self) -> dict[str, dict[str, float]]:
        """Top-1 and cross-entropy per ratio on the held-out train images (as deployed)."""
        if self._val_x is None:
            return {}
        self.model.eval()
        results = evaluate(self.model, self._val_x, self.data.val_labels, self.config.ratios,
                           EVAL_BATCH_SIZE)
        return {'accuracy': {_ratio_label(r.ratio): r.accuracy for r in results},
                'loss': {_ratio_label(r.ratio): r.loss for r in results}}

    def _record(self) -> dict:
        """Close the training-loss interval and add a curve row with a held-out evaluation."""
        interval = self._interval
        steps = interval['steps']
        row = {
            'step': self.step, 'epoch': self.step / self.steps_per_epoch,
            'lr': self.optimizer.param_groups[0]['lr'],
            'train_s': self.train_seconds,
            'images_per_s': (self.step * self.config.batch_size / self.train_seconds
                             if self.train_seconds else None),
            'grad_norm': interval['grad_norm'] / steps if steps else None,
            'train_loss': {k: v / interval['count'][k] for k, v in interval['loss'].items()},
        }
        held_out = self.evaluate_held_out()
        row['val_accuracy'] = held_out.get('accuracy', {})
        row['val_loss'] = held_out.get('loss', {})
        self.curve.append(row)
        self._interval = self._empty_interval()
        self.write_curve()
        return row

    def write_curve(self) -> None:
        """learning_curve.json (rows as recorded) and .csv (one column per ratio and value)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        summary = {'config': asdict(self.config), 'identity': self.identity,
                   'train_images': len(self.data.train_images),
                   'val_images': len(self.data.val_images), 'rows': self.curve}
        text = json.dumps(summary, indent=2) + '\n'
        _atomic_write(self.out_dir / CURVE_JSON, lambda tmp: tmp.write_text(text))
        labels = [_ratio_label(r) for r in self.config.ratios]
        columns = ['step', 'epoch', 'lr', 'train_s', 'images_per_s', 'grad_norm']
        nested = ('train_loss', 'val_accuracy', 'val_loss')
        header = columns + [f'{key}_r{label}' for key in nested for label in labels]
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        for row in self.curve:
            writer.writerow([row[c] for c in columns]
                            + [row.get(key, {}).get(label) for key in nested
                               for label in labels])
        text_csv = buffer.getvalue()
        _atomic_write(self.out_dir / CURVE_CSV, lambda tmp: tmp.write_text(text_csv))

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Atomically write the whole state; refuses non-finite weights (never a bad file)."""
        for name, tensor in self.model.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise self._diverged(self.step, f'weight tensor {name!r} is not finite after '
                                                'the update')
        state = {
            'format': CHECKPOINT_FORMAT, 'config': asdict(self.config),
            'identity': self.identity, 'step': self.step,
            'model': self.model.state_dict(),
            'bn_states': [{'masks': m, 'stats': s} for m, s in self.model.bn_states().items()],
            'optimizer': self.optimizer.state_dict(), 'scheduler': self.scheduler.state_dict(),
            'torch_rng': torch.get_rng_state(), 'curve': self.curve,
            'interval': self._interval, 'train_s': self.train_seconds,
            'threads': torch.get_num_threads(),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(state, self.checkpoint_path)
        self.checkpoint_step = self.step

    def restore(self, path: str | Path | None = None) -> None:
        """Continue from a checkpoint of the same run (same config, weights and data)."""
        path = Path(path) if path is not None else self.checkpoint_path
        if not path.is_file():
            raise FileNotFoundError(f'no checkpoint to resume from: {path}')
        try:
            state = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many types for damaged files
            raise PlsError(f'{path}: cannot read the checkpoint: {type(e).__name__}: {e}') from e
        if not isinstance(state, dict) or state.get('format') != CHECKPOINT_FORMAT:
            raise PlsError(f'{path}: not a {CHECKPOINT_FORMAT} file')
        now = {**asdict(self.config), **self.identity}
        then = {**state['config'], **state['identity']}
        then['ratios'] = tuple(then['ratios'])
        changed = [f'{k}: checkpoint {then.get(k)!r}, now {now.get(k)!r}'
                   for k in sorted(set(now) | set(then)) if now.get(k) != then.get(k)]
        if changed:
            raise ValueError(f'{path}: the checkpoint belongs to another setup ('
                             f'{"; ".join(changed)}); resume with the same options and data or '
                             f'use another output directory')
        self.model.load_state_dict(state['model'])
        for entry in state['bn_states']:
            self.model.store_bn_state(entry['masks'], entry['stats'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        torch.set_rng_state(state['torch_rng'])
        self.step = state['step']
        self.curve = state['curve']
        self._interval = state['interval']
        self.train_seconds = state['train_s']
        self.checkpoint_step = self.step
        self._started = True

    # -- the loop ----------------------------------------------------------------------------
    def _start(self, progress: bool) -> None:
        """Step 0: per-ratio BN statistics (if asked) and the curve's starting point."""
        self._started = True
        if self.config.per_ratio_bn:
            calibration = per_class_indices(self.data.train_labels,
                                            min(self.config.bn_calibration_images,
                                                len(self.data.train_labels)), from_end=False)
            self.model.eval()
            recalibrate(self.model, self.data.train_images[calibration], self.config.ratios,
                        preprocessing=self.preprocessing, progress=progress)
        self._record()

    def run(self, until: int | None = None, checkpoint_every: int = 100, eval_every: int = 0,
            progress: bool = False) -> None:
        """Train to step ``until`` (default: all), checkpointing every ``checkpoint_every`` and
        at the end, evaluating the held-out images every ``eval_every`` steps and at the end."""
        until = self.config.steps if until is None else min(until, self.config.steps)
        if checkpoint_every < 1 or eval_every < 0:
            raise ValueError(f'checkpoint_every must be >= 1 and eval_every >= 0, got '
                             f'{checkpoint_every!r} and {eval_every!r}')
        if not self._started:
            self._start(progress)
        bar = tqdm(total=self.config.steps, initial=self.step, unit='step', desc='pls-train',
                   disable=not progress, dynamic_ncols=True)
        try:
            while self.step < until:
                started = time.perf_counter()
                self._train_step()
                self.train_seconds += time.perf_counter() - started
                last = self.step == self.config.steps
                if last or (eval_every and self.step % eval_every == 0):
                    self._record()
                if last or self.step % checkpoint_every == 0 or self.step == until:
                    self.save_checkpoint()
                bar.update(1)
                losses = self._interval['loss']
                if losses:
                    count = self._interval['count']
                    bar.set_postfix_str(
                        f'CE(r=1) {losses["1"] / count["1"]:.3f} '
                        f'lr {self.optimizer.param_groups[0]["lr"]:.2e}', refresh=False)
        finally:
            bar.close()

