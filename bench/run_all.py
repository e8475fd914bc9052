"""Run every benchmark in bench/ and collect bench/results/*.json into one markdown summary.

One command for the README figures: each ``bench/<name>.py`` (not ``run_all.py``, not ``_*.py``
helpers) runs as its own process, side by side on the same machine, then the ``metrics`` rows of
every results file become ``bench/results/summary.md``, a table the README includes as is.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
# What the summary says about the machine (the JSON files keep everything).
MACHINE_KEYS = ('cpu_count', 'torch_threads', 'load_avg_1m_at_start')


def discover(bench_dir: Path, only: list[str] | None = None) -> list[Path]:
    """The benchmark scripts in ``bench_dir``, sorted; ``only`` filters by stem."""
    scripts = sorted(p for p in bench_dir.glob('*.py')
                     if p.name != Path(__file__).name and not p.name.startswith('_'))
    if only:
        unknown = set(only) - {p.stem for p in scripts}
        if unknown:
            raise ValueError(f'unknown benchmark(s) {sorted(unknown)!r}; '
                             f'have {[p.stem for p in scripts]!r}')
        scripts = [p for p in scripts if p.stem in only]
    return scripts


def run_benchmark(script: Path, timeout_s: float) -> dict[str, Any]:
    """Run one benchmark script to completion; never raises for a failing benchmark."""
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=script.parent.parent,
                              timeout=timeout_s)
        rc: int | None = proc.returncode
        error = None if rc == 0 else f'exit code {rc}'
    except subprocess.TimeoutExpired:
        rc, error = None, f'timed out after {timeout_s:g} s'
    return {'name': script.stem, 'returncode': rc, 'error': error,
            'duration_s': round(time.monotonic() - start, 1)}


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    """Every ``*.json`` results file, sorted by name; unreadable files become error entries."""
    docs = []
    for path in sorted(results_dir.glob('*.json')):
        try:
            doc = json.loads(path.read_text())
            if not isinstance(doc, dict):
                raise ValueError(f'top level is {type(doc).__name__}, expected an object')
        except ValueError as e:
            doc = {'error': f'unreadable results file: {e}'}
        doc.setdefault('benchmark', path.stem)
        docs.append(doc)
    return docs


def _cell(text: Any) -> str:
    """Table-cell text: a '|' inside a cell would end it."""
    return str(text).replace('|', '\\|')


def _format_value(value: Any) -> str:
    if value is None:
        return 'n/a'
    if isinstance(value, bool):
        return 'yes' if value else 'no'
    if isinstance(value, float):
        return f'{value:.3g}' if abs(value) < 1000 else f'{value:.0f}'
    return str(value)


def _rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The table rows of one results file; files not in the shared format show their top-level
    numbers, so another author's benchmark still appears."""
    if isinstance(doc.get('metrics'), list):
        return [m for m in doc['metrics'] if isinstance(m, dict) and 'name' in m]
    return [{'name': k, 'value': v, 'unit': '', 'target': None, 'met': None}
            for k, v in doc.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]


def render_summary(docs: list[dict[str, Any]], runs: list[dict[str, Any]] | None = None) -> str:
    """The markdown summary: one metrics table, then the measurement conditions and notes."""
    lines = ['| Benchmark | Metric | Value | Unit | Target | Met |',
             '|---|---|---|---|---|---|']
    for doc in docs:
        name = doc['benchmark']
        if 'error' in doc:
            lines.append(f'| {name} | (error) | {doc["error"]} | | | |')
            continue
        for row in _rows(doc):
            met = row.get('met')
            cells = [name, row['name'], _format_value(row.get('value')), row.get('unit') or '',
                     row.get('target') or '', '' if met is None else _format_value(bool(met))]
            lines.append('| ' + ' | '.join(_cell(c) for c in cells) + ' |')
    lines.append('')
    failed = [r for r in runs or [] if r['error']]
    for run in failed:
        lines.append(f'- **{run["name"]} failed** ({run["error"]}); its results above, if any, '
                     f'are from an earlier run.')
    for doc in docs:
        machine = doc.get('machine') or ''
        when = doc.get('created_utc', 'unknown time')
        if isinstance(machine, dict):
            shown = {k: machine[k] for k in MACHINE_KEYS if k in machine} or machine
            conditions = ', '.join(f'{k}={v}' for k, v in shown.items())
        else:
            conditions = str(machine)
        lines.append(f'- {doc["benchmark"]}: measured {when}'
                     + (f' ({conditions})' if conditions else '')
                     + (f'; command `{doc["command"]}`' if doc.get('command') else ''))
        notes = doc.get('notes') or []
        for note in [notes] if isinstance(notes, str) else notes:
            lines.append(f'  - {note}')
    return '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--only', nargs='+', metavar='NAME',
                        help='run only these benchmarks (script stems, e.g. bench_pipeline)')
    parser.add_argument('--collect-only', action='store_true',
                        help='do not run anything, only rebuild the summary from the results')
    parser.add_argument('--bench-dir', type=Path, default=BENCH_DIR,
                        help='folder of benchmark scripts (default: %(default)s)')
    parser.add_argument('--results-dir', type=Path, default=None,
                        help='folder of results JSON files (default: <bench-dir>/results)')
    parser.add_argument('--timeout-s', type=float, default=3600.0,
                        help='per-benchmark time limit in seconds (default: %(default)s)')
    args = parser.parse_args(argv)
    results_dir = args.results_dir or args.bench_dir / 'results'

    runs = []
    if not args.collect_only:
        scripts = discover(args.bench_dir, args.only)
        for i, script in enumerate(scripts, 1):
            print(f'[{i}/{len(scripts)}] {script.name}', flush=True)
            runs.append(run_benchmark(script, args.timeout_s))
            print(f'    -> {runs[-1]["error"] or "ok"} in {runs[-1]["duration_s"]} s', flush=True)

    results_dir.mkdir(parents=True, exist_ok=True)
    summary = results_dir / 'summary.md'
    summary.write_text(render_summary(load_results(results_dir), runs))
    print(f'wrote {summary}')
    return 1 if any(r['error'] for r in runs) else 0


if __name__ == '__main__':
    sys.exit(main())
