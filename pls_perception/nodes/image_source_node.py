"""``image_source``: publish camera-like ``sensor_msgs/Image`` frames from files or a rosbag2.

``ros2 bag play`` is not on every machine (pip ROS has no rosbag2), and the demo, the replay
tools and the tests need a source whose timing and stamps they control. This node publishes on
``image`` from a folder, an image tar (e.g. the shared CIFAR-10 split) or a rosbag2 image topic,
at a fixed rate or at the recorded timing scaled by a multiplier, optionally looping.

Parameters: ``source`` (folder | tar | rosbag2 dir | 'cifar10' = the CIFAR-10 tarball found by
``paths.find_cifar10_tar``), ``split``, ``limit`` and ``per_class`` (0 = all), ``bag_topic``
('' = the bag's only image topic), ``rate_hz`` (0 = recorded timing, bags only),
``rate_multiplier``, ``loop``, ``frame_id`` ('' = recorded, else 'camera'), ``encoding`` ('' =
recorded, else rgb8), ``stamp`` ('auto' | 'now' | 'recorded'; auto keeps a bag's header stamps so
a replay can be scored against its ground truth), ``wait_for_subscribers`` (publish only once
that many subscribers matched), ``wait_timeout_s``, ``start_delay_s``, ``qos_depth``,
``progress`` (tqdm bar).
"""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import NoReturn

import rclpy
from builtin_interfaces.msg import Time
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image

from pls_perception import paths
from pls_perception.errors import PlsError
from pls_perception.io.bags import NS_PER_S, ImageFrame
from pls_perception.io.replay import FrameSource, check_rates, publish_offset_ns
from pls_perception.nodes.parameters import descriptor
from pls_perception.nodes.spin import STOP_POLL_S, exit_process, stop_requested

STAMP_MODES = ('auto', 'now', 'recorded')


def frame_to_msg(frame: ImageFrame, stamp_ns: int) -> Image:
    """An rclpy ``sensor_msgs/Image`` from a frame's fields, with header stamp ``stamp_ns``."""
    msg = Image()
    sec, nanosec = divmod(int(stamp_ns), NS_PER_S)
    msg.header.stamp = Time(sec=sec, nanosec=nanosec)
    msg.header.frame_id = frame.frame_id
    msg.height = int(frame.height)
    msg.width = int(frame.width)
    msg.encoding = frame.encoding
    msg.is_bigendian = int(frame.is_bigendian)
    msg.step = int(frame.step)
    msg.data = frame.data.tobytes()
    return msg


