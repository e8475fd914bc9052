"""ROS-free rosbag2 I/O: image bags with ground truth, recordings of the nodes' outputs, reports.

AV teams validate perception by replaying recorded drives, and ``ros2 bag`` is not on every
machine. This module writes and reads real rosbag2 directories (sqlite3 or mcap storage, the
files ``ros2 bag info``/``ros2 bag play`` accept) with the pure-Python ``rosbags`` package, so the
bag tools and the image source work without a ROS 2 install and are unit-tested without rclpy.

- ``write_image_bag``: ``sensor_msgs/Image`` frames at a fixed rate, with the ground-truth labels
  beside them in ``<bag>/labels.csv`` (header stamp -> label), the key a replay is scored by.
- ``read_image_frames``: the frames of one image topic; corrupt or truncated bags, a missing
  topic or a wrong message type raise ``BagError`` with a message that says what is wrong.
- ``RecordWriter``: appends already-serialised CDR messages (what an rclpy raw subscription
  delivers) to a new bag; ``read_recording`` reads the perception node's results back (the typed
  ``vision_msgs/Classification`` where recorded, the ``~/frame_info`` JSON beside it) and
  ``compute_report`` turns them plus the ground truth into accuracy, latency percentiles,
  deadline misses, drops and energy per frame.
"""
from __future__ import annotations

import csv
import json
import math
import queue
import sqlite3
import struct
import threading
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from pls_perception.errors import BagError, ImageFormatError

IMAGE_MSGTYPE = 'sensor_msgs/msg/Image'
STRING_MSGTYPE = 'std_msgs/msg/String'
DIAGNOSTICS_MSGTYPE = 'diagnostic_msgs/msg/DiagnosticArray'
CLASSIFICATION_MSGTYPE = 'vision_msgs/msg/Classification'
LABEL_INFO_MSGTYPE = 'vision_msgs/msg/LabelInfo'
# vision_msgs 4.x (Humble, Jazzy) without the comments. rosbags ships only the core interfaces;
# with these it reads and writes the typed results without vision_msgs installed.
VISION_MSGS_DEFINITIONS = {
    'vision_msgs/msg/ObjectHypothesis': 'string class_id\nfloat64 score\n',
    CLASSIFICATION_MSGTYPE: 'std_msgs/Header header\nObjectHypothesis[] results\n',
    'vision_msgs/msg/VisionClass': 'uint16 class_id\nstring class_name\n',
    LABEL_INFO_MSGTYPE: ('std_msgs/Header header\nvision_msgs/VisionClass[] class_map\n'
                         'float32 threshold\n'),
}
STORAGE_IDS = ('sqlite3', 'mcap')
# Encodings the writer produces from RGB frames (the reader accepts everything image_conversion
# does). mono8 is lossy (ITU-R BT.601 luma), so labels from a mono8 bag are not comparable.
WRITE_ENCODINGS = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8')
LABELS_FILE = 'labels.csv'
DEFAULT_IMAGE_TOPIC = '/image'
# rosbag2 metadata version written by ROS 2 Jazzy.
BAG_VERSION = 9
NS_PER_S = 1_000_000_000


@lru_cache(maxsize=1)
def typestore() -> Any:
    """The rosbags message typestore: ROS 2 Jazzy definitions (Humble on older rosbags) plus
    the vision_msgs types the perception node publishes."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(getattr(Stores, 'ROS2_JAZZY', None) or Stores.ROS2_HUMBLE)
    for name, text in VISION_MSGS_DEFINITIONS.items():
        store.register(get_types_from_msg(text, name))
    return store


def _storage_plugin(storage: str) -> Any:
    from rosbags.rosbag2 import StoragePlugin

    if storage not in STORAGE_IDS:
        raise ValueError(f'storage must be one of {STORAGE_IDS}, got {storage!r}')
    return StoragePlugin.SQLITE3 if storage == 'sqlite3' else StoragePlugin.MCAP


def encode_rgb(image: np.ndarray, encoding: str) -> tuple[np.ndarray, int]:
    """An HxWx3 uint8 RGB array as ``(data, step)`` of a ``sensor_msgs/Image`` in ``encoding``."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageFormatError(
            f'expected an HxWx3 uint8 RGB image, got shape {image.shape} dtype {image.dtype}')
    if encoding == 'rgb8':
        pixels = image
    elif encoding == 'bgr8':
        pixels = image[:, :, ::-1]
    elif encoding in ('rgba8', 'bgra8'):
        alpha = np.full(image.shape[:2] + (1,), 255, np.uint8)
        colour = image if encoding == 'rgba8' else image[:, :, ::-1]
        pixels = np.concatenate([colour, alpha], axis=2)
    elif encoding == 'mono8':
        luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        pixels = np.clip(np.rint(luma), 0, 255).astype(np.uint8)[:, :, None]
    else:
        raise ValueError(f'encoding must be one of {WRITE_ENCODINGS}, got {encoding!r}')
    pixels = np.ascontiguousarray(pixels)
    return pixels.reshape(-1), pixels.shape[1] * pixels.shape[2]


