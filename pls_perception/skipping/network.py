"""Proportional Layer Skipping (PLS) on ResNets: drop trailing residual blocks at run time.

A ResNet stage of n blocks keeps its first ceil(r*n) blocks (at least one; block 0 changes the
tensor shape and always runs) and turns the others into identities. Because every skipped block
is a residual block whose input and output shapes agree, the network stays valid for any ratio.

`SkippableResNet` wraps a torchvision ResNet (or any module whose children run in order and
include ``layer1..layer4`` stages) by re-registering the very same child modules, so state_dict
keys are unchanged and no weight is copied. The ratio can be switched from another thread: the
switch only replaces one immutable snapshot, and a forward pass reads the snapshot once at its
start, so a switch never lands in the middle of a forward.

Optionally the model holds one set of BatchNorm running statistics per skip mask (see
`pls_perception.skipping.bn_recalibration`), swapped in by the forward pass that uses that mask.
"""
from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from pls_perception.skipping.ratios import (STAGE_NAMES, Masks, ProportionalPolicy, Ratio,
                                            SkipPolicy, normalize_ratio)

# Running statistics of one BatchNorm layer: (running_mean, running_var).
BnStats = tuple[torch.Tensor, torch.Tensor]
# Snapshots remembered per ratio so that a switch is a dictionary look-up.
_CONFIG_CACHE_SIZE = 256


def _check_masks(masks: Masks, depths: tuple[int, ...], policy: SkipPolicy) -> Masks:
    masks = tuple(tuple(bool(b) for b in stage) for stage in masks)
    if tuple(len(stage) for stage in masks) != depths or not all(s[0] for s in masks):
        raise ValueError(
            f'policy {policy.name!r} returned masks that do not fit depths {depths} or skip a '
            f'block 0, got {masks!r}')
    return masks


@dataclass(frozen=True)
class _Config:
    """One immutable snapshot: what a forward pass runs. Replaced atomically on a switch."""

    ratio: Ratio
    masks: Masks
    plan: tuple[nn.Module, ...]   # the modules to call in order


