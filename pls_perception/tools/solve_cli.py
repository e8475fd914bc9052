"""pls-solve: print the operating point chosen for a profile, latency budget and accuracy bound.

Both strategies (exact ``joint`` search and the paper's ``alg2``) are shown side by side so their
choices and costs can be compared on the same profile.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pls_perception.errors import ProfileError
from pls_perception.optimizer import OBJECTIVES, STRATEGIES, OperatingPoint, solve
from pls_perception.profiles import load_profile, resolve_profile_path

FIELDS: tuple[tuple[str, str], ...] = (
    ('keep_ratio', '{:.3g}'), ('freq_mhz', '{:.2f}'), ('latency_ms', '{:.3f}'),
    ('energy_mj', '{:.3f}'), ('edp', '{:.2f}'), ('accuracy', '{:.4f}'),
    ('accuracy_loss', '{:+.4f}'), ('feasible', '{}'))


def format_table(points: dict[str, OperatingPoint]) -> str:
    names = list(points)
    width = max(14, *(len(n) for n in names))
    lines = [f"{'':<15}" + ''.join(f'{n:>{width}}' for n in names)]
    for field, fmt in FIELDS:
        lines.append(f'{field:<15}' + ''.join(
            f'{fmt.format(getattr(points[n], field)):>{width}}' for n in names))
    lines += [f'{n}: {points[n].reason}' for n in names]
    return '\n'.join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='pls-solve', description=__doc__.split('\n')[0])
    parser.add_argument('profile', help="profile YAML path or shipped name (e.g. orin_nano_gpu)")
    parser.add_argument('--budget-ms', type=float, required=True, help='latency budget (ms)')
    parser.add_argument('--accuracy-loss-max', type=float, default=0.01,
                        help='max top-1 loss vs the full network, fraction (default 0.01)')
    parser.add_argument('--objective', choices=OBJECTIVES, default='edp')
    parser.add_argument('--strategy', choices=(*STRATEGIES, 'both'), default='both')
    parser.add_argument('--json', action='store_true', help='print JSON instead of a table')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        profile = load_profile(resolve_profile_path(args.profile))
        strategies = STRATEGIES if args.strategy == 'both' else (args.strategy,)
        points = {s: solve(profile, args.budget_ms, args.accuracy_loss_max, args.objective, s)
                  for s in strategies}
    except (ProfileError, ValueError) as e:
        print(f'pls-solve: error: {e}', file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({s: p.as_dict() for s, p in points.items()}, indent=2))
    else:
        print(f'{profile.device_name}: budget {args.budget_ms:g} ms, accuracy loss <= '
              f'{args.accuracy_loss_max:g}, objective {args.objective}')
        print(format_table(points))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
