"""Accuracy per keep ratio for one skip policy, and plan profiles derived from a PLS profile.

A profile's accuracy belongs to the policy that chose the blocks (``profiles.SkipPolicyInfo``).
:func:`load_accuracy_table` reads the accuracy tables the tools write and checks that they were
made with the policy asked for:

* ``pls-plan compare`` (``plan_comparison.json`` / ``.csv``): rows for ``proportional`` and
  ``plan`` with the blocks kept per stage; the JSON's meta records the weights' sha256, the plan's
  method and cost and (newer runs) the plan's fingerprint;
* ``pls-eval`` (``table1.json`` / ``.csv``): PLS only; the JSON records the weights' sha256;
* ``{'accuracy': {ratio: top1}, 'sha256': ...}`` (``paper_profiles``) or a list of
  ``{'ratio', 'accuracy'}`` rows (top level or under ``rows``/``results``): PLS, unless the file
  says ``skip_policy: {name, plan_fingerprint, ...}`` (then its ratios are the plan's).

Rows with BN recalibration are left out (a profile describes the trained BN statistics). A plan's
accuracy is keyed by how many of its blocks are removed, so any keep ratio that removes the same
blocks finds it. The table must agree with the plan on the blocks kept per stage in every row, and
on the fingerprint, method, cost and weights wherever it records them; else ProfileError.

:func:`derive_plan_profile` makes a plan profile from a PLS profile of the same device without
measuring: each plan ratio takes the latency and power of the PLS ratio that runs the same MACs.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pls_perception.errors import ProfileError, clip
from pls_perception.io.file_inputs import load_json, read_text
from pls_perception.operating_points.profiles import (PROPORTIONAL, OperatingPointProfile,
                                                      SkipPolicyInfo)
from pls_perception.skipping.network import ProportionalPolicy
from pls_perception.skipping.plans import SkipPlan

_FORMATS = ("pls-plan compare's plan_comparison.json/.csv, pls-eval's table1.json/.csv, "
            "{'accuracy': {ratio: top1}} or a list of {'ratio', 'accuracy'} rows")


@dataclass(frozen=True)
class AccuracyTable:
    """Top-1 per keep ratio of ``policy`` (for a plan: the short ratio removing each count)."""

    path: str
    policy: SkipPolicyInfo
    accuracy: dict[float, float]
    weights_sha256: str | None = None
    n_images: int | None = None
    plan: SkipPlan | None = None

    @property
    def ratios(self) -> list[float]:
        return sorted(self.accuracy)

    def _key(self, ratio: float) -> float | None:
        if self.plan is not None:
            key = self.plan.ratio_removing(self.plan.removed_count(ratio))
            return key if key in self.accuracy else None
        return next((k for k in self.accuracy if math.isclose(k, ratio, abs_tol=1e-9)), None)

    def at(self, ratios: Sequence[float]) -> list[float]:
        """Accuracy at each keep ratio; ValueError naming the ratios the table lacks."""
        keys = [self._key(r) for r in ratios]
        missing = [r for r, k in zip(ratios, keys) if k is None]
        if missing:
            raise ValueError(f'{self.path} has no accuracy for ratios {missing!r} under '
                             f'{self.policy.name}; it has {self.ratios!r}')
        return [self.accuracy[k] for k in keys]

    @property
    def note(self) -> str:
        """Provenance for a profile's notes."""
        images = f' on {self.n_images} images' if self.n_images else ''
        weights = (f', weights sha256 {self.weights_sha256}' if self.weights_sha256 else '')
        return (f'top-1 measured under {self.policy.name}{images}, from {self.path} (rows '
                f'without BN recalibration){weights}')


def _read(path: Path) -> tuple[dict[str, Any], list[Any]]:
    """(metadata, rows) of a table in any of the accepted formats."""
    if path.suffix.lower() == '.csv':
        text = read_text(path, 'accuracy table', ProfileError)
        try:
            return {}, list(csv.DictReader(io.StringIO(text)))
        except csv.Error as e:
            raise ProfileError(f'accuracy table {str(path)!r} is not valid CSV: {e}') from e
    data = load_json(path, 'accuracy table', ProfileError)
    if isinstance(data, list):
        return {}, data
    if isinstance(data, dict) and isinstance(data.get('accuracy'), dict):
        return ({k: v for k, v in data.items() if k != 'accuracy'},
                [{'ratio': k, 'accuracy': v} for k, v in data['accuracy'].items()])
    rows = data.get('rows', data.get('results')) if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ProfileError(f'{path}: not an accuracy table; expected {_FORMATS}')
    meta = data['meta'] if isinstance(data.get('meta'), dict) else {
        k: v for k, v in data.items() if k not in ('rows', 'results')}
    return meta, rows


