"""Benchmark: switching ratio and bs=1 latency under a skip plan vs Proportional Layer Skipping.

A plan must be a drop-in policy: switching the keep ratio under it must cost what it costs under
PLS (masks are computed once per ratio, then cached), and at equal MACs its latency should be close
to PLS's (the plan removes deep, small-spatial blocks; PLS removes blocks from every stage).
Random weights suffice (timing only). Writes bench/results/bench_plans.json.

Usage: .venv/bin/python bench/bench_plans.py [--plan PLAN] [--repeats N]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torchvision

from pls_perception import paths
from pls_perception.complexity import count_macs
from pls_perception.skip_plans import PlanPolicy, load_plan
from pls_perception.skipping import ProportionalPolicy, SkippableResNet, SkipPolicy

RATIOS = (1.0, 0.9, 0.8, 0.7, 0.5, 0.3, 0.1)
OUTPUT = Path(__file__).resolve().parent / 'results' / 'bench_plans.json'


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
    parser.add_argument('--output', default=str(OUTPUT))
    args = parser.parse_args()
    torch.set_num_threads(1)
    plan = load_plan(args.plan)
    model = SkippableResNet(torchvision.models.resnet152(num_classes=10)).eval()
    proportional, plan_policy = ProportionalPolicy(), PlanPolicy(plan)
    result: dict[str, object] = {
        'plan': str(args.plan), 'machine': platform.machine(), 'torch': torch.__version__,
        'threads': 1, 'repeats': args.repeats,
        'switch': {'proportional': _switch_us(model, proportional, args.repeats),
                   'plan': _switch_us(model, plan_policy, args.repeats)},
    }
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
        row['latency_ratio_plan_over_pls'] = row['plan_latency_ms'] / row['proportional_latency_ms']
        rows.append(row)
        print(row)
    result['latency_bs1_32x32'] = rows
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + '\n')
    print(json.dumps(result['switch'], indent=2))
    print(f'wrote {args.output}')


if __name__ == '__main__':
    main()
