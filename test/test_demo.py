"""pls-demo: the summary/plot helpers, the input fallbacks, and a real run of the whole graph.

The real run uses the no-shared-data path (random weights on generated frames: the riskier one
and the one a user's machine takes); the shared-data graph is exercised by
test/nodes/test_dvfs_manager_node.py::test_whole_graph_budget_step_loose_tight_loose.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pls_perception.operating_points.budget_schedule import BudgetSchedule
from pls_perception.tools import demo
from pls_perception.tools.demo import Frame, generate_frames, summarize, write_outputs


def _frame(t_s: float, budget_ms: float, latency_ms: float, freq_mhz: float = 499.2) -> Frame:
    return Frame(t_s=t_s, budget_ms=budget_ms, keep_ratio=0.7, freq_mhz=freq_mhz,
                 latency_ms=latency_ms, deadline_miss=latency_ms > budget_ms,
                 energy_mj=latency_ms * 0.5, label='cat', score=0.5)


FRAMES = ([_frame(i * 0.1, 400.0, 150.0) for i in range(10)]
          + [_frame(1.0 + i * 0.1, 100.0, lat, 1510.4)
             for i, lat in enumerate([150.0, 140.0, 60.0, 55.0, 120.0, 50.0])])


def test_summarize_one_row_per_budget_step() -> None:
    rows = summarize(FRAMES, BudgetSchedule('0:400,1:100'), settle_frames=2)
    assert [r['budget_ms'] for r in rows] == [400.0, 100.0]
    loose, tight = rows
    assert loose['frames'] == 10 and loose['deadline_misses'] == 0
    assert loose['frames_to_meet_budget'] == 0
    assert tight['frames'] == 6 and tight['deadline_misses'] == 3
    assert tight['misses_after_settling'] == 1 and tight['frames_to_meet_budget'] == 2
    assert tight['freq_mhz_median'] == 1510.4
    assert tight['energy_mj_per_frame'] == pytest.approx(0.5 * sum(
        f.latency_ms for f in FRAMES[10:]) / 6, abs=1e-3)
    assert summarize([], BudgetSchedule('0:1'), 2) == []


def test_write_outputs(tmp_path: Path) -> None:
    rows = summarize(FRAMES, BudgetSchedule('0:400,1:100'), settle_frames=2)
    meta = {'weights_label': 'RANDOM weights', 'dvfs_backend': 'simulated',
            'profile': 'p.yaml'}
    written = write_outputs(tmp_path / 'o', FRAMES, rows, meta)
    with written['timeline_csv'].open() as fh:
        assert len(list(csv.DictReader(fh))) == len(FRAMES)
    assert json.loads(written['summary_json'].read_text())['steps'] == rows
    assert written['timeline_png'].read_bytes()[:4] == b'\x89PNG'
    assert written['summary_csv'].read_text().startswith('start_s,')


def test_generate_frames_and_fallback_inputs(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image
    folder = generate_frames(tmp_path / 'f', count=3)
    images = sorted(folder.iterdir())
    assert len(images) == 3 and Image.open(images[0]).size == (32, 32)
    monkeypatch.setenv('PLS_SHARED_DIR', str(tmp_path / 'no_shared'))
    args = argparse.Namespace(weights='', images='')
    weights, source, meaningful = demo.resolve_inputs(args, tmp_path / 'work')
    assert weights == 'random' and not meaningful
    assert len(list(Path(source).glob('*.png'))) == demo.GENERATED_FRAMES
    args = argparse.Namespace(weights='w.pt', images=str(folder))
    assert demo.resolve_inputs(args, tmp_path / 'work') == ('w.pt', str(folder), True)


@pytest.mark.parametrize('argv', [['--duration', '0'], ['--schedule', '5:10'],
                                  ['--schedule', '0:-1']])
def test_bad_arguments_exit_with_usage(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        demo.parse_args(argv)
    assert info.value.code == 2


@pytest.mark.timeout(240)
def test_demo_runs_without_shared_data_non_interactively(tmp_path: Path) -> None:
    out = tmp_path / 'out'
    env = dict(os.environ, PLS_SHARED_DIR=str(tmp_path / 'no_shared'))
    proc = subprocess.run(
        [sys.executable, '-m', 'pls_perception.tools.demo', '--duration', '10',
         '--schedule', '0:5000,5:2000', '--out', str(out)],
        capture_output=True, text=True, timeout=220, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'labels are meaningless' in proc.stdout
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['weights'] == 'random' and not summary['meaningful_labels']
    assert summary['frames'] > 0
    assert [s['budget_ms'] for s in summary['steps']][:1] == [5000.0]
    assert (out / 'timeline.png').stat().st_size > 10_000
    for name in ('perception_node', 'dvfs_manager', 'image_source', 'budget_schedule'):
        assert (out / 'logs' / f'{name}.log').is_file()
    assert 'applied keep_ratio' in (out / 'logs' / 'dvfs_manager.log').read_text()
