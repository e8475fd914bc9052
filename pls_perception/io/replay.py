"""Where replayed frames come from and when they are published: a rosbag2 image topic, an image
folder or a CIFAR-layout tarball, at a fixed rate or the recorded timing. ROS-free; the
``image_source`` node publishes what it yields.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pls_perception.io.bags import (NS_PER_S, WRITE_ENCODINGS, ImageFrame, bag_topics, encode_rgb,
                                    image_topic, load_source_images, read_image_frames)


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
