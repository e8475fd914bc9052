"""pls-train: fine-tune a ResNet so that PLS is accurate at every keep ratio, not only near 1.

Trains on the train split of a CIFAR-10-layout tarball (the test split is refused) with the
sandwich rule and in-place distillation (recipe and reasons: `pls_perception.skipping.training`),
with a
checkpoint every N steps, resumable with --resume. Writes into --out: the weights file (a plain
torchvision state_dict that pls-eval, pls-plan, pls-profile and the node's ``weights`` parameter
load unchanged), with --per-ratio-bn its BN file (the node's ``bn_recalibration`` parameter), the
learning curve (learning_curve.json/.csv/.png, held-out train images) and train_summary.json.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from pls_perception import paths
from pls_perception.errors import PlsError
from pls_perception.io.datasets import CIFAR10_CLASSES
from pls_perception.io.file_inputs import sha256_of
from pls_perception.skipping.bn_recalibration import load_bn_states
from pls_perception.skipping.evaluation import evaluate
from pls_perception.skipping.ratios import PROFILE_RATIOS
from pls_perception.skipping.training import (BN_MODES, CHECKPOINT_NAME, CURVE_CSV, CURVE_JSON,
                                              TRAIN_SPLIT, TrainConfig, Trainer, export_weights,
                                              load_train_data)
from pls_perception.skipping.weights import load_model

SUMMARY_NAME = 'train_summary.json'
CURVE_PNG = 'learning_curve.png'
DEFAULTS = TrainConfig(steps=1)


def parse_ratios(text: str) -> tuple[float, ...]:
    """'0.5,0.1' -> (1.0, 0.5, 0.1): global keep ratios; 1.0 (the teacher) is always added."""
    try:
        ratios = {float(t) for t in text.split(',') if t.strip()}
    except ValueError as e:
        raise ValueError(f'ratios must be comma-separated numbers, got {text!r}') from e
    return tuple(sorted(ratios | {1.0}, reverse=True))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='pls-train', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model = parser.add_argument_group('model and data')
    model.add_argument('--weights', default=str(paths.reference_weights()),
                       help="starting state_dict file, or 'random' (with --allow-random)")
    model.add_argument('--arch', default='resnet152', help='torchvision ResNet (18..152)')
    model.add_argument('--allow-random', action='store_true', help="permit --weights random")
    model.add_argument('--data', default=str(paths.cifar10_tar()),
                       help='CIFAR-10-layout .tar.gz (train/<class>/*.jpg)')
    model.add_argument('--split', default=TRAIN_SPLIT,
                       help='split to train and calibrate on; only train is accepted')
    model.add_argument('--limit', type=int, default=None,
                       help='use only N train-split images, balanced over classes')
    model.add_argument('--val-images', type=int, default=1000,
                       help='train-split images held out for the learning curve (0: none)')
    recipe = parser.add_argument_group('recipe')
    recipe.add_argument('--ratios', default=','.join(f'{r:g}' for r in PROFILE_RATIOS),
                        help='keep ratios to train and evaluate (1.0 is always included)')
    length = recipe.add_mutually_exclusive_group()
    length.add_argument('--epochs', type=float, default=2.0, help='length in epochs')
    length.add_argument('--steps', type=int, default=None,
                        help='length in steps, instead of --epochs')
    recipe.add_argument('--batch-size', type=int, default=DEFAULTS.batch_size)
    recipe.add_argument('--lr', type=float, default=DEFAULTS.lr, help='peak learning rate')
    recipe.add_argument('--warmup-steps', type=int, default=None,
                        help='linear warm-up steps (None: 5%% of the steps)')
    recipe.add_argument('--momentum', type=float, default=DEFAULTS.momentum,
                        help='Nesterov momentum')
    recipe.add_argument('--weight-decay', type=float, default=DEFAULTS.weight_decay,
                        help='on conv and fc weights')
    recipe.add_argument('--label-smoothing', type=float, default=DEFAULTS.label_smoothing,
                        help="of the full network's cross-entropy")
    recipe.add_argument('--random-ratios', type=int, default=DEFAULTS.random_ratios,
                        help='random sub-networks per step, besides the smallest')
    recipe.add_argument('--temperature', type=float, default=DEFAULTS.temperature,
                        help='distillation temperature')
    recipe.add_argument('--bn-mode', choices=BN_MODES, default=DEFAULTS.bn_mode,
                        help='frozen: running statistics in training, as at inference (needs '
                             'trained statistics); batch: batch statistics')
    recipe.add_argument('--per-ratio-bn', action='store_true',
                        help='BatchNorm statistics per ratio, written to a BN file')
    recipe.add_argument('--bn-calibration-images', type=int,
                        default=DEFAULTS.bn_calibration_images,
                        help='train images that estimate the per-ratio statistics')
    recipe.add_argument('--seed', type=int, default=DEFAULTS.seed)
    run = parser.add_argument_group('run and outputs')
    run.add_argument('--threads', type=int, default=None, help='torch intra-op threads')
    run.add_argument('--checkpoint-every', type=int, default=100, help='steps')
    run.add_argument('--eval-every', type=int, default=250,
                     help='steps between held-out evaluations (0: start and end only)')
    run.add_argument('--resume', action='store_true',
                     help='continue from --out/checkpoint.pt (same options and data)')
    run.add_argument('--out', default='out/train', help='output directory')
    run.add_argument('--output', default=None,
                     help='weights file (None: <out>/<arch>_pls.pt)')
    run.add_argument('--fp32', action='store_true',
                     help='write float32 weights instead of float16')
    run.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    run.add_argument('--plot-only', action='store_true',
                     help=f'train nothing: draw {CURVE_PNG} from the {CURVE_JSON} in --out')
    return parser


def plot_learning_curve(curve_json: Path, path: Path) -> None:
    """Held-out top-1 per keep ratio against the step (and the lr), one line per ratio."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    try:
        rows = json.loads(curve_json.read_text())['rows']
        labels = list(rows[0]['val_accuracy'])
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise ValueError(f'{curve_json} is not a pls-train learning curve ({e!r})') from e
    if not labels:
        raise ValueError(f'{curve_json} has no held-out accuracy (run with --val-images > 0)')
    fig, ax = plt.subplots(figsize=(8, 4.8))
    cmap = plt.get_cmap('viridis')
    for i, label in enumerate(labels):
        points = [(r['step'], r['val_accuracy'][label] * 100) for r in rows
                  if label in r.get('val_accuracy', {})]
        ax.plot(*zip(*points), 'o-', ms=3, color=cmap(i / max(1, len(labels) - 1)),
                label=f'r = {label}')
    ax.set(xlabel='training step', ylabel='held-out top-1 (%)',
           title='pls-train: held-out accuracy per keep ratio')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc='lower right')
    lr = ax.twinx()
    lr.plot([r['step'] for r in rows], [r['lr'] for r in rows], ':', color='grey')
    lr.set_ylabel('learning rate (dotted)', color='grey')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _config(args: argparse.Namespace, train_images: int) -> TrainConfig:
    steps = args.steps
    if steps is None:
        if not (math.isfinite(args.epochs) and args.epochs > 0):
            raise ValueError(f'--epochs must be a positive number, got {args.epochs!r}')
        steps = max(1, math.ceil(args.epochs * (train_images // args.batch_size)))
    return TrainConfig(
        steps=steps, ratios=parse_ratios(args.ratios), batch_size=args.batch_size, lr=args.lr,
        warmup_steps=args.warmup_steps, momentum=args.momentum, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, random_ratios=args.random_ratios,
        temperature=args.temperature, bn_mode=args.bn_mode, per_ratio_bn=args.per_ratio_bn,
        bn_calibration_images=args.bn_calibration_images, seed=args.seed)


def _format_table(ratios: tuple[float, ...], start: dict[str, float],
                  final: dict[str, float]) -> str:
    lines = [f'{"ratio":>6} {"start %":>8} {"final %":>8}', '-' * 24]
    for ratio in ratios:
        label = f'{ratio:g}'
        cells = [f'{d[label] * 100:8.2f}' if label in d else f'{"-":>8}' for d in (start, final)]
        lines.append(f'{label:>6} {" ".join(cells)}')
    return '\n'.join(lines)


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    out = Path(args.out)
    if args.plot_only:
        plot_learning_curve(out / CURVE_JSON, out / CURVE_PNG)
        print(f'wrote {out / CURVE_PNG}', file=sys.stderr)
        return {}
    if args.split != TRAIN_SPLIT:
        raise ValueError(f'pls-train trains and calibrates on the train split only (the test '
                         f'split is for pls-eval), got --split {args.split!r}')
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = out / CHECKPOINT_NAME
    if checkpoint.exists() and not args.resume:
        raise ValueError(f'{checkpoint} exists: pass --resume to continue that run, or choose '
                         f'another --out')
    started = time.time()
    loaded = load_model(args.weights, args.arch, len(CIFAR10_CLASSES), args.allow_random)
    data = load_train_data(args.data, args.split, args.val_images, args.limit)
    config = _config(args, len(data.train_images))
    identity = {'arch': args.arch, 'weights': loaded.sha256 or loaded.source}
    trainer = Trainer(loaded.model, loaded.preprocessing, data, config, out, identity)
    if args.resume:
        trainer.restore(checkpoint)
    print(f'{len(data.train_images)} train + {len(data.val_images)} held-out images from '
          f'{args.data}; {config.steps} steps of {config.batch_size} '
          f'({config.steps / trainer.steps_per_epoch:.2f} epochs) from step {trainer.step}; '
          f'weights {loaded.source}', file=sys.stderr)
    try:
        trainer.run(checkpoint_every=args.checkpoint_every, eval_every=args.eval_every,
                    progress=not args.no_progress)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f'interrupted; {checkpoint} holds step {trainer.checkpoint_step}, '
                                f'continue with --resume') from None
    output = Path(args.output) if args.output else out / f'{args.arch}_pls.pt'
    bn_path = output.with_name(f'{output.stem}_bn_states.pt') if config.per_ratio_bn else None
    export_weights(trainer.model, output, torch.float32 if args.fp32 else torch.float16, bn_path)
    # Score the exported file itself (fp16 rounding included), as pls-eval will load it.
    exported = load_model(str(output), args.arch, len(CIFAR10_CLASSES))
    if bn_path is not None:
        load_bn_states(exported.model, bn_path)
    final = ({f'{r.ratio:g}': r.accuracy
              for r in evaluate(exported.model, data.val_images, data.val_labels, config.ratios,
                                preprocessing=exported.preprocessing)}
             if len(data.val_images) else {})
    start = trainer.curve[0].get('val_accuracy', {})
    print(_format_table(config.ratios, start, final))
    summary = {
        'command': ['pls-train', *argv], 'config': asdict(config),
        'identity': trainer.identity, 'data': str(args.data),
        'train_images': len(data.train_images), 'val_images': len(data.val_images),
        'steps': trainer.step, 'epochs': trainer.step / trainer.steps_per_epoch,
        'train_s': trainer.train_seconds,
        'train_images_per_s': (trainer.step * config.batch_size / trainer.train_seconds
                               if trainer.train_seconds else None),
        'elapsed_s_this_session': time.time() - started,
        'torch': torch.__version__, 'torch_threads': torch.get_num_threads(),
        'weights_file': str(output), 'weights_sha256': sha256_of(output),
        'weights_dtype': 'float32' if args.fp32 else 'float16',
        'bn_file': str(bn_path) if bn_path else None,
        'bn_sha256': sha256_of(bn_path) if bn_path else None,
        'held_out_accuracy_start': start, 'held_out_accuracy_final': final,
        'learning_curve': [str(out / CURVE_JSON), str(out / CURVE_CSV)],
    }
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + '\n')
    if final:
        plot_learning_curve(out / CURVE_JSON, out / CURVE_PNG)
    print(f'wrote {output}' + (f', {bn_path}' if bn_path else '')
          + f', {out / CURVE_CSV}, {out / SUMMARY_NAME}', file=sys.stderr)
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        run(args, argv)
    except (PlsError, ValueError, FileNotFoundError) as e:
        # One line: torch's own messages (wrapped in ours) can span several.
        print(f'pls-train: error: {(str(e).splitlines() or [repr(e)])[0]}', file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f'pls-train: {e}', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