class ImageSourceNode(Node):
    """Publishes the frames of a ``FrameSource`` on ``image`` from a worker thread."""

    def __init__(self, **kwargs) -> None:
        super().__init__('image_source', **kwargs)
        def p(name: str, default: object, text: str, **ranges: tuple) -> Parameter:
            return self.declare_parameter(name, default,
                                          descriptor(text, read_only=True, **ranges))
        source = p('source', 'cifar10', "image folder, image tar, rosbag2 directory or 'cifar10' "
                   f'(the shared CIFAR-10 tarball, {paths.DATA_SEARCH_HELP})').value
        self.source_path = str(paths.find_cifar10_tar()) if source == 'cifar10' else source
        split = p('split', 'test', "CIFAR-layout tar split: 'test' or 'train'").value
        limit = p('limit', 0, 'at most this many images; 0 = all', int_range=(0, 10**7)).value
        per_class = p('per_class', 0, 'at most this many images per class; 0 = all',
                      int_range=(0, 10**7)).value
        bag_topic = p('bag_topic', '', "rosbag2 source: the image topic; '' = the only one").value
        self.rate_hz = float(p('rate_hz', 10.0, 'frames per second; 0 = the timing recorded in '
                               'the bag', float_range=(0.0, 10000.0)).value)
        self.rate_multiplier = float(p('rate_multiplier', 1.0, 'speed-up of the recorded timing',
                                       float_range=(0.001, 1000.0)).value)
        self.loop = bool(p('loop', False, 'start again after the last frame').value)
        frame_id = p('frame_id', '', "header.frame_id; '' = the bag's, else 'camera'").value
        encoding = p('encoding', '', "rgb8 | bgr8 | rgba8 | bgra8 | mono8; '' = rgb8 (or the "
                     "bag's)").value
        self.stamp_mode = p('stamp', 'auto', f'header stamps, one of {STAMP_MODES}: recorded '
                            "(the bag's), now, or auto (recorded for a bag)").value
        self.wait_for_subscribers = int(p('wait_for_subscribers', 0, 'start once this many '
                                          'subscribers match', int_range=(0, 1000)).value)
        self.wait_timeout_s = float(p('wait_timeout_s', 30.0, 'give up waiting for subscribers '
                                      'after this long', float_range=(0.0, 3600.0)).value)
        self.start_delay_s = float(p('start_delay_s', 0.0, 'wait this long before the first '
                                     'frame', float_range=(0.0, 3600.0)).value)
        depth = int(p('qos_depth', 10, 'publisher queue depth (reliable, keep last)',
                      int_range=(1, 10000)).value)
        self.progress = bool(p('progress', False, 'show a progress bar on stderr').value)
        if self.stamp_mode not in STAMP_MODES:
            raise ValueError(f'stamp must be one of {STAMP_MODES}, got {self.stamp_mode!r}')
        check_rates(self.rate_hz, self.rate_multiplier)
        self.frames = FrameSource(self.source_path, split=split, limit=limit or None,
                                  per_class=per_class or None, topic=bag_topic or None,
                                  encoding=encoding or None, frame_id=frame_id or None)
        if self.rate_hz == 0 and not self.frames.is_bag:
            raise ValueError(
                f'rate_hz 0 (recorded timing) needs a rosbag2 source, got {self.source_path!r}')
        if self.stamp_mode == 'recorded' and not self.frames.is_bag:
            raise ValueError(f'stamp "recorded" needs a rosbag2 source, got {self.source_path!r}')
        self.keep_stamps = self.frames.is_bag and self.stamp_mode != 'now'
        qos = QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                         reliability=ReliabilityPolicy.RELIABLE)
        self.publisher = self.create_publisher(Image, 'image', qos)
        self.published = 0
        self.done = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name='image_source', daemon=True)
        timing = (f'{self.rate_hz:g} Hz' if self.rate_hz else
                  f'recorded timing x{self.rate_multiplier:g}')
        self.get_logger().info(
            f'publishing {self.frames.count} frames from {self.source_path}'
            f'{" topic " + self.frames.topic if self.frames.topic else ""} at {timing}'
            f'{" (looping)" if self.loop else ""}')

    def start(self) -> None:
        """Start publishing (in a thread; ``done`` is set when finished)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop publishing and wait for the worker."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def error(self) -> BaseException | None:
        """The exception that ended publishing early, if any."""
        return self._error

    def _wait_for_subscribers(self) -> None:
        deadline = time.monotonic() + self.wait_timeout_s
        while self.publisher.get_subscription_count() < self.wait_for_subscribers:
            if time.monotonic() > deadline:
                self.get_logger().warning(
                    f'only {self.publisher.get_subscription_count()} of '
                    f'{self.wait_for_subscribers} subscribers after {self.wait_timeout_s:g} s; '
                    'publishing anyway')
                return
            if self._stop.wait(0.05):
                return

    def _run(self) -> None:
        bar = None
        try:
            self._wait_for_subscribers()
            if self._stop.wait(self.start_delay_s):
                return
            if self.progress:
                from tqdm import tqdm
                bar = tqdm(total=None if self.loop else self.frames.count, unit='img',
                           desc='image_source', file=sys.stderr)
            while not self._stop.is_set():
                self._publish_pass(bar)
                if not self.loop:
                    break
            # reliable delivery of the last frames before main() exits and the writer vanishes
            if not self.publisher.wait_for_all_acked(Duration(seconds=self.wait_timeout_s)):
                self.get_logger().warning('not every subscriber acknowledged every frame')
        except Exception as e:  # noqa: BLE001 - reported by main() / the owner of the node
            if not self.context.ok():
                return  # Ctrl-C invalidated the context mid-publish: a normal stop
            self._error = e
            self.get_logger().error(f'image source failed: {e}')
        finally:
            if bar is not None:
                bar.close()
            self.done.set()

    def _publish_pass(self, bar) -> None:
        start = time.monotonic_ns()
        first_log_ns = None
        for frame in self.frames.frames():
            if first_log_ns is None:
                first_log_ns = frame.log_time_ns
            due = start + publish_offset_ns(frame.index, frame.log_time_ns, first_log_ns,
                                            self.rate_hz, self.rate_multiplier)
            delay_s = (due - time.monotonic_ns()) / NS_PER_S
            if delay_s > 0 and self._stop.wait(delay_s):
                return
            if self._stop.is_set():
                return
            stamp_ns = (frame.stamp_ns if self.keep_stamps else
                        self.get_clock().now().nanoseconds)
            self.publisher.publish(frame_to_msg(frame, stamp_ns))
            self.published += 1
            if bar is not None:
                bar.update(1)


def main(args: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the ``image_source`` executable; ends when all frames are out or on
    SIGINT/SIGTERM (exit code 0: how ``ros2 launch`` stops a looping source)."""
    exit_process(_publish(args))


def _publish(args: Sequence[str] | None) -> int:
    """The exit code of publishing the source's frames.

    Signals only set an event (``spin.stop_requested``): the worker thread is stopped and joined
    before the node and the context go away, never shut down under a ``publish`` in flight.
    """
    with stop_requested() as stop:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        node = None
        try:
            node = ImageSourceNode()
            node.progress = node.progress or sys.stderr.isatty()
            node.start()
            while not stop.is_set() and not node.done.is_set():
                rclpy.spin_once(node, timeout_sec=STOP_POLL_S)
            if node.error is not None:
                node.get_logger().error(f'{type(node.error).__name__}: {node.error}')
                return 1
            node.get_logger().info(f'published {node.published} frames')
            return 0
        except ExternalShutdownException:
            return 0
        except (PlsError, ValueError, OSError) as e:
            print(f'image_source: {e}', file=sys.stderr)
            return 2
        finally:
            if node is not None:
                node.stop()
                node.destroy_node()
            rclpy.try_shutdown()


if __name__ == '__main__':
    main()
