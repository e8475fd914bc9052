"""Importance-ordered skip plans: a second skipping policy beside Proportional Layer Skipping.

On a small-input ResNet every removable bottleneck block costs about the same MACs, but blocks
carry very different amounts of accuracy: PLS removes blocks from every stage alike, whereas the
cheapest accuracy to give up sits in the long layer3. A ``SkipPlan`` is an ordered list of
removable blocks (block 0 of a stage, which changes shape, never appears); keeping a fraction
``r`` of the removable MACs means removing the plan's first blocks until the kept fraction is at
most r (the plan never runs more compute than asked for). ``PlanPolicy`` serves that behind the
same ``keep_ratio`` semantics as PLS, so the model, optimizer, profiles and nodes work unchanged.

Plans are learned on a calibration set (train split only) by scoring the damage of removing blocks,
one-shot (each block alone) or greedily (the cheapest next block given those already removed), with
the KL divergence of the logits from the full network (no labels needed) or the accuracy drop as
the cost. The search caches every block's input for the current removal set, so scoring a candidate
runs only the blocks downstream of it. Plans are stored as YAML with the weights' sha256, the
method and the calibration size, and validated when loaded: types, nesting, finite numbers and
the block count are checked (against the model's depths when given) before anything is built
from the file's numbers, so one absurd depth costs an error message, not the machine's memory.

Over 500 lines: learning a plan, its file format with that validation, and the skip policy it
becomes are one concept.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from tqdm import tqdm

from pls_perception.errors import ProfileError, shown
from pls_perception.io.file_inputs import load_yaml
from pls_perception.skipping.complexity import count_macs
from pls_perception.skipping.network import ProportionalPolicy, SkippableResNet, SkipPolicy
from pls_perception.skipping.policy_info import PROPORTIONAL, SkipPolicyInfo

PLAN_FORMAT = 'pls_perception/skip_plan'
PLAN_VERSION = 1
METHODS = ('oneshot', 'greedy')
COSTS = ('kl', 'accuracy')
# Kept fractions are sums of integer MACs divided by a total; this absorbs float rounding so that
# e.g. a ratio of 22/46 keeps exactly 22 of 46 equal blocks, not 21.
_RATIO_TOLERANCE = 1e-9
# Below any block's share of the removable MACs: the ratio that removes every removable block.
_MIN_RATIO = 1e-6

BlockId = tuple[int, int]
Masks = tuple[tuple[bool, ...], ...]


def removable_blocks(depths: Sequence[int]) -> tuple[BlockId, ...]:
    """Every (stage_index, block_index) a plan must order: all blocks but block 0 of each stage."""
    return tuple((s, b) for s, n in enumerate(depths) for b in range(1, n))


@dataclass(frozen=True)
class SkipPlan:
    """An ordered removal list with the MACs of each block and where the plan came from.

    ``order[i]`` is the i-th block to remove, ``block_macs[i]`` its MACs at ``input_size`` and
    ``costs[i]`` the search cost measured when it was removed (after ``order[:i]``).
    """

    depths: tuple[int, ...]
    order: tuple[BlockId, ...]
    block_macs: tuple[int, ...]
    costs: tuple[float, ...]
    method: str
    cost: str
    calibration_size: int
    weights_sha256: str | None = None
    bn_recalibration: bool = False
    arch: str = 'resnet152'
    input_size: tuple[int, int] = (32, 32)
    _cumulative_macs: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        depths = tuple(self.depths)
        if not depths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                             for n in depths):
            raise ValueError(f'depths must be positive integers, got {shown(self.depths)}')
        order = tuple((int(s), int(b)) for s, b in self.order)
        # Before anything of the depths' size is built: the order lists every block once.
        removable = sum(n - 1 for n in depths)
        if len(order) != removable:
            raise ValueError(
                f'the plan order must list every removable block of depths {shown(depths)} '
                f'exactly once ({removable} blocks; block 0 of a stage is not removable), got '
                f'{len(order)} entries')
        expected = set(removable_blocks(depths))
        if len(set(order)) != len(order):
            raise ValueError(f'a block appears twice in the plan order, got {shown(order)}')
        if set(order) != expected:
            missing = sorted(expected - set(order))
            extra = sorted(set(order) - expected)
            raise ValueError(
                f'the plan order must list every removable block of depths {depths} exactly once '
                f'(block 0 of a stage is not removable); missing {shown(missing)}, extra '
                f'{shown(extra)}')
        if len(self.block_macs) != len(order) or any(m <= 0 for m in self.block_macs):
            raise ValueError(f'block_macs must hold one positive count per plan entry, got '
                             f'{shown(self.block_macs)}')
        if len(self.costs) != len(order) or not all(math.isfinite(c) for c in self.costs):
            raise ValueError(
                f'costs must hold one finite value per plan entry, got {shown(self.costs)}')
        if self.method not in METHODS:
            raise ValueError(f'method must be one of {METHODS}, got {shown(self.method)}')
        if self.cost not in COSTS:
            raise ValueError(f'cost must be one of {COSTS}, got {shown(self.cost)}')
        if self.calibration_size < 1:
            raise ValueError(f'calibration_size must be >= 1, got {self.calibration_size!r}')
        sha = self.weights_sha256
        if sha is not None and (not isinstance(sha, str) or len(sha) != 64
                                or any(c not in '0123456789abcdef' for c in sha)):
            raise ValueError(f'weights_sha256 must be 64 lowercase hex digits, got {shown(sha)}')
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ValueError(f'input_size must be (H, W) > 0, got {shown(self.input_size)}')
        object.__setattr__(self, 'depths', depths)
        object.__setattr__(self, 'order', order)
        object.__setattr__(self, 'block_macs', tuple(int(m) for m in self.block_macs))
        object.__setattr__(self, 'costs', tuple(float(c) for c in self.costs))
        object.__setattr__(self, 'input_size', tuple(self.input_size))
        cumulative = [0]
        for macs in self.block_macs:
            cumulative.append(cumulative[-1] + int(macs))
        object.__setattr__(self, '_cumulative_macs', tuple(cumulative))

    @property
    def removable_macs(self) -> int:
        """MACs of all removable blocks together."""
        return self._cumulative_macs[-1]

    def removed_count(self, ratio: float) -> int:
        """How many of the plan's first blocks a keep ratio removes.

        The smallest k such that the kept fraction of removable MACs, 1 - sum(macs[:k]) / total,
        is at most ``ratio``: the plan never runs more compute than asked for. Non-increasing in
        ratio; 0 at ratio 1, all blocks for a ratio below the smallest block's share.
        """
        ratio = _check_ratio(ratio)
        total = self.removable_macs
        k = 0
        while 1.0 - self._cumulative_macs[k] / total > ratio + _RATIO_TOLERANCE:
            k += 1
        return k

    def kept_fraction(self, ratio: float) -> float:
        """The fraction of removable MACs a keep ratio actually keeps (<= ratio)."""
        return 1.0 - self._cumulative_macs[self.removed_count(ratio)] / self.removable_macs

    def masks(self, ratio: float) -> Masks:
        """Per stage, per block: True = run the block."""
        return self.masks_removing(self.removed_count(ratio))

    def masks_removing(self, count: int) -> Masks:
        """The masks with the plan's first ``count`` blocks removed."""
        if not 0 <= count <= len(self.order):
            raise ValueError(f'can remove 0..{len(self.order)} blocks, got {count!r}')
        removed = set(self.order[:count])
        return tuple(tuple((s, b) not in removed for b in range(n))
                     for s, n in enumerate(self.depths))

    def ratio_removing(self, count: int) -> float:
        """The shortest decimal keep ratio that removes exactly the first ``count`` blocks.

        Any ratio in [kept fraction after ``count``, kept fraction after ``count - 1``) does;
        the short one survives rounding in YAML and tables (0.94, not 0.9347826).
        """
        masks = self.masks_removing(count)       # validates count
        if count == 0:
            return 1.0
        kept = self.removable_fraction(masks)
        for digits in range(1, 13):
            scale = 10 ** digits
            ratio = max(math.ceil(round(kept * scale, 6)) / scale, 1 / scale)
            if ratio <= 1.0 and self.removed_count(ratio) == count:
                return ratio
        return max(kept, _MIN_RATIO)

    @property
    def fingerprint(self) -> str:
        """sha256 of what decides the masks (architecture, depths, input size, removal order):
        equal for two plans exactly when they skip the same blocks at every ratio."""
        key = {'arch': self.arch, 'depths': list(self.depths),
               'input_size': list(self.input_size), 'order': [list(b) for b in self.order]}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def policy_info(self, name: str, plan_file: str | None = None) -> SkipPolicyInfo:
        """What a profile records about this plan (``name`` as the nodes report it)."""
        return SkipPolicyInfo(name=name, plan_fingerprint=self.fingerprint,
                              weights_sha256=self.weights_sha256, plan_file=plan_file)

    def removable_fraction(self, masks: Masks) -> float:
        """The fraction of removable MACs that any masks (e.g. PLS's) keep, by this plan's MACs."""
        if tuple(len(m) for m in masks) != self.depths:
            raise ValueError(f'masks must match depths {self.depths}, got {masks!r}')
        macs = dict(zip(self.order, self.block_macs))
        kept = sum(macs[(s, b)] for s, b in self.order if masks[s][b])
        return kept / self.removable_macs

    def matching_ratio(self, masks: Masks) -> float:
        """A keep ratio at which this plan keeps the same removable MACs as ``masks`` (if any
        prefix of the plan does; else at most that). Keeping none maps to the smallest ratio."""
        return max(self.removable_fraction(masks), _MIN_RATIO)

    def to_dict(self) -> dict[str, Any]:
        """The YAML document (plain types only)."""
        return {
            'format': PLAN_FORMAT,
            'version': PLAN_VERSION,
            'arch': self.arch,
            'depths': list(self.depths),
            'input_size': list(self.input_size),
            'weights_sha256': self.weights_sha256,
            'method': self.method,
            'cost': self.cost,
            'bn_recalibration': self.bn_recalibration,
            'calibration_size': self.calibration_size,
            'removal_order': [
                {'stage': s, 'block': b, 'macs': m, 'cost': c}
                for (s, b), m, c in zip(self.order, self.block_macs, self.costs)],
        }

    @classmethod
    def from_dict(cls, doc: Any, depths: Sequence[int] | None = None) -> SkipPlan:
        """Parse and validate a YAML document; ValueError naming the field on bad content.

        With ``depths`` (the model's) the plan must be for exactly those depths. Types, nesting
        and the block count are checked before any allocation that depends on the numbers.
        """
        if not isinstance(doc, dict):
            raise ValueError(f'a plan must be a mapping, got {type(doc).__name__}')
        if doc.get('format') != PLAN_FORMAT or doc.get('version') != PLAN_VERSION:
            raise ValueError(f'expected format {PLAN_FORMAT!r} version {PLAN_VERSION}, got '
                             f'{shown(doc.get("format"))} version {shown(doc.get("version"))}')
        missing = [k for k in _REQUIRED_KEYS if k not in doc]
        if missing:
            raise ValueError(f'missing required keys {missing!r}')
        plan_depths = tuple(_int(n, 'depths') for n in _list(doc['depths'], 'depths'))
        if depths is not None and plan_depths != tuple(depths):
            raise ValueError(f'the plan is for depths {shown(plan_depths)}, the model has '
                             f'{tuple(depths)}')
        entries = _list(doc['removal_order'], 'removal_order')
        for entry in entries:
            if not isinstance(entry, dict) or not _ENTRY_KEYS <= set(entry):
                raise ValueError(f'removal_order entries must be mappings with '
                                 f'{sorted(_ENTRY_KEYS)}, got {shown(entry)}')
        return cls(
            depths=plan_depths,
            order=tuple((_int(e['stage'], 'stage'), _int(e['block'], 'block')) for e in entries),
            block_macs=tuple(_int(e['macs'], 'macs') for e in entries),
            costs=tuple(_real(e['cost'], 'cost') for e in entries),
            method=_str(doc['method'], 'method'),
            cost=_str(doc['cost'], 'cost'),
            calibration_size=_int(doc['calibration_size'], 'calibration_size'),
            weights_sha256=doc['weights_sha256'],
            bn_recalibration=bool(doc.get('bn_recalibration', False)),
            arch=_str(doc.get('arch', 'resnet152'), 'arch'),
            input_size=tuple(_int(v, 'input_size')
                             for v in _list(doc.get('input_size', [32, 32]), 'input_size')),
        )


