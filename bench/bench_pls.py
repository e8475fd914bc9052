"""Benchmark: PLS (SkippableResNet) vs physically pruned copies, and the ratio switch time.

For each keep ratio, bs=1 32x32 latency of the PLS ResNet-152 and of an independently built
physically pruned copy (an nn.Sequential of only the kept blocks), measured in the same run,
interleaved in a shuffled order each round so a contended machine slows both alike; medians.
Target: PLS / pruned <= 1.03 at every ratio. Also latency-vs-ratio against MACs-vs-ratio, and
the time of `set_keep_ratio` (target < 1 ms). Writes bench/results/bench_pls.json and .png.

Usage: .venv/bin/python bench/bench_pls.py [--ratios 1 0.9 ...] [--repeats 30] [--threads 1]
       [--weights PATH|random] [--switches 20000]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import RESULTS_DIR, machine_info, metric, write_result  # noqa: E402

from pls_perception import paths  # noqa: E402
from pls_perception.skipping.complexity import count_macs, count_parameters  # noqa: E402
from pls_perception.skipping.network import SkippableResNet, physically_pruned_copy  # noqa: E402
from pls_perception.skipping.weights import load_model  # noqa: E402

NAME = 'bench_pls'
DEFAULT_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
TARGET_LATENCY_RATIO = 1.03
TARGET_SWITCH_MS = 1.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--ratios', type=float, nargs='+', default=list(DEFAULT_RATIOS))
    parser.add_argument('--repeats', type=int, default=30, help='interleaved rounds')
    parser.add_argument('--warmup', type=int, default=3, help='untimed rounds first')
    parser.add_argument('--threads', type=int, default=1, help='torch intra-op threads')
    parser.add_argument('--weights', default=None,
                        help="state_dict path or 'random' (default: the shared reference "
                             'weights if present, else random; latency does not depend on them)')
    parser.add_argument('--switches', type=int, default=20000, help='timed ratio switches')
    parser.add_argument('--results-dir', type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def time_forward(module: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    module(x)
    return time.perf_counter() - start


def measure_latency(model: SkippableResNet, ratios: list[float], repeats: int,
                    warmup: int) -> dict[float, dict[str, list[float]]]:
    """Per ratio, bs=1 forward times (s) of PLS and pruned, interleaved and shuffled per round."""
    pruned = {r: physically_pruned_copy(model, r).eval() for r in ratios}
    x = torch.randn(1, 3, 32, 32)
    samples = {r: {'pls': [], 'pruned': []} for r in ratios}
    order = [(r, kind) for r in ratios for kind in ('pls', 'pruned')]
    rng = random.Random(0)
    with torch.no_grad():
        for round_index in tqdm(range(warmup + repeats), desc='latency rounds', unit='round'):
            rng.shuffle(order)
            for ratio, kind in order:
                if kind == 'pls':
                    model.set_keep_ratio(ratio)
                    elapsed = time_forward(model, x)
                else:
                    elapsed = time_forward(pruned[ratio], x)
                if round_index >= warmup:
                    samples[ratio][kind].append(elapsed)
    return samples


def measure_switch(model: SkippableResNet, ratios: list[float], switches: int) -> dict:
    """set_keep_ratio times (s): between known ratios, and to never-seen ratios (uncached)."""
    known = []
    for i in range(switches):
        ratio = ratios[i % len(ratios)]
        start = time.perf_counter()
        model.set_keep_ratio(ratio)
        known.append(time.perf_counter() - start)
    fresh = []
    for i in range(min(switches, 2000)):
        ratio = 0.05 + 0.9 * (i + 0.5) / 2000   # distinct values: not in the snapshot cache
        start = time.perf_counter()
        model.set_keep_ratio(ratio)
        fresh.append(time.perf_counter() - start)
    model.set_keep_ratio(1.0)
    return {'known': known, 'fresh': fresh}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    ratios = [r['ratio'] for r in rows]
    fig, (ax_lat, ax_norm) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax_lat.plot(ratios, [r['pls_ms'] for r in rows], 'o-', label='PLS (SkippableResNet)')
    ax_lat.plot(ratios, [r['pruned_ms'] for r in rows], 's--', label='physically pruned copy')
    ax_lat.set(xlabel='keep ratio r', ylabel='bs=1 latency, median (ms)',
               title='ResNet-152, 32x32, batch 1')
    ax_lat.grid(alpha=0.3)
    ax_lat.legend()
    full = next(r for r in rows if r['ratio'] == max(ratios))
    ax_norm.plot(ratios, [r['pls_ms'] / full['pls_ms'] for r in rows], 'o-',
                 label='latency (PLS) / latency(max r)')
    ax_norm.plot(ratios, [r['macs'] / full['macs'] for r in rows], '^:',
                 label='MACs / MACs(max r)')
    ax_norm.plot(ratios, [r['params'] / full['params'] for r in rows], 'x--',
                 label='params / params(max r)')
    ax_norm.set(xlabel='keep ratio r', ylabel='relative to the largest ratio',
                title='Latency vs MACs vs parameters')
    ax_norm.grid(alpha=0.3)
    ax_norm.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = machine_info()
    weights = args.weights
    if weights is None:
        weights = str(paths.reference_weights()) if paths.reference_weights().is_file() \
            else 'random'
    model = load_model(weights, allow_random=True).model
    ratios = sorted(set(args.ratios), reverse=True)
    samples = measure_latency(model, ratios, args.repeats, args.warmup)
    switch = measure_switch(model, ratios, args.switches)
    rows = []
    for ratio in ratios:
        pls = statistics.median(samples[ratio]['pls'])
        pruned = statistics.median(samples[ratio]['pruned'])
        paired = statistics.median(a / b for a, b in zip(samples[ratio]['pls'],
                                                          samples[ratio]['pruned']))
        rows.append({'ratio': ratio, 'pls_ms': pls * 1e3, 'pruned_ms': pruned * 1e3,
                     'pls_over_pruned': pls / pruned, 'paired_median_ratio': paired,
                     'macs': count_macs(model, (32, 32), ratio),
                     'params': count_parameters(model, ratio)})
    metrics = [metric(f'PLS/pruned latency r={row["ratio"]:g}', round(row['pls_over_pruned'], 4),
                      'x', target_max=TARGET_LATENCY_RATIO) for row in rows]
    worst = max(row['pls_over_pruned'] for row in rows)
    metrics.append(metric('PLS/pruned latency, worst ratio', round(worst, 4), 'x',
                          target_max=TARGET_LATENCY_RATIO))
    known_ms = [t * 1e3 for t in switch['known']]
    fresh_ms = [t * 1e3 for t in switch['fresh']]
    metrics += [
        metric('ratio switch median', round(statistics.median(known_ms), 5), 'ms',
               target_max=TARGET_SWITCH_MS),
        metric('ratio switch p99', round(_percentile(known_ms, 0.99), 5), 'ms',
               target_max=TARGET_SWITCH_MS),
        metric('ratio switch to a new ratio, median', round(statistics.median(fresh_ms), 5),
               'ms', target_max=TARGET_SWITCH_MS),
    ]
    args.results_dir.mkdir(parents=True, exist_ok=True)
    png = args.results_dir / f'{NAME}.png'
    plot(rows, png)
    notes = [
        f'weights {weights}; bs=1, 32x32, {args.threads} torch thread(s), {args.repeats} '
        f'interleaved rounds after {args.warmup} warm-up rounds, shuffled order per round',
        'shared, heavily contended 2-core machine: absolute ms are noisy, ratios are side by side',
        'pruned = physically_pruned_copy(): nn.Sequential of deep-copied kept blocks only',
        f'plot: {png.name}',
    ]
    details = {'rows': rows, 'switch_ms': {
        'known_median': statistics.median(known_ms), 'known_max': max(known_ms),
        'fresh_median': statistics.median(fresh_ms), 'fresh_max': max(fresh_ms),
        'n_known': len(known_ms), 'n_fresh': len(fresh_ms)}}
    path = write_result(NAME, metrics, notes=notes, details=details, machine=machine,
                        results_dir=args.results_dir)
    for row in rows:
        print(f'r={row["ratio"]:<4g} PLS {row["pls_ms"]:7.2f} ms  pruned {row["pruned_ms"]:7.2f} '
              f'ms  ratio {row["pls_over_pruned"]:.3f} (paired {row["paired_median_ratio"]:.3f}) '
              f' MMACs {row["macs"] / 1e6:6.1f}')
    print(f'switch: median {statistics.median(known_ms) * 1e3:.1f} us, p99 '
          f'{_percentile(known_ms, 0.99) * 1e3:.1f} us, new ratio median '
          f'{statistics.median(fresh_ms) * 1e3:.1f} us')
    print(f'wrote {path} and {png}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
