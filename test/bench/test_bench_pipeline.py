"""bench/bench_pipeline.py: options, metric rows, and a --quick smoke run over real DDS."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bench_modules import BENCH_DIR, load

bench = load('bench_pipeline')
DEFAULT_ENGINE = bench.resolve_engine_name('auto')


def _curve(scale: float) -> list[dict]:
    return [{'keep_ratio': r, 'macs_ratio': r, 'e2e_p50_ms': 11 * scale * r,
             'bare_p50_ms': 10 * scale * r, 'overhead_pct': 10.0, 'overhead_ms': scale * r,
             'speedup': 1 / r} for r in (1.0, 0.5, 0.1)]


def test_quick_fills_what_is_not_given() -> None:
    args = bench.parse_args(['--quick', '--rounds', '7'])
    assert args.rounds == 7 and args.ratios == bench.QUICK['ratios']
    assert args.flood_s == bench.QUICK['flood_s']
    full = bench.parse_args([])
    assert full.rounds == bench.FULL['rounds'] and full.engines == ['torch', 'onnxruntime']


def test_engines_are_resolved_and_the_default_one_is_required(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.parse_args(['--engines', 'auto', DEFAULT_ENGINE]).engines == [DEFAULT_ENGINE]
    other = 'torch' if DEFAULT_ENGINE != 'torch' else 'onnxruntime'
    assert bench.parse_args(['--engines', other, '--skip', 'reaction', 'tracking']).engines \
        == [other]
    with pytest.raises(SystemExit):
        bench.parse_args(['--engines', other])
    assert 'node default engine' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(['--flood-ratios', '0.7', '--ratios', '1', '0.5', '0.1'])


def test_metrics_per_engine_relative_and_absolute() -> None:
    flood = {'keep_ratio': 1.0, 'processed_hz': 50.0, 'published_hz': 500.0, 'e2e_p50_ms': 20.0,
             'e2e_p95_ms': 30.0, 'answer_p50_ms': 2.0, 'answer_max_ms': 5.0}
    details = {'engines': {'torch': {'sweep': {'curve': _curve(4.0)}, 'flood': [flood]},
                           'onnxruntime': {'sweep': {'curve': _curve(1.0)}}}}
    rows = {m['name']: m for m in bench.collect_metrics(details)}
    assert rows['onnxruntime: pipeline overhead, r=0.5']['target'] == '< 10 %'
    assert rows['onnxruntime: pipeline overhead (absolute), r=1']['value'] == 1.0
    assert rows['torch: sustainable rate under flood, r=1']['value'] == 50.0
    assert rows['end-to-end speed-up onnxruntime over torch, r=1']['value'] == pytest.approx(4.0)
    assert 'onnxruntime: sustainable rate under flood, r=1' not in rows


def test_help() -> None:
    out = subprocess.run([sys.executable, str(BENCH_DIR / 'bench_pipeline.py'), '--help'],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    assert '--engines' in out and '--quick' in out


@pytest.mark.timeout(420)
def test_quick_smoke_run(tmp_path: Path) -> None:
    """Both engines through real node processes; tracking (three more node starts) skipped."""
    cmd = [sys.executable, str(BENCH_DIR / 'bench_pipeline.py'), '--quick', '--skip', 'tracking',
           '--flood-s', '2', '--results-dir', str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400,
                          env=dict(os.environ, PYTHONUNBUFFERED='1'))
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads((tmp_path / 'bench_pipeline.json').read_text())
    rows = {m['name']: m['value'] for m in doc['metrics']}
    for engine in ('torch', 'onnxruntime'):
        for r in ('1', '0.5'):
            assert rows[f'{engine}: end-to-end via node p50, r={r}'] > 0
            assert rows[f'{engine}: pipeline overhead (absolute), r={r}'] is not None
        assert rows[f'{engine}: sustainable rate under flood, r=1'] > 0
        assert rows[f'{engine}: parameter answer under flood max'] > 0
    assert rows['reaction budget->operating point p95'] > 0
    # a frame runs at the new point only once the node has it: after it, never before
    assert rows['budget changes with no classification at the new point within 2 s'] == 0
    assert rows['budget->first classification at the new point p50'] \
        > rows['reaction budget->operating point p50']
    assert (tmp_path / 'bench_pipeline.png').stat().st_size > 0
    assert 'QUICK' in doc['notes'][0]