def image_message(image: np.ndarray, stamp_ns: int, frame_id: str = 'camera',
                  encoding: str = 'rgb8') -> Any:
    """A rosbags ``sensor_msgs/msg/Image`` of an RGB frame (serialise with ``typestore()``)."""
    data, step = encode_rgb(image, encoding)
    return typestore().types[IMAGE_MSGTYPE](
        header=_header(stamp_ns, frame_id), height=image.shape[0], width=image.shape[1],
        encoding=encoding, is_bigendian=0, step=step, data=data)


def _header(stamp_ns: int, frame_id: str) -> Any:
    """A rosbags ``std_msgs/msg/Header``."""
    types = typestore().types
    sec, nanosec = divmod(int(stamp_ns), NS_PER_S)
    return types['std_msgs/msg/Header'](
        stamp=types['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec), frame_id=frame_id)


# --------------------------------------------------------------------------- ground truth

@dataclass(frozen=True)
class GroundTruth:
    """Labels of the frames of an image bag, keyed by header stamp (label -1 = unknown)."""

    stamps_ns: tuple[int, ...]
    labels: tuple[int, ...]
    names: tuple[str, ...]
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not len(self.stamps_ns) == len(self.labels) == len(self.names):
            raise ValueError(
                f'ground truth columns differ in length: got {len(self.stamps_ns)} stamps, '
                f'{len(self.labels)} labels, {len(self.names)} names')
        if len(set(self.stamps_ns)) != len(self.stamps_ns):
            raise ValueError('ground truth stamps must be unique (they key the frames)')

    def by_stamp(self) -> dict[int, int]:
        """``{stamp_ns: label}``."""
        return dict(zip(self.stamps_ns, self.labels))


def labels_path(bag: str | Path) -> Path:
    """Where the ground truth of an image bag lives: ``<bag>/labels.csv``."""
    bag = Path(bag)
    return bag if bag.suffix == '.csv' else bag / LABELS_FILE


def write_labels(path: str | Path, truth: GroundTruth) -> Path:
    """Write ``truth`` as CSV (index, stamp_ns, label, class_name, name)."""
    path = Path(path)
    with path.open('w', newline='') as f:
        out = csv.writer(f)
        out.writerow(['index', 'stamp_ns', 'label', 'class_name', 'name'])
        for i, (stamp, label, name) in enumerate(zip(truth.stamps_ns, truth.labels,
                                                       truth.names)):
            known = 0 <= label < len(truth.class_names)
            out.writerow([i, stamp, label, truth.class_names[label] if known else '', name])
    return path


def read_labels(bag_or_csv: str | Path) -> GroundTruth:
    """The ground truth beside an image bag (or a labels CSV); ``BagError`` if unusable."""
    path = labels_path(bag_or_csv)
    if not path.is_file():
        raise BagError(f'no ground truth: {path} does not exist (make the bag with pls-bag make)')
    stamps, labels, names, class_names = [], [], [], {}
    try:
        with path.open(newline='') as f:
            for row in csv.DictReader(f):
                stamps.append(int(row['stamp_ns']))
                labels.append(int(row['label']))
                names.append(row['name'])
                if row['class_name']:
                    class_names[labels[-1]] = row['class_name']
    except (KeyError, ValueError, TypeError) as e:
        raise BagError(f'malformed ground truth {path}: {e!r}') from e
    ordered = tuple(class_names.get(i, str(i)) for i in range(max(class_names, default=-1) + 1))
    try:
        return GroundTruth(tuple(stamps), tuple(labels), tuple(names), ordered)
    except ValueError as e:
        raise BagError(f'malformed ground truth {path}: {e}') from e


# --------------------------------------------------------------------------- writing images

@dataclass(frozen=True)
class BagSummary:
    """What ``write_image_bag`` wrote."""

    path: Path
    storage: str
    topic: str
    count: int
    rate_hz: float
    encoding: str
    start_ns: int


def load_source_images(source: str | Path, split: str = 'test', limit: int | None = None,
                       per_class: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray, list[str], tuple[str, ...]]:
    """Images, labels, names and class names from a folder, an image tar, or ``'cifar10'``.

    ``'cifar10'`` is the shared CIFAR-10 tar (``paths.cifar10_tar()``); a tar must be a .tar.gz
    with the CIFAR-10 class folders under ``<split>/`` like the shared one (see
    ``datasets.load_cifar10``). A folder is an ImageFolder tree (class subfolders, labels by
    sorted folder name) or a flat folder of images (labels -1).
    """
    from pls_perception import datasets, paths

    if str(source) == 'cifar10':
        source = paths.cifar10_tar()
    source = Path(source)
    if source.is_dir():
        images, labels, names = datasets.load_image_folder(source, limit=limit,
                                                           per_class=per_class)
        class_names = _folder_class_names(names, labels)
    elif source.is_file():
        images, labels, names = datasets.load_cifar10(tar_path=source, split=split, limit=limit,
                                                      per_class=per_class)
        class_names = tuple(datasets.CIFAR10_CLASSES)
    else:
        raise FileNotFoundError(f'image source does not exist: got {str(source)!r}')
    return images, labels, list(names), class_names


def _folder_class_names(names: Sequence[str], labels: np.ndarray) -> tuple[str, ...]:
    """Class names of an ImageFolder tree: the parent folder of each labelled image."""
    by_label = {int(label): Path(name).parent.name for name, label in zip(names, labels)
                if label >= 0}
    return tuple(by_label.get(i, str(i)) for i in range(max(by_label, default=-1) + 1))


def write_image_bag(output: str | Path, images: np.ndarray | Sequence[np.ndarray],
                    labels: Sequence[int] | np.ndarray | None = None,
                    names: Sequence[str] | None = None, *, class_names: Sequence[str] = (),
                    topic: str = DEFAULT_IMAGE_TOPIC, storage: str = 'sqlite3',
                    rate_hz: float = 10.0, encoding: str = 'rgb8', frame_id: str = 'camera',
                    start_ns: int | None = None, progress: bool = False) -> BagSummary:
    """Write RGB frames as ``sensor_msgs/Image`` at ``rate_hz``, ground truth beside them.

    Frame i gets header stamp = log time = ``start_ns + i / rate_hz`` (default start: now), so
    recorded timing and stamps agree. ``output`` must not exist (rosbag2 never overwrites).
    """
    import time

    from rosbags.rosbag2 import Writer, WriterError

    if not (isinstance(rate_hz, (int, float)) and math.isfinite(rate_hz) and rate_hz > 0):
        raise ValueError(f'rate_hz must be a finite number > 0, got {rate_hz!r}')
    if encoding not in WRITE_ENCODINGS:
        raise ValueError(f'encoding must be one of {WRITE_ENCODINGS}, got {encoding!r}')
    plugin = _storage_plugin(storage)
    n = len(images)
    if n == 0:
        raise ValueError('no images to write, got an empty sequence')
    labels = [-1] * n if labels is None else [int(x) for x in labels]
    names = [f'frame_{i:06d}' for i in range(n)] if names is None else list(names)
    if len(labels) != n or len(names) != n:
        raise ValueError(f'got {n} images but {len(labels)} labels and {len(names)} names')
    output = Path(output)
    if output.exists():
        raise FileExistsError(f'bag output already exists: got {str(output)!r}')
    start_ns = time.time_ns() if start_ns is None else int(start_ns)
    period_ns = NS_PER_S / rate_hz
    stamps = [start_ns + round(i * period_ns) for i in range(n)]
    store = typestore()
    frames: Iterable[int] = range(n)
    if progress:
        from tqdm import tqdm
        frames = tqdm(frames, desc=f'writing {output.name}', unit='img')
    try:
        with Writer(output, version=BAG_VERSION, storage_plugin=plugin) as writer:
            connection = writer.add_connection(topic, IMAGE_MSGTYPE, typestore=store)
            for i in frames:
                msg = image_message(np.asarray(images[i]), stamps[i], frame_id, encoding)
                writer.write(connection, stamps[i], store.serialize_cdr(msg, IMAGE_MSGTYPE))
    except WriterError as e:
        raise BagError(f'cannot write bag {output}: {e}') from e
    write_labels(labels_path(output),
                 GroundTruth(tuple(stamps), tuple(labels), tuple(names), tuple(class_names)))
    return BagSummary(output, storage, topic, n, float(rate_hz), encoding, start_ns)


# --------------------------------------------------------------------------- reading

@dataclass(frozen=True)
class ImageFrame:
    """One ``sensor_msgs/Image`` from a bag: its fields plus the bag's log time."""

    index: int
    log_time_ns: int
    stamp_ns: int
    frame_id: str
    encoding: str
    height: int
    width: int
    step: int
    is_bigendian: int
    data: np.ndarray = field(repr=False)

    def rgb(self) -> np.ndarray:
        """The frame as HxWx3 uint8 RGB (``ImageFormatError`` if malformed)."""
        from pls_perception.image_conversion import image_to_rgb

        return image_to_rgb(self.encoding, self.height, self.width, self.step,
                            self.is_bigendian, self.data)


def _reader_errors() -> tuple[type[BaseException], ...]:
    from rosbags.rosbag2 import ReaderError

    try:
        from rosbags.rosbag2.storage_mcap import McapError  # type: ignore[attr-defined]
        extra: tuple[type[BaseException], ...] = (McapError,)
    except ImportError:
        extra = ()
    return (ReaderError, sqlite3.Error, OSError, EOFError, KeyError, ValueError, IndexError,
            AssertionError, UnicodeDecodeError, MemoryError, TypeError, struct.error, *extra)


class _BagReader:
    """A ``rosbags`` Reader whose every failure becomes a ``BagError`` naming the bag."""

    def __init__(self, path: str | Path) -> None:
        from rosbags.rosbag2 import Reader

        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f'bag does not exist: {self.path}')
        if not (self.path / 'metadata.yaml').is_file():
            raise BagError(f'not a rosbag2 directory (no metadata.yaml): {self.path}')
        try:
            self.reader = Reader(self.path)
            self.reader.open()
        except _reader_errors() as e:
            raise BagError(f'cannot open bag {self.path} (corrupt or unsupported): {e}') from e

    def __enter__(self) -> _BagReader:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.reader.close()
        except _reader_errors():
            pass  # closing a broken bag must not hide the error being raised

    def topics(self) -> dict[str, str]:
        """``{topic: msgtype}``."""
        return {c.topic: c.msgtype for c in self.reader.connections}

    def messages(self, topics: Sequence[str]) -> Iterator[tuple[str, str, int, Any]]:
        """``(topic, msgtype, log_time_ns, message)``; errors name the message index."""
        store = typestore()
        connections = [c for c in self.reader.connections if c.topic in topics]
        index = 0
        try:
            for connection, log_time_ns, raw in self.reader.messages(connections=connections):
                msg = store.deserialize_cdr(raw, connection.msgtype)
                yield connection.topic, connection.msgtype, log_time_ns, msg
                index += 1
        except _reader_errors() as e:
            raise BagError(
                f'bag {self.path} is corrupt or truncated at message {index} of '
                f'{", ".join(topics)}: {type(e).__name__}: {e}') from e
        expected = sum(c.msgcount for c in connections)
        if index != expected:
            raise BagError(
                f'bag {self.path} is corrupt or truncated: metadata.yaml lists {expected} '
                f'messages on {", ".join(topics)} but the storage holds {index}')


def bag_topics(path: str | Path) -> dict[str, tuple[str, int]]:
    """``{topic: (msgtype, message count)}`` of a bag."""
    with _BagReader(path) as bag:
        return {name: (info.msgtype, info.msgcount) for name, info in bag.reader.topics.items()}


def image_topic(path: str | Path, topic: str | None = None) -> str:
    """``topic`` checked to exist with type sensor_msgs/msg/Image, or the bag's only one."""
    with _BagReader(path) as bag:
        return _check_image_topic(bag, topic)


def _check_image_topic(bag: _BagReader, topic: str | None) -> str:
    topics = bag.topics()
    listing = ', '.join(f'{t} [{m}]' for t, m in sorted(topics.items())) or 'none'
    if topic is None:
        images = [t for t, m in topics.items() if m == IMAGE_MSGTYPE]
        if len(images) != 1:
            raise BagError(
                f'bag {bag.path} has {len(images)} {IMAGE_MSGTYPE} topics, pass one explicitly; '
                f'topics: {listing}')
        return images[0]
    if topic not in topics:
        raise BagError(f'topic {topic!r} not in bag {bag.path}; topics: {listing}')
    if topics[topic] != IMAGE_MSGTYPE:
        raise BagError(
            f'topic {topic!r} in bag {bag.path} has type {topics[topic]}, expected '
            f'{IMAGE_MSGTYPE}')
    return topic


def read_image_frames(path: str | Path, topic: str | None = None,
                      limit: int | None = None) -> Iterator[ImageFrame]:
    """The frames of an image topic in log-time order (``BagError`` on any bag problem)."""
    with _BagReader(path) as bag:
        topic = _check_image_topic(bag, topic)
        for index, (_, _, log_time_ns, msg) in enumerate(bag.messages([topic])):
            if limit is not None and index >= limit:
                return
            stamp = msg.header.stamp
            yield ImageFrame(index, log_time_ns, stamp.sec * NS_PER_S + stamp.nanosec,
                             msg.header.frame_id, msg.encoding, msg.height, msg.width, msg.step,
                             msg.is_bigendian, msg.data)


def read_messages(path: str | Path, topics: Sequence[str] | None = None
                  ) -> Iterator[tuple[str, str, int, Any]]:
    """``(topic, msgtype, log_time_ns, message)`` of ``topics`` (all when None)."""
    with _BagReader(path) as bag:
        available = bag.topics()
        missing = [t for t in topics or () if t not in available]
        if missing:
            raise BagError(f'topics {missing} not in bag {bag.path}; topics: {sorted(available)}')
        yield from bag.messages(list(topics) if topics else list(available))


# --------------------------------------------------------------------------- recording

class RecordWriter:
    """A new bag that serialised CDR messages are appended to, from any thread.

    sqlite3 connections belong to the thread that made them, and rclpy callbacks run on
    executor threads, so one writer thread owns the bag; ``write`` only enqueues.
    """

    def __init__(self, output: str | Path, storage: str = 'sqlite3') -> None:
        self.path = Path(output)
        if self.path.exists():
            raise FileExistsError(f'record output already exists: got {str(self.path)!r}')
        self._plugin = _storage_plugin(storage)
        self._queue: queue.Queue[tuple[str, str, int, bytes] | None] = queue.Queue()
        self._opened = threading.Event()
        self._error: BaseException | None = None
        self.counts: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name='bag_writer', daemon=True)
        self._thread.start()
        self._opened.wait()
        if self._error is not None:
            raise BagError(f'cannot create bag {self.path}: {self._error}') from self._error

    def _run(self) -> None:
        from rosbags.rosbag2 import Writer

        try:
            writer = Writer(self.path, version=BAG_VERSION, storage_plugin=self._plugin)
            writer.open()
        except Exception as e:  # noqa: BLE001 - re-raised in the constructor's thread
            self._error = e
            self._opened.set()
            return
        self._opened.set()
        connections: dict[str, Any] = {}
        try:
            while (item := self._queue.get()) is not None:
                topic, msgtype, log_time_ns, cdr = item
                if topic not in connections:
                    connections[topic] = writer.add_connection(topic, msgtype,
                                                               typestore=typestore())
                writer.write(connections[topic], log_time_ns, cdr)
                self.counts[topic] = self.counts.get(topic, 0) + 1
        except Exception as e:  # noqa: BLE001 - re-raised by close()
            self._error = e
        finally:
            writer.close()

    def write(self, topic: str, msgtype: str, log_time_ns: int, cdr: bytes) -> None:
        """Append one message (``cdr``: rosbag2 CDR bytes incl. the encapsulation header)."""
        if self._error is not None:
            raise BagError(f'writing bag {self.path} failed: {self._error}') from self._error
        self._queue.put((topic, msgtype, int(log_time_ns), bytes(cdr)))

    def close(self) -> None:
        """Write what is queued, close the bag; ``BagError`` if any write failed."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise BagError(f'writing bag {self.path} failed: {self._error}') from self._error

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cdr(msgtype: str, **fields: Any) -> bytes:
    store = typestore()
    return bytes(store.serialize_cdr(store.types[msgtype](**fields), msgtype))


def string_cdr(text: str) -> bytes:
    """A ``std_msgs/msg/String`` as CDR bytes (for tests and tools writing recordings)."""
    return _cdr(STRING_MSGTYPE, data=text)


def classification_cdr(stamp_ns: int, results: Sequence[tuple[int, float]],
                       frame_id: str = 'camera') -> bytes:
    """The perception node's typed result, ``(class index, score)`` best first, as CDR bytes."""
    hypothesis_t = typestore().types['vision_msgs/msg/ObjectHypothesis']
    return _cdr(CLASSIFICATION_MSGTYPE, header=_header(stamp_ns, frame_id), results=[
        hypothesis_t(class_id=str(class_id), score=float(score)) for class_id, score in results])


