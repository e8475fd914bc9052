"""Perception lifecycle node over real rclpy/Fast DDS: transitions, images in every encoding,
live parameter updates, malformed input, diagnostics, and the node as a separate process.

The ResNet-152 reference weights are loaded once per module; nodes get them through a caching
``model_loader`` (any other path still goes through the real ``load_model``, so the failure paths
are real). Expected labels come from the same model evaluated offline at the same keep ratio.
"""
from __future__ import annotations

import contextlib
import copy
import io
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image as PilImage

rclpy = pytest.importorskip('rclpy')

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Float64  # noqa: E402

from pls_perception import paths  # noqa: E402
from pls_perception.dvfs.simulated import ORIN_NANO_CPU_FREQUENCIES_MHZ  # noqa: E402
from pls_perception.io.datasets import load_cifar10  # noqa: E402
from pls_perception.nodes.perception_node import RECONFIGURE_REASON, PerceptionNode  # noqa: E402
from pls_perception.operating_points.profiles import load_profile  # noqa: E402
from pls_perception.skipping.weights import LoadedModel, load_model  # noqa: E402
from pls_perception.testing.graph_probe import rss_mb  # noqa: E402

F_MAX_MHZ = max(ORIN_NANO_CPU_FREQUENCIES_MHZ)
BASE_PARAMS: dict[str, Any] = {
    'dvfs_backend': 'simulated', 'engine': 'torch', 'qos_reliability': 'reliable',
    'warmup_frames': 1, 'num_threads': 1, 'diagnostics_period_s': 0.2,
}
_namespaces = itertools.count()
RCLPY_BUILTIN_PARAMETERS = {'use_sim_time', 'start_type_description_service'}

pytestmark = pytest.mark.skipif(
    not paths.reference_weights().is_file() or not paths.cifar10_tar().is_file(),
    reason=f'needs the shared reference weights ({paths.reference_weights()}) and CIFAR-10 '
           f'({paths.cifar10_tar()})')


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def reference() -> LoadedModel:
    torch.set_num_threads(1)
    return load_model(str(paths.reference_weights()))


@pytest.fixture(scope='module')
def cifar() -> tuple[np.ndarray, np.ndarray]:
    images, labels, _ = load_cifar10(per_class=1)
    return images, labels


@pytest.fixture
def loader(reference: LoadedModel) -> Callable[..., LoadedModel]:
    """The module's reference model for the reference path; anything else really loads."""
    def load(weights: str, **kw: Any) -> LoadedModel:
        if weights == str(paths.reference_weights()):
            return reference
        return load_model(weights, **kw)
    return load


def offline_labels(loaded: LoadedModel, images: np.ndarray, ratio: float) -> list[int]:
    with loaded.model.using_ratio(ratio), torch.inference_mode():
        logits = loaded.model(loaded.preprocessing.to_tensor(images))
    return logits.argmax(dim=1).tolist()


class Harness:
    """A perception node plus a client node (image publisher, classification probe)."""

    def __init__(self, context: Context, spinner: Any, make_probe: Callable[..., Any],
                 loader: Callable[..., LoadedModel], params: dict[str, Any]) -> None:
        self.namespace = f'/perception_test_{os.getpid()}_{next(_namespaces)}'
        overrides = [Parameter(k, value=v) for k, v in {**BASE_PARAMS, **params}.items()]
        self.node = PerceptionNode(namespace=self.namespace, context=context,
                                   parameter_overrides=overrides, model_loader=loader)
        self.client = Node('perception_test_client', namespace=self.namespace, context=context)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub = self.client.create_publisher(Image, 'image', reliable)
        self.compressed_pub = self.client.create_publisher(
            CompressedImage, 'image/compressed', reliable)
        self.probe = make_probe(self.client, f'{self.namespace}/pls_perception_node/'
                                             'frame_info')
        self.params = AsyncParameterClient(self.client, self.node.get_fully_qualified_name())
        self.spinner = spinner
        spinner.add(self.node)
        spinner.add(self.client)
        self._seq = itertools.count(1)

    def start(self) -> None:
        assert self.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert self.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        wait_for(lambda: self.image_pub.get_subscription_count() > 0
                 or self.compressed_pub.get_subscription_count() > 0, 20, 'the image subscription')
        wait_for(lambda: self.probe.subscription.get_publisher_count() > 0, 20,
                 'the classification publisher')

    def send(self, msg: Image | CompressedImage) -> int:
        """Publish with a fresh sequence number in header.stamp.sec; return it."""
        seq = next(self._seq)
        msg.header.stamp.sec = seq
        msg.header.frame_id = msg.header.frame_id or f'camera_{seq}'
        (self.compressed_pub if isinstance(msg, CompressedImage) else self.image_pub).publish(msg)
        return seq

    def classify(self, msg: Image | CompressedImage, timeout_s: float = 60.0) -> dict[str, Any]:
        seq = self.send(msg)
        return self.probe.until(lambda m: m['stamp']['sec'] == seq, timeout_s,
                                f'the classification of frame {seq}')

    def set_atomically(self, **values: float) -> Any:
        future = self.params.set_parameters_atomically(
            [Parameter(k, value=v) for k, v in values.items()])
        wait_for(future.done, 20, 'set_parameters_atomically')
        return future.result().result

    def set(self, **values: Any) -> list[Any]:
        future = self.params.set_parameters([Parameter(k, value=v) for k, v in values.items()])
        wait_for(future.done, 20, 'set_parameters')
        return future.result().results

    def diagnostics(self) -> dict[str, str]:
        return {kv.key: kv.value for kv in self.node.diagnostics_status().values}

    def close(self) -> None:
        self.spinner.remove(self.node)
        self.spinner.remove(self.client)
        if self.node.pipeline is not None:
            self.node.trigger_shutdown()
        self.node.destroy_node()
        self.client.destroy_node()


