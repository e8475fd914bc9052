"""``pls-plan``: learn importance-ordered skip plans, show them, and compare them with PLS.

``learn`` scores block removals on a calibration set drawn from the CIFAR-10 train split only and
writes the plan as YAML (with the weights' sha256); ``show`` prints a plan and what it keeps at a
few ratios; ``compare`` measures test-split accuracy against the kept-MACs fraction for the
proportional policy and for the plan at the same MACs, with and without BN recalibration, and
writes a table, CSV, JSON and one PNG with both curves.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pls_perception import paths
from pls_perception.errors import PlsError
from pls_perception.io.datasets import load_cifar10
from pls_perception.skipping.bn_recalibration import calibration_images, recalibrate
from pls_perception.skipping.complexity import count_macs
from pls_perception.skipping.evaluation import evaluate
from pls_perception.skipping.network import ProportionalPolicy
from pls_perception.skipping.plans import (COSTS, METHODS, PlanPolicy, SkipPlan, learn_plan,
                                           load_plan, save_plan)
from pls_perception.skipping.weights import LoadedModel, load_model

DEFAULT_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.5, 0.3, 0.1)
DEFAULT_OUTPUT_DIR = Path('docs/results/plans')


def _default_plan_path(method: str) -> Path:
    return paths.config_dir() / 'plans' / f'resnet152_cifar10_ref_{method}.yaml'


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--weights', default=str(paths.reference_weights()),
                        help='state_dict file (default: the shared reference ResNet-152)')
    parser.add_argument('--arch', default='resnet152', help='torchvision architecture')
    parser.add_argument('--dataset', default=None,
                        help='CIFAR-10 JPEG tar (default: the shared copy)')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch CPU threads (default 1: the machine is shared)')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='pls-plan', description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)

    learn = sub.add_parser('learn', help='learn a plan on train-split calibration images')
    _add_model_args(learn)
    learn.add_argument('--method', choices=METHODS, default='greedy')
    learn.add_argument('--cost', choices=COSTS, default='kl',
                       help='kl: KL of logits from the full network (no labels); '
                            'accuracy: top-1 drop on the calibration labels')
    learn.add_argument('--calibration-per-class', type=int, default=30,
                       help='train images per class, all scored in one batch (default 30)')
    learn.add_argument('--bn-recalibration', action='store_true',
                       help='score every removal set with BN statistics of the calibration set')
    learn.add_argument('-o', '--output', default=None,
                       help='plan YAML (default: '
                            'config/plans/resnet152_cifar10_ref_<method>.yaml)')

    show = sub.add_parser('show', help='print a plan and its masks at a few ratios')
    show.add_argument('plan', help='plan YAML')
    show.add_argument('--ratios', type=float, nargs='+', default=list(DEFAULT_RATIOS))

    compare = sub.add_parser('compare',
                             help='test accuracy vs kept MACs: proportional vs plan, +-BN recal')
    _add_model_args(compare)
    compare.add_argument('--plan', default=str(_default_plan_path('greedy')), help='plan YAML')
    compare.add_argument('--ratios', type=float, nargs='+', default=list(DEFAULT_RATIOS),
                         help='PLS ratios; the plan is evaluated at the same removable MACs')
    compare.add_argument('--per-class', type=int, default=None,
                         help='first K test images per class (default: all 1000)')
    compare.add_argument('--batch-size', type=int, default=500)
    compare.add_argument('--bn-recalibration-images', type=int, default=500,
                         help='train images for BN recalibration (0 = skip those rows)')
    compare.add_argument('--output-dir', default=str(DEFAULT_OUTPUT_DIR))
    return parser


def _load(args: argparse.Namespace) -> LoadedModel:
    torch.set_num_threads(args.threads)
    return load_model(args.weights, arch=args.arch)


def _learn(args: argparse.Namespace) -> int:
    if args.calibration_per_class < 1:
        raise ValueError(f'--calibration-per-class must be >= 1, got {args.calibration_per_class}')
    loaded = _load(args)
    images, labels, _ = load_cifar10(args.dataset, split='train',
                                     per_class=args.calibration_per_class)
    plan = learn_plan(loaded.model, loaded.preprocessing.to_tensor(images), method=args.method,
                      cost=args.cost, labels=torch.from_numpy(labels),
                      bn_recalibration=args.bn_recalibration, weights_sha256=loaded.sha256,
                      arch=args.arch, progress=True)
    output = Path(args.output) if args.output else _default_plan_path(args.method)
    save_plan(plan, output)
    print(f'wrote {output}')
    _print_plan(plan, DEFAULT_RATIOS)
    return 0


def _print_plan(plan: SkipPlan, ratios: Sequence[float]) -> None:
    print(f'{plan.arch} depths {plan.depths}, {plan.method}/{plan.cost}, calibration '
          f'{plan.calibration_size} images, BN recalibration {plan.bn_recalibration}, '
          f'weights sha256 {plan.weights_sha256}')
    print('removal order (stage index, block index): ' +
          ' '.join(f'{s}.{b}' for s, b in plan.order))
    print(f'{"ratio":>6} {"kept MACs":>10}  blocks kept per stage')
    for ratio in ratios:
        masks = plan.masks(ratio)
        print(f'{ratio:>6.2f} {plan.kept_fraction(ratio):>10.3f}  '
              f'{tuple(sum(m) for m in masks)} of {plan.depths}')


def _show(args: argparse.Namespace) -> int:
    _print_plan(load_plan(args.plan), args.ratios)
    return 0


def _rows(loaded: LoadedModel, plan: SkipPlan, ratios: Sequence[float], images: np.ndarray,
          labels: np.ndarray, batch_size: int, recalibration: np.ndarray | None
          ) -> list[dict[str, object]]:
    """One row per (policy, PLS ratio, BN mode); the plan runs at PLS's removable MACs."""
    model = loaded.model
    proportional = ProportionalPolicy()
    plan_policy = PlanPolicy(plan, name='plan')
    full_macs = count_macs(model, input_size=plan.input_size, ratio=1.0)
    policy_ratios: dict[str, list[tuple[float, float]]] = {
        'proportional': [(r, r) for r in ratios],
        'plan': [(r, plan.matching_ratio(proportional.masks(r, model.depths)))
                 for r in ratios]}
    rows: list[dict[str, object]] = []
    try:
        for name, policy in (('proportional', proportional), ('plan', plan_policy)):
            model.set_policy(policy)
            todo = policy_ratios[name]
            for bn in (False, True) if recalibration is not None else (False,):
                model.clear_bn_states()
                if bn:
                    recalibrate(model, recalibration, [r for _, r in todo],
                                preprocessing=loaded.preprocessing, progress=True)
                results = evaluate(model, images, labels, [r for _, r in todo], batch_size,
                                   progress=True, preprocessing=loaded.preprocessing)
                for (pls_ratio, r), result in zip(todo, results):
                    rows.append({
                        'policy': name, 'bn_recalibration': bn, 'pls_ratio': pls_ratio,
                        'policy_ratio': round(r, 6),
                        'blocks_kept': [sum(m) for m in model.masks_for(r)],
                        'macs': result.macs, 'macs_fraction': result.macs / full_macs,
                        'params': result.params, 'accuracy': result.accuracy,
                        'n_images': result.n_images})
    finally:
        model.clear_bn_states()
        model.set_policy(proportional)
    return rows


