"""``pls-bag``: make image bags, replay them, record the nodes' outputs, report on a replay.

The AV validation loop without ``ros2 bag``: ``make`` turns a folder, an image tar or the shared
CIFAR-10 split into a rosbag2 with ground truth beside it; ``replay`` publishes it (the
``image_source`` node); ``record`` writes the perception node's results (the typed
``~/classification`` and ``~/label_info`` where vision_msgs is installed, and ``~/frame_info``),
``~/operating_point`` and ``/diagnostics`` into a rosbag2 while a replay runs; ``report`` scores
the recording against the ground truth (accuracy, latency percentiles, deadline misses, drops,
energy per frame), reading the typed results back where they were recorded.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pls_perception.errors import PlsError
from pls_perception.io import bag_report, bags, replay


def _add_source_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--split', default='test', help='tar split folder (default: test)')
    parser.add_argument('--limit', type=int, default=None, help='at most this many images')
    parser.add_argument('--per-class', type=int, default=None,
                        help='first K images of each class (tar sources)')


def _add_replay_args(parser: argparse.ArgumentParser) -> None:
    _add_source_args(parser)
    parser.add_argument('--topic', default=None, help="bag image topic (default: the only one)")
    parser.add_argument('--rate-hz', type=float, default=None,
                        help='publish rate; 0 = recorded timing (default: 0 for bags, 10 else)')
    parser.add_argument('--rate-multiplier', type=float, default=1.0,
                        help='speed-up of recorded timing (2 = twice as fast)')
    parser.add_argument('--loop', action='store_true', help='start over at the end')
    parser.add_argument('--encoding', default='', choices=('',) + bags.WRITE_ENCODINGS,
                        help="re-encode frames (default: as recorded / rgb8)")
    parser.add_argument('--frame-id', default='', help='header frame_id (default: as recorded)')
    parser.add_argument('--stamp', default='auto', choices=('auto', 'now', 'recorded'),
                        help='header stamps: auto keeps a bag\'s stamps (needed by report)')
    parser.add_argument('--wait-for-subscribers', type=int, default=1,
                        help='publish once this many subscribers matched on image (default 1)')
    parser.add_argument('--wait-timeout-s', type=float, default=60.0,
                        help='publish anyway after waiting this long for subscribers')
    parser.add_argument('--start-delay-s', type=float, default=0.0,
                        help='wait this long after the subscribers matched')
    parser.add_argument('--qos-depth', type=int, default=100,
                        help='reliable keep-last depth of the image publisher: deep enough that '
                             'a catch-up burst after a stall loses no frame (default 100)')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='pls-bag', description=__doc__.split('\n\n')[0].replace('``', ''))
    sub = parser.add_subparsers(dest='command', required=True)

    make = sub.add_parser('make', help='write a sensor_msgs/Image rosbag2 + labels.csv')
    make.add_argument('--source', default='cifar10',
                      help='image folder, image tar, or "cifar10" (the shared split; default)')
    _add_source_args(make)
    make.add_argument('-o', '--output', required=True, help='bag directory to create')
    make.add_argument('--storage', default='sqlite3', choices=bags.STORAGE_IDS)
    make.add_argument('--rate-hz', type=float, default=10.0, help='recorded frame rate')
    make.add_argument('--encoding', default='rgb8', choices=bags.WRITE_ENCODINGS)
    make.add_argument('--topic', default=bags.DEFAULT_IMAGE_TOPIC)
    make.add_argument('--frame-id', default='camera')

    info = sub.add_parser('info', help='topics, types and counts of a bag')
    info.add_argument('bag')

    replay = sub.add_parser('replay', help='publish images on /image (the image_source node)')
    replay.add_argument('source', help='rosbag2 dir, image folder, image tar or "cifar10"')
    _add_replay_args(replay)

    record = sub.add_parser('record', help='record the nodes\' outputs, optionally during a '
                                           'replay')
    record.add_argument('-o', '--output', required=True, help='bag directory to create')
    record.add_argument('--storage', default='sqlite3', choices=bags.STORAGE_IDS)
    record.add_argument('--topics', nargs='+', default=None,
                        help='"/name:pkg/msg/Type" items (default: the perception node\'s '
                             'classification and label_info (with vision_msgs) and frame_info, '
                             'the manager\'s operating_point, /diagnostics)')
    record.add_argument('--duration-s', type=float, default=None,
                        help='stop after this long (default: replay end + idle, or Ctrl-C)')
    record.add_argument('--idle-s', type=float, default=3.0,
                        help='after the replay, stop once no result (*/classification, '
                             '*/frame_info; any topic if none is recorded) arrived for this long')
    record.add_argument('--discovery-timeout-s', type=float, default=20.0,
                        help='wait this long for the recorded topics\' publishers')
    record.add_argument('--source', default=None,
                        help='replay this bag / folder / tar while recording')
    _add_replay_args(record)

    report = sub.add_parser('report', help='score a recording against ground truth')
    report.add_argument('record', help='recording bag (pls-bag record)')
    report.add_argument('ground_truth', help='the replayed image bag (its labels.csv) or a CSV')
    report.add_argument('--deadline-ms', type=float, default=None,
                        help='fixed deadline (default: each operating point\'s budget_ms)')
    report.add_argument('--output-dir', default=None,
                        help='where report.json/.csv/.png go (default: <record>_report)')
    return parser


def cmd_make(args: argparse.Namespace) -> int:
    images, labels, names, class_names = bags.load_source_images(
        args.source, args.split, args.limit, args.per_class)
    summary = bags.write_image_bag(
        args.output, images, labels, names, class_names=class_names, topic=args.topic,
        storage=args.storage, rate_hz=args.rate_hz, encoding=args.encoding,
        frame_id=args.frame_id, progress=True)
    print(f'wrote {summary.count} frames ({summary.encoding}, {summary.rate_hz:g} Hz) on '
          f'{summary.topic} to {summary.path} [{summary.storage}], ground truth in '
          f'{bags.labels_path(summary.path)}')
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    for topic, (msgtype, count) in sorted(bags.bag_topics(args.bag).items()):
        print(f'{topic}  {msgtype}  {count}')
    return 0


def _source_overrides(args: argparse.Namespace, source: str) -> list:
    from rclpy.parameter import Parameter

    rate_hz = args.rate_hz if args.rate_hz is not None else (0.0 if replay.is_bag(source) else 10.0)
    values = {
        'source': str(source), 'split': args.split, 'limit': args.limit or 0,
        'per_class': args.per_class or 0, 'bag_topic': args.topic or '',
        'rate_hz': float(rate_hz), 'rate_multiplier': float(args.rate_multiplier),
        'loop': bool(args.loop), 'encoding': args.encoding, 'frame_id': args.frame_id,
        'stamp': args.stamp, 'wait_for_subscribers': int(args.wait_for_subscribers),
        'wait_timeout_s': float(args.wait_timeout_s),
        'start_delay_s': float(args.start_delay_s), 'qos_depth': int(args.qos_depth),
        'progress': True}
    return [Parameter(name, value=value) for name, value in values.items()]


def cmd_replay(args: argparse.Namespace) -> int:
    import rclpy

    from pls_perception.nodes.image_source_node import ImageSourceNode

    rclpy.init()
    node = None
    try:
        node = ImageSourceNode(parameter_overrides=_source_overrides(args, args.source))
        node.start()
        while rclpy.ok() and not node.done.is_set():
            rclpy.spin_once(node, timeout_sec=0.1)
        if node.error is not None:
            raise node.error
        print(f'published {node.published} frames')
        return 0
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()


def cmd_record(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from pls_perception.nodes.image_source_node import ImageSourceNode
    from pls_perception.nodes.recorder_node import RecorderNode

    rclpy.init()
    # One thread: the callbacks only queue messages for the writer thread, and fewer threads
    # contending for the GIL keep the source's publishing thread on schedule.
    executor = SingleThreadedExecutor()
    nodes = []
    try:
        with bags.RecordWriter(args.output, args.storage) as writer:
            recorder = RecorderNode(writer, args.topics)
            nodes.append(recorder)
            executor.add_node(recorder)
            source = None
            if args.source:
                source = ImageSourceNode(parameter_overrides=_source_overrides(args, args.source))
                nodes.append(source)
                executor.add_node(source)
            _wait_for_publishers(executor, recorder, args.discovery_timeout_s)
            recorder.subscribe()
            # periodic topics (/diagnostics, re-published operating points) never go quiet;
            # the replay's results do
            results = ([t for t, _ in recorder.topics
                        if t.endswith(('/classification', '/frame_info'))] or
                       [t for t, _ in recorder.topics])
            started = time.monotonic()
            done_ns = None
            if source is not None:
                source.start()
            while rclpy.ok():
                executor.spin_once(timeout_sec=0.1)
                elapsed = time.monotonic() - started
                if args.duration_s is not None and elapsed >= args.duration_s:
                    break
                if source is not None and source.done.is_set():
                    if source.error is not None:
                        raise source.error
                    now_ns = recorder.get_clock().now().nanoseconds
                    done_ns = done_ns or now_ns
                    last_ns = max(recorder.last_message_ns[t] for t in results)
                    idle_s = (now_ns - max(last_ns, done_ns)) / 1e9
                    if idle_s >= args.idle_s:
                        break
            counts = dict(recorder.counts)
        print(json.dumps({'output': str(args.output), 'messages': counts,
                          'frames_published': source.published if source else None}))
        return 0
    finally:
        for node in nodes:
            if isinstance(node, ImageSourceNode):
                node.stop()
            executor.remove_node(node)
            node.destroy_node()
        rclpy.try_shutdown()


def _wait_for_publishers(executor, recorder, timeout_s: float) -> None:
    """Spin until every recorded topic except /diagnostics has a publisher (or time out)."""
    deadline = time.monotonic() + timeout_s
    wanted = [topic for topic, _ in recorder.topics if topic != '/diagnostics']
    missing = wanted
    while time.monotonic() < deadline:
        missing = [t for t in wanted if recorder.count_publishers(t) == 0]
        if not missing:
            return
        executor.spin_once(timeout_sec=0.1)
    recorder.get_logger().warning(f'no publisher yet on {missing} after {timeout_s:g} s; '
                                  'recording anyway')


def cmd_report(args: argparse.Namespace) -> int:
    recording = bag_report.read_recording(args.record)
    truth = bags.read_labels(args.ground_truth)
    report = bag_report.compute_report(recording, truth, args.deadline_ms)
    out = Path(args.output_dir or f'{str(args.record).rstrip("/")}_report')
    out.mkdir(parents=True, exist_ok=True)
    frames = report['frames']
    with (out / 'report.json').open('w') as f:
        json.dump({k: v for k, v in report.items() if k != 'frames'}, f, indent=2)
    with (out / 'frames.csv').open('w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(frames[0]) if frames else ['stamp_ns'])
        writer.writeheader()
        writer.writerows(frames)
    bag_report.plot_report(report, out / 'report.png')
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f'replay report: {args.record}')
    table.add_column('metric')
    table.add_column('value', justify='right')
    for name, value in bag_report.report_table(report):
        table.add_row(name, value)
    Console().print(table)
    print(f'wrote {out / "report.json"}, {out / "frames.csv"}, {out / "report.png"}')
    return 0


COMMANDS = {'make': cmd_make, 'info': cmd_info, 'replay': cmd_replay, 'record': cmd_record,
            'report': cmd_report}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (PlsError, ValueError, OSError) as e:
        print(f'pls-bag {args.command}: error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == '__main__':
    sys.exit(main())