@pytest.fixture
def harness(ros_context: Context, spinner: Any, make_probe: Callable[..., Any],
            loader: Callable[..., LoadedModel]) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**params: Any) -> Harness:
        made.append(Harness(ros_context, spinner, make_probe, loader, params))
        return made[-1]
    yield make
    for h in made:
        h.close()


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f'timed out after {timeout_s:g} s waiting for {what}')
        time.sleep(0.02)


# ---------------------------------------------------------------------------- messages
def grey(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, as a camera's mono mode would give."""
    return np.asarray(PilImage.fromarray(rgb).convert('L'))


def image_msg(rgb: np.ndarray, encoding: str, padding: int = 0) -> Image:
    """``rgb`` as a raw Image in ``encoding`` (mono encodings carry ``grey(rgb)``)."""
    height, width, _ = rgb.shape
    alpha = np.full((height, width, 1), 200, np.uint8)
    pixels = {'rgb': rgb, 'bgr': rgb[..., ::-1],
              'rgba': np.concatenate([rgb, alpha], 2),
              'bgra': np.concatenate([rgb[..., ::-1], alpha], 2),
              'mono': grey(rgb)[..., None]}[encoding.rstrip('0123456789')]
    bigendian = encoding.endswith('16')  # exercise big-endian on every 16-bit frame
    if bigendian:
        pixels = (pixels.astype(np.uint32) * 257).astype('>u2')
    rows = np.ascontiguousarray(pixels).reshape(height, -1).view(np.uint8)
    rows = np.concatenate([rows, np.zeros((height, padding), np.uint8)], axis=1)
    return Image(height=height, width=width, encoding=encoding, is_bigendian=bigendian,
                 step=rows.shape[1], data=rows.tobytes())


def compressed_msg(rgb: np.ndarray, fmt: str) -> tuple[CompressedImage, np.ndarray]:
    """(message, the RGB pixels a decoder sees) for 'png' or 'jpeg'."""
    buffer = io.BytesIO()
    PilImage.fromarray(rgb).save(buffer, format=fmt.upper(), quality=90)
    decoded = np.asarray(PilImage.open(io.BytesIO(buffer.getvalue())).convert('RGB'))
    return CompressedImage(format=f'rgb8; {fmt} compressed bgr8', data=buffer.getvalue()), decoded


# ---------------------------------------------------------------------------- parameters
def test_parameters_have_descriptors_ranges_and_defaults(harness: Callable[..., Harness]) -> None:
    node = harness().node
    ratio, freq, depth = node.describe_parameters(['keep_ratio', 'frequency_mhz', 'qos_depth'])
    assert ratio.description and ratio.floating_point_range[0].to_value == 1.0
    assert freq.floating_point_range[0].from_value == 0.0
    assert depth.integer_range[0].from_value == 1
    assert node.describe_parameters(['autostart'])[0].read_only
    for name in set(node._parameters) - RCLPY_BUILTIN_PARAMETERS:
        assert node.describe_parameters([name])[0].description, name
    assert node.get_parameter('keep_ratio').value == 1.0
    assert node.get_parameter('frequency_mhz').value == 0.0
    assert node.get_parameter('qos_reliability').value == 'reliable'  # override honoured


def test_config_file_matches_declared_defaults(ros_context: Context) -> None:
    import yaml
    config = yaml.safe_load((paths.config_dir() / 'perception.yaml').read_text())
    values = config['pls_perception_node']['ros__parameters']
    node = PerceptionNode(namespace='/config_check', context=ros_context)
    try:
        for name, value in values.items():
            assert node.get_parameter(name).value == value, name
        declared = set(node._parameters) - RCLPY_BUILTIN_PARAMETERS - {'class_names'}
        assert declared <= set(values), declared - set(values)
    finally:
        node.destroy_node()


# ---------------------------------------------------------------------------- lifecycle
def test_missing_weights_fail_configure_and_node_stays_unconfigured(
        harness: Callable[..., Harness], tmp_path: Path) -> None:
    h = harness(weights=str(tmp_path / 'missing.pt'))
    assert h.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert h.node.lifecycle_state == 'unconfigured'
    assert h.node.pipeline is None
    assert h.image_pub.get_subscription_count() == 0
    (tmp_path / 'corrupt.pt').write_bytes(b'not a torch file')
    assert h.set(weights=str(tmp_path / 'corrupt.pt'))[0].successful
    assert h.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    # fixing the parameter is enough: the next configure succeeds
    assert h.set(weights=str(paths.reference_weights()))[0].successful
    assert h.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert h.node.lifecycle_state == 'inactive'


@pytest.mark.parametrize('param', ['skip_policy', 'energy_profile', 'bn_recalibration'])
def test_bad_auxiliary_files_fail_configure(harness: Callable[..., Harness], tmp_path: Path,
                                            param: str) -> None:
    (tmp_path / 'garbage').write_text('{not: [valid')
    h = harness(**{param: str(tmp_path / 'garbage')})
    assert h.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert h.node.lifecycle_state == 'unconfigured' and h.node.pipeline is None


def test_int8_precision_configures_and_classifies(harness: Callable[..., Harness], tmp_path: Path,
                                                 cifar: tuple) -> None:
    """int8 needs the onnxruntime engine and its calibration images; then frames flow."""
    images, _ = cifar
    h = harness(precision='int8', onnx_cache_dir=str(tmp_path / 'cache'), prebuild_ratios=[1.0])
    assert h.node.trigger_configure() == TransitionCallbackReturn.FAILURE   # engine torch
    assert h.set(engine='onnxruntime',
                 int8_calibration_data=str(tmp_path / 'missing.tar.gz'))[0].successful
    assert h.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert h.node.lifecycle_state == 'unconfigured' and h.node.pipeline is None
    assert h.set(int8_calibration_data='')[0].successful        # the searched CIFAR-10
    h.start()
    assert h.node.pipeline.engine.status()['precision'] == 'int8'
    assert h.classify(image_msg(images[0], 'rgb8'))['keep_ratio'] == 1.0
    h.node.pipeline.engine.prepare([0.5])      # not prebuilt: the gates are cut for it too
    assert h.diagnostics()['engine_int8_shared_graph'] == '0.5'    # served by the gated graph


def test_unavailable_dvfs_backend_fails_configure(harness: Callable[..., Harness]) -> None:
    from pls_perception.dvfs import get_backend
    from pls_perception.errors import BackendError
    try:
        get_backend('cpufreq').reset()
    except BackendError:
        pass
    else:
        pytest.skip('this machine has a usable cpufreq backend')
    h = harness(dvfs_backend='cpufreq')
    assert h.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert h.node.lifecycle_state == 'unconfigured'


def test_every_transition(harness: Callable[..., Harness], cifar: tuple) -> None:
    images, _ = cifar
    h = harness()
    node = h.node
    def state() -> str:
        return node.lifecycle_state
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert state() == 'inactive' and node.pipeline is not None
    assert h.image_pub.get_subscription_count() == 0  # subscribed only when active
    for _ in range(2):
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert state() == 'active'
        wait_for(lambda: h.image_pub.get_subscription_count() == 1, 20, 'subscription')
        wait_for(lambda: h.probe.subscription.get_publisher_count() == 1, 20, 'publisher')
        assert h.classify(image_msg(images[0], 'rgb8'))['frame_id'].startswith('camera_')
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert state() == 'inactive'
        wait_for(lambda: h.image_pub.get_subscription_count() == 0, 20, 'unsubscription')
        assert node.pipeline is not None  # model kept
    h.send(image_msg(images[0], 'rgb8'))  # inactive: ignored, nothing published
    time.sleep(0.5)
    assert h.probe.drain() == []
    backend = node.pipeline.backend
    assert h.set_atomically(frequency_mhz=806.4).successful
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    wait_for(lambda: h.image_pub.get_subscription_count() == 1, 20, 'subscription')
    assert h.classify(image_msg(images[0], 'rgb8'))['frequency_mhz'] == 806.4
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert state() == 'unconfigured' and node.pipeline is None
    assert backend.current_frequency_mhz() == F_MAX_MHZ  # cleanup reset the backend
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS  # from active
    assert state() == 'finalized' and node.pipeline is None


@pytest.mark.parametrize('steps', [(), ('configure',)], ids=['unconfigured', 'inactive'])
def test_shutdown_from_any_state(harness: Callable[..., Harness], steps: tuple[str, ...]) -> None:
    node = harness().node
    for step in steps:
        assert getattr(node, f'trigger_{step}')() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS
    assert node.lifecycle_state == 'finalized'
    assert node.pipeline is None


def _threads() -> int:
    """OS threads of this process once the count settles: a joined Python thread can linger in
    /proc/self/task for a moment after join() returned."""
    counts = [len(os.listdir('/proc/self/task'))]
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and (len(counts) < 3 or len(set(counts[-3:])) > 1):
        time.sleep(0.05)
        counts.append(len(os.listdir('/proc/self/task')))
    return min(counts[-3:])


def test_repeated_cycles_leak_neither_memory_nor_threads(
        ros_context: Context, spinner_factory: Callable[[int], Any],
        make_probe: Callable[..., Any], reference: LoadedModel, cifar: tuple) -> None:
    """Every configure gets a fresh 230 MB copy of the model: a leak would show in RSS.

    Thread pools (executor workers, DDS and torch helpers) grow lazily up to a cap during the
    first cycles, so a leak is judged by growth over the last cycles, where a thread leaked per
    cycle would show; the executor has two workers so its cap is reached quickly.
    """
    images, _ = cifar
    h = Harness(ros_context, spinner_factory(2), make_probe,
                lambda weights, **kw: copy.deepcopy(reference), {})
    try:
        samples = []
        for _ in range(6):
            h.start()
            h.classify(image_msg(images[1], 'rgb8'))
            assert h.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
            assert h.node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
            samples.append((_threads(), rss_mb(os.getpid())))
        threads, rss = zip(*samples)
        # one thread leaked per cycle would add 3 over the last three cycles
        assert threads[-1] - threads[-4] <= 1, samples
        assert threads[-1] <= threads[0] + 2, samples
        assert rss[-1] - rss[1] < 100, samples  # one leaked model would be ~230 MB
    finally:
        h.close()


# ---------------------------------------------------------------------------- images
ENCODINGS = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'rgb16', 'mono16')


