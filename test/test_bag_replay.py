"""Replay a 500-image CIFAR-10 bag through the running graph and score the recording.

Real files, real DDS, separate processes: the perception node, the DVFS manager and the budget
schedule run as their executables; ``pls-bag record --source <bag>`` replays the bag at its
recorded rate while recording the results (typed ``~/classification`` and ``~/label_info`` where
vision_msgs is installed, ``~/frame_info``), ``~/operating_point`` and ``/diagnostics``.
Checks: every classified frame has exactly the label the offline computation (same engine, same
image, same keep ratio) gives; the accuracy therefore equals the offline accuracy of those
frames; every frame the node did not classify is one it counted as dropped (reliable QoS: no
transport loss); the operating points follow the budget schedule and the node runs them.

Rate: the manager keeps each frame within the budget in force, so one frame per budget of the
loosest step (with 20 % margin) is a rate the node sustains. The budgets are tight enough that
the manager has to skip layers (accuracy_loss_max 1.0 lets it), which keeps the replay of 500
ResNet-152 frames on a contended 2-core machine near one minute.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pls_perception import paths
from pls_perception.io import bag_report, bags
from pls_perception.tools import bag_cli

pytestmark = [
    pytest.mark.timeout(420),
    pytest.mark.skipif(not (paths.cifar10_tar().is_file() and paths.reference_weights().is_file()),
                       reason='needs ../shared (CIFAR-10 tar and reference weights)'),
]

graph_probe = pytest.importorskip('pls_perception.testing.graph_probe')

PER_CLASS = 50                       # 500 frames
BUDGET_HI_MS, BUDGET_LO_MS = 100.0, 50.0
RATE_HZ = 0.8 * 1000.0 / BUDGET_HI_MS
SWITCH_S = 0.5 * 10 * PER_CLASS / RATE_HZ
PERCEPTION = {'weights': str(paths.reference_weights()), 'dvfs_backend': 'simulated',
              'qos_reliability': 'reliable', 'qos_depth': 100, 'num_threads': 1,
              'autostart': True}
MANAGER = {'accuracy_loss_max': 1.0}
SCHEDULE = {'schedule': f'0:{BUDGET_HI_MS:g},{SWITCH_S:g}:{BUDGET_LO_MS:g}',
            'publish_rate_hz': 2.0}


def _offline_labels(bag: Path, rows: list[dict]) -> dict[int, int]:
    """class_id per stamp from the same engine outside ROS, at each frame's keep ratio."""
    import torch

    from pls_perception.engines import make_engine
    from pls_perception.skipping.weights import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loaded = load_model(str(paths.reference_weights()))
        engine = make_engine('torch', loaded)
        rgb = {f.stamp_ns: np.array(f.rgb()) for f in bags.read_image_frames(bag)}
        labels: dict[int, int] = {}
        for ratio in sorted({r['keep_ratio'] for r in rows}):
            engine.set_keep_ratio(ratio)
            stamps = [r['stamp_ns'] for r in rows if r['keep_ratio'] == ratio]
            for i in range(0, len(stamps), 50):
                chunk = stamps[i:i + 50]
                batch = loaded.preprocessing.to_tensor(np.stack([rgb[s] for s in chunk]))
                labels.update(zip(chunk, engine.infer(batch.numpy()).argmax(1).tolist()))
            # batched and single-image GEMMs round differently: settle disagreements with the
            # node's own computation shape (one image per inference)
            for row in rows:
                if row['keep_ratio'] == ratio and labels[row['stamp_ns']] != row['class_id']:
                    single = loaded.preprocessing.to_tensor(rgb[row['stamp_ns']]).numpy()
                    labels[row['stamp_ns']] = int(engine.infer(single).argmax(1)[0])
        engine.close()
        return labels
    finally:
        torch.set_num_threads(threads)