def _truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ('true', '1', 'yes')


def _number(value: Any) -> float | None:
    """A float from a number or numeric string; None for blanks, None and per-stage labels.

    ValueError for anything else, infinities and NaN included."""
    if value is None or isinstance(value, bool) or (isinstance(value, str) and (
            not value.strip() or '/' in value)):
        return None
    if not isinstance(value, (int, float, str)):
        raise ValueError(f'expected a number, got {clip(repr(value))}')
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f'expected a finite number, got {clip(repr(value))}')
    return number


def _blocks(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else None
    return None if value is None else tuple(int(v) for v in value)


def load_accuracy_table(path: str | Path, plan: SkipPlan | None = None,
                        policy: SkipPolicyInfo = PROPORTIONAL,
                        weights_sha256: str | None = None) -> AccuracyTable:
    """The accuracy per ratio that ``path`` gives for ``policy`` (``plan`` for a plan policy).

    ``weights_sha256`` (when given) and the plan's weights must match the table's where it records
    them. ProfileError for an unreadable table, one made with another policy, plan or weights, or
    one with no rows for the policy.
    """
    path = Path(path)
    if (plan is None) != policy.is_proportional:
        raise ValueError(f'a plan must come with its policy info, got {policy!r}')
    meta, rows = _read(path)
    where = str(path)
    try:
        return _table(where, meta, rows, plan, policy, weights_sha256)
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise ProfileError(f'{where}: {clip(str(e), 200)}') from e


def _table(where: str, meta: dict[str, Any], rows: list[Any], plan: SkipPlan | None,
           policy: SkipPolicyInfo, weights_sha256: str | None) -> AccuracyTable:
    """The body of :func:`load_accuracy_table` (may raise ValueError/TypeError on bad rows)."""
    table_sha = meta.get('weights_sha256') or meta.get('sha256')
    for what, sha in (('the model', weights_sha256),
                      (f'plan {policy.name}', plan.weights_sha256 if plan else None)):
        if table_sha and sha and table_sha != sha:
            raise ProfileError(f'{where} was measured on weights with sha256 '
                               f'{clip(str(table_sha))}, but {what} is for {sha}')
    try:
        declared = SkipPolicyInfo.from_dict(meta.get('skip_policy'))
    except ProfileError as e:
        raise ProfileError(f'{where}: {e}') from e
    parsed = []
    for row in rows:
        if not isinstance(row, dict) or 'accuracy' not in row:
            raise ProfileError(
                f'{where}: rows must be mappings with an accuracy, got {clip(repr(row))}')
        accuracy = _number(row['accuracy'])
        if accuracy is None or _truthy(row.get('bn_recalibration', False)):
            continue
        kind = row.get('policy') or ('proportional' if declared.is_proportional else 'plan')
        parsed.append((kind, row, accuracy))
    n_images = {int(float(r['n_images'])) for _, r, _ in parsed if r.get('n_images')}
    images = n_images.pop() if len(n_images) == 1 else meta.get('test_images', meta.get('images'))
    wanted = [(row, acc) for kind, row, acc in parsed
              if kind == ('proportional' if plan is None else 'plan')]
    if not wanted:
        made = sorted({kind for kind, _, _ in parsed}) or ['no usable rows']
        raise ProfileError(f'{where} has no accuracy rows for {policy.name} (it has: '
                           f'{", ".join(made)}); make one with '
                           + ('pls-eval' if plan is None else f'pls-plan compare --plan '
                              f'{policy.plan_file or "<plan.yaml>"}'))
    if plan is None:
        accuracy = {}
        for row, acc in wanted:
            ratio = _number(row.get('pls_ratio', row.get('ratio')))
            if ratio is not None:
                accuracy[ratio] = acc
    else:
        _check_plan_meta(where, meta, declared, plan, policy)
        accuracy = {plan.ratio_removing(_removed(where, row, plan, policy, declared)): acc
                    for row, acc in wanted}
    return AccuracyTable(where, policy, accuracy, table_sha, images, plan)


def _check_plan_meta(where: str, meta: dict[str, Any], declared: SkipPolicyInfo,
                     plan: SkipPlan, policy: SkipPolicyInfo) -> None:
    recorded = {'plan_fingerprint': meta.get('plan_fingerprint', declared.plan_fingerprint),
                'plan_method': meta.get('plan_method'), 'plan_cost': meta.get('plan_cost')}
    expected = {'plan_fingerprint': plan.fingerprint, 'plan_method': plan.method,
                'plan_cost': plan.cost}
    for key, value in recorded.items():
        if value is not None and value != expected[key]:
            raise ProfileError(f'{where} was made with another skip plan ({key} '
                               f'{clip(repr(value))}), not {policy.name} ({expected[key]!r})')


def _removed(where: str, row: dict[str, Any], plan: SkipPlan, policy: SkipPolicyInfo,
             declared: SkipPolicyInfo) -> int:
    """How many plan blocks a row's network removed, checked against the plan's masks."""
    kept = _blocks(row.get('blocks_kept'))
    if kept is None:
        ratio = _number(row.get('policy_ratio', row.get('ratio')))
        if declared.plan_fingerprint is None or ratio is None:
            raise ProfileError(f'{where} does not say which blocks its rows kept nor which plan '
                               f'made it, so it cannot give accuracy for {policy.name}')
        return plan.removed_count(ratio)
    count = len(plan.order) - (sum(kept) - len(plan.depths))
    expect = (tuple(sum(m) for m in plan.masks_removing(count))
              if len(kept) == len(plan.depths) and 0 <= count <= len(plan.order) else None)
    if expect != kept:
        raise ProfileError(
            f'{where}: a row ran {list(kept)} blocks per stage, but {policy.name} runs '
            f'{list(expect) if expect else "no such set"} with as many blocks removed: the table '
            f'was not made with this plan')
    return count


def derive_plan_profile(base: OperatingPointProfile, plan: SkipPlan, policy: SkipPolicyInfo,
                        ratios: Sequence[float], accuracy: Sequence[float], accuracy_note: str,
                        base_name: str) -> OperatingPointProfile:
    """A profile of ``plan`` on ``base``'s device, without measuring.

    Each plan ratio takes the latency, power and power scale of the ``base`` (PLS) ratio whose
    network runs the same removable MACs (cost is taken to depend on MACs only); entries whose
    masks differ from that PLS row's become 'modelled'. ProfileError if a ratio has no such row.
    """
    if not base.skip_policy.is_proportional:
        raise ProfileError(f'{base_name} is for {base.skip_policy.name}; derive from a '
                           f'proportional (PLS) profile')
    pls = ProportionalPolicy()
    base_masks = [pls.masks(float(r), plan.depths) for r in base.ratios]
    base_kept = [plan.removable_fraction(m) for m in base_masks]
    rows, same = [], []
    for ratio in ratios:
        masks = plan.masks(ratio)
        kept = plan.removable_fraction(masks)
        ri = next((i for i, k in enumerate(base_kept) if math.isclose(k, kept, abs_tol=1e-9)),
                  None)
        if ri is None:
            raise ProfileError(
                f'plan ratio {ratio:g} runs {kept:.4f} of the removable MACs, but no ratio of '
                f'{base_name} does (its ratios run {[round(k, 4) for k in base_kept]}); use the '
                f'ratios of a table made at PLS\'s MACs (pls-plan compare)')
        rows.append(ri)
        same.append(masks == base_masks[ri])
    differs = ~np.array(same)

    def sources(name: str) -> np.ndarray:
        out = base.sources[name][rows].astype(object)
        out[differs] = 'modelled'
        return out

    mapping = ', '.join(f'{r:g}->{base.ratios[ri]:g}' for r, ri in zip(ratios, rows))
    notes = [n for n in base.notes if not n.startswith('Accuracy')] + [
        f'Skip policy {policy.name}: {plan.method}/{plan.cost} plan {policy.plan_file}, '
        f'fingerprint {plan.fingerprint}; keep ratio r removes its first blocks until the kept '
        f'removable MACs are <= r.',
        f'Derived from {base_name} (PLS) by pls-profile --from-profile: each ratio runs the same '
        f'MACs as a PLS ratio of that profile (plan->PLS: {mapping}) and takes its latency, power '
        f'and power scale, cost being taken to depend on the MACs only; entries whose blocks '
        f'differ from that PLS row\'s are marked modelled.',
        f'Accuracy: {accuracy_note}']
    return OperatingPointProfile(
        device_name=base.device_name, device_kind=base.device_kind, ratios=list(ratios),
        frequencies_mhz=base.frequencies_mhz, accuracy=list(accuracy),
        latency_ms=base.latency_ms[rows], power_w=base.power_w,
        power_scale=base.power_scale[rows], power_model=base.power_model,
        sources={'accuracy': 'measured', 'latency_ms': sources('latency_ms'),
                 'power_w': base.sources['power_w'], 'power_scale': sources('power_scale')},
        reference_frequency_mhz=base.reference_frequency_mhz, latency_rule=base.latency_rule,
        model=dict(base.model), notes=tuple(notes), skip_policy=policy)