def label_info_cdr(class_names: Sequence[str]) -> bytes:
    """A ``vision_msgs/msg/LabelInfo`` naming class index ``i`` ``class_names[i]``, as CDR."""
    class_t = typestore().types['vision_msgs/msg/VisionClass']
    return _cdr(LABEL_INFO_MSGTYPE, header=_header(0, ''), threshold=0.0, class_map=[
        class_t(class_id=i, class_name=name) for i, name in enumerate(class_names)])


# --------------------------------------------------------------------------- report

@dataclass(frozen=True)
class Recording:
    """The nodes' outputs read back from a recording bag.

    ``classifications`` has one ``(log_time_ns, result)`` per classification message, in log-time
    order: the frame's ``~/frame_info`` JSON, with ``class_id``, ``label``, ``score`` and
    ``top_k`` from its ``vision_msgs/Classification`` when that was recorded; ``source`` says
    which (``typed`` or ``frame_info``). ``class_map`` is the recorded ``~/label_info``.
    """

    classifications: tuple[tuple[int, dict], ...]
    operating_points: tuple[tuple[int, dict], ...]  # (log_time_ns, JSON payload)
    diagnostics: int
    class_map: dict[int, str] = field(default_factory=dict)


def stamp_to_ns(stamp: Any) -> int:
    """A JSON stamp as integer nanoseconds: ``{'sec', 'nanosec'}``, ``[sec, nanosec]`` or ns."""
    if isinstance(stamp, dict):
        return int(stamp['sec']) * NS_PER_S + int(stamp['nanosec'])
    if isinstance(stamp, (list, tuple)) and len(stamp) == 2:
        return int(stamp[0]) * NS_PER_S + int(stamp[1])
    if isinstance(stamp, int):
        return stamp
    raise ValueError(f'stamp must be {{sec, nanosec}}, [sec, nanosec] or int ns, got {stamp!r}')