_REQUIRED_KEYS = ('depths', 'removal_order', 'method', 'cost', 'calibration_size',
                  'weights_sha256')
_ENTRY_KEYS = frozenset(('stage', 'block', 'macs', 'cost'))


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f'{what} must be a list, got {shown(value)}')
    return value


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f'{what} must be an integer, got {shown(value)}')
    return value


def _real(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f'{what} must be a number, got {shown(value)}')
    try:
        return float(value)
    except OverflowError as e:
        raise ValueError(f'{what} must be finite, got {shown(value)}') from e


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f'{what} must be a string, got {shown(value)}')
    return value


def _check_ratio(ratio: float) -> float:
    if isinstance(ratio, (tuple, list)):
        raise ValueError(f'a skip plan takes one global keep ratio, got {ratio!r}')
    ratio = float(ratio)
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f'keep ratio must be in (0, 1], got {ratio!r}')
    return ratio


def save_plan(plan: SkipPlan, path: str | Path) -> None:
    """Write a plan as YAML (parent directories are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ('# Skip plan: blocks in removal order (pls-plan learn). Keep ratio r removes the\n'
              '# first blocks until the kept removable MACs are <= r. The order is measured.\n')
    document = yaml.safe_dump(plan.to_dict(), sort_keys=False, default_flow_style=None)
    path.write_text(header + document, encoding='utf-8')


def load_plan(path: str | Path, weights_sha256: str | None = None,
              depths: Sequence[int] | None = None) -> SkipPlan:
    """Read and validate a plan; ProfileError names the file and the problem.

    With ``weights_sha256`` the plan must have been learned on exactly those weights, with
    ``depths`` (the model's) it must be for a model of exactly those depths.
    """
    path = Path(path)
    doc = load_yaml(path, 'skip plan', ProfileError)
    try:
        plan = SkipPlan.from_dict(doc, depths)
    except (ValueError, TypeError) as e:
        raise ProfileError(f'skip plan {str(path)!r} is invalid: {e}') from e
    if weights_sha256 is not None and plan.weights_sha256 != weights_sha256:
        raise ProfileError(
            f'skip plan {str(path)!r} was learned on weights with sha256 '
            f'{plan.weights_sha256!r}, but the loaded weights have {weights_sha256!r}; '
            f'learn a plan for these weights with pls-plan learn')
    return plan


class PlanPolicy(SkipPolicy):
    """Serve a SkipPlan as a SkipPolicy; masks are computed once per ratio and cached."""

    def __init__(self, plan: SkipPlan, name: str | None = None) -> None:
        self.plan = plan
        self.name = name or f'plan:{plan.method}-{plan.cost}'
        self._cache: dict[float, Masks] = {}

    def masks(self, ratio: float, depths: tuple[int, ...]) -> Masks:
        if tuple(depths) != self.plan.depths:
            raise ValueError(f'this skip plan is for depths {self.plan.depths}, got {depths!r}')
        ratio = _check_ratio(ratio)
        cached = self._cache.get(ratio)
        if cached is None:
            cached = self._cache[ratio] = self.plan.masks(ratio)
        return cached


def load_policy(spec: str, weights_sha256: str | None = None,
                depths: Sequence[int] | None = None) -> SkipPolicy:
    """The policy a ``skip_policy`` parameter names: 'proportional' or a plan file path.

    A plan must match ``weights_sha256`` and the model's ``depths`` when those are given (None
    skips the check, e.g. random weights). Raises ProfileError for a bad or mismatched plan file.
    """
    if spec == 'proportional':
        return ProportionalPolicy()
    path = Path(spec)
    return PlanPolicy(load_plan(path, weights_sha256, depths), name=plan_name(path))


def plan_name(path: str | Path) -> str:
    """The policy name of a plan file, as diagnostics and profiles report it."""
    return f'plan:{Path(path).stem}'


def policy_info(spec: str, weights_sha256: str | None = None,
                depths: Sequence[int] | None = None) -> tuple[SkipPolicyInfo, SkipPlan | None]:
    """A ``skip_policy`` spec ('proportional' or a plan file) as a profile records it, and the
    plan (None for PLS); the plan is validated as by :func:`load_policy`."""
    if spec == 'proportional':
        return PROPORTIONAL, None
    plan = load_plan(spec, weights_sha256, depths)
    return plan.policy_info(plan_name(spec), str(spec)), plan


# --- learning --------------------------------------------------------------------------------


class _FixedMasksPolicy(SkipPolicy):
    """Whatever the ratio, the given masks; used to measure one block's MACs with count_macs."""

    name = 'fixed'

    def __init__(self, masks: Masks) -> None:
        self._masks = masks

    def masks(self, ratio: float, depths: tuple[int, ...]) -> Masks:
        return self._masks


