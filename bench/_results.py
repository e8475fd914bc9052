"""Shared result format of the benchmarks, so run_all.py can build one README table from them all.

Each benchmark writes ``bench/results/<name>.json`` holding ``metrics``: a list of rows
``{name, value, unit, target, met}``. Anything else in the file (raw samples, per-ratio curves) is
detail for plots and readers; run_all.py only tabulates ``metrics``. Files starting with ``_``
in bench/ are helpers, not benchmarks: run_all.py does not run them.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / 'results'


def median_time_us(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` in microseconds over ``repeats`` calls."""
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(samples)


def rss_mb() -> float:
    """This process's resident memory in MB (Linux /proc)."""
    with open('/proc/self/statm', encoding='ascii') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def metric(name: str, value: float | int | None, unit: str, *, target_max: float | None = None,
           target_min: float | None = None) -> dict[str, Any]:
    """One table row; ``met`` is computed from the target (None when there is no target)."""
    target = None
    met = None
    if target_max is not None:
        target = f'< {target_max:g} {unit}'.strip()
        met = value is not None and value < target_max
    elif target_min is not None:
        target = f'> {target_min:g} {unit}'.strip()
        met = value is not None and value > target_min
    return {'name': name, 'value': value, 'unit': unit, 'target': target, 'met': met}


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on, including how busy the machine was at the start."""
    import torch
    load_1m, load_5m, _ = os.getloadavg()
    return {
        'platform': platform.platform(),
        'python': sys.version.split()[0],
        'cpu_count': os.cpu_count(),
        'torch': torch.__version__,
        'torch_threads': torch.get_num_threads(),
        'load_avg_1m_at_start': round(load_1m, 2),
        'load_avg_5m_at_start': round(load_5m, 2),
    }


def write_result(name: str, metrics: list[dict[str, Any]], *, notes: list[str] | None = None,
                 details: dict[str, Any] | None = None, machine: dict[str, Any] | None = None,
                 results_dir: Path | None = None) -> Path:
    """Write ``<results_dir>/<name>.json`` in the shared format and return its path."""
    out_dir = results_dir or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        'benchmark': name,
        'created_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'command': ' '.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        'machine': machine if machine is not None else machine_info(),
        'notes': list(notes or []),
        'metrics': metrics,
        'details': details or {},
    }
    path = out_dir / f'{name}.json'
    path.write_text(json.dumps(doc, indent=2, allow_nan=False) + '\n')
    return path


def print_metrics(metrics: list[dict[str, Any]], path: Path) -> None:
    """Print the metric rows and where they were written (what a benchmark ends with)."""
    for row in metrics:
        value = f"{row['value']:.4g}" if isinstance(row['value'], float) else row['value']
        print(f"{row['name']}: {value} {row['unit']} (target {row['target']}, met={row['met']})")
    print(f'wrote {path}')
