"""image_source over real rclpy/DDS: bag and folder sources, timing, stamps, loop, errors."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')

from rclpy.exceptions import InvalidParameterValueException  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from pls_perception.errors import BagError  # noqa: E402
from pls_perception.io import bags  # noqa: E402
from pls_perception.io.image_conversion import image_to_rgb  # noqa: E402
from pls_perception.nodes.image_source_node import ImageSourceNode  # noqa: E402

IMAGES = np.random.default_rng(3).integers(0, 256, (12, 4, 6, 3), dtype=np.uint8)
RECORDED_HZ = 20.0


@pytest.fixture(scope='module')
def ros() -> Iterator[None]:
    rclpy.init()
    try:
        yield
    finally:
        rclpy.try_shutdown()


@pytest.fixture(scope='module')
def image_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp('bags') / 'bag'
    return bags.write_image_bag(out, IMAGES, list(range(12)), storage='mcap',
                                rate_hz=RECORDED_HZ, start_ns=42 * bags.NS_PER_S).path


class Sink(Node):
    """Collects every Image on /image with its arrival time."""

    def __init__(self) -> None:
        super().__init__('image_sink')
        self.received: list[tuple[float, Image]] = []
        self.create_subscription(Image, '/image', self._on_image,
                                 QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))

    def _on_image(self, msg: Image) -> None:
        self.received.append((time.monotonic(), msg))


def _run(params: dict, want: int, timeout_s: float = 30.0) -> tuple[ImageSourceNode, Sink]:
    sink = Sink()
    source = ImageSourceNode(parameter_overrides=[
        Parameter(k, value=v) for k, v in {'wait_for_subscribers': 1, **params}.items()])
    executor = SingleThreadedExecutor()
    executor.add_node(sink)
    executor.add_node(source)
    source.start()
    deadline = time.monotonic() + timeout_s
    try:
        while len(sink.received) < want and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
    finally:
        source.stop()
        executor.shutdown()
        source.destroy_node()
        sink.destroy_node()
    assert source.error is None
    return source, sink


def _rgb(msg: Image) -> np.ndarray:
    return image_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian,
                        msg.data)


def test_bag_replay_keeps_stamps_and_pixels(ros: None, image_bag: Path) -> None:
    source, sink = _run({'source': str(image_bag), 'rate_hz': 200.0}, want=12)
    assert source.published == 12 and source.done.is_set()
    msgs = [m for _, m in sink.received]
    stamps = [m.header.stamp.sec * bags.NS_PER_S + m.header.stamp.nanosec for m in msgs]
    assert stamps == list(bags.read_labels(image_bag).stamps_ns)
    assert all(np.array_equal(_rgb(m), image) for m, image in zip(msgs, IMAGES))
    assert {m.header.frame_id for m in msgs} == {'camera'}


def test_recorded_timing_with_multiplier(ros: None, image_bag: Path) -> None:
    multiplier = 2.0
    _, sink = _run({'source': str(image_bag), 'rate_hz': 0.0, 'rate_multiplier': multiplier,
                    'stamp': 'now'}, want=12)
    # stamp 'now' = publish time, free of the receiving side's scheduling
    times = [m.header.stamp.sec + m.header.stamp.nanosec / 1e9 for _, m in sink.received]
    expected_s = 11 / RECORDED_HZ / multiplier
    # Due times are absolute from the start, so frames are never early; a late first frame
    # (scheduling noise, up to 50 ms allowed) shortens the span, later ones stretch it.
    # x1 would take 0.55 s, as fast as possible ~0 s.
    assert expected_s - 0.05 <= times[-1] - times[0] <= expected_s + 1.0


def test_folder_source_restamps_and_recodes(ros: None, tmp_path: Path) -> None:
    from PIL import Image as PilImage

    for i, image in enumerate(IMAGES[:5]):
        PilImage.fromarray(image).save(tmp_path / f'{i}.png')
    before = time.time_ns()
    _, sink = _run({'source': str(tmp_path), 'rate_hz': 100.0, 'encoding': 'bgr8',
                    'frame_id': 'front'}, want=5)
    msgs = [m for _, m in sink.received]
    stamps = [m.header.stamp.sec * bags.NS_PER_S + m.header.stamp.nanosec for m in msgs]
    assert before <= stamps[0] and stamps == sorted(stamps) and stamps[-1] <= time.time_ns()
    assert {(m.encoding, m.header.frame_id) for m in msgs} == {('bgr8', 'front')}
    assert all(np.array_equal(_rgb(m), image) for m, image in zip(msgs, IMAGES[:5]))


def test_loop_and_now_stamps(ros: None, image_bag: Path) -> None:
    source, sink = _run({'source': str(image_bag), 'rate_hz': 200.0, 'limit': 3, 'loop': True,
                         'stamp': 'now'}, want=8)
    assert len(sink.received) >= 8
    labels = bags.read_labels(image_bag).stamps_ns
    first = sink.received[0][1].header.stamp
    assert first.sec * bags.NS_PER_S + first.nanosec not in labels
    pixels = [_rgb(m) for _, m in sink.received[:8]]
    assert all(np.array_equal(p, IMAGES[i % 3]) for i, p in enumerate(pixels))


def test_bad_parameters(ros: None, image_bag: Path, tmp_path: Path) -> None:
    def make(**params) -> ImageSourceNode:
        return ImageSourceNode(parameter_overrides=[Parameter(k, value=v)
                                                    for k, v in params.items()])

    with pytest.raises(ValueError, match='stamp must be one of'):
        make(source=str(image_bag), stamp='gps')
    # rclpy enforces the descriptor's range at declaration.
    with pytest.raises(InvalidParameterValueException, match='rate_multiplier out of range'):
        make(source=str(image_bag), rate_hz=0.0, rate_multiplier=-1.0)
    with pytest.raises(BagError, match="'/camera' not in bag"):
        make(source=str(image_bag), bag_topic='/camera')
    from PIL import Image as PilImage

    PilImage.fromarray(IMAGES[0]).save(tmp_path / 'a.png')
    with pytest.raises(ValueError, match='needs a rosbag2 source'):
        make(source=str(tmp_path), rate_hz=0.0)


def _executable(*params: str) -> list[str]:
    args = [sys.executable, '-m', 'pls_perception.nodes.image_source_node', '--ros-args']
    for p in params:
        args += ['-p', p]
    return args


@pytest.mark.parametrize('tool', ['image_source', 'pls-bag replay'])
def test_executable_publishes_then_exits(ros: None, image_bag: Path, tool: str) -> None:
    sink = Sink()
    command = (_executable(f'source:={image_bag}', 'rate_hz:=100.0', 'wait_for_subscribers:=1')
               if tool == 'image_source' else
               [sys.executable, '-m', 'pls_perception.tools.bag_cli', 'replay', str(image_bag),
                '--rate-hz', '100'])
    proc = subprocess.Popen(command,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ.copy())
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            rclpy.spin_once(sink, timeout_sec=0.05)
        for _ in range(20):  # drain what arrived just before the exit
            rclpy.spin_once(sink, timeout_sec=0.02)
        out = proc.communicate(timeout=10)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
        sink.destroy_node()
    assert proc.returncode == 0, out
    assert 'published 12 frames' in out
    assert len(sink.received) == 12


def test_executable_reports_corrupt_bag(image_bag: Path, tmp_path: Path) -> None:
    broken = tmp_path / 'broken'
    broken.mkdir()
    (broken / 'metadata.yaml').write_text((image_bag / 'metadata.yaml').read_text())
    (broken / 'bag.mcap').write_bytes(b'\x89MCAP0\r\n' + bytes(64))
    proc = subprocess.run(_executable(f'source:={broken}'), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert 'cannot open bag' in proc.stderr or 'corrupt' in proc.stderr, proc.stderr