def test_labels_equal_offline_evaluation_in_every_encoding(
        harness: Callable[..., Harness], reference: LoadedModel, cifar: tuple) -> None:
    images, _ = cifar
    ratio = 0.5
    expected_rgb = offline_labels(reference, images, ratio)
    grey_rgb = np.repeat(np.stack([grey(im) for im in images])[..., None], 3, axis=3)
    expected_grey = offline_labels(reference, grey_rgb, ratio)
    h = harness(keep_ratio=ratio)
    h.start()
    for encoding in ENCODINGS:
        count = len(images) if encoding == 'rgb8' else 3  # all ten once, a few per encoding
        expected = expected_grey if encoding.startswith('mono') else expected_rgb
        for i in range(count):
            result = h.classify(image_msg(images[i], encoding, padding=3 * (i % 2)))
            assert (result['class_id'], result['keep_ratio']) == (expected[i], ratio), (
                encoding, i)
            assert result['label'] == reference.class_names[expected[i]]
            assert result['top_k'][0]['class_id'] == expected[i]
            assert len(result['top_k']) == 5
            assert 0 < result['score'] <= 1


def test_compressed_transport_png_and_jpeg(harness: Callable[..., Harness],
                                           reference: LoadedModel, cifar: tuple) -> None:
    images, _ = cifar
    h = harness(image_transport='compressed', keep_ratio=0.75)
    h.start()
    for fmt in ('png', 'jpeg'):
        for i in range(4):
            msg, decoded = compressed_msg(images[i], fmt)
            expected = offline_labels(reference, decoded, 0.75)[0]
            assert h.classify(msg)['class_id'] == expected, (fmt, i)


