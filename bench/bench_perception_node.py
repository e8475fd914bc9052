"""Benchmark: what the perception node adds around the network, and how it behaves when overloaded.

1. Image conversion: ``image_to_rgb`` on a 1920x1080 frame (zero-copy views for 8-bit encodings,
   a scaling copy for 16-bit) next to a plain ``np.copy`` of the same buffer.
2. Node overhead: end-to-end time from publishing a CIFAR-10 frame to receiving its
   result on ``~/frame_info`` (real rclpy + Fast DDS, in-process), minus the network latency the
   node reports.
3. Overload: frames published faster than inference; the node must drop old frames (newest wins)
   and keep the age of what it classifies bounded instead of queueing.

Writes bench/results/bench_perception_node.json. On a shared machine absolute times move with the
load; the overhead and the drop behaviour are the figures that matter.

Usage: .venv/bin/python bench/bench_perception_node.py [--frames 30] [--overload-s 6]
       [--rate-hz 30] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import median_time_us, metric, print_metrics, write_result  # noqa: E402

os.environ.setdefault('ROS_DOMAIN_ID', str(61 + os.getpid() % 9))

import rclpy  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from pls_perception.io.datasets import load_cifar10  # noqa: E402
from pls_perception.io.image_conversion import image_to_rgb  # noqa: E402
from pls_perception.nodes.perception_node import PerceptionNode  # noqa: E402


def bench_conversion(repeats: int) -> dict[str, float]:
    height, width = 1080, 1920
    rgb8 = np.random.default_rng(0).integers(0, 256, height * width * 3, dtype=np.uint8).tobytes()
    mono16 = np.random.default_rng(1).integers(0, 65536, height * width, dtype=np.uint16)
    return {
        'rgb8_us': median_time_us(lambda: image_to_rgb('rgb8', height, width, width * 3, 0, rgb8),
                           repeats),
        'bgr8_us': median_time_us(lambda: image_to_rgb('bgr8', height, width, width * 3, 0, rgb8),
                           repeats),
        'mono16_us': median_time_us(lambda: image_to_rgb('mono16', height, width, width * 2, 0,
                                                  mono16.tobytes()), repeats),
        'memcpy_us': median_time_us(lambda: np.frombuffer(rgb8, np.uint8).copy(), repeats),
    }


def frame(rgb: np.ndarray, seq: int) -> Image:
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding='rgb8', step=rgb.shape[1] * 3,
                data=rgb.tobytes())
    msg.header.stamp.sec = seq
    return msg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--frames', type=int, default=30, help='frames for the overhead figure')
    parser.add_argument('--overload-s', type=float, default=6.0, help='overload phase length')
    parser.add_argument('--rate-hz', type=float, default=30.0, help='overload publish rate')
    parser.add_argument('--threads', type=int, default=1, help='torch intra-op threads')
    parser.add_argument('--repeats', type=int, default=50, help='conversion timing repeats')
    args = parser.parse_args()

    conversion = bench_conversion(args.repeats)
    images, _, _ = load_cifar10(per_class=3)

    rclpy.init()
    node = PerceptionNode(parameter_overrides=[
        Parameter('dvfs_backend', value='simulated'), Parameter('engine', value='torch'),
        Parameter('num_threads', value=args.threads), Parameter('keep_ratio', value=0.5),
        Parameter('qos_reliability', value='reliable')])
    client = Node('bench_client')
    results: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
    client.create_subscription(
        String, '/pls_perception_node/frame_info',
        lambda msg: results.put((time.perf_counter(), json.loads(msg.data))),
        QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    pub = client.create_publisher(Image, 'image', QoSProfile(
        depth=100, reliability=ReliabilityPolicy.RELIABLE))
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    executor.add_node(client)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    try:
        assert node.trigger_configure().name == 'SUCCESS'
        assert node.trigger_activate().name == 'SUCCESS'
        while pub.get_subscription_count() == 0:
            time.sleep(0.05)
        time.sleep(0.5)

        overhead_ms, network_ms, preprocess_ms = [], [], []
        for seq in tqdm(range(1, args.frames + 1), desc='one frame at a time'):
            t0 = time.perf_counter()
            pub.publish(frame(images[seq % len(images)], seq))
            t1, out = results.get(timeout=60)
            assert out['stamp']['sec'] == seq
            network_ms.append(out['latency_ms'])
            preprocess_ms.append(out['preprocess_ms'])
            overhead_ms.append((t1 - t0) * 1e3 - out['latency_ms'])

        sent_at: dict[int, float] = {}
        seq = 10_000
        end = time.perf_counter() + args.overload_s
        with tqdm(total=int(args.overload_s * args.rate_hz), desc='overload') as bar:
            while time.perf_counter() < end:
                seq += 1
                sent_at[seq] = time.perf_counter()
                pub.publish(frame(images[seq % len(images)], seq))
                bar.update()
                time.sleep(1.0 / args.rate_hz)
        last_sent = seq
        ages_ms, last = [], None
        while last is None or last['stamp']['sec'] != last_sent:
            t1, last = results.get(timeout=60)
            ages_ms.append((t1 - sent_at[last['stamp']['sec']]) * 1e3)
        counters = last['frames']
    finally:
        executor.shutdown()
        node.trigger_shutdown()
        node.destroy_node()
        client.destroy_node()
        rclpy.try_shutdown()

    overload_frames = last_sent - 10_000
    processed = counters['processed'] - args.frames
    p95 = float(np.percentile(network_ms, 95))
    age_p95 = float(np.percentile(ages_ms, 95))
    metrics = [
        metric('image_to_rgb rgb8 1080p (zero-copy view)', round(conversion['rgb8_us'], 1), 'us',
               target_max=100),
        metric('image_to_rgb mono16 1080p (scaled copy)', round(conversion['mono16_us'], 1),
               'us'),
        metric('np.copy of the same rgb8 buffer (reference)', round(conversion['memcpy_us'], 1),
               'us'),
        metric('node overhead per frame, median (e2e - network)',
               round(statistics.median(overhead_ms), 2), 'ms', target_max=10),
        metric('  of which preprocessing (to_array), median',
               round(statistics.median(preprocess_ms), 2), 'ms'),
        metric('network latency p50 at keep_ratio 0.5', round(statistics.median(network_ms), 1),
               'ms'),
        metric(f'overload {args.rate_hz:g} Hz: frames dropped', counters['dropped'], 'frames',
               target_min=0),
        metric('overload: classified frame age p95 / network p95', round(age_p95 / p95, 2), 'x',
               target_max=3),
    ]
    details = {'conversion_us': conversion, 'overhead_ms': overhead_ms,
               'preprocess_ms': preprocess_ms,
               'network_ms': network_ms, 'overload_ages_ms': ages_ms,
               'overload': {'published': overload_frames, 'processed': processed,
                            'counters': counters}}
    path = write_result('bench_perception_node', metrics, details=details, notes=[
        'in-process rclpy + Fast DDS, simulated DVFS at f_max, torch engine, CIFAR-10 frames',
        'frame age = classification received - frame published (includes queueing)'])
    print_metrics(metrics, path)


if __name__ == '__main__':
    main()
