"""Typed classification output (``vision_msgs``) and the per-frame JSON facts beside it.

ROS perception consumers (classification pipelines, rviz plugins, rosbag tooling, AV stacks) read
``vision_msgs/Classification``: the input image's header plus the top-k ``ObjectHypothesis``,
whose ``class_id`` (the class index as a string) resolves through the ``vision_msgs/LabelInfo``
published once, latched, on ``~/label_info``. The facts with no standard field (keep ratio,
frequency, latency split, energy, counters) go to ``~/frame_info`` as JSON, always.

``vision_msgs`` is not on PyPI, so it is imported here, lazily, and nowhere else in the node: when
it is missing, or is a version whose messages do not fit (checked by building and serialising
the very messages the node will publish), the node publishes ``~/frame_info`` only and says once
which output it cannot offer and how to get it.
"""
from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from rclpy.lifecycle import LifecycleNode, LifecyclePublisher
from rclpy.publisher import Publisher
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from std_msgs.msg import Header

from pls_perception import paths

if TYPE_CHECKING:
    from pls_perception.pipeline.frame_pipeline import Classification as Result

CLASSIFICATION_TOPIC = '~/classification'
LABEL_INFO_TOPIC = '~/label_info'
FRAME_INFO_TOPIC = '~/frame_info'
CLASSIFICATION_MSGTYPE = 'vision_msgs/msg/Classification'
LABEL_INFO_MSGTYPE = 'vision_msgs/msg/LabelInfo'
# VisionClass ids are uint16 and 65535 is the UNLABELED class: ids 0..65534 name real classes.
MAX_CLASSES = 65535
# Late subscribers (rviz, a recorder started after configure) still get the class map.
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
RESULT_QOS_DEPTH = 10
# The vision_msgs 4.x fields the node fills. Checked on import: rosidl classes ignore unknown
# constructor arguments (unless ROS_PYTHON_CHECK_FIELDS=1), so another version would publish
# empty messages instead of failing.
FIELDS = {
    'Classification': {'header': 'std_msgs/Header',
                       'results': 'sequence<vision_msgs/ObjectHypothesis>'},
    'ObjectHypothesis': {'class_id': 'string', 'score': 'double'},
    'LabelInfo': {'header': 'std_msgs/Header', 'class_map': 'sequence<vision_msgs/VisionClass>',
                  'threshold': 'float'},
    'VisionClass': {'class_id': 'uint16', 'class_name': 'string'},
}
# Reasons already logged by this process: each is said once, however often the node configures.
_warned: set[str] = set()


def install_hint() -> str:
    """How to get ``vision_msgs`` on an apt ROS 2 machine and in a pip ROS 2 environment."""
    wheels = paths.shared_dir() / 'wheels' / 'vision-msgs'
    return ('apt ROS 2: rosdep install --from-paths <ws>/src --ignore-src -y (or apt install '
            f'ros-jazzy-vision-msgs); pip ROS 2: pip install {wheels}/ros_vision_msgs-*.whl')


@dataclass(frozen=True)
class VisionMsgs:
    """The ``vision_msgs`` message classes the node publishes."""

    Classification: type
    ObjectHypothesis: type
    LabelInfo: type
    VisionClass: type


@functools.lru_cache(maxsize=None)
def load_vision_msgs(module: str = 'vision_msgs.msg') -> tuple[Optional[VisionMsgs], str]:
    """``(classes, '')`` when ``module`` is a usable vision_msgs, else ``(None, why not)``.

    Usable means the four classes import, have the ``FIELDS`` of vision_msgs 4.x and serialise
    (their typesupport libraries load); anything else is reported like a missing package.
    """
    try:
        msg = importlib.import_module(module)
        msgs = VisionMsgs(**{name: getattr(msg, name) for name in FIELDS})
        for name, expected in FIELDS.items():
            fields = getattr(msgs, name).get_fields_and_field_types()
            if fields != expected:
                raise ValueError(f'{name} has the fields {fields}, expected {expected}')
        serialize_message(build_label_info(msgs, ['probe']))
        serialize_message(build_classification(msgs, Header(), ((0, 'probe', 1.0),)))
    except Exception as e:  # noqa: BLE001 - a broken or mismatched package must not stop the node
        return None, f'{module} cannot be used ({type(e).__name__}: {e})'
    return msgs, ''