def test_stamp_frame_id_and_schema(harness: Callable[..., Harness], cifar: tuple) -> None:
    h = harness(top_k=3)
    h.start()
    msg = image_msg(cifar[0][2], 'rgb8')
    msg.header.frame_id = 'front_camera'
    msg.header.stamp.nanosec = 123456789
    result = h.classify(msg)
    assert result['frame_id'] == 'front_camera'
    assert result['stamp']['nanosec'] == 123456789
    assert len(result['top_k']) == 3
    scores = [entry['score'] for entry in result['top_k']]
    assert scores == sorted(scores, reverse=True)
    assert set(result) >= {'class_id', 'label', 'score', 'keep_ratio', 'frequency_mhz',
                           'latency_ms', 'compute_ms', 'emulated_ms', 'preprocess_ms', 'engine',
                           'skip_policy', 'dvfs_backend', 'dvfs_real', 'frames', 'queue_ms',
                           'energy_mj', 'energy_source', 'frequency_requested_mhz', 'weights'}
    assert result['queue_ms'] >= 0
    assert result['latency_ms'] == pytest.approx(result['compute_ms'] + result['emulated_ms'],
                                                 abs=2e-3)
    assert (result['engine'], result['skip_policy'], result['dvfs_real']) == (
        'torch', 'proportional', False)
    assert result['energy_source'] == 'modelled' and result['energy_mj'] > 0


