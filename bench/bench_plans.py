"""Benchmark: switching ratio and bs=1 latency under a skip plan vs Proportional Layer Skipping.

A plan must be a drop-in policy: switching the keep ratio under it must cost what it costs under
PLS (masks are computed once per ratio, then cached), and at equal MACs its latency should be close
to PLS's (the plan removes deep, small-spatial blocks; PLS removes blocks from every stage).
Random weights suffice (timing only). Writes bench/results/bench_plans.json (shared format).

Usage: .venv/bin/python bench/bench_plans.py [--plan PLAN] [--repeats N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine_info, metric, write_result  # noqa: E402

from pls_perception import paths  # noqa: E402
from pls_perception.skipping.complexity import count_macs  # noqa: E402
from pls_perception.skipping.network import (ProportionalPolicy, SkippableResNet,  # noqa: E402
                                             SkipPolicy)
from pls_perception.skipping.plans import PlanPolicy, load_plan  # noqa: E402

NAME = 'bench_plans'
RATIOS = (1.0, 0.9, 0.8, 0.7, 0.5, 0.3, 0.1)
TARGET_SWITCH_US = 1000.0   # the PLS core's target (< 1 ms) holds for plans too


def _switch_us(model: SkippableResNet, policy: SkipPolicy, repeats: int) -> dict[str, float]:
    """First switch to each ratio (masks computed) and later switches (cached), microseconds."""
    model.set_policy(policy)   # drops the model's per-ratio cache
    first = []
    for ratio in RATIOS:
        start = time.perf_counter()
        model.set_keep_ratio(ratio)
        first.append((time.perf_counter() - start) * 1e6)
    cached = []
    for _ in range(repeats):
        for ratio in RATIOS:
            start = time.perf_counter()
            model.set_keep_ratio(ratio)
            cached.append((time.perf_counter() - start) * 1e6)
    return {'first_switch_us_max': max(first), 'switch_us_median': statistics.median(cached),
            'switch_us_max': max(cached)}


def _latency_ms(model: SkippableResNet, ratio: float, repeats: int) -> float:
    x = torch.randn(1, 3, 32, 32)
    model.set_keep_ratio(ratio)
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--plan', default=str(paths.config_dir() / 'plans' /
                                              'resnet152_cifar10_ref_greedy.yaml'))
    parser.add_argument('--repeats', type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    machine = machine_info()
    plan = load_plan(args.plan)
    model = SkippableResNet(torchvision.models.resnet152(num_classes=10)).eval()
    proportional, plan_policy = ProportionalPolicy(), PlanPolicy(plan)
    switch = {'proportional': _switch_us(model, proportional, args.repeats),
              'plan': _switch_us(model, plan_policy, args.repeats)}
    rows = []
    full_macs = count_macs(model, ratio=1.0)
    for ratio in RATIOS:
        # The plan at the same removable MACs as PLS at this ratio.
        plan_ratio = plan.matching_ratio(proportional.masks(ratio, model.depths))
        row: dict[str, float] = {'pls_ratio': ratio, 'plan_ratio': round(plan_ratio, 6)}
        # Interleave the two policies so that contention hits both alike.
        for name, policy, r in (('proportional', proportional, ratio),
                                ('plan', plan_policy, plan_ratio)):
            model.set_policy(policy)
            row[f'{name}_macs_fraction'] = count_macs(model, ratio=r) / full_macs
            row[f'{name}_latency_ms'] = _latency_ms(model, r, args.repeats)
        row['latency_ratio_plan_over_pls'] = (row['plan_latency_ms']
                                              / row['proportional_latency_ms'])
        rows.append(row)
        print(row)
    at_half = next(r for r in rows if r['pls_ratio'] == 0.5)
    metrics = [
        metric('plans: switch ratio, PLS (median)', switch['proportional']['switch_us_median'],
               'us', target_max=TARGET_SWITCH_US),
        metric('plans: switch ratio, plan (median)', switch['plan']['switch_us_median'], 'us',
               target_max=TARGET_SWITCH_US),
        metric('plans: first switch to a ratio, plan (max)', switch['plan']['first_switch_us_max'],
               'us', target_max=TARGET_SWITCH_US),
        metric('plans: bs=1 latency plan / PLS at PLS-50 MACs',
               round(at_half['latency_ratio_plan_over_pls'], 3), 'x'),
    ]
    path = write_result(NAME, metrics, machine=machine, details={
        'plan': str(args.plan), 'repeats': args.repeats, 'switch': switch,
        'latency_bs1_32x32': rows}, notes=[
        'random ResNet-152 weights (timing only), 32x32, torch threads 1',
        'the plan runs at the removable MACs PLS keeps at each ratio (same total MACs)'])
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
