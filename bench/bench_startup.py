"""Benchmark: time from starting the perception node to its first classification, cold and
warm, fp32 and int8; whether PyTorch was imported, and the node's memory with every prebuilt
ratio loaded.

The node runs as its own process with ``autostart: true`` (what ``perception.launch.py`` does),
the reference weights and an ONNX cache directory per precision: empty for the cold start (the
first ratio's graph is exported before activation, the other prebuilt ratios afterwards in the
background), the one the cold start filled for the warm starts, which serve the cached graphs
without PyTorch (engines/serving_record.py). A probe in this process publishes a CIFAR-10-sized
frame every 0.05 s from the moment the node is started and records when the first result
arrives on ``~/frame_info``, and, from the node's first answer on, how long each ``get_state``
took to answer while it configured and activated (requests not answered within 5 s are counted
apart). Once the node reports no graph building, its
resident memory (VmRSS) is read from /proc, and whether ``libtorch`` is mapped into it.

Writes bench/results/bench_startup.json. Absolute times move with the machine's load (recorded in
the file).

Usage: .venv/bin/python bench/bench_startup.py [--warm-runs 5] [--precisions fp32 int8]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import metric, print_metrics, write_result  # noqa: E402

from pls_perception import paths  # noqa: E402
from pls_perception.testing.graph_probe import (PERCEPTION_MODULE, NodeProcess,  # noqa: E402
                                                PipelineProbe, probe_session, rss_mb,
                                                torch_loaded)

FRAME_PERIOD_S = 0.05
TIMEOUT_S = 900.0
# issue #14's targets: warm start, and steady-state memory per precision
WARM_START_TARGET_S = 3.0
RSS_TARGET_MB = {'fp32': 400.0, 'int8': 250.0}


@dataclass
class Start:
    """One start of the node: to first classification, answers meanwhile, then at rest."""

    seconds: float
    answers: list[float]
    unanswered: int
    torch_at_first: bool
    rss_mb: float
    torch_at_rest: bool


def start_node(probe: PipelineProbe, cache: Path, log_dir: Path, precision: str) -> Start:
    """Start a node on ``cache``, time its first classification, wait for its graphs, measure."""
    start = len(probe.classifications)
    frame = np.zeros((32, 32, 3), np.uint8)
    answers: list[float] = []
    unanswered = [0]
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
                unanswered[0] += 1         # counted apart: JSON has no infinity
            stop.wait(0.2)

    t0 = time.perf_counter()
    node = NodeProcess(PERCEPTION_MODULE, {
        'weights': str(paths.find_reference_weights()), 'dvfs_backend': 'simulated',
        'autostart': True, 'onnx_cache_dir': str(cache), 'precision': precision},
        log_dir=log_dir)
    asker = threading.Thread(target=ask_state, daemon=True)
    asker.start()
    try:
        while True:
            probe.publish_frame(frame)
            if probe.classifications.wait_for(lambda r: True, FRAME_PERIOD_S, start) is not None:
                seconds = time.perf_counter() - t0
                break
            if not node.alive():
                raise RuntimeError(f'perception node exited:\n{node.tail(20)}')
            if time.perf_counter() - t0 > TIMEOUT_S:
                raise TimeoutError(f'no classification within {TIMEOUT_S:g} s:\n{node.tail(20)}')
        stop.set()
        torch_at_first = torch_loaded(node.pid)
        probe.wait_for_graphs(TIMEOUT_S)
        for _ in range(5):       # a few frames, so buffers reach their steady size
            probe.round_trip(frame, timeout_s=30.0)
        return Start(seconds, list(answers), unanswered[0], torch_at_first, rss_mb(node.pid),
                     torch_loaded(node.pid))
    finally:
        stop.set()
        asker.join(10.0)
        node.stop(30.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--warm-runs', type=int, default=5,
                        help='warm starts per precision after its cold start (default 5: one '
                             'warm start here takes 1.5-3.5 s, so the median needs a few)')
    parser.add_argument('--precisions', nargs='+', choices=('fp32', 'int8'),
                        default=['fp32', 'int8'], help='engine precisions (default both)')
    args = parser.parse_args(argv)
    starts: dict[str, dict[str, list[Start]]] = {}
    with probe_session() as probe, tempfile.TemporaryDirectory(prefix='pls_startup_') as tmp:
        with tqdm(total=len(args.precisions) * (1 + args.warm_runs), desc='node starts',
                  unit='start') as bar:
            for precision in args.precisions:
                runs = starts[precision] = {'cold': [], 'warm': []}
                for i in range(1 + args.warm_runs):
                    label = 'cold' if i == 0 else 'warm'
                    run = start_node(probe, Path(tmp) / f'cache_{precision}',
                                     Path(tmp) / f'logs_{precision}_{i}', precision)
                    runs[label].append(run)
                    bar.update()
                    tqdm.write(f'{precision} {label}: first classification after '
                               f'{run.seconds:.2f} s (torch imported: {run.torch_at_first}), '
                               f'RSS at rest {run.rss_mb:.0f} MB (torch: {run.torch_at_rest})')
    metrics = []
    for precision, runs in starts.items():
        cold, warm = runs['cold'][0], runs['warm']
        warm_s = statistics.median(r.seconds for r in warm)
        warm_rss = statistics.median(r.rss_mb for r in warm)
        metrics += [
            metric(f'{precision} cold start to first classification', cold.seconds, 's',
                   target_max=20.0 if precision == 'fp32' else None),
            metric(f'{precision} warm start to first classification (median)', warm_s, 's',
                   target_max=WARM_START_TARGET_S),
            metric(f'{precision} cold / warm start', cold.seconds / warm_s, 'x'),
            metric(f'{precision} warm starts that imported torch', sum(
                r.torch_at_rest for r in warm), 'starts', target_max=0.5),
            metric(f'{precision} node RSS at rest, all prebuilt ratios, warm start (median)',
                   warm_rss, 'MB', target_max=RSS_TARGET_MB[precision]),
            metric(f'{precision} node RSS at rest after a cold start (torch loaded)',
                   cold.rss_mb, 'MB'),
        ]
    every = [r for runs in starts.values() for rs in runs.values() for r in rs]
    answers = [a for r in every for a in r.answers]
    metrics += [metric('slowest get_state answer during start-up',
                       max(answers) * 1e3 if answers else None, 'ms', target_max=500.0),
                metric('get_state requests unanswered within 5 s during start-up',
                       sum(r.unanswered for r in every), 'requests', target_max=0.5)]
    path = write_result('bench_startup', metrics, details={
        precision: {label: [asdict(r) for r in rs] for label, rs in runs.items()}
        for precision, runs in starts.items()} | {'frame_period_s': FRAME_PERIOD_S})
    print_metrics(metrics, path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
