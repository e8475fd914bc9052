"""bench/run_all.py: discovers and runs benchmark scripts and tabulates their results."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_modules import load

run_all = load('run_all')
results = load('_results')

GOOD_BENCH = '''
import json, pathlib
out = pathlib.Path(__file__).parent / 'results'
out.mkdir(exist_ok=True)
(out / 'bench_good.json').write_text(json.dumps({
    'benchmark': 'bench_good', 'notes': ['shared machine'],
    'machine': {'cpu_count': 2, 'platform': 'long text'},
    'metrics': [{'name': 'overhead', 'value': 4.25, 'unit': '%', 'target': '< 10 %',
                 'met': True}, {'name': 'max |diff|', 'value': 1e-6, 'unit': ''}]}))
'''


def test_metric_computes_met_from_target() -> None:
    assert results.metric('a', 5.0, 'ms', target_max=10)['met'] is True
    assert results.metric('a', 12.0, 'ms', target_max=10)['met'] is False
    assert results.metric('a', 2.0, 'x', target_min=3)['met'] is False
    assert results.metric('a', None, 'ms', target_max=10)['met'] is False
    row = results.metric('a', 1.0, 'ms')
    assert row['met'] is None and row['target'] is None


def test_write_result_round_trips(tmp_path: Path) -> None:
    path = results.write_result('x', [results.metric('m', 1.5, 'ms', target_max=2)],
                                notes=['n'], machine={'cpu_count': 2}, results_dir=tmp_path)
    doc = json.loads(path.read_text())
    assert doc['benchmark'] == 'x' and doc['metrics'][0]['met'] is True
    assert doc['notes'] == ['n'] and doc['machine'] == {'cpu_count': 2}


def test_runs_every_script_and_writes_summary(tmp_path: Path) -> None:
    (tmp_path / 'bench_good.py').write_text(GOOD_BENCH)
    (tmp_path / 'bench_bad.py').write_text('raise SystemExit(3)\n')
    (tmp_path / '_helper.py').write_text('raise SystemExit("helpers must not run")\n')
    (tmp_path / 'results').mkdir()
    (tmp_path / 'results' / 'foreign.json').write_text(
        json.dumps({'speedup': 2.5, 'x': 'y', 'machine': 'x86_64', 'notes': 'one note'}))

    rc = run_all.main(['--bench-dir', str(tmp_path), '--timeout-s', '60'])

    assert rc == 1  # bench_bad failed
    summary = (tmp_path / 'results' / 'summary.md').read_text()
    assert '| bench_good | overhead | 4.25 | % | < 10 % | yes |' in summary
    assert '| foreign | speedup | 2.5 |' in summary
    assert '| bench_good | max \\|diff\\| | 1e-06 |' in summary
    assert '(cpu_count=2)' in summary and 'long text' not in summary
    assert '**bench_bad failed** (exit code 3)' in summary
    assert 'helpers must not run' not in summary
    assert '  - shared machine' in summary
    assert '- foreign: measured unknown time (x86_64)' in summary and '  - one note' in summary


def test_collect_only_does_not_run(tmp_path: Path) -> None:
    (tmp_path / 'bench_bad.py').write_text('raise SystemExit(3)\n')
    assert run_all.main(['--bench-dir', str(tmp_path), '--collect-only']) == 0
    assert (tmp_path / 'results' / 'summary.md').read_text().startswith('| Benchmark |')


def test_only_rejects_unknown_names(tmp_path: Path) -> None:
    (tmp_path / 'bench_good.py').write_text(GOOD_BENCH)
    with pytest.raises(ValueError, match='nope'):
        run_all.discover(tmp_path, ['nope'])
    assert [p.stem for p in run_all.discover(tmp_path, ['bench_good'])] == ['bench_good']


def test_unreadable_results_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / 'broken.json').write_text('{not json')
    summary = run_all.render_summary(run_all.load_results(tmp_path))
    assert '| broken | (error) | unreadable results file' in summary


def test_committed_summary_is_rendered_from_the_committed_results() -> None:
    """bench/results/summary.md is what run_all makes of the JSON files beside it: a figure
    edited by hand, or a JSON re-measured without --collect-only, fails here."""
    results_dir = Path(run_all.BENCH_DIR) / 'results'
    expected = run_all.render_summary(run_all.load_results(results_dir))
    assert (results_dir / 'summary.md').read_text() == expected, (
        'bench/results/summary.md is stale: run .venv/bin/python bench/run_all.py --collect-only')