def read_recording(path: str | Path) -> Recording:
    """Results (``*/classification`` typed, ``*/frame_info`` JSON), ``*/label_info`` and
    ``*/operating_point``; ``BagError`` for a message that is not what its topic promises."""
    typed, frame_info, operating_points, class_map, diagnostics = [], [], [], {}, 0
    for topic, msgtype, log_time_ns, msg in read_messages(path):
        if msgtype == DIAGNOSTICS_MSGTYPE:
            diagnostics += 1
        elif msgtype == CLASSIFICATION_MSGTYPE:
            typed.append((log_time_ns, _typed_result(topic, log_time_ns, msg)))
        elif msgtype == LABEL_INFO_MSGTYPE:
            class_map = {int(c.class_id): str(c.class_name) for c in msg.class_map}
        elif msgtype == STRING_MSGTYPE and topic.endswith(('/frame_info', '/operating_point')):
            try:
                payload = json.loads(msg.data)
            except json.JSONDecodeError as e:
                raise BagError(f'{topic} message at {log_time_ns} ns is not JSON: {e}') from e
            (frame_info if topic.endswith('/frame_info') else operating_points).append(
                (log_time_ns, payload))
    return Recording(_merge_results(typed, frame_info, class_map), tuple(operating_points),
                     diagnostics, class_map)


