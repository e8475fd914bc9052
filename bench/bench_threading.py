"""Benchmark: ONNX Runtime intra-op threads and spinning, on idle cores and next to a busy process.

The node's onnxruntime defaults (`onnx_threads`, `onnx_spinning`) are what this shows fastest.
For fp32 and int8 graphs at r = 1 and 0.5, bs=1 latency (median) of 1 thread, 2 threads with
spinning, and 2 threads without, measured round-robin in one process: first with the other
cores idle, then with another process keeping one core busy (a pure-Python loop, as a second
node or a planner would). Writes bench/results/bench_threading.json and bench_threading.png.

Usage: .venv/bin/python bench/bench_threading.py [--repeats 60] [--cache-dir DIR]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import RESULTS_DIR, machine_info, metric, print_metrics, write_result  # noqa: E402

from pls_perception import paths  # noqa: E402
from pls_perception.engines.int8_quantization import (DEFAULT_CALIBRATION_IMAGES,  # noqa: E402
                                                      CalibrationSet)
from pls_perception.engines.onnxruntime_engine import OnnxRuntimeEngine  # noqa: E402
from pls_perception.skipping.weights import load_model  # noqa: E402

NAME = 'bench_threading'
RATIOS = (1.0, 0.5)
# label -> (intra-op threads, spinning)
CONFIGS = {'1 thread': (1, False), '2 threads, spinning': (2, True),
           '2 threads, no spinning': (2, False)}
BUSY_LOOP = 'while True: pass'


def _medians(engines: dict[str, OnnxRuntimeEngine], repeats: int,
             desc: str) -> dict[str, dict[float, float]]:
    """Median bs=1 latency (ms) per configuration and ratio, round-robin."""
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    samples = {label: {r: [] for r in RATIOS} for label in engines}
    for _ in tqdm(range(repeats), desc=desc):
        for ratio in RATIOS:
            for label, engine in engines.items():
                engine.set_keep_ratio(ratio)
                engine.infer(x)                      # the first run after a switch: untimed
                start = time.perf_counter()
                engine.infer(x)
                samples[label][ratio].append((time.perf_counter() - start) * 1e3)
    return {label: {r: statistics.median(v) for r, v in per.items()}
            for label, per in samples.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--weights', default=str(paths.reference_weights()))
    parser.add_argument('--repeats', type=int, default=60, help='rounds per condition')
    parser.add_argument('--cache-dir', default=None, help="ONNX cache (default: the engine's)")
    args = parser.parse_args(argv)
    machine = machine_info()
    loaded = load_model(args.weights)
    calibration = CalibrationSet.from_cifar10(DEFAULT_CALIBRATION_IMAGES, loaded.preprocessing)
    results: dict[str, dict[str, dict[str, dict[float, float]]]] = {}
    for precision in ('fp32', 'int8'):
        engines = {label: OnnxRuntimeEngine.from_loaded(
            loaded, cache_dir=args.cache_dir, ratios=RATIOS, intra_op_threads=threads,
            spinning=spinning, precision=precision,
            calibration=calibration if precision == 'int8' else None)
            for label, (threads, spinning) in CONFIGS.items()}
        results[precision] = {'idle': _medians(engines, args.repeats, f'{precision} idle')}
        busy = subprocess.Popen([sys.executable, '-c', BUSY_LOOP])
        try:
            time.sleep(0.5)
            results[precision]['busy'] = _medians(engines, args.repeats, f'{precision} busy')
        finally:
            busy.kill()
            busy.wait()
        for engine in engines.values():
            engine.close()

    metrics, best = [], {}
    for precision, conditions in results.items():
        for condition, per in conditions.items():
            fastest = min(per, key=lambda label: per[label][1.0])
            best[f'{precision} {condition}'] = fastest
            for label, by_ratio in per.items():
                if label != '1 thread':
                    metrics.append(metric(f'{precision} {condition}, {label} / 1 thread, r=1',
                                          by_ratio[1.0] / per['1 thread'][1.0], 'x'))
    notes = ['Ratios are latency of a configuration / latency of 1 thread in the same '
             'condition, measured round-robin; < 1 is faster than 1 thread.',
             'busy = one other process spinning on one of the 2 cores.']
    details = {'latency_ms': {p: {c: {label: {str(r): v for r, v in per.items()}
                                      for label, per in by_label.items()}
                                  for c, by_label in conds.items()}
                              for p, conds in results.items()},
               'fastest_at_r1': best, 'configs': {k: list(v) for k, v in CONFIGS.items()},
               'repeats': args.repeats}
    path = write_result(NAME, metrics, notes=notes, details=details, machine=machine)
    _plot(results, RESULTS_DIR / f'{NAME}.png')
    print_metrics(metrics, path)


def _plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (precision, conditions) in zip(axes, results.items()):
        groups = [f'{c}, r={r:g}' for c in conditions for r in RATIOS]
        width = 0.8 / len(CONFIGS)
        for i, label in enumerate(CONFIGS):
            values = [conditions[c][label][r] for c in conditions for r in RATIOS]
            ax.bar(np.arange(len(groups)) + i * width, values, width, label=label)
        ax.set_xticks(np.arange(len(groups)) + width * (len(CONFIGS) - 1) / 2, groups)
        ax.set_title(f'{precision}: bs=1 latency, median')
        ax.grid(alpha=0.3, axis='y')
    axes[0].set_ylabel('ms')
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == '__main__':
    main()