class SkippableResNet(nn.Module):
    """A ResNet whose stages skip trailing blocks according to a keep ratio and a policy.

    Thread safety: `set_keep_ratio` may be called from any thread at any time; it takes effect at
    the next forward. Forward passes are serialised by an internal lock (they share BatchNorm
    buffers that may be swapped per ratio). `using_ratio` pins a ratio for the calling thread.
    """

    def __init__(self, resnet: nn.Module, policy: SkipPolicy | None = None) -> None:
        super().__init__()
        children = list(resnet.named_children())
        names = [name for name, _ in children]
        missing = [s for s in STAGE_NAMES if s not in names]
        if missing:
            raise ValueError(
                f'expected a ResNet-like model with stages {STAGE_NAMES}, missing {missing}; '
                f'got children {names!r}')
        for name, module in children:
            self.add_module(name, module)
        self._child_names = tuple(names)
        self.depths: tuple[int, ...] = tuple(len(getattr(self, s)) for s in STAGE_NAMES)
        if min(self.depths) < 1:
            raise ValueError(f'every stage needs at least one block, got depths {self.depths}')
        self.train(resnet.training)
        self._switch_lock = threading.Lock()
        self._forward_lock = threading.RLock()
        self._policy: SkipPolicy = policy if policy is not None else ProportionalPolicy()
        self._config_cache: dict[Ratio, _Config] = {}
        self._config = self._make_config(1.0)
        self._pinned: _Config | None = None
        # BatchNorm statistics per skip mask; None = the model's own (trained) statistics.
        self._bn_states: dict[Masks, dict[str, BnStats]] = {}
        self._applied_bn: Masks | None = None
        self._base_bn: dict[str, BnStats] = {}

    # -- ratio and policy --------------------------------------------------------------------
    @property
    def policy(self) -> SkipPolicy:
        return self._policy

    @property
    def keep_ratio(self) -> Ratio:
        """The ratio the next forward pass uses (float, or tuple for per-stage ratios)."""
        return self._config.ratio

    def masks_for(self, ratio: Ratio) -> Masks:
        """The skip masks the current policy gives for ``ratio`` (ValueError if invalid)."""
        return _check_masks(self._policy.masks(ratio, self.depths), self.depths, self._policy)

    def _make_config(self, ratio: Ratio) -> _Config:
        ratio = normalize_ratio(ratio, len(self.depths))
        cached = self._config_cache.get(ratio)
        if cached is not None:
            return cached
        masks = self.masks_for(ratio)
        stage_masks = dict(zip(STAGE_NAMES, masks))
        plan: list[nn.Module] = []
        for name in self._child_names:
            module = getattr(self, name)
            if name in stage_masks:
                plan.extend(b for b, keep in zip(module, stage_masks[name]) if keep)
            else:
                if isinstance(module, nn.Linear):
                    plan.append(_FLATTEN)
                plan.append(module)
        config = _Config(ratio, masks, tuple(plan))
        if len(self._config_cache) >= _CONFIG_CACHE_SIZE:
            self._config_cache.clear()
        self._config_cache[ratio] = config
        return config

    def set_keep_ratio(self, ratio: Ratio) -> None:
        """Switch the ratio (thread-safe, microseconds); the next forward pass uses it."""
        with self._switch_lock:
            self._config = self._make_config(ratio)

    def set_policy(self, policy: SkipPolicy) -> None:
        """Switch the skip policy, keeping the current ratio (thread-safe)."""
        with self._switch_lock:
            old = self._policy
            self._policy = policy
            self._config_cache = {}
            try:
                self._config = self._make_config(self._config.ratio)
            except ValueError:
                self._policy = old
                self._config_cache = {}
                raise

    def active_masks(self) -> Masks:
        return self._config.masks

    @contextmanager
    def using_ratio(self, ratio: Ratio) -> Iterator[SkippableResNet]:
        """Pin ``ratio`` (with its BatchNorm state) for forwards of the calling thread.

        Holds the forward lock for the whole block: forwards from other threads wait, and the
        pinned ratio does not change `keep_ratio`. Use it for evaluation, tracing or ONNX export.
        """
        with self._switch_lock:
            config = self._make_config(ratio)
        with self._forward_lock:
            previous = self._pinned
            self._pinned = config
            try:
                yield self
            finally:
                self._pinned = previous

    # -- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._forward_lock:
            config = self._pinned if self._pinned is not None else self._config
            if self._bn_states or self._applied_bn is not None:
                self._apply_bn(config.masks)
            for module in config.plan:
                x = module(x)
            return x

    # -- per-mask BatchNorm statistics -------------------------------------------------------
    def bn_modules(self) -> dict[str, _BatchNorm]:
        """All BatchNorm layers, by qualified name (as in state_dict keys)."""
        return {n: m for n, m in self.named_modules() if isinstance(m, _BatchNorm)}

    def _apply_bn(self, masks: Masks | None) -> None:
        """Point the BN buffers at the stats stored for ``masks`` (or the base). Lock held."""
        key = masks if masks in self._bn_states else None
        if key == self._applied_bn:
            return
        modules = self.bn_modules()
        if self._applied_bn is None:
            self._base_bn = {n: (m.running_mean, m.running_var) for n, m in modules.items()}
        stats = self._bn_states[key] if key is not None else {}
        for name, module in modules.items():
            module.running_mean, module.running_var = stats.get(name, self._base_bn[name])
        if key is None:
            self._base_bn = {}
        self._applied_bn = key

    def set_bn_state(self, ratio: Ratio, stats: Mapping[str, BnStats]) -> None:
        """Store BatchNorm (mean, var) per layer name for the skip mask of ``ratio``.

        Layers not in ``stats`` keep the model's own statistics. The state is keyed by the mask,
        so every ratio that keeps the same blocks shares it.
        """
        self.store_bn_state(self.masks_for(ratio), stats)

    def store_bn_state(self, masks: Masks, stats: Mapping[str, BnStats]) -> None:
        """`set_bn_state` for an explicit skip mask (e.g. states read back from a file)."""
        masks = tuple(tuple(bool(b) for b in stage) for stage in masks)
        if tuple(len(stage) for stage in masks) != self.depths:
            raise ValueError(f'masks must fit depths {self.depths}, got {masks!r}')
        modules = self.bn_modules()
        checked: dict[str, BnStats] = {}
        for name, (mean, var) in stats.items():
            if name not in modules:
                raise ValueError(f'no BatchNorm layer named {name!r} in the model')
            expected = modules[name].running_mean.shape
            if mean.shape != expected or var.shape != expected:
                raise ValueError(
                    f'BatchNorm {name!r} stats must have shape {tuple(expected)}, got '
                    f'{tuple(mean.shape)} and {tuple(var.shape)}')
            checked[name] = (mean.detach().clone(), var.detach().clone())
        with self._forward_lock:
            self._apply_bn(None)
            self._bn_states[masks] = checked

    def bn_states(self) -> dict[Masks, dict[str, BnStats]]:
        """A copy of the stored per-mask BatchNorm states (tensors shared: do not modify)."""
        with self._forward_lock:
            return {masks: dict(stats) for masks, stats in self._bn_states.items()}

    def clear_bn_states(self) -> None:
        """Forget every stored per-ratio BatchNorm state (back to the trained statistics)."""
        with self._forward_lock:
            self._apply_bn(None)
            self._bn_states.clear()

    def has_bn_state(self, ratio: Ratio) -> bool:
        return self.masks_for(ratio) in self._bn_states

    def bn_state_for(self, ratio: Ratio) -> dict[str, torch.Tensor]:
        """The full state_dict (torchvision keys) the model uses at ``ratio``.

        Identical to `state_dict()` except for BatchNorm running statistics recalibrated for the
        mask of ``ratio``. Tensors share storage with the model: do not modify them in place.
        """
        stats = self._bn_states.get(self.masks_for(ratio), {})
        state = self.state_dict()
        for name, (mean, var) in stats.items():
            state[f'{name}.running_mean'] = mean
            state[f'{name}.running_var'] = var
        return state

    def state_dict(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201 - nn.Module signature
        """The trained state (never a per-ratio BN state); keys as torchvision's ResNet."""
        with self._forward_lock:
            self._apply_bn(None)
            return super().state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True,
                        assign: bool = False):  # noqa: ANN201 - nn.Module's return type
        """Load weights; drops stored per-ratio BatchNorm states (they belong to old weights)."""
        with self._forward_lock:
            self.clear_bn_states()
            return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 - nn.Module hook
        """`.to()`, `.double()` ...: convert the stored per-mask BatchNorm states as well."""
        with self._forward_lock:
            self._apply_bn(None)
            result = super()._apply(fn, recurse)
            self._bn_states = {masks: {name: (fn(mean), fn(var))
                                       for name, (mean, var) in stats.items()}
                               for masks, stats in self._bn_states.items()}
            return result

    # -- copying (locks cannot be pickled) ---------------------------------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state['_switch_lock'], state['_forward_lock']
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._switch_lock = threading.Lock()
        self._forward_lock = threading.RLock()

    def extra_repr(self) -> str:
        return f'depths={self.depths}, keep_ratio={self.keep_ratio}, policy={self._policy!r}'