def build_label_info(msgs: VisionMsgs, class_names: Sequence[str]) -> Any:
    """The ``LabelInfo`` mapping class index ``i`` to ``class_names[i]`` (no threshold)."""
    if len(class_names) > MAX_CLASSES:
        raise ValueError(f'vision_msgs/LabelInfo names at most {MAX_CLASSES} classes (uint16 ids, '
                         f'65535 = UNLABELED), got {len(class_names)!r}')
    return msgs.LabelInfo(class_map=[msgs.VisionClass(class_id=i, class_name=str(name))
                                     for i, name in enumerate(class_names)], threshold=0.0)


def build_classification(msgs: VisionMsgs, header: Any,
                         top_k: Sequence[tuple[int, str, float]]) -> Any:
    """A ``Classification``: ``header`` of the input image, top-k hypotheses best first."""
    return msgs.Classification(header=header, results=[
        msgs.ObjectHypothesis(class_id=str(class_id), score=float(score))
        for class_id, _, score in top_k])


def frame_info_json(result: Result, header: Any, info: dict[str, Any]) -> str:
    """The ``~/frame_info`` payload (schema in docs/topics.md)."""
    stamp = header.stamp
    return json.dumps({
        'stamp': {'sec': int(stamp.sec), 'nanosec': int(stamp.nanosec)},
        'frame_id': header.frame_id,
        'class_id': result.class_id,
        'label': result.label,
        'score': round(result.score, 6),
        'top_k': [{'class_id': c, 'label': label, 'score': round(s, 6)}
                  for c, label, s in result.top_k],
        'keep_ratio': result.keep_ratio,
        'frequency_mhz': result.freq_mhz,
        'latency_ms': round(result.latency_ms, 3),
        'compute_ms': round(result.compute_ms, 3),
        'emulated_ms': round(result.emulated_ms, 3),
        'preprocess_ms': round(result.preprocess_ms, 3),
        'energy_mj': None if result.energy_mj is None else round(result.energy_mj, 4),
        'energy_source': result.energy_source,
        **info,
    })


class TypedOutput:
    """``~/classification`` and ``~/label_info`` of one configured node, or why they are off.

    Create it at configure: it publishes the class map at once (latched) and makes the result
    publisher a lifecycle publisher, so activate enables it with the node's other outputs.
    """

    def __init__(self, node: LifecycleNode, class_names: Sequence[str]) -> None:
        self._node = node
        self._classification_pub: Optional[LifecyclePublisher] = None
        self._label_info_pub: Optional[Publisher] = None
        msgs, self.off_reason = load_vision_msgs()
        info = None
        if msgs is not None:
            try:
                info = build_label_info(msgs, class_names)
            except ValueError as e:
                self.off_reason = str(e)
        self._msgs = msgs if info is not None else None
        if info is None:
            if self.off_reason not in _warned:
                _warned.add(self.off_reason)
                node.get_logger().warning(
                    f'typed output off: {CLASSIFICATION_TOPIC} ({CLASSIFICATION_MSGTYPE}) and '
                    f'{LABEL_INFO_TOPIC} ({LABEL_INFO_MSGTYPE}) are not published, because '
                    f'{self.off_reason}. Results stay on {FRAME_INFO_TOPIC} (std_msgs/String '
                    f'JSON). To get the typed output: {install_hint()}')
            return
        self._classification_pub = node.create_lifecycle_publisher(
            msgs.Classification, CLASSIFICATION_TOPIC, RESULT_QOS_DEPTH)
        self._label_info_pub = node.create_publisher(msgs.LabelInfo, LABEL_INFO_TOPIC,
                                                     LATCHED_QOS)
        info.header.stamp = node.get_clock().now().to_msg()
        self._label_info_pub.publish(info)

    @property
    def enabled(self) -> bool:
        """Whether ``~/classification`` and ``~/label_info`` are published."""
        return self._msgs is not None

    def status(self) -> str:
        """The /diagnostics value: what is published, or why the typed output is off."""
        return 'vision_msgs' if self.enabled else f'off: {self.off_reason}'

    def publish(self, header: Any, top_k: Sequence[tuple[int, str, float]]) -> None:
        """Publish the result of the image whose header is ``header`` (no-op when off)."""
        if self._classification_pub is not None:
            self._classification_pub.publish(build_classification(self._msgs, header, top_k))

    def destroy(self) -> None:
        """Destroy the publishers (cleanup / shutdown); idempotent."""
        if self._classification_pub is not None:
            self._node.destroy_lifecycle_publisher(self._classification_pub)
            self._classification_pub = None
        if self._label_info_pub is not None:
            self._node.destroy_publisher(self._label_info_pub)
            self._label_info_pub = None
