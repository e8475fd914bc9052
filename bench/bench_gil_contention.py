"""Benchmark: inference latency while another Python thread keeps the GIL busy, per engine.

Why the perception node runs inference in its own thread next to a single-threaded executor: a
busy Python thread (as a multi-threaded executor is under a fast camera) delays every GIL
re-acquisition. Eager PyTorch re-takes the GIL at every operator; TorchScript and ONNX Runtime run
the whole graph without it. Same network (ResNet-152, 32x32, bs=1, 1 thread), alone and with a
competing thread, interleaved. Writes bench/results/bench_gil_contention.json.

Usage: .venv/bin/python bench/bench_gil_contention.py [--repeats 5] [--weights random]
"""
from __future__ import annotations

import argparse
import threading
from collections.abc import Callable

import torch
from _results import median_time_us, metric, print_metrics, write_result
from tqdm import tqdm

from pls_perception.engines import make_engine
from pls_perception.skipping.weights import load_model

NAME = 'bench_gil_contention'


def busy(stop: threading.Event) -> None:
    """Pure-Python work that only yields the GIL when the interpreter forces it."""
    while not stop.is_set():
        sum(range(1000))


def median_ms(fn: Callable[[], object], repeats: int, contended: bool) -> float:
    stop = threading.Event()
    thread = threading.Thread(target=busy, args=(stop,), daemon=True)
    if contended:
        thread.start()
    try:
        return median_time_us(fn, repeats) / 1e3
    finally:
        stop.set()
        if contended:
            thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeats', type=int, default=5, help='inferences per measurement')
    parser.add_argument('--weights', default='random',
                        help="state_dict path or 'random' (latency does not depend on values)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaded = load_model(args.weights, num_classes=10, allow_random=args.weights == 'random')
    model = loaded.model.eval()
    x = torch.zeros(1, 3, 32, 32)
    with torch.inference_mode():
        traced = torch.jit.freeze(torch.jit.trace(model, x))
        ort = make_engine('onnxruntime', loaded, keep_ratio=1.0, intra_op_threads=1)
        engines = {'torch eager': lambda: model(x), 'torchscript (frozen trace)': lambda: traced(x),
                   'onnxruntime': lambda: ort.infer(x.numpy())}
        details = {}
        for name, fn in tqdm(engines.items(), desc='engines', unit='engine'):
            fn()  # warm-up
            alone = median_ms(fn, args.repeats, contended=False)
            contended = median_ms(fn, args.repeats, contended=True)
            details[name] = {'alone_ms': alone, 'contended_ms': contended,
                             'slowdown': contended / alone}
    ort.close()
    metrics = []
    for name, d in details.items():
        metrics += [metric(f'{name}: bs=1 latency alone', round(d['alone_ms'], 2), 'ms'),
                    metric(f'{name}: with a busy Python thread', round(d['contended_ms'], 2),
                           'ms'),
                    metric(f'{name}: slow-down under GIL contention', round(d['slowdown'], 2),
                           'x')]
    path = write_result(NAME, metrics, details=details, notes=[
        'ResNet-152, 32x32, bs=1, 1 intra-op thread; the competing thread is pure Python',
        f'median of {args.repeats} inferences per cell, random weights unless --weights'])
    print_metrics(metrics, path)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
