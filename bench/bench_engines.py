"""Benchmark: ONNX Runtime int8 and fp32 vs eager PyTorch vs a physically pruned torch copy.

Measures, in one run and interleaved (so a contended machine slows every engine alike):
bs=1 latency per keep ratio for the four (int8 twice: as the engine serves it by default, ratio 1
by its own graph and every other ratio by one gated graph, and a session per ratio), the time to
switch ratio on the onnxruntime engine, resident memory with every ratio loaded vs one, fp32 and
both int8 ways (fresh subprocesses, warm cache), top-1 / logit agreement between onnxruntime
fp32 and torch, and between int8 and fp32, on the shared CIFAR-10 test split. int8 graphs are
calibrated on 100 train images. Writes bench/results/bench_engines.json and bench_engines.png.

Usage: .venv/bin/python bench/bench_engines.py [--ratios 1 0.5 ...] [--repeats 40]
       [--agreement-images 10000] [--agreement-ratios 1.0 0.5] [--threads 1] [--cache-dir DIR]
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import (RESULTS_DIR, machine_info, metric, print_metrics, rss_mb,  # noqa: E402
                      write_result)

from pls_perception import paths  # noqa: E402
from pls_perception.engines import TorchEngine  # noqa: E402
from pls_perception.engines.int8_quantization import (DEFAULT_CALIBRATION_IMAGES,  # noqa: E402
                                                      CalibrationSet)
from pls_perception.engines.onnxruntime_engine import OnnxRuntimeEngine  # noqa: E402
from pls_perception.skipping.network import physically_pruned_copy  # noqa: E402
from pls_perception.skipping.weights import LoadedModel, load_model  # noqa: E402

NAME = 'bench_engines'
DEFAULT_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)


def _load(weights: str) -> LoadedModel:
    return load_model(weights, allow_random=weights == 'random')


def _onnx_engine(loaded: LoadedModel, args: argparse.Namespace, ratios: list[float],
                 precision: str) -> OnnxRuntimeEngine:
    """``precision`` 'fp32', 'int8' (the one gated graph) or 'int8_per_ratio' (a session per
    ratio, ``share_int8_graph`` off)."""
    int8 = precision.startswith('int8')
    calibration = (CalibrationSet.from_cifar10(DEFAULT_CALIBRATION_IMAGES, loaded.preprocessing)
                   if int8 else None)
    return OnnxRuntimeEngine.from_loaded(loaded, cache_dir=args.cache_dir, ratios=ratios,
                                         intra_op_threads=args.threads,
                                         precision='int8' if int8 else 'fp32',
                                         calibration=calibration,
                                         share_int8_graph=precision == 'int8')


def _latencies(loaded: LoadedModel, engine: OnnxRuntimeEngine, int8: OnnxRuntimeEngine,
               int8_per_ratio: OnnxRuntimeEngine, ratios: list[float],
               repeats: int) -> dict[str, dict[float, float]]:
    """Median bs=1 latency (ms) per engine and ratio, measured round-robin in a rotating
    order."""
    eager = TorchEngine(loaded.model)
    pruned = {r: physically_pruned_copy(loaded.model, r).eval() for r in ratios}
    x = np.random.default_rng(0).standard_normal((1, 3, *engine.input_size)).astype(np.float32)
    xt = torch.from_numpy(x)

    def run_pruned(ratio: float) -> None:
        with torch.inference_mode():
            pruned[ratio](xt)

    # name -> (select the ratio, untimed; run one bs=1 inference, timed)
    runners = {
        'onnxruntime_int8': (int8.set_keep_ratio, lambda r: int8.infer(x)),
        'onnxruntime_int8_per_ratio': (int8_per_ratio.set_keep_ratio,
                                       lambda r: int8_per_ratio.infer(x)),
        'onnxruntime': (engine.set_keep_ratio, lambda r: engine.infer(x)),
        'torch_eager': (eager.set_keep_ratio, lambda r: eager.infer(x)),
        'torch_pruned': (lambda r: None, run_pruned),
    }
    samples: dict[str, dict[float, list[float]]] = {k: {r: [] for r in ratios} for k in runners}
    for select, run in runners.values():      # warm-up
        for ratio in ratios:
            select(ratio)
            run(ratio)
    order = list(runners.items())
    for i in tqdm(range(repeats), desc='latency rounds'):
        # rotated each round: the engine right after torch (which evicts ONNX Runtime's code
        # and data from the caches) pays for it, so no engine always comes first
        rotated = order[i % len(order):] + order[:i % len(order)]
        for ratio in ratios:
            for name, (select, run) in rotated:
                select(ratio)
                start = time.perf_counter()
                run(ratio)
                samples[name][ratio].append((time.perf_counter() - start) * 1e3)
    eager.set_keep_ratio(1.0)
    return {name: {r: statistics.median(v) for r, v in per.items()}
            for name, per in samples.items()}


def _switch_us(engine: OnnxRuntimeEngine, ratios: list[float], repeats: int = 200) -> list[float]:
    times = []
    for i in range(repeats):
        ratio = ratios[i % len(ratios)]
        start = time.perf_counter()
        engine.set_keep_ratio(ratio)
        times.append((time.perf_counter() - start) * 1e6)
    return times


def _agreement(loaded: LoadedModel, engine: OnnxRuntimeEngine, int8: OnnxRuntimeEngine,
               ratios: list[float], n_images: int,
               batch_size: int = 100) -> dict[str, dict[str, float]]:
    """Top-1 agreement and max |logit difference| between onnxruntime and torch eager, top-1
    agreement between int8 and fp32 onnxruntime, and the three accuracies."""
    from pls_perception.io.datasets import load_cifar10
    images, labels, _ = load_cifar10(limit=n_images if n_images < 10000 else None)
    eager = TorchEngine(loaded.model)
    out: dict[str, dict[str, float]] = {}
    for ratio in ratios:
        for e in (engine, int8):
            e.prepare([ratio])
            e.set_keep_ratio(ratio)
        eager.set_keep_ratio(ratio)
        same = same_int8 = correct_ort = correct_torch = correct_int8 = 0
        max_diff = 0.0
        for start in tqdm(range(0, len(images), batch_size), desc=f'agreement r={ratio}'):
            batch = loaded.preprocessing.to_array(images[start:start + batch_size])
            ours, ref = engine.infer(batch), eager.infer(batch)
            quantized = int8.infer(batch).argmax(1)
            y = labels[start:start + batch_size]
            same += int((ours.argmax(1) == ref.argmax(1)).sum())
            same_int8 += int((quantized == ours.argmax(1)).sum())
            correct_ort += int((ours.argmax(1) == y).sum())
            correct_torch += int((ref.argmax(1) == y).sum())
            correct_int8 += int((quantized == y).sum())
            max_diff = max(max_diff, float(np.abs(ours - ref).max()))
        n = len(images)
        out[str(ratio)] = {'images': n, 'top1_agreement': same / n,
                           'max_abs_logit_diff': max_diff, 'accuracy_onnxruntime': correct_ort / n,
                           'accuracy_torch': correct_torch / n,
                           'int8_top1_agreement_with_fp32': same_int8 / n,
                           'accuracy_int8': correct_int8 / n}
    eager.set_keep_ratio(1.0)
    return out


def _rss_child(args: argparse.Namespace) -> None:
    """Subprocess: RSS added by an onnxruntime engine holding ``--ratios`` sessions."""
    torch.set_num_threads(args.threads)
    loaded = _load(args.weights)
    gc.collect()
    ctypes.CDLL('libc.so.6').malloc_trim(0)   # hand loading's freed memory back: honest baseline
    before = rss_mb()
    engine = _onnx_engine(loaded, args, args.ratios, args.precision)
    x = np.zeros((1, 3, *engine.input_size), np.float32)
    for ratio in args.ratios:
        engine.set_keep_ratio(ratio)
        engine.infer(x)
    print(json.dumps({'rss_mb': rss_mb() - before, 'sessions': len(engine.ready_ratios)}))


def _rss(args: argparse.Namespace, ratios: list[float]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, '--rss-child', '--weights', args.weights,
           '--threads', str(args.threads)]
    if args.cache_dir:
        cmd += ['--cache-dir', str(args.cache_dir)]
    out = {}
    for precision in ('fp32', 'int8', 'int8_per_ratio'):
        suffix = '' if precision == 'fp32' else f'_{precision}'
        for label, rs in (('one_session', [1.0]), ('all_sessions', ratios)):
            proc = subprocess.run(cmd + ['--precision', precision, '--ratios', *map(str, rs)],
                                  capture_output=True, text=True, check=True)
            out[label + suffix] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def _plot(latency: dict[str, dict[float, float]], rss: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={'width_ratios': [3, 1]})
    for name, per in latency.items():
        rs = sorted(per)
        ax.plot(rs, [per[r] for r in rs], marker='o', label=name)
    ax.set_xlabel('keep ratio')
    ax.set_ylabel('bs=1 latency, median (ms)')
    ax.set_title('ResNet-152 PLS, 32x32, batch 1 (same run, interleaved)')
    ax.grid(alpha=0.3)
    ax.legend()
    n = rss['all_sessions']['sessions']
    bars = {'fp32\n1': 'one_session', f'fp32\n{n}': 'all_sessions',
            'int8\n1': 'one_session_int8', f'int8\n{n}': 'all_sessions_int8',
            f'int8*\n{n}': 'all_sessions_int8_per_ratio'}
    ax2.bar(list(bars), [rss[k]['rss_mb'] for k in bars.values()])
    ax2.set_xlabel('precision, ratios loaded\n(int8*: a session per ratio)')
    ax2.set_ylabel('RSS added by the engine (MB)')
    ax2.set_title('onnxruntime memory')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--weights', default=str(paths.reference_weights()),
                        help="state_dict path (default: the shared reference), or 'random'")
    parser.add_argument('--ratios', type=float, nargs='+', default=list(DEFAULT_RATIOS))
    parser.add_argument('--repeats', type=int, default=40, help='latency rounds (median)')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch and onnxruntime intra-op threads (default 1: the machine '
                             'is shared)')
    parser.add_argument('--agreement-images', type=int, default=10000,
                        help='test images for the onnxruntime-vs-torch check (0 = skip)')
    parser.add_argument('--agreement-ratios', type=float, nargs='+', default=[1.0, 0.5])
    parser.add_argument('--cache-dir', default=None, help='ONNX cache (default: the engine\'s)')
    parser.add_argument('--rss-child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--precision', default='fp32', help=argparse.SUPPRESS)  # --rss-child
    args = parser.parse_args(argv)
    if args.rss_child:
        _rss_child(args)
        return
    torch.set_num_threads(args.threads)
    machine = machine_info()
    loaded = _load(args.weights)
    ratios = sorted(set(args.ratios), reverse=True)
    start = time.perf_counter()
    engine = _onnx_engine(loaded, args, ratios, 'fp32')
    prepare_s = time.perf_counter() - start
    int8 = _onnx_engine(loaded, args, ratios, 'int8')
    int8_per_ratio = _onnx_engine(loaded, args, ratios, 'int8_per_ratio')
    latency = _latencies(loaded, engine, int8, int8_per_ratio, ratios, args.repeats)
    switch = _switch_us(engine, ratios)
    agreement = {}
    if args.agreement_images > 0:
        agreement = _agreement(loaded, engine, int8, args.agreement_ratios,
                               args.agreement_images)
    for e in (engine, int8, int8_per_ratio):
        e.close()
    rss = _rss(args, ratios)

    speedup = {r: latency['torch_eager'][r] / latency['onnxruntime'][r] for r in ratios}
    int8_speedup = {r: latency['onnxruntime'][r] / latency['onnxruntime_int8'][r]
                    for r in ratios}
    per_ratio_speedup = {r: latency['onnxruntime'][r] / latency['onnxruntime_int8_per_ratio'][r]
                         for r in ratios}
    rss_factor = rss['all_sessions']['rss_mb'] / rss['one_session']['rss_mb']
    metrics = [
        metric('onnxruntime speed-up over eager at r=1', speedup.get(1.0), 'x', target_min=4),
        metric('int8 speed-up over fp32 onnxruntime at r=1', int8_speedup.get(1.0), 'x',
               target_min=2.5),
        metric('int8 (a session per ratio) speed-up over fp32 onnxruntime at r=1',
               per_ratio_speedup.get(1.0), 'x', target_min=2.5),
        metric('onnxruntime int8 bs=1 latency at r=1', latency['onnxruntime_int8'].get(1.0),
               'ms'),
        metric('onnxruntime bs=1 latency at r=1', latency['onnxruntime'].get(1.0), 'ms'),
        metric('torch eager bs=1 latency at r=1', latency['torch_eager'].get(1.0), 'ms'),
        metric('ratio switch, median', statistics.median(switch), 'us', target_max=1000),
        metric(f'RSS all {len(ratios)} ratio sessions / one session', rss_factor, 'x',
               target_max=1.5),
        *(metric(f'RSS {label}, all {len(ratios)} ratios / one ratio',
                 rss[f'all_sessions_{key}']['rss_mb'] / rss[f'one_session_{key}']['rss_mb'], 'x')
          for key, label in (
              ('int8', 'int8 (ratio 1 its own graph, the rest one gated graph)'),
              ('int8_per_ratio', 'int8 (a session per ratio)'))),
    ]
    for r, row in agreement.items():
        metrics.append(metric(f'top-1 agreement with torch at r={r} ({row["images"]} images)',
                              100 * row['top1_agreement'], '%', target_min=99.95))
        metrics.append(metric(f'max |logit diff| at r={r}', row['max_abs_logit_diff'], '',
                              target_max=1e-3))
        metrics.append(metric(f'int8 top-1 minus fp32 top-1 at r={r} ({row["images"]} images)',
                              100 * (row['accuracy_int8'] - row['accuracy_onnxruntime']), 'pt',
                              target_min=-0.5))
    notes = [
        'Latencies are medians of interleaved bs=1 runs in one process on a 2-core machine '
        'shared with other jobs: absolute numbers are inflated and noisy, ratios between '
        'engines measured side by side are the meaningful figures.',
        f'torch and onnxruntime both use {args.threads} intra-op thread(s).',
        'RSS is what an onnxruntime engine adds to a process that already holds the torch '
        'model, measured in fresh subprocesses with a warm graph cache.',
    ]
    details = {'ratios': ratios, 'latency_ms': {k: {str(r): v for r, v in per.items()}
                                                for k, per in latency.items()},
               'speedup_vs_eager': {str(r): v for r, v in speedup.items()},
               'int8_speedup_vs_fp32': {str(r): v for r, v in int8_speedup.items()},
               'int8_per_ratio_speedup_vs_fp32': {str(r): v
                                                  for r, v in per_ratio_speedup.items()},
               'switch_us': {'median': statistics.median(switch), 'max': max(switch)},
               'rss_mb': rss, 'agreement': agreement, 'prepare_s': prepare_s,
               'weights': args.weights, 'repeats': args.repeats,
               'cache_dir': str(engine.cache_dir)}
    path = write_result(NAME, metrics, notes=notes, details=details, machine=machine)
    _plot(latency, rss, RESULTS_DIR / f'{NAME}.png')
    print_metrics(metrics, path)


if __name__ == '__main__':
    main()
