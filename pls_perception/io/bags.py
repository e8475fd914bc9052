"""ROS-free rosbag2 I/O: image bags with ground truth, and recordings of the nodes' outputs.

AV teams validate perception by replaying recorded drives, and ``ros2 bag`` is not on every
machine. This module writes and reads real rosbag2 directories (sqlite3 or mcap storage, the
files ``ros2 bag info``/``ros2 bag play`` accept) with the pure-Python ``rosbags`` package, so the
bag tools and the image source work without a ROS 2 install and are unit-tested without rclpy.
``io.replay`` schedules frames from them and ``io.bag_report`` scores a recording.

- ``write_image_bag``: ``sensor_msgs/Image`` frames at a fixed rate, with the ground-truth labels
  beside them in ``<bag>/labels.csv`` (header stamp -> label), the key a replay is scored by.
- ``read_image_frames``: the frames of one image topic; corrupt or truncated bags, a missing
  topic or a wrong message type raise ``BagError`` with a message that says what is wrong.
- ``RecordWriter``: appends already-serialised CDR messages (what an rclpy raw subscription
  delivers) to a new bag; ``read_messages`` reads them back.

Over 500 lines because rosbag2's two storage formats, the message definitions rosbags needs for
vision_msgs and the CDR encoders all belong to one concern: getting messages in and out of bags.
"""
from __future__ import annotations

import csv
import math
import queue
import sqlite3
import struct
import threading
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
    from pls_perception import paths
    from pls_perception.io import datasets

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
        from pls_perception.io.image_conversion import image_to_rgb

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