# ---------------------------------------------------------------------------- live updates
def power_at(freq_mhz: float) -> float:
    from pls_perception.dvfs.energy import profile_power_fn
    from pls_perception.operating_points.profiles import default_profile_path, load_profile
    return profile_power_fn(load_profile(default_profile_path()))(freq_mhz)


def test_parameter_updates_apply_from_the_next_frame_while_images_flow(
        harness: Callable[..., Harness], cifar: tuple) -> None:
    images, _ = cifar
    h = harness()
    h.start()
    stop = threading.Event()
    sent: list[int] = []

    def stream() -> None:
        for i in itertools.cycle(range(len(images))):
            if stop.is_set():
                return
            sent.append(h.send(image_msg(images[i], 'rgb8')))
            time.sleep(0.03)

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    try:
        h.probe.next()  # frames are flowing
        for ratio, freq in ((0.25, 806.4), (0.6, 0.0), (1.0, 1036.8)):
            result = h.set_atomically(keep_ratio=ratio, frequency_mhz=freq)
            assert result.successful, result.reason
            first_after = sent[-1] + 1  # frames sent from now on start after the update
            applied_freq = freq or F_MAX_MHZ  # 0 = hand the processor back (reset to max)
            message = h.probe.until(lambda m: m['stamp']['sec'] >= first_after, 60,
                                    f'a frame after setting {ratio}/{freq}')
            assert (message['keep_ratio'], message['frequency_mhz']) == (ratio, applied_freq)
            assert message['frequency_requested_mhz'] == freq
            # modelled energy = P(f) * (compute + emulated): the profile's power at f
            power_w = message['energy_mj'] / message['latency_ms']
            assert power_w == pytest.approx(power_at(applied_freq), rel=0.1)
            if applied_freq < F_MAX_MHZ:  # the simulated backend stretches the latency
                stretch = F_MAX_MHZ / applied_freq - 1
                assert message['emulated_ms'] == pytest.approx(
                    message['compute_ms'] * stretch, rel=0.05)
            else:
                assert message['emulated_ms'] == 0.0
    finally:
        stop.set()
        streamer.join()
    # a ratio alone is applied too, without touching the frequency
    assert h.set(keep_ratio=0.4)[0].successful
    result = h.classify(image_msg(images[0], 'rgb8'))
    assert (result['keep_ratio'], result['frequency_mhz']) == (0.4, 1036.8)


def test_each_classification_reports_the_pair_its_frame_ran_at(
        harness: Callable[..., Harness], cifar: tuple) -> None:
    # Atomic (ratio, frequency) updates arrive far faster than frames: every classification must
    # report a pair that was requested together, the one its frame ran at.
    images, _ = cifar
    pairs = [(0.3, 499.2), (0.5, 806.4), (0.7, 1113.6), (0.9, 1420.8)]
    h = harness()
    h.start()
    stop = threading.Event()

    def stream() -> None:
        for i in itertools.cycle(range(len(images))):
            if stop.is_set():
                return
            h.send(image_msg(images[i], 'rgb8'))
            time.sleep(0.02)

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    try:
        h.probe.next()
        for ratio, freq in itertools.islice(itertools.cycle(pairs), 200):
            assert h.set_atomically(keep_ratio=ratio, frequency_mhz=freq).successful
    finally:
        stop.set()
        streamer.join()
    reported = h.probe.drain()
    assert len(reported) >= 5
    allowed = {*pairs, (1.0, 0.0)}
    mixed = [(m['keep_ratio'], m['frequency_requested_mhz'], m['frequency_mhz'])
             for m in reported if (m['keep_ratio'], m['frequency_requested_mhz']) not in allowed
             or m['frequency_mhz'] != (m['frequency_requested_mhz'] or F_MAX_MHZ)]
    assert not mixed, f'{len(mixed)} of {len(reported)} report pairs never requested: {mixed[:5]}'


