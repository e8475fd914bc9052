"""A perception node answers its services while it configures, on a cold graph cache too.

The node runs as its own process with the reference weights and an empty ONNX cache, so configure
really loads the network and exports a graph; meanwhile the test asks for the lifecycle state and
a parameter again and again, and records how long each answer took.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lifecycle_msgs.msg import Transition

from pls_perception import paths
from pls_perception.testing.graph_probe import (PERCEPTION_MODULE, NodeProcess, PipelineProbe,
                                                probe_session, torch_loaded)

# A configure that held the executor would hold answers for the whole load and export (10 s or
# more). The 0.5 s target is a benchmark's (bench/bench_startup.py: slowest answer < 0.1 s idle);
# here the limit leaves room for a loaded CI machine.
ANSWER_LIMIT_S = 3.0
pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(not paths.reference_weights().is_file(),
                       reason=f'reference weights not found at {paths.reference_weights()}'),
]


@pytest.fixture
def probe() -> Iterator[PipelineProbe]:
    with probe_session() as p:
        yield p


def _parameters(cache: Path, **extra: Any) -> dict[str, Any]:
    return {'weights': str(paths.reference_weights()), 'dvfs_backend': 'simulated',
            'onnx_cache_dir': str(cache), 'num_threads': 1, **extra}


def _poll_answers(probe: PipelineProbe, until: threading.Event,
                  timeout_s: float) -> list[tuple[str, float]]:
    """(state, seconds to answer) of get_state and of get_parameters, until ``until`` is set."""
    answers: list[tuple[str, float]] = []
    deadline = time.monotonic() + timeout_s
    while not until.is_set() and time.monotonic() < deadline:
        t0 = time.perf_counter()
        state = probe.lifecycle_state(timeout_s=5.0)
        t1 = time.perf_counter()
        probe.get_parameters(['keep_ratio'], timeout_s=5.0)
        answers += [(state, t1 - t0), (f'{state} (get_parameters)', time.perf_counter() - t1)]
        time.sleep(0.05)
    return answers


def _slow(answers: list[tuple[str, float]]) -> list[tuple[str, float]]:
    return [(s, round(t, 3)) for s, t in answers if t >= ANSWER_LIMIT_S]


def test_services_answer_during_a_cold_configure(probe: PipelineProbe, tmp_path: Path) -> None:
    node = NodeProcess(PERCEPTION_MODULE, _parameters(tmp_path / 'cold_cache'),
                       log_dir=tmp_path)
    try:
        probe.wait_until_answering(120.0)
        done = threading.Event()
        result: list[bool] = []

        def configure() -> None:
            try:
                result.append(probe.transition(Transition.TRANSITION_CONFIGURE, 400.0))
            finally:
                done.set()
        threading.Thread(target=configure, daemon=True).start()
        answers = _poll_answers(probe, done, 400.0)
        assert result == [True], node.tail(30)
        states = {s for s, _ in answers}
        assert 'configuring' in states, answers[:5]
        assert not _slow(answers), f'answers slower than {ANSWER_LIMIT_S} s: {_slow(answers)}'
        print(f'\n{len(answers)} answers during a cold configure, slowest '
              f'{max(t for _, t in answers) * 1e3:.0f} ms')
        # Only keep_ratio's graph was built before configure returned; the rest follow.
        assert probe.transition(Transition.TRANSITION_ACTIVATE, 60.0)
        status = probe.diagnostics.wait_for(
            lambda r: probe.node_status(r).get('engine_background_builds', 'none') != 'none',
            30.0)
        assert status is not None, 'no background build reported after a cold configure'
    finally:
        assert node.stop(30.0) == 0, node.tail(30)


def test_autostart_answers_from_the_first_moment_and_classifies(probe: PipelineProbe,
                                                                tmp_path: Path) -> None:
    node = NodeProcess(PERCEPTION_MODULE,
                       _parameters(tmp_path / 'cold_cache', autostart=True), log_dir=tmp_path)
    try:
        first = probe.wait_until_answering(120.0)
        active = threading.Event()
        answers: list[tuple[str, float]] = []

        def watch() -> None:
            while not active.is_set():
                answers.extend(_poll_answers(probe, active, 0.5))
                if answers and answers[-2][0] == 'active':
                    active.set()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        watcher.join(400.0)
        assert active.is_set(), f'not active after 400 s; states {answers[-3:]}\n{node.tail(30)}'
        assert first in ('unconfigured', 'configuring', 'inactive', 'activating', 'active')
        assert not _slow(answers), f'answers slower than {ANSWER_LIMIT_S} s: {_slow(answers)}'
        _, classification = probe.round_trip(np.zeros((32, 32, 3), np.uint8), timeout_s=60.0)
        assert classification['keep_ratio'] == 1.0
    finally:
        assert node.stop(30.0) == 0, node.tail(30)


def test_a_warm_start_serves_cached_graphs_without_torch(probe: PipelineProbe,
                                                         tmp_path: Path) -> None:
    """A second start on the same cache loads no PyTorch until a graph must be built."""
    params = _parameters(tmp_path / 'cache', autostart=True, prebuild_ratios=[1.0])
    frame = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
    labels = []
    for start in ('cold', 'warm'):
        node = NodeProcess(PERCEPTION_MODULE, params, log_dir=tmp_path, name=start)
        try:
            probe.wait_until_answering(120.0)
            deadline = time.monotonic() + 300.0
            while probe.lifecycle_state() != 'active' and time.monotonic() < deadline:
                time.sleep(0.1)
            _, classification = probe.round_trip(frame, timeout_s=60.0)
            labels.append(classification['label'])
            assert torch_loaded(node.pid) == (start == 'cold'), node.tail(30)
            if start == 'warm':
                _wait_pytorch_diagnostic(probe, 'not imported')
                # keep ratio 0.5 has no cached graph: building it loads the model, in torch
                assert probe.set_parameters({'keep_ratio': 0.5}) == [(True, '')]
                probe.wait_for_graphs(300.0)
                _, classification = probe.round_trip(frame, timeout_s=60.0)
                assert classification['keep_ratio'] == 0.5
                assert torch_loaded(node.pid), node.tail(30)
                _wait_pytorch_diagnostic(probe, 'imported')
        finally:
            assert node.stop(30.0) == 0, node.tail(30)
    assert labels[0] == labels[1]


def _wait_pytorch_diagnostic(probe: PipelineProbe, value: str) -> None:
    start = len(probe.diagnostics)
    found = probe.diagnostics.wait_for(
        lambda r: probe.node_status(r).get('pytorch') == value, 10.0, start)
    assert found is not None, f'/diagnostics never said pytorch: {value}'