def block_macs(model: SkippableResNet, input_size: tuple[int, int] = (32, 32)
               ) -> dict[BlockId, int]:
    """MACs of each removable block: full-network MACs minus MACs with only that block removed."""
    previous = model.policy
    depths = tuple(model.depths)
    full = count_macs(model, input_size=input_size, ratio=1.0)
    result: dict[BlockId, int] = {}
    try:
        for s, b in removable_blocks(depths):
            masks = tuple(tuple(not (i == s and j == b) for j in range(n))
                          for i, n in enumerate(depths))
            model.set_policy(_FixedMasksPolicy(masks))
            result[(s, b)] = full - count_macs(model, input_size=input_size, ratio=1.0)
    finally:
        model.set_policy(previous)
    return result


@contextlib.contextmanager
def _batch_statistics(model: nn.Module) -> Iterator[None]:
    """BatchNorm normalises with the current batch's statistics and leaves its buffers alone.

    With the whole calibration set in one batch this is exactly BN recalibration on that set, for
    whatever blocks are removed, without touching the stored running statistics.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in bns]
    for m in bns:
        m.training, m.track_running_stats = True, False
    try:
        yield
    finally:
        for m, (training, track) in zip(bns, saved):
            m.training, m.track_running_stats = training, track


class _CachedSearch:
    """Scores removal sets on a calibration batch, re-running only what a removal changes.

    ``inputs[i]`` is the input of flat block i under the committed removal set, so scoring
    "committed + one more block" runs the blocks after that block only.
    """

    def __init__(self, model: SkippableResNet, images: torch.Tensor,
                 labels: torch.Tensor | None) -> None:
        self.model = model
        self.blocks = [(s, b, getattr(model, f'layer{s + 1}')[b])
                       for s, n in enumerate(model.depths) for b in range(n)]
        self.flat_index = {(s, b): i for i, (s, b, _) in enumerate(self.blocks)}
        self.labels = labels
        self.removed: set[BlockId] = set()
        m = model
        stem = m.maxpool(m.relu(m.bn1(m.conv1(images))))
        self.inputs: list[torch.Tensor] = [stem] * len(self.blocks)
        self.full_logits = self._run(0, None, keep=True)
        self.reference_log_probs = torch.log_softmax(self.full_logits, dim=1)

    def _run(self, start: int, skip: BlockId | None, keep: bool) -> torch.Tensor:
        h = self.inputs[start]
        for i in range(start, len(self.blocks)):
            if keep:
                self.inputs[i] = h
            s, b, block = self.blocks[i]
            if (s, b) != skip and (s, b) not in self.removed:
                h = block(h)
        return self.model.fc(torch.flatten(self.model.avgpool(h), 1))

    def score(self, candidate: BlockId) -> tuple[float, float]:
        """(KL from the reference in nats, accuracy drop in points) with ``candidate`` removed."""
        logits = self._run(self.flat_index[candidate], candidate, keep=False)
        log_probs = torch.log_softmax(logits, dim=1)
        kl = float(torch.nn.functional.kl_div(log_probs, self.reference_log_probs,
                                              log_target=True, reduction='batchmean'))
        if self.labels is None:
            return kl, 0.0
        reference_correct = (self.reference_log_probs.argmax(1) == self.labels).float().mean()
        correct = (logits.argmax(1) == self.labels).float().mean()
        return kl, float(reference_correct - correct) * 100.0

    def commit(self, block: BlockId) -> None:
        self.removed.add(block)
        self._run(self.flat_index[block], None, keep=True)


def learn_plan(model: SkippableResNet, images: torch.Tensor, method: str = 'greedy',
               cost: str = 'kl', labels: torch.Tensor | None = None,
               bn_recalibration: bool = False, weights_sha256: str | None = None,
               arch: str = 'resnet152', progress: bool = False) -> SkipPlan:
    """Learn a removal order on a calibration batch (normalised Nx3xHxW images, train split).

    - ``oneshot``: score removing each block alone from the full network, sort by cost.
    - ``greedy``: repeatedly remove the block whose removal costs least given those removed.
    ``cost`` is 'kl' (KL of the logits from the full network's, no labels) or 'accuracy' (drop
    in top-1 points vs the full network on ``labels``; KL breaks ties). With
    ``bn_recalibration`` every removal set is scored with BatchNorm statistics re-estimated on
    the calibration batch. The model's policy, keep ratio and BN buffers are left unchanged.
    """
    if method not in METHODS:
        raise ValueError(f'method must be one of {METHODS}, got {method!r}')
    if cost not in COSTS:
        raise ValueError(f'cost must be one of {COSTS}, got {cost!r}')
    if cost == 'accuracy' and labels is None:
        raise ValueError('cost=accuracy needs the calibration labels, got labels=None')
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f'images must be a non-empty Nx3xHxW batch, got {tuple(images.shape)}')
    if labels is not None and labels.shape != (images.shape[0],):
        raise ValueError(f'labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}')
    depths = tuple(model.depths)
    input_size = (int(images.shape[2]), int(images.shape[3]))
    macs = block_macs(model, input_size)
    candidates = list(removable_blocks(depths))
    primary = 0 if cost == 'kl' else 1
    was_training = model.training
    model.eval()
    order: list[BlockId] = []
    costs: list[float] = []
    n = len(candidates)
    total = n if method == 'oneshot' else n * (n + 1) // 2
    bar = tqdm(total=total, desc=f'{method} plan ({cost})', unit='eval', disable=not progress)
    try:
        with torch.inference_mode():
            # The target is always the full network with its stored BN statistics.
            reference = _CachedSearch(model, images, labels).reference_log_probs
            stats = _batch_statistics(model) if bn_recalibration else contextlib.nullcontext()
            with stats:
                search = _CachedSearch(model, images, labels)
                search.reference_log_probs = reference
                if method == 'oneshot':
                    scored = []
                    for block in candidates:
                        scored.append((_key(search.score(block), primary), block))
                        bar.update()
                    scored.sort()
                    order = [block for _, block in scored]
                    costs = [key[0] for key, _ in scored]
                else:
                    while candidates:
                        scored = []
                        for block in candidates:
                            scored.append((_key(search.score(block), primary), block))
                            bar.update()
                        best_key, best = min(scored)
                        search.commit(best)
                        candidates.remove(best)
                        order.append(best)
                        costs.append(best_key[0])
    finally:
        bar.close()
        model.train(was_training)
    return SkipPlan(depths=depths, order=tuple(order), block_macs=tuple(macs[b] for b in order),
                    costs=tuple(costs), method=method, cost=cost,
                    calibration_size=int(images.shape[0]), weights_sha256=weights_sha256,
                    bn_recalibration=bn_recalibration, arch=arch, input_size=input_size)


def _key(scores: tuple[float, float], primary: int) -> tuple[float, float]:
    """Sort key: the chosen cost first, the other as tie-break (accuracy drops are coarse)."""
    return scores[primary], scores[1 - primary]