def _typed_result(topic: str, log_time_ns: int, msg: Any) -> dict[str, Any]:
    """A recorded ``vision_msgs/Classification`` in the frame_info JSON layout."""
    try:
        top_k = [{'class_id': int(h.class_id), 'score': float(h.score)} for h in msg.results]
    except ValueError as e:
        raise BagError(f'{topic} message at {log_time_ns} ns: class_id is not a class index '
                       f'({e})') from e
    if not top_k:
        raise BagError(f'{topic} message at {log_time_ns} ns has no results')
    stamp = msg.header.stamp
    return {'stamp': {'sec': int(stamp.sec), 'nanosec': int(stamp.nanosec)},
            'frame_id': msg.header.frame_id, 'class_id': top_k[0]['class_id'],
            'score': top_k[0]['score'], 'top_k': top_k}


def _merge_results(typed: Sequence[tuple[int, dict]], frame_info: Sequence[tuple[int, dict]],
                   class_map: dict[int, str]) -> tuple[tuple[int, dict], ...]:
    """Each typed result joined with the frame_info of its frame (same stamp, in order); the
    frame_info of frames without a typed result stands alone."""
    waiting: defaultdict[int, deque[dict]] = defaultdict(deque)
    for _, info in frame_info:
        waiting[stamp_to_ns(info['stamp'])].append(info)
    merged = []
    for log_time_ns, result in typed:
        queued = waiting.get(stamp_to_ns(result['stamp']))
        info = queued.popleft() if queued else {}
        top_k = [{**h, 'label': class_map.get(h['class_id'], '')} for h in result['top_k']]
        label = class_map.get(result['class_id'], info.get('label', ''))
        merged.append((log_time_ns, {**info, **result, 'label': label, 'top_k': top_k,
                                     'source': 'typed'}))
    unmatched = {id(info) for queued in waiting.values() for info in queued}
    merged += [(t, {**info, 'source': 'frame_info'}) for t, info in frame_info
               if id(info) in unmatched]
    return tuple(sorted(merged, key=lambda item: item[0]))


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {'p50': None, 'p90': None, 'p99': None, 'max': None, 'mean': None}
    arr = np.asarray(values, dtype=np.float64)
    return {'p50': float(np.percentile(arr, 50)), 'p90': float(np.percentile(arr, 90)),
            'p99': float(np.percentile(arr, 99)), 'max': float(arr.max()),
            'mean': float(arr.mean())}