def test_replay_matches_offline_and_follows_schedule(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    bag = tmp_path / 'cifar10_500'
    assert bag_cli.main(['make', '--per-class', str(PER_CLASS), '-o', str(bag),
                         '--storage', 'mcap', '--rate-hz', f'{RATE_HZ:g}']) == 0
    truth = bags.read_labels(bag)
    assert len(truth.stamps_ns) == 10 * PER_CLASS

    record = tmp_path / 'record'
    with graph_probe.running_node(graph_probe.PERCEPTION_MODULE, PERCEPTION, tmp_path), \
            graph_probe.running_node(graph_probe.MANAGER_MODULE, MANAGER, tmp_path), \
            graph_probe.running_node('pls_perception.nodes.budget_schedule_node', SCHEDULE,
                                     tmp_path):
        result = subprocess.run(
            [sys.executable, '-m', 'pls_perception.tools.bag_cli', 'record', '-o', str(record),
             '--source', str(bag), '--wait-timeout-s', '150', '--idle-s', '5'],
            capture_output=True, text=True, timeout=360)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary['frames_published'] == len(truth.stamps_ns)
    check_replay(record, bag, tmp_path / 'report')


def check_replay(record: Path, bag: Path, out: Path) -> None:
    """The checks on a recording of a replay of ``bag`` (report files go to ``out``)."""
    truth = bags.read_labels(bag)
    assert bag_cli.main(['report', str(record), str(bag), '--output-dir', str(out)]) == 0
    assert (out / 'report.png').stat().st_size > 1000
    recording = bag_report.read_recording(record)
    report = bag_report.compute_report(recording, truth)
    assert report == {**json.loads((out / 'report.json').read_text()),
                      'frames': report['frames']}
    rows = report['frames']
    assert report['unknown_stamps'] == 0 and report['duplicates'] == 0
    # With vision_msgs the report reads every result from the recorded typed messages, whose
    # class ids the recorded label_info names as the ground truth does; else from frame_info.
    typed = graph_probe.load_vision_msgs()[0] is not None
    assert {r['source'] for r in rows} == {'typed' if typed else 'frame_info'}
    assert report['label_info_matches_ground_truth'] is (True if typed else None)

    # Nothing lost but the counted drops: the node's last counters account for every frame.
    counters = max((c for _, c in recording.classifications),
                   key=lambda c: c['frames']['processed'])['frames']
    assert counters['received'] == len(truth.stamps_ns)
    assert counters['rejected'] == 0
    assert counters['processed'] == report['frames_classified'] == len(rows)
    assert counters['dropped'] == report['frames_dropped']
    # at the sustainable rate drops are the exception (scheduling hiccups), not the rule
    assert report['frames_dropped'] <= 0.1 * len(truth.stamps_ns)

    # Every classified frame equals the offline result; hence so does the accuracy.
    offline = _offline_labels(bag, rows)
    mismatches = [(r['stamp_ns'], r['keep_ratio'], r['class_id'], offline[r['stamp_ns']])
                  for r in rows if r['class_id'] != offline[r['stamp_ns']]]
    assert not mismatches
    offline_accuracy = np.mean([offline[r['stamp_ns']] == r['label'] for r in rows])
    assert report['accuracy_classified'] == pytest.approx(offline_accuracy)

    # Operating points follow the schedule: the budgets in recorded order are HI..., then LO...
    points = sorted(recording.operating_points, key=lambda item: item[0])
    budgets = [p['budget_ms'] for _, p in points]
    steps = [b for i, b in enumerate(budgets) if i == 0 or b != budgets[i - 1]]
    assert steps == [BUDGET_HI_MS, BUDGET_LO_MS]
    # every point chosen meets the budget in force when it was chosen (by the manager's
    # corrected prediction), or says it cannot
    for _, p in points:
        assert p['latency_ms'] <= p['budget_ms'] or not p['feasible'], p
    # ... and the node runs them: each frame's setpoint was published before it was classified
    # (or is the node's start setpoint, before the manager's first update arrived)
    for t, c in recording.classifications:
        # (the ratio that ran may lag the requested one while its graph is built)
        setpoint = (c['keep_ratio_requested'], c['frequency_requested_mhz'])
        offered = {(p['keep_ratio'], p['freq_mhz']) for tp, p in points if tp <= t}
        assert setpoint in offered | {(1.0, 0.0)}, (setpoint, sorted(offered))