def test_device_emulation_makes_each_frame_take_the_profile_latency(
        harness: Callable[..., Harness], cifar: tuple) -> None:
    images, _ = cifar
    profile = load_profile(paths.config_dir() / 'profiles' / 'orin_nano_cpu.yaml')
    h = harness(dvfs_emulation='profile')
    h.start()
    assert 'emulating Jetson Orin Nano CPU' in h.diagnostics()['dvfs_emulation']
    for ratio, freq in ((1.0, 268.8), (0.5, 652.8)):
        assert h.set_atomically(keep_ratio=ratio, frequency_mhz=freq).successful
        m = h.classify(image_msg(images[0], 'rgb8'))
        assert (m['keep_ratio'], m['frequency_mhz']) == (ratio, freq)
        assert m['dvfs_emulation'].startswith('emulating') and m['dvfs_real'] is False
        device_ms = profile.latency_ms[profile.ratio_index(ratio), profile.frequency_index(freq)]
        # this host is faster than the device: the frame lasts as long as on the device
        assert m['latency_ms'] == pytest.approx(max(m['compute_ms'], device_ms), rel=0.05)
    assert not h.set(dvfs_emulation='warp')[0].successful


def test_invalid_and_configure_time_parameters_are_rejected_with_reasons(
        harness: Callable[..., Harness], cifar: tuple) -> None:
    h = harness()
    assert h.set(dvfs_backend='warp_drive')[0].reason.startswith('must be one of')
    h.start()
    bad = {'keep_ratio': 0.0, 'frequency_mhz': -5.0}
    for name, value in bad.items():
        result = h.set(**{name: value})[0]
        assert not result.successful and result.reason, name
    too_big = h.set(keep_ratio=1.5)[0]  # outside the descriptor's range: rclpy says why
    assert not too_big.successful and too_big.reason
    atomic = h.set_atomically(keep_ratio=0.5, frequency_mhz=-1.0)  # all or nothing
    assert not atomic.successful and 'frequency_mhz' in atomic.reason
    assert h.node.get_parameter('keep_ratio').value == 1.0
    for name, value in (('weights', '/tmp/other.pt'), ('engine', 'onnxruntime'),
                        ('qos_depth', 3), ('image_transport', 'compressed')):
        result = h.set(**{name: value})[0]
        assert not result.successful and RECONFIGURE_REASON in result.reason, name
    assert h.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert RECONFIGURE_REASON in h.set(weights='/tmp/other.pt')[0].reason  # inactive too
    assert h.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    wait_for(lambda: h.image_pub.get_subscription_count() == 1, 20, 'subscription')
    result = h.classify(image_msg(cifar[0][0], 'rgb8'))  # still classifies, at the old ratio
    assert result['keep_ratio'] == 1.0


def test_malformed_frames_are_counted_and_the_node_keeps_classifying(
        harness: Callable[..., Harness], cifar: tuple) -> None:
    h = harness()
    h.start()
    good = image_msg(cifar[0][0], 'rgb8')
    malformed = [
        Image(height=32, width=32, encoding='yuv422', step=64, data=bytes(64 * 32)),
        Image(height=32, width=32, encoding='rgb8', step=96, data=bytes(100)),
        Image(height=0, width=0, encoding='rgb8', step=0, data=b''),
        Image(height=100_000, width=100_000, encoding='mono8', step=100_000, data=bytes(10)),
        Image(height=32, width=32, encoding='rgb8', step=10, data=bytes(96 * 32)),
    ]
    for n, msg in enumerate(malformed, start=1):
        h.send(msg)
        wait_for(lambda n=n: h.diagnostics()['frames_rejected'] == str(n), 30,
                 f'{n} rejected frames')
    bad_jpeg = CompressedImage(format='jpeg', data=b'\xff\xd8 truncated')
    h.compressed_pub.publish(bad_jpeg)  # not subscribed in raw mode: simply unseen
    result = h.classify(good)
    assert result['frames']['rejected'] == len(malformed)
    status = h.node.diagnostics_status()
    assert status.level == DiagnosticStatus.WARN and 'malformed' in status.message


def test_only_the_newest_frame_is_processed(harness: Callable[..., Harness],
                                            cifar: tuple) -> None:
    images, _ = cifar
    h = harness(qos_depth=100)
    h.start()
    burst = 40
    for i in range(burst):
        last = h.send(image_msg(images[i % len(images)], 'rgb8'))
    final = h.probe.until(lambda m: m['stamp']['sec'] == last, 60, 'the newest frame')
    frames = final['frames']
    assert frames['received'] == burst
    assert frames['processed'] + frames['dropped'] == burst
    # the burst arrives far faster than frames are classified: most of it is dropped, not queued
    assert frames['processed'] < burst / 2, frames


