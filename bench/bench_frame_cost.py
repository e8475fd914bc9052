"""Benchmark: what one camera frame costs to convert and preprocess, by size and transport.

For 32x32, 1920x1080, 4000x3000 and the largest frame ``max_image_pixels`` accepts by default
(4096x4096), as raw rgb8 and as PNG and JPEG: the peak growth of the resident set and the median
time of the node's path (``image_to_rgb`` / ``compressed_to_rgb`` with the preprocessing's
reduction, then ``to_array``), and of ``to_array`` on the full-size zero-copy view of a raw frame
(what callers that convert at full size, like bag replay, pay). Every case runs in a fresh process
so that one case's peak does not hide another's; the frame is built before the measurement, so
the peak is what converting it adds. Frames are a textured scene (smooth colours, grey-level noise
of sigma 8), which compresses like a camera image.

The figures behind the default ``max_image_pixels``: raw and JPEG frames cost about the same at
any size (box-filtered from the message buffer, JPEG decoded at reduced scale), a PNG costs its
decoded bitmap (4 bytes per pixel), so the limit bounds the PNG case.

Writes bench/results/bench_frame_cost.json. Memory figures hold on a busy machine; times move
with the load.

Usage: .venv/bin/python bench/bench_frame_cost.py [--preprocessing cifar10|imagenet]
       [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import metric, print_metrics, write_result  # noqa: E402

SIZES = {'32x32': (32, 32), '1080p': (1080, 1920), '4000x3000': (3000, 4000),
         'largest accepted': (4096, 4096)}
# (transport, node path?): the node converts with reduction; full-size callers do not.
CASES = (('rgb8', True), ('rgb8', False), ('PNG', True), ('JPEG', True))
# A raw or JPEG frame costs the reduced frame plus fixed overhead; this is far above both.
RAW_TARGET_MB = 32.0


def _textured(height: int, width: int) -> Any:
    """A smooth random scene plus noise (uint8 HxWx3), built in row bands to stay small."""
    import numpy as np
    rng = np.random.default_rng(height * 7919 + width)
    coarse = rng.uniform(0, 255, (height // 64 + 2, width // 64 + 2, 3))
    rows = np.linspace(0, coarse.shape[0] - 1.001, height)
    cols = np.linspace(0, coarse.shape[1] - 1.001, width)
    c0, cf = cols.astype(int), (cols % 1)[:, None]
    out = np.empty((height, width, 3), np.uint8)
    for r, y in enumerate(rows):
        y0, fy = int(y), y % 1
        line = coarse[y0] * (1 - fy) + coarse[y0 + 1] * fy
        values = line[c0] * (1 - cf) + line[c0 + 1] * cf + rng.normal(0, 8, (width, 3))
        out[r] = np.clip(values, 0, 255)
    return out


def _status(key: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def measure(case: dict[str, Any]) -> dict[str, Any]:
    """In this (fresh) process: peak RSS growth and median time of one case."""
    import gc
    import io
    import time

    from PIL import Image

    from pls_perception.io.image_conversion import compressed_to_rgb, image_to_rgb
    from pls_perception.skipping.preprocessing import CIFAR10_PREPROCESSING, IMAGENET_PREPROCESSING

    prep = {'cifar10': CIFAR10_PREPROCESSING, 'imagenet': IMAGENET_PREPROCESSING}[case['prep']]
    height, width = case['height'], case['width']
    rgb = _textured(height, width)
    reduction = {'reduction': prep.reduction} if case['node_path'] else {}
    if case['transport'] == 'rgb8':
        data = rgb.tobytes()

        def convert() -> Any:
            return image_to_rgb('rgb8', height, width, width * 3, 0, data, **reduction)
    else:
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, case['transport'], **(
            {'quality': 90} if case['transport'] == 'JPEG' else {}))
        data = buffer.getvalue()

        def convert() -> Any:
            return compressed_to_rgb(case['transport'].lower(), data, **reduction)
    del rgb
    gc.collect()
    # The peak of the first run, lazy one-time allocations included: after a warm-up the
    # allocator would serve the same sizes from memory it kept, hiding the cost.
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')                                   # reset the peak (VmHWM)
    before = _status('VmRSS')
    prep.to_array(convert())
    peak_mb = (_status('VmHWM') - before) / 2**20
    times = []
    for _ in range(case['repeats']):
        start = time.perf_counter()
        prep.to_array(convert())
        times.append(time.perf_counter() - start)
    return {'peak_mb': peak_mb, 'median_ms': sorted(times)[len(times) // 2] * 1e3,
            'input_bytes': len(data)}


def run_case(case: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """``measure(case)`` in a fresh interpreter."""
    proc = subprocess.run([sys.executable, __file__, '--child', json.dumps(case)],
                          capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f'case {case} failed: {proc.stderr[-2000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--preprocessing', choices=('cifar10', 'imagenet'), default='cifar10',
                        help="the model's input recipe (cifar10: the reference weights)")
    parser.add_argument('--repeats', type=int, default=5, help='timed runs per case')
    parser.add_argument('--timeout-s', type=float, default=600, help='per case')
    parser.add_argument('--child', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return
    from pls_perception.io.image_conversion import DEFAULT_MAX_PIXELS
    assert SIZES['largest accepted'][0] * SIZES['largest accepted'][1] == DEFAULT_MAX_PIXELS

    rows, metrics = [], []
    for label, (height, width) in SIZES.items():
        for transport, node_path in CASES:
            case = {'prep': args.preprocessing, 'height': height, 'width': width,
                    'transport': transport, 'node_path': node_path, 'repeats': args.repeats}
            result = run_case(case, args.timeout_s)
            path = 'node' if node_path else 'full-size view'
            rows.append({**case, 'size': label, **result})
            name = f'{label} {transport} ({path})'
            bound = (RAW_TARGET_MB if transport != 'PNG'
                     else height * width * 4 / 2**20 + RAW_TARGET_MB)
            metrics.append(metric(f'{name}: peak RSS increase', round(result['peak_mb'], 1),
                                  'MB', target_max=bound))
            metrics.append(metric(f'{name}: time, median', round(result['median_ms'], 2), 'ms'))
            print(f"{name}: +{result['peak_mb']:.1f} MB, {result['median_ms']:.1f} ms",
                  flush=True)
    notes = [f'preprocessing {args.preprocessing}; {args.repeats} timed runs per case, each '
             'case in a fresh process',
             'PNG target: its decoded bitmap (4 B/pixel) + the raw target; raw and JPEG: '
             f'{RAW_TARGET_MB:g} MB at any size',
             'times depend on the machine load (see machine.load_avg_*); memory does not']
    path = write_result('bench_frame_cost', metrics, notes=notes, details={'cases': rows})
    print_metrics(metrics, path)


if __name__ == '__main__':
    main()
