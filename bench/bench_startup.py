"""Benchmark: time from starting the perception node to its first classification, cold and warm.

The node runs as its own process with ``autostart: true`` (what ``perception.launch.py`` does),
the reference weights and an ONNX cache directory of its own: empty for the cold start (the
first ratio's graph is exported before activation, the other prebuilt ratios afterwards in the
background), the one the cold start filled for the warm start. A probe in this process publishes
a CIFAR-10-sized frame every 0.2 s from the moment the node is started and records when the first
result arrives on ``~/frame_info``, and, from the node's first answer on, how long each
``get_state`` took to answer while it configured and activated.

Writes bench/results/bench_startup.json. Absolute times move with the machine's load (recorded in
the file); the cold/warm ratio and the answer times are the figures that matter.

Usage: .venv/bin/python bench/bench_startup.py [--runs 2]
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import metric, print_metrics, write_result  # noqa: E402

from pls_perception import paths  # noqa: E402
from pls_perception.testing.graph_probe import (PERCEPTION_MODULE, NodeProcess,  # noqa: E402
                                                PipelineProbe, probe_session)

FRAME_PERIOD_S = 0.2
TIMEOUT_S = 600.0


def time_to_first_classification(probe: PipelineProbe, cache: Path, log_dir: Path
                                 ) -> tuple[float, list[float]]:
    """(seconds from process start to the first result, get_state answer times in s)."""
    start = len(probe.classifications)
    frame = np.zeros((32, 32, 3), np.uint8)
    answers: list[float] = []
    stop = threading.Event()

    def ask_state() -> None:
        # Timed from the first answer on: before it the process is still importing and the
        # service being discovered, which is not the node holding its answers.
        probe.wait_until_answering(TIMEOUT_S)
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                probe.lifecycle_state(timeout_s=5.0)
                answers.append(time.perf_counter() - t0)
            except TimeoutError:
                answers.append(math.inf)   # no answer within 5 s
            stop.wait(0.2)

    t0 = time.perf_counter()
    node = NodeProcess(PERCEPTION_MODULE, {
        'weights': str(paths.find_reference_weights()), 'dvfs_backend': 'simulated',
        'autostart': True, 'onnx_cache_dir': str(cache)},
        log_dir=log_dir)
    asker = threading.Thread(target=ask_state, daemon=True)
    asker.start()
    try:
        while time.perf_counter() - t0 < TIMEOUT_S:
            probe.publish_frame(frame)
            if probe.classifications.wait_for(lambda r: True, FRAME_PERIOD_S, start) is not None:
                return time.perf_counter() - t0, list(answers)
            if not node.alive():
                raise RuntimeError(f'perception node exited:\n{node.tail(20)}')
        raise TimeoutError(f'no classification within {TIMEOUT_S:g} s:\n{node.tail(20)}')
    finally:
        stop.set()
        asker.join(10.0)
        node.stop(30.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--runs', type=int, default=2, help='cold+warm pairs (default 2)')
    args = parser.parse_args(argv)
    cold, warm, slowest, counts = [], [], [], []
    with probe_session() as probe, tempfile.TemporaryDirectory(prefix='pls_startup_') as tmp:
        for run in tqdm(range(args.runs), desc='cold+warm starts', unit='pair'):
            cache = Path(tmp) / f'cache_{run}'
            for label, samples in (('cold', cold), ('warm', warm)):
                seconds, answers = time_to_first_classification(
                    probe, cache, Path(tmp) / f'logs_{run}_{label}')
                samples.append(seconds)
                slowest.append(max(answers, default=math.nan))
                counts.append(len(answers))
                tqdm.write(f'{label}: first classification after {seconds:.1f} s, slowest of '
                           f'{len(answers)} get_state answers {slowest[-1] * 1e3:.0f} ms')
    metrics = [
        metric('cold start to first classification (median)', statistics.median(cold), 's',
               target_max=20.0),
        metric('warm start to first classification (median)', statistics.median(warm), 's'),
        metric('cold / warm start', statistics.median(cold) / statistics.median(warm), 'x'),
        metric('slowest get_state answer during start-up',
               max((x for x in slowest if not math.isnan(x)), default=math.nan) * 1e3, 'ms',
               target_max=500.0),
    ]
    path = write_result('bench_startup', metrics, details={
        'cold_s': cold, 'warm_s': warm, 'slowest_get_state_s': slowest,
        'get_state_answers': counts,
        'frame_period_s': FRAME_PERIOD_S})
    print_metrics(metrics, path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
