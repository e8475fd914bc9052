"""A minimal rosbag2 recorder in rclpy: what ``ros2 bag record`` does, for pip-ROS machines.

``pls-bag record`` needs the perception node's outputs in a real bag while a replay runs, and
``ros2 bag`` does not exist without an apt ROS 2. Raw (still serialised) subscriptions hand the
CDR bytes straight to ``bags.RecordWriter``, so nothing is deserialised on the hot path and the
bag holds exactly what was on the wire, stamped with the receive time.
"""
from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Sequence

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from pls_perception.io.bags import (CLASSIFICATION_MSGTYPE, DIAGNOSTICS_MSGTYPE,
                                    LABEL_INFO_MSGTYPE, STRING_MSGTYPE, RecordWriter)
from pls_perception.nodes.typed_output import load_vision_msgs

PERCEPTION = '/pls_perception_node'
TYPED_TOPICS = (f'{PERCEPTION}/classification:{CLASSIFICATION_MSGTYPE}',
                f'{PERCEPTION}/label_info:{LABEL_INFO_MSGTYPE}')
UNTYPED_TOPICS = (f'{PERCEPTION}/frame_info:{STRING_MSGTYPE}',
                  f'/dvfs_manager/operating_point:{STRING_MSGTYPE}',
                  f'/diagnostics:{DIAGNOSTICS_MSGTYPE}')


def default_topics() -> tuple[str, ...]:
    """The perception node's results (typed ones too where vision_msgs is usable), the
    manager's operating points and /diagnostics."""
    msgs, _ = load_vision_msgs()
    return (*(TYPED_TOPICS if msgs is not None else ()), *UNTYPED_TOPICS)


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
    """Writes every message of ``topics`` ('/name:pkg/msg/Type', default ``default_topics()``)
    to ``writer`` once :meth:`subscribe` is called."""

    def __init__(self, writer: RecordWriter, topics: Sequence[str] | None = None,
                 depth: int = 1000) -> None:
        super().__init__('pls_bag_recorder')
        self.writer = writer
        if topics is None:
            topics = default_topics()
            why = load_vision_msgs()[1]
            if why:
                self.get_logger().warning(
                    f'recording the perception results as frame_info JSON only: {why}')
        self.topics = [parse_topic(spec) for spec in topics]
        self._classes = [message_class(msgtype) for _, msgtype in self.topics]
        self.last_message_ns: dict[str, int] = {topic: 0 for topic, _ in self.topics}
        self.counts: dict[str, int] = {topic: 0 for topic, _ in self.topics}
        self._depth = depth
        self._lock = threading.Lock()
        self._raw_subscriptions: list = []

    def subscribe(self) -> None:
        """Subscribe to every topic: transient local where all its publishers so far are (as
        ``ros2 bag record`` does), so a latched message such as the class map published before
        the recording started is recorded too; volatile otherwise."""
        for (topic, msgtype), msg_class in zip(self.topics, self._classes):
            offered = [p.qos_profile.durability for p in self.get_publishers_info_by_topic(topic)]
            latched = bool(offered) and all(d == DurabilityPolicy.TRANSIENT_LOCAL
                                            for d in offered)
            qos = QoSProfile(depth=self._depth, history=HistoryPolicy.KEEP_LAST,
                             reliability=ReliabilityPolicy.RELIABLE,
                             durability=(DurabilityPolicy.TRANSIENT_LOCAL if latched
                                         else DurabilityPolicy.VOLATILE))
            self._raw_subscriptions.append(self.create_subscription(
                msg_class, topic, self._callback(topic, msgtype), qos, raw=True))

    def _callback(self, topic: str, msgtype: str) -> Callable[[bytes], None]:
        def on_message(cdr: bytes) -> None:
            now_ns = self.get_clock().now().nanoseconds
            self.writer.write(topic, msgtype, now_ns, cdr)
            with self._lock:
                self.counts[topic] += 1
                self.last_message_ns[topic] = now_ns
        return on_message
