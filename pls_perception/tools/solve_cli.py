"""pls-solve: print the operating point chosen for a profile, latency budget and accuracy bound.

Both strategies (exact ``joint`` search and the paper's ``alg2``) are shown side by side so their
choices and costs can be compared on the same profile.

Comparing skip policies: give several profiles (e.g. ``orin_nano_cpu orin_nano_cpu_plan_greedy``:
one per policy, each with that policy's accuracy per ratio) and one or more budgets; every
profile is solved for every budget under the same accuracy-loss bound and the chosen points are
printed as one table (policy, r, f, latency, power, energy, EDP, accuracy), written to
``policy_compare.csv`` / ``.json`` / ``.md`` with ``--out DIR``. ``edp_vs_first`` is each
point's EDP relative to the first profile's at the same budget and strategy.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pls_perception.errors import ProfileError
from pls_perception.operating_points.optimizer import OBJECTIVES, STRATEGIES, OperatingPoint, solve
from pls_perception.operating_points.profiles import (OperatingPointProfile, load_profile,
                                                      resolve_profile_path)

FIELDS: tuple[tuple[str, str], ...] = (
    ('keep_ratio', '{:.3g}'), ('freq_mhz', '{:.2f}'), ('latency_ms', '{:.3f}'),
    ('energy_mj', '{:.3f}'), ('edp', '{:.2f}'), ('accuracy', '{:.4f}'),
    ('accuracy_loss', '{:+.4f}'), ('feasible', '{}'))
# Columns of the policy comparison: (name, header, format).
COMPARE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ('budget_ms', 'budget ms', '{:g}'), ('profile', 'profile', '{}'),
    ('policy', 'policy', '{}'), ('strategy', 'strategy', '{}'),
    ('keep_ratio', 'r', '{:.3g}'), ('freq_mhz', 'f MHz', '{:.1f}'),
    ('latency_ms', 'latency ms', '{:.2f}'), ('power_w', 'power W', '{:.3f}'),
    ('energy_mj', 'energy mJ', '{:.2f}'), ('edp', 'EDP mJ*ms', '{:.1f}'),
    ('edp_vs_first', 'EDP vs 1st', '{:+.1%}'), ('accuracy', 'top-1', '{:.4f}'),
    ('accuracy_loss', 'loss', '{:+.4f}'), ('feasible', 'feasible', '{}'))
OUTPUT_NAME = 'policy_compare'


def format_table(points: dict[str, OperatingPoint]) -> str:
    names = list(points)
    width = max(14, *(len(n) for n in names))
    lines = [f"{'':<15}" + ''.join(f'{n:>{width}}' for n in names)]
    for field, fmt in FIELDS:
        lines.append(f'{field:<15}' + ''.join(
            f'{fmt.format(getattr(points[n], field)):>{width}}' for n in names))
    lines += [f'{n}: {points[n].reason}' for n in names]
    return '\n'.join(lines)


def compare_rows(profiles: dict[str, OperatingPointProfile], budgets_ms: Sequence[float],
                 accuracy_loss_max: float, objective: str = 'edp',
                 strategies: Sequence[str] = ('joint',)) -> list[dict[str, Any]]:
    """One row per (budget, strategy, profile): the point :func:`solve` picks and its cost."""
    rows = []
    for budget in budgets_ms:
        for strategy in strategies:
            first_edp = None
            for name, profile in profiles.items():
                point = solve(profile, budget, accuracy_loss_max, objective, strategy)
                ri, fi = point.ratio_index, point.freq_index
                first_edp = point.edp if first_edp is None else first_edp
                rows.append({
                    'budget_ms': float(budget), 'profile': name,
                    'policy': profile.skip_policy.name, 'strategy': strategy,
                    'keep_ratio': point.keep_ratio, 'freq_mhz': point.freq_mhz,
                    'latency_ms': point.latency_ms,
                    'power_w': float(profile.power_w[fi] * profile.power_scale[ri]),
                    'energy_mj': point.energy_mj, 'edp': point.edp,
                    'edp_vs_first': point.edp / first_edp - 1.0, 'accuracy': point.accuracy,
                    'accuracy_loss': point.accuracy_loss, 'feasible': point.feasible,
                    'reason': point.reason})
    return rows


def _cells(rows: list[dict[str, Any]]) -> list[list[str]]:
    return [[header for _, header, _ in COMPARE_COLUMNS]] + [
        [fmt.format(row[key]) for key, _, fmt in COMPARE_COLUMNS] for row in rows]


def format_compare_markdown(rows: list[dict[str, Any]]) -> str:
    cells = _cells(rows)
    lines = ['| ' + ' | '.join(line) + ' |' for line in cells]
    lines.insert(1, '|' + '---|' * len(COMPARE_COLUMNS))
    return '\n'.join(lines)


def format_compare_table(rows: list[dict[str, Any]]) -> str:
    cells = _cells(rows)
    widths = [max(len(line[i]) for line in cells) for i in range(len(COMPARE_COLUMNS))]
    lines = ['  '.join(c.rjust(w) for c, w in zip(line, widths)) for line in cells]
    lines.insert(1, '-' * len(lines[0]))
    lines += [f'{r["profile"]} @ {r["budget_ms"]:g} ms ({r["strategy"]}): {r["reason"]}'
              for r in rows if not r['feasible']]
    return '\n'.join(lines)


def write_compare(rows: list[dict[str, Any]], meta: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out_dir / f'{OUTPUT_NAME}.csv', out_dir / f'{OUTPUT_NAME}.json'
    md_path = out_dir / f'{OUTPUT_NAME}.md'
    with csv_path.open('w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps(dict(meta, rows=rows), indent=2) + '\n')
    md_path.write_text(format_compare_markdown(rows) + '\n')
    return [csv_path, json_path, md_path]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='pls-solve', description=__doc__.split('\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n', 1)[1])
    parser.add_argument('profile', nargs='+',
                        help='profile YAML path or shipped name (e.g. orin_nano_gpu); several '
                             'profiles (one per skip policy) are compared')
    parser.add_argument('--budget-ms', type=float, nargs='+', required=True,
                        help='latency budget(s) (ms)')
    parser.add_argument('--accuracy-loss-max', type=float, default=0.01,
                        help='max top-1 loss vs the full network, fraction (default 0.01)')
    parser.add_argument('--objective', choices=OBJECTIVES, default='edp')
    parser.add_argument('--strategy', choices=(*STRATEGIES, 'both'), default='both')
    parser.add_argument('--json', action='store_true', help='print JSON instead of a table')
    parser.add_argument('--out', default=None, metavar='DIR',
                        help=f'write the comparison to DIR/{OUTPUT_NAME}.{{csv,json,md}}')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    strategies = STRATEGIES if args.strategy == 'both' else (args.strategy,)
    compare = len(args.profile) > 1 or len(args.budget_ms) > 1 or args.out is not None
    try:
        paths = [resolve_profile_path(p) for p in args.profile]
        profiles = {path.stem: load_profile(path) for path in paths}
        if len(profiles) < len(paths):
            raise ValueError(f'profile names must differ, got {args.profile!r}')
        if compare:
            rows = compare_rows(profiles, args.budget_ms, args.accuracy_loss_max,
                                args.objective, strategies)
        else:
            profile = next(iter(profiles.values()))
            points = {s: solve(profile, args.budget_ms[0], args.accuracy_loss_max,
                               args.objective, s) for s in strategies}
    except (ProfileError, ValueError) as e:
        print(f'pls-solve: error: {e}', file=sys.stderr)
        return 2
    if not compare:
        if args.json:
            print(json.dumps({s: p.as_dict() for s, p in points.items()}, indent=2))
        else:
            print(f'{profile.device_name}: budget {args.budget_ms[0]:g} ms, accuracy loss <= '
                  f'{args.accuracy_loss_max:g}, objective {args.objective}')
            print(format_table(points))
        return 0
    devices = sorted({p.device_name for p in profiles.values()})
    meta = {'accuracy_loss_max': args.accuracy_loss_max, 'objective': args.objective,
            'budgets_ms': list(args.budget_ms), 'strategies': list(strategies),
            'profiles': [{'profile': name, 'given_as': given, 'device': prof.device_name,
                          'skip_policy': prof.skip_policy.to_dict()}
                         for (name, prof), given in zip(profiles.items(), args.profile)]}
    if args.json:
        print(json.dumps(dict(meta, rows=rows), indent=2))
    else:
        print(f'{" / ".join(devices)}: accuracy loss <= {args.accuracy_loss_max:g}, objective '
              f'{args.objective}')
        print(format_compare_table(rows))
    if len(devices) > 1:
        print(f'pls-solve: note: the profiles are for different devices {devices}',
              file=sys.stderr)
    if args.out:
        written = write_compare(rows, meta, Path(args.out))
        print('wrote ' + ', '.join(map(str, written)), file=sys.stderr)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