def _compare(args: argparse.Namespace) -> int:
    loaded = _load(args)
    plan = load_plan(args.plan, weights_sha256=loaded.sha256)
    if tuple(loaded.model.depths) != plan.depths:
        raise ValueError(f'plan {args.plan} is for depths {plan.depths}, the model has '
                         f'{loaded.model.depths}')
    images, labels, _ = load_cifar10(args.dataset, split='test', per_class=args.per_class)
    recalibration = (calibration_images(args.bn_recalibration_images, args.dataset)
                     if args.bn_recalibration_images > 0 else None)
    rows = _rows(loaded, plan, args.ratios, images, labels, args.batch_size, recalibration)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    meta = {'weights': loaded.source, 'weights_sha256': loaded.sha256, 'plan': str(args.plan),
            'plan_fingerprint': plan.fingerprint, 'plan_method': plan.method,
            'plan_cost': plan.cost,
            'plan_calibration_size': plan.calibration_size, 'test_images': int(len(labels)),
            'bn_recalibration_images': args.bn_recalibration_images}
    (output_dir / 'plan_comparison.json').write_text(
        json.dumps({'meta': meta, 'rows': rows}, indent=2) + '\n')
    with (output_dir / 'plan_comparison.csv').open('w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _plot(rows, meta, output_dir / 'plan_comparison.png')
    table = _table(rows)
    (output_dir / 'plan_comparison.md').write_text(table + '\n')
    print(table)
    print(f'wrote {output_dir}/plan_comparison.{{json,csv,md,png}}')
    return 0


def _table(rows: list[dict[str, object]]) -> str:
    """Markdown table: one line per PLS ratio, accuracy of each policy and BN mode."""
    columns = [(p, bn) for p in ('proportional', 'plan') for bn in (False, True)
               if any(r['policy'] == p and r['bn_recalibration'] == bn for r in rows)]
    by_key = {(r['policy'], r['bn_recalibration'], r['pls_ratio']): r for r in rows}
    names = {('proportional', False): 'PLS acc.', ('proportional', True): 'PLS+BN acc.',
             ('plan', False): 'plan acc.', ('plan', True): 'plan+BN acc.'}
    header = ['PLS ratio', 'MACs (M)', 'kept MACs', 'PLS blocks', 'plan blocks',
              'PLS params (M)', 'plan params (M)']
    header += [names[c] for c in columns] + ['plan - PLS (pts)']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for ratio in sorted({r['pls_ratio'] for r in rows}, reverse=True):
        pls, plan = by_key[('proportional', False, ratio)], by_key[('plan', False, ratio)]
        cells = [f'{ratio:.2f}', f'{pls["macs"] / 1e6:.1f}', f'{pls["macs_fraction"]:.3f}',
                 str(tuple(pls['blocks_kept'])), str(tuple(plan['blocks_kept'])),
                 f'{pls["params"] / 1e6:.2f}', f'{plan["params"] / 1e6:.2f}']
        cells += [f'{100 * by_key[(p, bn, ratio)]["accuracy"]:.2f}%' for p, bn in columns]
        cells.append(f'{100 * (plan["accuracy"] - pls["accuracy"]):+.2f}')
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def _plot(rows: list[dict[str, object]], meta: dict[str, object], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {'proportional': ('tab:blue', 'o'), 'plan': ('tab:red', 's')}
    for policy, (color, marker) in styles.items():
        for bn in (False, True):
            points = sorted((r['macs_fraction'], r['accuracy']) for r in rows
                            if r['policy'] == policy and r['bn_recalibration'] == bn)
            if points:
                xs, ys = zip(*points)
                label = f'{"PLS" if policy == "proportional" else "plan"}' + (
                    ' + BN recal.' if bn else '')
                ax.plot(xs, [100 * y for y in ys], color=color, marker=marker,
                        linestyle='--' if bn else '-', label=label)
    ax.set_xlabel('kept MACs fraction (of the full network)')
    ax.set_ylabel('top-1 accuracy (%)')
    ax.set_title(f'Proportional vs {meta["plan_method"]} skip plan '
                 f'({meta["test_images"]} test images)')
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {'learn': _learn, 'show': _show, 'compare': _compare}
    try:
        return handlers[args.command](args)
    except (PlsError, ValueError, FileNotFoundError) as e:
        print(f'pls-plan {args.command}: error: {e}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
