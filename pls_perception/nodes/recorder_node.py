"""A minimal rosbag2 recorder in rclpy: what ``ros2 bag record`` does, for pip-ROS machines.

``pls-bag record`` needs the perception node's outputs in a real bag while a replay runs, and
``ros2 bag`` does not exist without an apt ROS 2. Raw (still serialised) subscriptions hand the
CDR bytes straight to ``bags.RecordWriter``, so nothing is deserialised on the hot path and the
bag holds exactly what was on the wire, stamped with the receive time.
"""
from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence

from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from pls_perception.bags import DIAGNOSTICS_MSGTYPE, STRING_MSGTYPE, RecordWriter

DEFAULT_TOPICS = (
    f'/pls_perception_node/classification:{STRING_MSGTYPE}',
    f'/dvfs_manager/operating_point:{STRING_MSGTYPE}',
    f'/diagnostics:{DIAGNOSTICS_MSGTYPE}',
)


def parse_topic(spec: str) -> tuple[str, str]:
    """``'/topic:pkg/msg/Type'`` -> ``('/topic', 'pkg/msg/Type')``."""
    topic, sep, msgtype = spec.rpartition(':')
    if not sep or not topic.startswith('/') or msgtype.count('/') != 2:
        raise ValueError(f'topic must be "/name:pkg/msg/Type", got {spec!r}')
    return topic, msgtype


def message_class(msgtype: str) -> type:
    """The rclpy message class of ``'pkg/msg/Type'``."""
    package, _, name = msgtype.split('/')
    try:
        return getattr(importlib.import_module(f'{package}.msg'), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f'message type not installed: got {msgtype!r} ({e})') from e


class RecorderNode(Node):
    """Writes every message of ``topics`` ('/name:pkg/msg/Type') to ``writer``."""

    def __init__(self, writer: RecordWriter, topics: Sequence[str] = DEFAULT_TOPICS,
                 depth: int = 1000) -> None:
        super().__init__('pls_bag_recorder')
        self.writer = writer
        self.topics = [parse_topic(spec) for spec in topics]
        self.last_message_ns: dict[str, int] = {topic: 0 for topic, _ in self.topics}
        self.counts: dict[str, int] = {topic: 0 for topic, _ in self.topics}
        self._lock = threading.Lock()
        qos = QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                         reliability=ReliabilityPolicy.RELIABLE)
        self._raw_subscriptions = [
            self.create_subscription(message_class(msgtype), topic,
                                     self._callback(topic, msgtype), qos, raw=True)
            for topic, msgtype in self.topics]

    def _callback(self, topic: str, msgtype: str):
        def on_message(cdr: bytes) -> None:
            now_ns = self.get_clock().now().nanoseconds
            self.writer.write(topic, msgtype, now_ns, cdr)
            with self._lock:
                self.counts[topic] += 1
                self.last_message_ns[topic] = now_ns
        return on_message
