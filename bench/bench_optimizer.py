"""Benchmark: optimizer solve time on a 100 ratios x 100 frequencies profile (target < 1 ms).

A synthetic, physically shaped profile (block-proportional latency, 1/f scaling, two-zone power)
so the grid is dense; budgets span infeasible to unconstrained. Times ``solve`` for both strategies
and ``OperatingPointSelector.update``. Writes bench/results/bench_optimizer.json.

Usage: .venv/bin/python bench/bench_optimizer.py [--repeats N] [--size N]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from _results import metric, print_metrics, write_result

from pls_perception.operating_points.optimizer import OperatingPointSelector, solve
from pls_perception.operating_points.power_model import TwoZonePowerModel
from pls_perception.operating_points.profiles import OperatingPointProfile, scale_latency

NAME = 'bench_optimizer'


def synthetic_profile(n: int) -> OperatingPointProfile:
    ratios = np.linspace(0.01, 1.0, n)
    freqs = np.linspace(300.0, 1500.0, n)
    model = TwoZonePowerModel(p_static_w=0.4, c_w_per_mhz=0.0012, f_knee_mhz=900.0)
    latency = scale_latency(2.0 + 40.0 * ratios, float(freqs[-1]), freqs)
    accuracy = 0.8 - 0.5 * (1.0 - ratios) ** 2
    return OperatingPointProfile(
        device_name=f'synthetic {n}x{n}', device_kind='cpu', ratios=ratios,
        frequencies_mhz=freqs, accuracy=accuracy, latency_ms=latency,
        power_w=model.power_w(freqs), power_model=model, reference_frequency_mhz=float(freqs[-1]),
        sources={'accuracy': 'modelled', 'latency_ms': 'modelled', 'power_w': 'modelled'})


def time_us(fn, budgets: np.ndarray, repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        for b in budgets:
            t0 = time.perf_counter()
            fn(float(b))
            samples.append((time.perf_counter() - t0) * 1e6)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--size', type=int, default=100)
    args = parser.parse_args()
    prof = synthetic_profile(args.size)
    budgets = np.geomspace(prof.latency_ms.min() * 0.5, prof.latency_ms.max() * 2, 50)
    selector = OperatingPointSelector(prof, 0.05, hysteresis=0.05)
    runs = {
        'joint': time_us(lambda b: solve(prof, b, 0.05, 'edp', 'joint'), budgets, args.repeats),
        'alg2': time_us(lambda b: solve(prof, b, 0.05, 'edp', 'alg2'), budgets, args.repeats),
        'selector': time_us(selector.update, budgets, args.repeats),
    }
    details = {k: {'median_us': statistics.median(v), 'p99_us': float(np.percentile(v, 99)),
                   'max_us': max(v), 'samples': len(v)} for k, v in runs.items()}
    labels = {'joint': 'solve (joint)', 'alg2': 'solve (alg2)', 'selector': 'selector update'}
    metrics = [metric(f'{labels[k]} median, {args.size}x{args.size}',
                      round(d['median_us'] / 1e3, 4), 'ms', target_max=1.0)
               for k, d in details.items()]
    metrics += [metric(f'solve (joint) p99, {args.size}x{args.size}',
                       round(details['joint']['p99_us'] / 1e3, 4), 'ms', target_max=1.0)]
    path = write_result(NAME, metrics, details=details, notes=[
        'shared 2-core machine, other jobs running: absolute times are upper bounds',
        f'{len(budgets)} budgets from infeasible to unconstrained, {args.repeats} repeats'])
    print_metrics(metrics, path)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