_FLATTEN = nn.Flatten(1)


def physically_pruned_copy(model: SkippableResNet, ratio: Ratio) -> nn.Module:
    """An independent plain network holding copies of only the blocks kept at ``ratio``.

    A new nn.Sequential of deep-copied stem, kept blocks, pooling and classifier (with the
    BatchNorm statistics the model uses at that ratio). Kept blocks keep their original indices
    as names, so its state_dict keys are a subset of the model's. Reference for tests/benchmarks.
    """
    masks = model.masks_for(ratio)
    stage_masks = dict(zip(STAGE_NAMES, masks))
    parts: list[tuple[str, nn.Module]] = []
    for name, module in model.named_children():
        if name in stage_masks:
            kept = [(str(i), copy.deepcopy(b))
                    for i, (b, keep) in enumerate(zip(module, stage_masks[name])) if keep]
            parts.append((name, nn.Sequential(OrderedDict(kept))))
        else:
            if isinstance(module, nn.Linear):
                parts.append(('flatten', nn.Flatten(1)))
            parts.append((name, copy.deepcopy(module)))
    pruned = nn.Sequential(OrderedDict(parts))
    state = model.bn_state_for(ratio)
    pruned.load_state_dict({k: state[k] for k in pruned.state_dict()})
    pruned.train(model.training)
    return pruned