def _budget_at(operating_points: Sequence[tuple[int, dict]], time_ns: int) -> dict | None:
    """The latest operating point published at or before ``time_ns``."""
    latest = None
    for t, point in operating_points:
        if t > time_ns:
            break
        latest = point
    return latest


def compute_report(recording: Recording, truth: GroundTruth,
                   deadline_ms: float | None = None) -> dict[str, Any]:
    """Accuracy, latency percentiles, deadline misses, drops and energy per frame.

    Results (typed where recorded, see ``Recording``) are matched to ground truth by header
    stamp. The deadline of a frame is ``deadline_ms`` when given, else the ``budget_ms`` of the
    operating point in effect when it was classified (no deadline when neither exists). Energy
    per frame is the frame_info's ``energy_mj`` when the node reports it, else the operating
    point's predicted ``energy_mj``.
    """
    labels = truth.by_stamp()
    rows = []
    unknown = duplicates = 0
    seen: set[int] = set()
    ops = sorted(recording.operating_points, key=lambda item: item[0])
    for log_time_ns, payload in recording.classifications:
        stamp = stamp_to_ns(payload['stamp'])
        if stamp not in labels:
            unknown += 1
            continue
        if stamp in seen:
            duplicates += 1
            continue
        seen.add(stamp)
        point = _budget_at(ops, log_time_ns)
        budget = deadline_ms if deadline_ms is not None else (
            point.get('budget_ms') if point else None)
        energy = payload.get('energy_mj')  # null when the node has no energy profile
        if energy is None and point:
            energy = point.get('energy_mj')
        latency = payload.get('latency_ms')
        rows.append({
            'stamp_ns': stamp, 'time_ns': log_time_ns, 'label': labels[stamp],
            'class_id': int(payload['class_id']), 'keep_ratio': payload.get('keep_ratio'),
            'freq_mhz': payload.get('frequency_mhz'),
            'latency_ms': latency, 'budget_ms': budget, 'energy_mj': energy,
            'missed': bool(budget is not None and latency is not None and latency > budget),
            'source': payload['source']})
    dropped = sorted(set(labels) - seen)
    labelled = [r for r in rows if r['label'] >= 0]
    correct = sum(r['class_id'] == r['label'] for r in labelled)
    n_labelled_truth = sum(1 for v in labels.values() if v >= 0)
    latencies = [r['latency_ms'] for r in rows if r['latency_ms'] is not None]
    energies = [r['energy_mj'] for r in rows if r['energy_mj'] is not None]
    with_deadline = [r for r in rows if r['budget_ms'] is not None]
    return {
        'frames_sent': len(labels),
        'frames_classified': len(rows),
        'frames_dropped': len(dropped),
        'dropped_stamps_ns': dropped,
        'unknown_stamps': unknown,
        'duplicates': duplicates,
        'accuracy_classified': correct / len(labelled) if labelled else None,
        'accuracy_all': correct / n_labelled_truth if n_labelled_truth else None,
        'latency_ms': _percentiles(latencies),
        'deadline_frames': len(with_deadline),
        'deadline_misses': sum(r['missed'] for r in with_deadline),
        'energy_per_frame_mj': float(np.mean(energies)) if energies else None,
        'results_typed': sum(r['source'] == 'typed' for r in rows),
        'results_frame_info': sum(r['source'] == 'frame_info' for r in rows),
        'label_info_matches_ground_truth': _same_class_names(recording.class_map, truth),
        'operating_points': len(recording.operating_points),
        'diagnostics': recording.diagnostics,
        'frames': rows,
    }


