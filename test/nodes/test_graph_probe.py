"""The probe harness itself: the parts the load/fault tests and benchmarks rely on blindly."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from pls_perception.testing.graph_probe import (NodeProcess, Received, ReceivedLog, make_image,
                                                probe_session, rss_mb, stamp_ns_of)


def test_make_image_round_trips_pixels_and_stamp() -> None:
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    msg = make_image(rgb, 3_000_000_123)
    assert (msg.height, msg.width, msg.step, msg.encoding) == (4, 5, 15, 'rgb8')
    assert bytes(msg.data) == rgb.tobytes()
    assert stamp_ns_of({'stamp': {'sec': msg.header.stamp.sec,
                                  'nanosec': msg.header.stamp.nanosec}}) == 3_000_000_123
    with pytest.raises(ValueError, match='HxWx3 uint8'):
        make_image(rgb[:, :, :2], 0)


def test_received_log_waits_from_start_index_and_times_out() -> None:
    log = ReceivedLog()
    log.add(1)
    assert log.wait_for(lambda r: r.data == 1, 0.0).data == 1
    assert log.wait_for(lambda r: r.data == 1, 0.05, start=1) is None
    threading.Timer(0.1, log.add, args=(2,)).start()
    t0 = time.monotonic()
    found = log.wait_for(lambda r: r.data == 2, 5.0, start=1)
    assert isinstance(found, Received) and found.data == 2 and time.monotonic() - t0 < 4.0
    assert len(log) == 2


def test_node_status_matches_plain_and_fully_qualified_names() -> None:
    array = DiagnosticArray(status=[
        DiagnosticStatus(name='/pls_perception_node: inference',
                         values=[KeyValue(key='frames_dropped', value='3')]),
        DiagnosticStatus(name='dvfs_manager: operating point',
                         values=[KeyValue(key='budgets_rejected', value='1')]),
        DiagnosticStatus(name='pls_perception_node_other: x', values=[]),
    ])
    with probe_session() as probe:
        received = Received(0.0, array)
        assert probe.node_status(received) == {'frames_dropped': '3'}
        assert probe.node_status(received, 'dvfs_manager') == {'budgets_rejected': '1'}
        assert probe.node_status(received, 'absent') == {}


def test_node_process_logs_and_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / 'sleeper.py').write_text(
        'import sys, time\nprint("up", sys.argv[1:], flush=True)\ntime.sleep(60)\n')
    monkeypatch.setenv('PYTHONPATH', str(tmp_path))
    proc = NodeProcess('sleeper', {'a': 1}, log_dir=tmp_path)
    deadline = time.monotonic() + 30.0
    while 'up' not in proc.log_text() and proc.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.alive() and rss_mb(proc.pid) > 1.0, proc.log_text()
    assert '--params-file' in proc.log_text()
    assert proc.stop(timeout_s=5.0) != 0 and not proc.alive()