def test_diagnostics_report_latency_counts_and_deadline_misses(
        harness: Callable[..., Harness], cifar: tuple) -> None:
    h = harness()
    statuses: list[DiagnosticStatus] = []
    h.client.create_subscription(
        DiagnosticArray, '/diagnostics',
        lambda msg: statuses.extend(s for s in msg.status
                                    if s.name.startswith(h.node.get_fully_qualified_name())),
        10)
    budget_pub = h.client.create_publisher(Float64, '/latency_budget', 10)
    h.start()
    wait_for(lambda: budget_pub.get_subscription_count() > 0, 20, 'the budget subscription')
    budget_pub.publish(Float64(data=0.001))  # impossible: every frame misses it
    wait_for(lambda: h.diagnostics()['budget_ms'] == '0.001', 20, 'the budget')
    for i in range(3):
        h.classify(image_msg(cifar[0][i], 'rgb8'))

    def latest() -> dict[str, str]:
        return {kv.key: kv.value for kv in statuses[-1].values} if statuses else {}
    wait_for(lambda: latest().get('frames_deadline_misses') == '3', 20, 'diagnostics')
    values = latest()
    assert statuses[-1].level == DiagnosticStatus.WARN
    assert values['dvfs_backend'] == 'simulated' and values['dvfs_kind'] == 'simulated'
    assert values['frames_processed'] == '3' and values['window_frames'] == '3'
    assert values['energy_source'] == 'modelled' and float(values['energy_per_frame_mj']) > 0
    p50, p95, peak = (float(values[f'latency_{k}_ms']) for k in ('p50', 'p95', 'max'))
    assert 0 < p50 <= p95 <= peak
    assert float(values['keep_ratio']) == 1.0
    assert float(values['frequency_mhz']) == F_MAX_MHZ


# ---------------------------------------------------------------------------- process
def _call(client: Any, request: Any, timeout_s: float) -> Any:
    assert client.wait_for_service(timeout_sec=timeout_s), client.srv_name
    future = client.call_async(request)
    wait_for(future.done, timeout_s, client.srv_name)
    return future.result()


def _until_answered(client: Any, request: Any, timeout_s: float) -> Any:
    """Repeat an idempotent request until a response arrives.

    A service can be discovered before its response path is (Fast DDS then drops the reply:
    'failed to send response'), so the first requests to a fresh process may go unanswered.
    """
    assert client.wait_for_service(timeout_sec=timeout_s), client.srv_name
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        future = client.call_async(request)
        attempt_end = time.monotonic() + 2.0
        while not future.done() and time.monotonic() < attempt_end:
            time.sleep(0.02)
        if future.done():
            return future.result()
        client.remove_pending_request(future)
    pytest.fail(f'no answer from {client.srv_name} within {timeout_s:g} s')


@contextlib.contextmanager
def node_process(namespace: str, parameters: dict[str, str], spinner: Any, context: Context,
                 tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Node]]:
    """The perception node executable under ``namespace`` plus a client node in this process;
    the node is killed if still up at the end, and its log is printed (pytest shows it when the
    test fails)."""
    command = [sys.executable, '-m', 'pls_perception.nodes.perception_node', '--ros-args',
               '-r', f'__ns:={namespace}', '-p', 'num_threads:=1', '-p', 'dvfs_backend:=simulated',
               '-p', 'qos_reliability:=reliable']
    for name, value in parameters.items():
        command += ['-p', f'{name}:={value}']
    log = open(tmp_path / 'node.log', 'w+')
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    client = Node(f'client_{os.getpid()}', namespace=namespace, context=context)
    spinner.add(client)
    try:
        yield process, client
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        spinner.remove(client)
        client.destroy_node()
        log.seek(0)
        print(log.read())
        log.close()


