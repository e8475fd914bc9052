"""pls-eval: the paper's Table 1 for our weights -- accuracy and cost of PLS per keep ratio.

Evaluates a model at a list of keep ratios on the shared CIFAR-10 tarball (test split) or an
ImageFolder directory, optionally also with per-ratio BatchNorm recalibration, prints a
Table-1-style table and writes table1.csv, table1.json and table1.png into --out. ``--compare``
puts earlier runs of different weights side by side (accuracy vs MACs).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pls_perception import paths
from pls_perception.engines.base import InferenceEngine
from pls_perception.engines.int8_quantization import DEFAULT_CALIBRATION_IMAGES, PRECISIONS
from pls_perception.errors import PlsError
from pls_perception.io.datasets import load_cifar10, load_image_folder
from pls_perception.skipping.bn_recalibration import (calibration_images, recalibrate,
                                                      save_bn_states)
from pls_perception.skipping.complexity import count_parameters
from pls_perception.skipping.evaluation import (PAPER_FULL_ACCURACY, PAPER_TABLE1_PARAMS_M,
                                                RatioResult, evaluate, measure_latency_ms)
from pls_perception.skipping.ratios import Ratio, normalize_ratio
from pls_perception.skipping.weights import LoadedModel, load_model

DEFAULT_RATIOS = '1.0,0.9,0.8,0.7,0.5,0.3,0.1'
COLUMNS = ('ratio', 'accuracy', 'accuracy_loss_pp', 'loss', 'accuracy_bn', 'accuracy_loss_bn_pp',
           'loss_bn', 'params', 'params_m', 'paper_params_m', 'compression_pct', 'macs',
           'latency_ms', 'n_images')


def parse_ratios(text: str) -> list[Ratio]:
    """'1.0,0.5' -> [1.0, 0.5]; an item 'a/b/c/d' is a per-stage ratio (one value per stage)."""
    ratios: list[Ratio] = []
    for item in (t.strip() for t in text.split(',') if t.strip()):
        try:
            values = tuple(float(v) for v in item.split('/'))
        except ValueError as e:
            raise ValueError(f'ratios must be numbers, got {item!r}') from e
        ratios.append(normalize_ratio(values if len(values) > 1 else values[0], len(values)))
    if not ratios:
        raise ValueError(f'no ratios given, got {text!r}')
    return ratios


def _ratio_label(ratio: Ratio) -> str:
    return '/'.join(f'{r:g}' for r in ratio) if isinstance(ratio, tuple) else f'{ratio:g}'


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='pls-eval', description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--weights', default=str(paths.reference_weights()),
                        help="state_dict path, 'imagenet' or 'random'")
    parser.add_argument('--arch', default='resnet152', help='torchvision architecture')
    parser.add_argument('--num-classes', type=int, default=None,
                        help='expected class count (default: read from the weights)')
    parser.add_argument('--allow-random', action='store_true', help="permit --weights random")
    parser.add_argument('--data', default=str(paths.cifar10_tar()),
                        help='CIFAR-10 layout .tar.gz (test/<class>/*.jpg) or ImageFolder dir')
    parser.add_argument('--split', default='test', choices=('test', 'train'),
                        help='split inside the tarball')
    parser.add_argument('--ratios', default=DEFAULT_RATIOS,
                        help="comma-separated keep ratios; 'a/b/c/d' = per-stage ratio")
    parser.add_argument('--limit', type=int, default=None,
                        help='evaluate N images, balanced over classes (default: all)')
    parser.add_argument('--batch-size', type=int, default=100)
    parser.add_argument('--bn-recalibration', type=int, default=0, metavar='N',
                        help='also evaluate with BatchNorm stats re-estimated per ratio on N '
                             'CIFAR-10 train images (0: off)')
    parser.add_argument('--bn-only', action='store_true',
                        help='with --bn-recalibration: skip the trained-BN evaluation (and the '
                             'ratio 1.0 reference unless listed), e.g. to split a long run')
    parser.add_argument('--bn-batch-size', type=int, default=64)
    parser.add_argument('--calibration-data', default=str(paths.cifar10_tar()),
                        help='CIFAR-10 tarball whose train split feeds the BN recalibration '
                             'and the int8 calibration')
    parser.add_argument('--engine', default='torch', choices=('torch', 'onnxruntime'),
                        help='what computes the logits: eager torch (the reference) or the '
                             "node's onnxruntime graphs")
    parser.add_argument('--precision', default='fp32', choices=PRECISIONS,
                        help='onnxruntime graphs: fp32, or int8 (static quantization)')
    parser.add_argument('--int8-calibration-images', type=int,
                        default=DEFAULT_CALIBRATION_IMAGES,
                        help='train images the int8 graphs are calibrated on')
    parser.add_argument('--onnx-cache-dir', default=None,
                        help='onnxruntime graph cache (default: $PLS_ONNX_CACHE, else '
                             '~/.cache/pls_perception/onnx)')
    parser.add_argument('--latency-runs', type=int, default=20,
                        help='bs=1 forward passes timed per ratio (0: skip)')
    parser.add_argument('--threads', type=int, default=None,
                        help='intra-op threads (torch, or onnxruntime; default: theirs)')
    parser.add_argument('--out', default='out/eval', help='output directory')
    parser.add_argument('--no-progress', action='store_true', help='hide progress bars')
    parser.add_argument('--merge', nargs='+', metavar='DIR', default=None,
                        help='evaluate nothing: combine the table1.json of earlier runs (e.g. a '
                             'plain run and --bn-only runs) into one table in --out')
    parser.add_argument('--compare', nargs='+', metavar='[LABEL=]DIR', default=None,
                        help='evaluate nothing: put the table1.json of runs of different weights '
                             'side by side (compare.csv, accuracy_vs_macs.png in --out); LABEL '
                             'defaults to the weights file name')
    return parser


def _load_data(args: argparse.Namespace, loaded: LoadedModel) -> tuple:
    data = Path(args.data)
    n_classes = loaded.num_classes
    if data.is_dir():
        n_classes = max(1, sum(1 for p in data.iterdir() if p.is_dir()))
    per_class = math.ceil(args.limit / n_classes) if args.limit else None
    if data.is_dir():
        prep = loaded.preprocessing
        side = prep.resize_size
        size = (side, side) if side is not None else prep.input_size
        return load_image_folder(data, size=size, limit=args.limit, per_class=per_class,
                                 class_names=loaded.class_names)
    return load_cifar10(data, split=args.split, limit=args.limit, per_class=per_class)


def build_rows(plain: dict[Ratio, RatioResult], recalibrated: dict[Ratio, RatioResult] | None,
               latency_ms: dict[Ratio, float | None], paper: bool,
               full_params: int) -> list[dict]:
    """Table rows, one per ratio of ``recalibrated`` (else ``plain``); accuracy loss in
    percentage points relative to ratio 1.0 with the trained BatchNorm statistics."""
    base = plain.get(1.0)
    rows = []
    for ratio, bn in (recalibrated or plain).items():
        result = plain.get(ratio)
        bn = bn if recalibrated is not None else None
        rows.append({
            'ratio': _ratio_label(ratio),
            'accuracy': result.accuracy if result else None,
            'accuracy_loss_pp': (base.accuracy - result.accuracy) * 100 if result and base
            else None,
            'loss': result.loss if result else None,
            'accuracy_bn': bn.accuracy if bn else None,
            'accuracy_loss_bn_pp': (base.accuracy - bn.accuracy) * 100 if bn and base
            else None,
            'loss_bn': bn.loss if bn else None,
            'params': (result or bn).params,
            'params_m': (result or bn).params / 1e6,
            'paper_params_m': PAPER_TABLE1_PARAMS_M.get(ratio) if paper else None,
            'compression_pct': (1 - (result or bn).params / full_params) * 100,
            'macs': (result or bn).macs,
            'latency_ms': latency_ms.get(ratio),
            'n_images': (result or bn).n_images,
        })
    return rows


def _fmt(value: object, spec: str) -> str:
    return '-' if value is None else format(value, spec)


def format_table(rows: list[dict]) -> str:
    header = (f'{"ratio":>15} {"acc%":>7} {"loss pp":>8} {"CE":>6} {"acc%BN":>7} {"loss pp":>8} '
              f'{"CE BN":>6} {"params M":>9} {"paper M":>8} {"compr%":>7} {"MMACs":>8} '
              f'{"bs1 ms":>7}')
    lines = [header, '-' * len(header)]
    for row in rows:
        pct = {k: row[k] * 100 if row[k] is not None else None
               for k in ('accuracy', 'accuracy_bn')}
        lines.append(
            f'{row["ratio"]:>15} {_fmt(pct["accuracy"], ".2f"):>7} '
            f'{_fmt(row["accuracy_loss_pp"], ".2f"):>8} {_fmt(row["loss"], ".3f"):>6} '
            f'{_fmt(pct["accuracy_bn"], ".2f"):>7} {_fmt(row["accuracy_loss_bn_pp"], ".2f"):>8} '
            f'{_fmt(row["loss_bn"], ".3f"):>6} {row["params_m"]:>9.2f} '
            f'{_fmt(row["paper_params_m"], ".2f"):>8} {row["compression_pct"]:>7.2f} '
            f'{row["macs"] / 1e6:>8.1f} {_fmt(row["latency_ms"], ".1f"):>7}')
    return '\n'.join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = [r for r in rows if '/' not in r['ratio']]
    x = [float(r['ratio']) for r in rows]
    fig, (ax_acc, ax_par) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, style, label in (('accuracy', 'o-', 'PLS (trained BN stats)'),
                              ('accuracy_bn', 's-', 'PLS + per-ratio BN recalibration')):
        points = [(xi, r[key] * 100) for xi, r in zip(x, rows) if r[key] is not None]
        if points:
            ax_acc.plot(*zip(*points), style, label=label)
    ax_acc.set(xlabel='keep ratio r', ylabel='top-1 accuracy (%)', title='Accuracy vs ratio')
    ax_acc.grid(alpha=0.3)
    ax_acc.legend()
    ax_par.plot(x, [r['params_m'] for r in rows], 'o-', label='ours (ceil(r*n) per stage)')
    paper = [(xi, r['paper_params_m']) for xi, r in zip(x, rows) if r['paper_params_m']]
    if paper:
        ax_par.plot(*zip(*paper), 'x--', label='paper Table 1')
    ax_mac = ax_par.twinx()
    ax_mac.plot(x, [r['macs'] / 1e6 for r in rows], '^:', color='tab:green', label='MMACs')
    ax_mac.set_ylabel('MMACs per image')
    ax_par.set(xlabel='keep ratio r', ylabel='active parameters (M)',
               title='Parameters and MACs vs ratio')
    ax_par.grid(alpha=0.3)
    handles = ax_par.get_legend_handles_labels()
    more = ax_mac.get_legend_handles_labels()
    ax_par.legend(handles[0] + more[0], handles[1] + more[1], loc='upper left')
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def merge_runs(run_dirs: list[Path]) -> tuple[list[dict], dict]:
    """Rows of several table1.json files combined per ratio (first non-empty value wins).

    The accuracy losses are recomputed against the plain ratio-1.0 accuracy of any run.
    """
    summaries = [json.loads((Path(d) / 'table1.json').read_text()) for d in run_dirs]
    merged: dict[str, dict] = {}
    for summary in summaries:
        for row in summary['rows']:
            target = merged.setdefault(row['ratio'], dict(row))
            for key, value in row.items():
                if target.get(key) is None:
                    target[key] = value
    sizes = {row['n_images'] for row in merged.values()}
    if len(sizes) != 1:
        raise ValueError(f'runs were made on different image counts, got {sorted(sizes)}')
    base = merged.get('1', {}).get('accuracy')
    full = merged.get('1')
    if (full and full['accuracy_bn'] is None
            and any(s['bn_recalibration_images'] for s in summaries)):
        # Ratio 1 skips nothing, so recalibration leaves it unchanged.
        full['accuracy_bn'], full['loss_bn'] = full['accuracy'], full['loss']
    for row in merged.values():
        for acc, loss in (('accuracy', 'accuracy_loss_pp'),
                          ('accuracy_bn', 'accuracy_loss_bn_pp')):
            row[loss] = (base - row[acc]) * 100 if base is not None and row[acc] is not None \
                else None
    rows = sorted(merged.values(), key=lambda r: -sum(float(v) for v in r['ratio'].split('/')))
    meta = dict(summaries[0], rows=rows, merged_from=[str(d) for d in run_dirs],
                bn_recalibration_images=max(s['bn_recalibration_images'] for s in summaries))
    return rows, meta


def _write_outputs(rows: list[dict], summary: dict, out: Path, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    print(format_table(rows))
    with open(out / 'table1.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / 'table1.json').write_text(json.dumps(summary, indent=2) + '\n')
    plot(rows, out / 'table1.png', title)
    print(f'wrote {out / "table1.csv"}, {out / "table1.json"}, {out / "table1.png"}',
          file=sys.stderr)


def _parse_compare(items: list[str]) -> list[tuple[str | None, Path]]:
    """'[LABEL=]DIR' items -> (label or None, the run's table1.json)."""
    runs = []
    for item in items:
        label, sep, directory = item.rpartition('=')
        path = Path(directory if sep else item) / 'table1.json'
        if not path.is_file():
            raise FileNotFoundError(f'--compare: no table1.json in {path.parent}')
        runs.append((label if sep else None, path))
    return runs


def compare_runs(runs: list[tuple[str | None, Path]]) -> tuple[list[dict], int]:
    """One row per (run, ratio): label, weights hash, ratio, MACs, accuracy (raw and BN); and
    the image count all runs were scored on.

    A run without a label is named after its weights file. Runs must be scored on the same
    number of images, or their accuracies do not compare.
    """
    rows, sizes = [], set()
    for label, path in runs:
        try:
            summary = json.loads(path.read_text())
            sizes.add(summary['n_images'])
            label = label or Path(summary['weights']).stem
            rows += [{'run': label, 'weights_sha256': summary.get('weights_sha256'),
                      'ratio': row['ratio'], 'macs': row['macs'], 'accuracy': row['accuracy'],
                      'accuracy_bn': row['accuracy_bn']}
                     for row in summary['rows'] if '/' not in row['ratio']]
        except (KeyError, TypeError) as e:
            raise ValueError(f'{path} is not a pls-eval table1.json (missing {e})') from e
    if len(sizes) != 1:
        raise ValueError(f'runs were scored on different image counts, got {sorted(sizes)}')
    return rows, sizes.pop()


def plot_comparison(rows: list[dict], path: Path, title: str) -> None:
    """Accuracy vs MACs per run: solid lines trained BN statistics, dashed recalibrated."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    labels = list(dict.fromkeys(r['run'] for r in rows))
    for color, label in zip(plt.rcParams['axes.prop_cycle'].by_key()['color'], labels):
        mine = sorted((r for r in rows if r['run'] == label), key=lambda r: r['macs'])
        for key, style, suffix in (('accuracy', 'o-', ''), ('accuracy_bn', 's--', ' + BN recal.')):
            points = [(r['macs'] / 1e6, r[key] * 100) for r in mine if r[key] is not None]
            if points:
                ax.plot(*zip(*points), style, color=color, label=label + suffix)
        for r in mine:
            if r['accuracy'] is not None:
                ax.annotate(r['ratio'], (r['macs'] / 1e6, r['accuracy'] * 100), fontsize=7,
                            xytext=(3, -9), textcoords='offset points', color=color)
    ax.set(xlabel='MMACs per image (PLS keep ratio at each point)', ylabel='top-1 accuracy (%)',
           title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write_comparison(runs: list[tuple[str | None, Path]], out: Path) -> list[dict]:
    rows, n_images = compare_runs(runs)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / 'compare.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot_comparison(rows, out / 'accuracy_vs_macs.png',
                    f'PLS accuracy vs cost on {n_images} test images')
    print(f'wrote {out / "compare.csv"}, {out / "accuracy_vs_macs.png"}', file=sys.stderr)
    return rows


def run(args: argparse.Namespace) -> dict:
    if args.compare:
        return {'rows': _write_comparison(_parse_compare(args.compare), Path(args.out))}
    if args.merge:
        rows, summary = merge_runs([Path(d) for d in args.merge])
        _write_outputs(rows, summary, Path(args.out),
                       f'{summary["arch"]} PLS on {summary["n_images"]} images (merged runs)')
        return summary
    if args.threads:
        torch.set_num_threads(args.threads)
    ratios = parse_ratios(args.ratios)
    if args.bn_only and not args.bn_recalibration:
        raise ValueError('--bn-only needs --bn-recalibration N > 0')
    if args.precision == 'int8' and args.engine != 'onnxruntime':
        raise ValueError('--precision int8 needs --engine onnxruntime')
    if args.engine != 'torch' and args.bn_recalibration:
        raise ValueError('--bn-recalibration needs --engine torch (the onnxruntime graphs are '
                         'built before recalibration would change them)')
    if 1.0 not in ratios and not args.bn_only:
        ratios.insert(0, 1.0)   # the reference for the accuracy loss
    started = time.time()
    loaded = load_model(args.weights, args.arch, args.num_classes, args.allow_random)
    model = loaded.model
    images, labels, _ = _load_data(args, loaded)
    print(f'{len(images)} images from {args.data}; weights {loaded.source}', file=sys.stderr)
    engine = _engine(args, loaded, ratios)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        plain, recalibrated, latency = _score(args, loaded, images, labels, ratios, engine, out)
    finally:
        if engine is not None:
            engine.close()
    input_size = loaded.preprocessing.input_size
    is_paper_model = args.arch == 'resnet152' and loaded.num_classes == 10
    rows = build_rows(plain, recalibrated, latency, is_paper_model,
                      count_parameters(model, 1.0))
    summary = {
        'weights': loaded.source, 'weights_sha256': loaded.sha256, 'arch': args.arch,
        'num_classes': loaded.num_classes, 'data': str(args.data), 'split': args.split,
        'n_images': len(images), 'bn_recalibration_images': args.bn_recalibration,
        'batch_size': args.batch_size, 'torch_threads': torch.get_num_threads(),
        'engine': args.engine, 'precision': args.precision,
        'int8_calibration_images': (args.int8_calibration_images if args.precision == 'int8'
                                    else None),
        'latency_runs': args.latency_runs, 'input_size': list(input_size),
        'paper_full_accuracy': PAPER_FULL_ACCURACY if is_paper_model else None,
        'compression_definition': 'percent of the full model parameters removed',
        'accuracy_loss_definition': 'percentage points below ratio 1.0 (trained BN stats)',
        'elapsed_s': time.time() - started, 'rows': rows,
    }
    _write_outputs(rows, summary, out,
                   f'{args.arch} PLS on {len(images)} images ({Path(args.data).name})'
                   + (f', onnxruntime {args.precision}' if engine is not None else ''))
    return summary


def _score(args: argparse.Namespace, loaded: LoadedModel, images: np.ndarray, labels: np.ndarray,
           ratios: list[Ratio], engine: InferenceEngine | None, out: Path) -> tuple:
    """Plain results, BN-recalibrated results (or None) and bs=1 latency, per ratio."""
    model, progress = loaded.model, not args.no_progress
    plain_ratios = [r for r in ratios if r == 1.0] if args.bn_only else ratios
    plain = {r.ratio: r for r in evaluate(model, images, labels, plain_ratios, args.batch_size,
                                          progress, loaded.preprocessing, engine)}
    recalibrated = None
    if args.bn_recalibration:
        calibration = calibration_images(args.bn_recalibration, args.calibration_data)
        updated = recalibrate(model, calibration, ratios, args.bn_batch_size,
                              loaded.preprocessing, progress)
        save_bn_states(model, out / 'bn_states.pt')
        changed = [r for r in ratios if updated[r] or r not in plain]
        fresh = {r.ratio: r for r in evaluate(model, images, labels, changed, args.batch_size,
                                              progress, loaded.preprocessing)}
        recalibrated = {r: fresh[r] if r in fresh else plain[r] for r in ratios}
    latency = {}
    input_size = loaded.preprocessing.input_size
    for ratio in ratios:
        latency[ratio] = (measure_latency_ms(model, input_size, ratio, args.latency_runs,
                                             engine=engine)
                          if args.latency_runs > 0 else None)
    return plain, recalibrated, latency


def _engine(args: argparse.Namespace, loaded: LoadedModel,
            ratios: list[Ratio]) -> InferenceEngine | None:
    """The onnxruntime engine with every ratio's graph ready (None for --engine torch)."""
    if args.engine == 'torch':
        return None
    from pls_perception.engines.int8_quantization import CalibrationSet
    from pls_perception.engines.onnxruntime_engine import OnnxRuntimeEngine
    calibration = (CalibrationSet.from_cifar10(args.int8_calibration_images,
                                               loaded.preprocessing, args.calibration_data)
                   if args.precision == 'int8' else None)
    print(f'onnxruntime {args.precision}: loading or building {len(ratios)} graphs',
          file=sys.stderr)
    return OnnxRuntimeEngine.from_loaded(loaded, ratios=ratios, precision=args.precision,
                                         calibration=calibration, cache_dir=args.onnx_cache_dir,
                                         intra_op_threads=args.threads or 0)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run(args)
    except (PlsError, ValueError, FileNotFoundError) as e:
        print(f'pls-eval: error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