def _same_class_names(class_map: dict[int, str], truth: GroundTruth) -> bool | None:
    """Whether the node's ``~/label_info`` names the ground truth's classes alike (class ids
    are compared, so a different class order makes the accuracy meaningless); None: unknown."""
    if not class_map or not truth.class_names:
        return None
    return all(class_map.get(i) == name for i, name in enumerate(truth.class_names))


def report_table(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline figures of a report as ``(name, value)`` rows."""
    def fmt(value: Any, spec: str = '.2f') -> str:
        return '-' if value is None else format(value, spec)

    lat = report['latency_ms']
    return [
        ('frames sent', str(report['frames_sent'])),
        ('frames classified', str(report['frames_classified'])),
        ('frames dropped', str(report['frames_dropped'])),
        ('accuracy (classified)', fmt(report['accuracy_classified'], '.4f')),
        ('accuracy (drops count as wrong)', fmt(report['accuracy_all'], '.4f')),
        ('latency p50 / p90 / p99 / max [ms]',
         ' / '.join(fmt(lat[k]) for k in ('p50', 'p90', 'p99', 'max'))),
        ('deadline misses', f'{report["deadline_misses"]} of {report["deadline_frames"]}'),
        ('energy per frame [mJ]', fmt(report['energy_per_frame_mj'], '.3f')),
        ('results read from', f'vision_msgs/Classification {report["results_typed"]}, '
                              f'frame_info JSON {report["results_frame_info"]}'),
        ('label_info class names = ground truth',
         {None: '-', True: 'yes', False: 'NO: class ids mean different classes'}[
             report['label_info_matches_ground_truth']]),
    ]


def plot_report(report: dict[str, Any], png: str | Path) -> Path:
    """Latency (with budget and misses), keep ratio and frequency per frame over time (PNG)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = sorted(report['frames'], key=lambda r: r['time_ns'])
    t0 = rows[0]['time_ns'] if rows else 0
    t_s = [(r['time_ns'] - t0) / NS_PER_S for r in rows]
    fig, (ax_lat, ax_ratio) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    ax_lat.plot(t_s, [r['latency_ms'] for r in rows], '.', ms=3, label='latency')
    ax_lat.step(t_s, [r['budget_ms'] for r in rows], where='post', color='tab:red',
                label='budget')
    missed = [(t, r['latency_ms']) for t, r in zip(t_s, rows) if r['missed']]
    if missed:
        ax_lat.plot(*zip(*missed), 'x', color='tab:red', label='deadline miss')
    ax_lat.set_ylabel('latency [ms]')
    ax_lat.legend(loc='upper right')
    ax_lat.set_title(f'{report["frames_classified"]}/{report["frames_sent"]} frames, '
                     f'{report["frames_dropped"]} dropped, accuracy '
                     f'{report["accuracy_classified"] or 0:.3f}')
    ax_ratio.step(t_s, [r['keep_ratio'] for r in rows], where='post', label='keep ratio')
    ax_ratio.set_ylabel('keep ratio')
    ax_ratio.set_ylim(0.0, 1.05)
    ax_ratio.set_xlabel('time since first classification [s]')
    if any(r['freq_mhz'] is not None for r in rows):
        ax_freq = ax_ratio.twinx()
        ax_freq.step(t_s, [r['freq_mhz'] for r in rows], where='post', color='tab:orange',
                     label='frequency')
        ax_freq.set_ylabel('frequency [MHz]', color='tab:orange')
    fig.tight_layout()
    png = Path(png)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


# --------------------------------------------------------------------------- image sources

def is_bag(path: str | Path) -> bool:
    """Whether ``path`` is a rosbag2 directory."""
    return (Path(path) / 'metadata.yaml').is_file()


class FrameSource:
    """Frames to publish from a bag topic, a folder, an image tar or the CIFAR-10 split.

    Bag frames keep their fields (encoding, stamps, log times) unless ``encoding`` asks for a
    re-encoding; file frames are encoded as ``encoding`` (default rgb8) with log time = index.
    """

    def __init__(self, source: str | Path, *, split: str = 'test', limit: int | None = None,
                 per_class: int | None = None, topic: str | None = None,
                 encoding: str | None = None, frame_id: str | None = None) -> None:
        if encoding is not None and encoding not in WRITE_ENCODINGS:
            raise ValueError(f'encoding must be one of {WRITE_ENCODINGS}, got {encoding!r}')
        self.source = str(source)
        self.is_bag = is_bag(source)
        self.limit = limit
        self.encoding = encoding
        self.frame_id = frame_id
        if self.is_bag:
            self.topic = image_topic(source, topic)
            count = bag_topics(source)[self.topic][1]
            self.count = count if limit is None else min(limit, count)
            self._images = None
        else:
            self.topic = None
            self._images, _, _, _ = load_source_images(source, split, limit, per_class)
            self.count = len(self._images)
        if self.count == 0:
            raise ValueError(f'image source has no frames: got {self.source!r}')

    def frames(self) -> Iterator[ImageFrame]:
        """One pass over the frames (``BagError`` from a broken bag)."""
        if self._images is None:
            for frame in read_image_frames(self.source, self.topic, self.limit):
                yield self._recode(frame)
            return
        encoding = self.encoding or 'rgb8'
        for i, image in enumerate(self._images):
            data, step = encode_rgb(image, encoding)
            yield ImageFrame(i, i, 0, self.frame_id or 'camera', encoding, image.shape[0],
                             image.shape[1], step, 0, data)

    def _recode(self, frame: ImageFrame) -> ImageFrame:
        frame_id = self.frame_id or frame.frame_id
        if self.encoding is None or self.encoding == frame.encoding:
            if frame_id == frame.frame_id:
                return frame
            data, step, encoding = frame.data, frame.step, frame.encoding
        else:
            data, step = encode_rgb(np.ascontiguousarray(frame.rgb()), self.encoding)
            encoding = self.encoding
        return ImageFrame(frame.index, frame.log_time_ns, frame.stamp_ns, frame_id, encoding,
                          frame.height, frame.width, step, frame.is_bigendian, data)


def check_rates(rate_hz: float, rate_multiplier: float) -> None:
    """Validate a replay rate (0 = recorded timing) and multiplier; ``ValueError`` if bad."""
    if not (math.isfinite(rate_hz) and rate_hz >= 0):
        raise ValueError(f'rate_hz must be >= 0 (0 = recorded timing), got {rate_hz!r}')
    if not (math.isfinite(rate_multiplier) and rate_multiplier > 0):
        raise ValueError(f'rate_multiplier must be > 0, got {rate_multiplier!r}')


def publish_offset_ns(index: int, log_time_ns: int, first_log_time_ns: int, rate_hz: float,
                      rate_multiplier: float = 1.0) -> int:
    """When to publish a frame, relative to the first one of the pass.

    ``rate_hz > 0``: frame ``index`` at ``index / rate_hz``. ``rate_hz == 0``: at its recorded
    log-time offset divided by ``rate_multiplier`` (2.0 = twice as fast as recorded).
    """
    check_rates(rate_hz, rate_multiplier)
    if rate_hz > 0:
        return round(index * NS_PER_S / rate_hz)
    return round((log_time_ns - first_log_time_ns) / rate_multiplier)