def test_node_as_a_separate_process_driven_by_change_state(
        ros_context: Context, spinner: Any, make_probe: Callable[..., Any],
        reference: LoadedModel, cifar: tuple, tmp_path: Path) -> None:
    images, _ = cifar
    namespace = f'/perception_proc_{os.getpid()}'
    node_name = f'{namespace}/pls_perception_node'
    with node_process(namespace, {'keep_ratio': '0.5', 'engine': 'torch'}, spinner, ros_context,
                      tmp_path) as (process, client):
        change = client.create_client(ChangeState, f'{node_name}/change_state')
        get = client.create_client(GetState, f'{node_name}/get_state')
        probe = make_probe(client, f'{node_name}/frame_info')
        pub = client.create_publisher(Image, 'image', QoSProfile(
            depth=10, reliability=ReliabilityPolicy.RELIABLE))

        def transition(transition_id: int) -> bool:
            return _call(change, ChangeState.Request(
                transition=Transition(id=transition_id)), 120).success

        state = _until_answered(get, GetState.Request(), 90)
        assert state.current_state.label == 'unconfigured'
        # deactivate is invalid while unconfigured: a harmless request that opens the reply
        # path, and that must not kill the node (rclpy alone would raise out of spin())
        assert not _until_answered(change, ChangeState.Request(
            transition=Transition(id=Transition.TRANSITION_DEACTIVATE)), 30).success
        assert _call(get, GetState.Request(), 30).current_state.label == 'unconfigured'
        assert transition(Transition.TRANSITION_CONFIGURE)
        assert transition(Transition.TRANSITION_ACTIVATE)
        wait_for(lambda: pub.get_subscription_count() > 0, 30, 'the node to subscribe')
        wait_for(lambda: probe.subscription.get_publisher_count() > 0, 30, 'its publisher')
        expected = offline_labels(reference, images[:4], 0.5)
        for i in range(4):
            msg = image_msg(images[i], 'bgr8')
            msg.header.stamp.sec = 1000 + i
            pub.publish(msg)
            result = probe.until(lambda m, i=i: m['stamp']['sec'] == 1000 + i, 60)
            assert (result['class_id'], result['keep_ratio']) == (expected[i], 0.5)
        assert transition(Transition.TRANSITION_DEACTIVATE)
        assert transition(Transition.TRANSITION_CLEANUP)
        assert transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
        assert _call(get, GetState.Request(), 30).current_state.label == 'finalized'
        assert process.poll() is None  # finalized, but still up until signalled
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0


def test_autostart_process_classifies_and_exits_cleanly_on_sigint(
        ros_context: Context, spinner: Any, make_probe: Callable[..., Any],
        reference: LoadedModel, cifar: tuple, tmp_path: Path) -> None:
    """``autostart:=true`` configures and activates in main(); Ctrl-C while active exits 0.
    (Default engine: onnxruntime where installed, every profile ratio built at configure.)"""
    images, _ = cifar
    namespace = f'/perception_autostart_{os.getpid()}'
    with node_process(namespace, {'autostart': 'true', 'image_transport': 'compressed'},
                      spinner, ros_context, tmp_path) as (process, client):
        probe = make_probe(client, f'{namespace}/pls_perception_node/frame_info')
        pub = client.create_publisher(CompressedImage, 'image/compressed', QoSProfile(
            depth=10, reliability=ReliabilityPolicy.RELIABLE))
        wait_for(lambda: pub.get_subscription_count() > 0, 180, 'the node to subscribe')
        wait_for(lambda: probe.subscription.get_publisher_count() > 0, 30, 'its publisher')
        msg, decoded = compressed_msg(images[5], 'png')
        msg.header.stamp.sec = 77
        pub.publish(msg)
        result = probe.until(lambda m: m['stamp']['sec'] == 77, 60)
        assert result['class_id'] == offline_labels(reference, decoded, 1.0)[0]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0

def test_onnxruntime_engine_builds_a_new_ratio_in_the_background(
        harness: Callable[..., Harness], cifar: tuple, reference: LoadedModel,
        tmp_path: Path) -> None:
    """A ratio without a graph: the previous ratio keeps serving (and /diagnostics says so)
    until the graph is built; then the labels equal the offline torch evaluation."""
    images, _ = cifar
    h = harness(engine='onnxruntime', prebuild_ratios=[1.0], onnx_cache_dir=str(tmp_path))
    h.start()
    first = h.classify(image_msg(images[0], 'rgb8'))
    assert (first['engine'], first['keep_ratio']) == ('onnxruntime', 1.0)
    assert h.diagnostics()['engine_pending_ratios'] == 'none'
    assert h.set(keep_ratio=0.5)[0].successful
    wait_for(lambda: h.diagnostics()['engine_pending_ratios'] == '0.5', 20,
             'ratio 0.5 pending in /diagnostics')
    status = h.node.diagnostics_status()
    assert status.level == DiagnosticStatus.WARN and 'serving 1 meanwhile' in status.message
    served: list[float] = []
    deadline = time.monotonic() + 180
    while not served or served[-1] != 0.5:
        assert time.monotonic() < deadline, f'ratio 0.5 never came into force: {served}'
        served.append(h.classify(image_msg(images[0], 'rgb8'))['keep_ratio'])
    assert set(served) <= {1.0, 0.5}  # the previous ratio, then the new one: nothing else
    assert h.diagnostics()['engine_pending_ratios'] == 'none'
    labels = [h.classify(image_msg(image, 'rgb8'))['class_id'] for image in images]
    assert labels == offline_labels(reference, images, 0.5)
