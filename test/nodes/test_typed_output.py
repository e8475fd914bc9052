"""Typed output (vision_msgs) of the perception node, and the node without vision_msgs.

Real DDS, separate processes: the perception node runs as its executable; this process
subscribes like a user's stack would. With vision_msgs installed, the typed results must equal
the package's own offline computation on the same frames, the class map must reach a late
subscriber, and ``pls-bag record``/``report`` must store and read back the typed messages. In a
process where ``vision_msgs`` cannot be imported (a meta-path blocker on PYTHONPATH), the node
must classify on ``~/frame_info``, warn once with a way to get the package, say so in
/diagnostics, and the DVFS manager must still close its loop.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lifecycle_msgs.msg import Transition
from rclpy.serialization import deserialize_message, serialize_message
from std_msgs.msg import Header

from pls_perception import paths
from pls_perception.io import bag_report, bags
from pls_perception.io.datasets import CIFAR10_CLASSES
from pls_perception.nodes import typed_output
from pls_perception.testing.graph_probe import (MANAGER_MODULE, PERCEPTION_MODULE, PERCEPTION_NODE,
                                                PipelineProbe, ReceivedLog, header_stamp_ns,
                                                probe_session, running_node, stamp_ns_of)
from pls_perception.tools import bag_cli

MSGS, WHY_NOT = typed_output.load_vision_msgs()
needs_vision_msgs = pytest.mark.skipif(MSGS is None, reason=f'vision_msgs: {WHY_NOT}')
needs_shared = pytest.mark.skipif(
    not paths.reference_weights().is_file() or not paths.cifar10_tar().is_file(),
    reason='needs the shared reference weights and CIFAR-10 (../shared)')
KEEP_RATIO = 0.5
TOP_K = 3
# Best-effort images (the default): the probe publishes sensor-data QoS.
NODE = {'dvfs_backend': 'simulated', 'engine': 'torch', 'num_threads': 1,
        'qos_depth': 100, 'keep_ratio': KEEP_RATIO,
        'top_k': TOP_K, 'warmup_frames': 1, 'diagnostics_period_s': 0.5, 'autostart': True}
CLASSIFICATION = f'/{PERCEPTION_NODE}/classification'
BLOCKER = '''
import importlib.abc
import sys


class _BlockVisionMsgs(importlib.abc.MetaPathFinder):
    """This process behaves as if vision_msgs were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == 'vision_msgs' or name.startswith('vision_msgs.'):
            raise ModuleNotFoundError(f'No module named {name!r}', name=name)
        return None


sys.meta_path.insert(0, _BlockVisionMsgs())
'''


def _cifar(per_class: int = 1) -> tuple[np.ndarray, np.ndarray]:
    from pls_perception.io.datasets import load_cifar10

    images, labels, _ = load_cifar10(per_class=per_class)
    return images, labels


def _offline_top_k(images: np.ndarray) -> list[tuple[tuple[int, str, float], ...]]:
    """The top-k of each image from the package's own pipeline outside ROS (torch engine, one
    image per inference, the node's keep ratio): what the node must publish."""
    import torch

    from pls_perception.dvfs import get_backend
    from pls_perception.engines import make_engine
    from pls_perception.pipeline.frame_pipeline import FramePipeline, Setpoint
    from pls_perception.skipping.weights import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    loaded = load_model(str(paths.reference_weights()))
    pipeline = FramePipeline(loaded.preprocessing, make_engine('torch', loaded),
                             get_backend('simulated'), loaded.class_names, TOP_K)
    try:
        pipeline.apply(Setpoint(KEEP_RATIO, 0.0))
        return [pipeline.classify(image).top_k for image in images]
    finally:
        pipeline.close()
        torch.set_num_threads(threads)


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f'timed out after {timeout_s:g} s waiting for {what}')
        time.sleep(0.1)


# ---------------------------------------------------------------------------- messages
@needs_vision_msgs
def test_messages_are_what_the_bag_tools_read() -> None:
    """The node's messages and the definitions bags.py gives rosbags agree on the wire."""
    header = Header(frame_id='cam')
    header.stamp.sec, header.stamp.nanosec = 12, 345
    result = typed_output.build_classification(MSGS, header, ((3, 'cat', 0.75), (5, 'dog', 0.25)))
    read = bags.typestore().deserialize_cdr(serialize_message(result),
                                            bags.CLASSIFICATION_MSGTYPE)
    assert (read.header.stamp.sec, read.header.stamp.nanosec, read.header.frame_id) == (
        12, 345, 'cam')
    assert [(h.class_id, h.score) for h in read.results] == [('3', 0.75), ('5', 0.25)]
    info = deserialize_message(bags.label_info_cdr(['a', 'b']), MSGS.LabelInfo)
    assert [(c.class_id, c.class_name) for c in info.class_map] == [(0, 'a'), (1, 'b')]
    built = typed_output.build_label_info(MSGS, CIFAR10_CLASSES)
    read = bags.typestore().deserialize_cdr(serialize_message(built), bags.LABEL_INFO_MSGTYPE)
    assert [(c.class_id, c.class_name) for c in read.class_map] == list(
        enumerate(CIFAR10_CLASSES))


@needs_vision_msgs
def test_label_info_refuses_more_classes_than_uint16_ids_name() -> None:
    names = [f'c{i}' for i in range(typed_output.MAX_CLASSES + 1)]
    with pytest.raises(ValueError, match='at most 65535 classes.*got 65536'):
        typed_output.build_label_info(MSGS, names)


@pytest.mark.parametrize('module_text, reason', [
    ('from std_msgs.msg import Header as Classification\n'
     'from std_msgs.msg import String as ObjectHypothesis\n', "has no attribute 'LabelInfo'"),
    ('from std_msgs.msg import Header as Classification, Header as LabelInfo\n'
     'from std_msgs.msg import String as ObjectHypothesis, String as VisionClass\n',
     "ValueError: Classification has the fields {'stamp': 'builtin_interfaces/Time', "),
    ('raise ImportError("libvision_msgs__rosidl_typesupport_c.so: cannot open")\n',
     'ImportError: libvision_msgs'),
])
def test_unusable_vision_msgs_is_reported_not_raised(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module_text: str, reason: str) -> None:
    """Missing classes, other fields (an older vision_msgs), a broken install: all 'off'."""
    package = f'fake_vision_msgs_{abs(hash(module_text))}'
    (tmp_path / package / 'msg').mkdir(parents=True)
    (tmp_path / package / '__init__.py').write_text('')
    (tmp_path / package / 'msg' / '__init__.py').write_text(module_text)
    monkeypatch.syspath_prepend(str(tmp_path))
    msgs, why = typed_output.load_vision_msgs(f'{package}.msg')
    assert msgs is None and why.startswith(f'{package}.msg cannot be used') and reason in why


# ---------------------------------------------------------------------------- typed path
@pytest.fixture(scope='module')
def typed_graph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineProbe]:
    """The perception node (reference weights, autostart) as a process; a probe here."""
    log_dir = tmp_path_factory.mktemp('typed_graph')
    with probe_session() as probe, running_node(PERCEPTION_MODULE, NODE, log_dir):
        _wait(lambda: probe.count_subscribers('image') > 0, 180, 'the node to subscribe')
        _wait(lambda: probe.count_publishers(CLASSIFICATION) > 0, 30, 'the typed publisher')
        yield probe


@needs_vision_msgs
@needs_shared
def test_typed_results_equal_the_offline_result(typed_graph: PipelineProbe) -> None:
    probe = typed_graph
    info = probe.get_publishers_info_by_topic(CLASSIFICATION)
    assert [i.topic_type for i in info] == [typed_output.CLASSIFICATION_MSGTYPE]
    images, _ = _cifar()
    images = images[:6]
    stamps = []
    for image in images:
        start = len(probe.typed)
        stamps.append(probe.publish_frame(image))
        assert probe.typed.wait_for(lambda r, s=stamps[-1]: header_stamp_ns(r.data) == s, 60,
                                    start), f'no typed result of frame {stamps[-1]}'
    typed = {header_stamp_ns(r.data): r.data for r in probe.typed.items}
    _wait(lambda: {stamp_ns_of(r.data) for r in probe.classifications.items} >= set(stamps), 30,
          'the frame_info of every frame')
    frame_info = {stamp_ns_of(r.data): r.data for r in probe.classifications.items}
    for stamp, expected in zip(stamps, _offline_top_k(images)):
        msg = typed[stamp]
        assert msg.header.frame_id == 'camera'
        assert [h.class_id for h in msg.results] == [str(c) for c, _, _ in expected]
        assert [h.score for h in msg.results] == pytest.approx([s for _, _, s in expected],
                                                               rel=1e-5, abs=1e-7)
        assert frame_info[stamp]['class_id'] == expected[0][0]
        assert frame_info[stamp]['label'] == expected[0][1]
        assert frame_info[stamp]['keep_ratio'] == KEEP_RATIO

    # the class map reaches a subscriber that joins long after it was published (latched)
    label_info = ReceivedLog()
    subscription = probe.create_subscription(MSGS.LabelInfo, f'/{PERCEPTION_NODE}/label_info',
                                             label_info.add, typed_output.LATCHED_QOS)
    try:
        received = label_info.wait_for(lambda r: True, 30)
        assert received is not None, 'the latched label_info never arrived'
        assert [(c.class_id, c.class_name) for c in received.data.class_map] == list(
            enumerate(CIFAR10_CLASSES))
        assert received.data.header.stamp.sec > 0
    finally:
        probe.destroy_subscription(subscription)
    status = probe.diagnostics.wait_for(lambda r: 'typed_output' in probe.node_status(r), 30)
    assert status is not None and probe.node_status(status)['typed_output'] == 'vision_msgs'


@needs_vision_msgs
@needs_shared
def test_bag_record_stores_typed_results_and_report_reads_them(
        typed_graph: PipelineProbe, tmp_path: Path) -> None:
    bag, record = tmp_path / 'cifar10_10', tmp_path / 'record'
    assert bag_cli.main(['make', '--per-class', '1', '-o', str(bag), '--rate-hz', '2']) == 0
    result = subprocess.run(
        [sys.executable, '-m', 'pls_perception.tools.bag_cli', 'record', '-o', str(record),
         '--source', str(bag), '--discovery-timeout-s', '5', '--idle-s', '3'],
        capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    topics = bags.bag_topics(record)
    typed_count = topics[CLASSIFICATION][1]
    assert topics[CLASSIFICATION][0] == bags.CLASSIFICATION_MSGTYPE and typed_count >= 1
    assert topics[f'/{PERCEPTION_NODE}/frame_info'] == (bags.STRING_MSGTYPE, typed_count)
    # published at configure, before the recording started: recorded because it is latched
    assert topics[f'/{PERCEPTION_NODE}/label_info'] == (bags.LABEL_INFO_MSGTYPE, 1)

    out = tmp_path / 'report'
    assert bag_cli.main(['report', str(record), str(bag), '--output-dir', str(out)]) == 0
    report = json.loads((out / 'report.json').read_text())
    assert report['results_typed'] == report['frames_classified'] == typed_count
    assert report['results_frame_info'] == 0
    assert report['label_info_matches_ground_truth'] is True
    # the typed class ids read back are the ones the node put in frame_info for the same frame
    frame_info = {stamp_ns_of(json.loads(m.data)): json.loads(m.data)['class_id'] for _, _, _, m
                  in bags.read_messages(record, [f'/{PERCEPTION_NODE}/frame_info'])}
    recording = bag_report.read_recording(record)
    assert {bag_report.stamp_to_ns(r['stamp']): r['class_id'] for _, r in
            recording.classifications} == frame_info


# ---------------------------------------------------------------------------- fallback
def _status(probe: PipelineProbe, node: str, key: str, predicate: Any,
            timeout_s: float) -> dict[str, str]:
    """The next /diagnostics status of ``node`` whose ``key`` satisfies ``predicate``."""
    received = probe.diagnostics.wait_for(
        lambda r: key in probe.node_status(r, node) and predicate(probe.node_status(r, node)[key]),
        timeout_s, max(0, len(probe.diagnostics) - 1))
    assert received is not None, f'no /diagnostics of {node} with a matching {key}'
    return probe.node_status(received, node)


def test_without_vision_msgs_the_node_classifies_on_frame_info_and_the_loop_closes(
        tmp_path: Path) -> None:
    (tmp_path / 'blocker').mkdir()
    (tmp_path / 'blocker' / 'sitecustomize.py').write_text(textwrap.dedent(BLOCKER))
    env = {'PYTHONPATH': str(tmp_path / 'blocker')}
    check = subprocess.run([sys.executable, '-c', 'import vision_msgs'],
                           env={**os.environ, **env}, capture_output=True, text=True)
    assert 'ModuleNotFoundError' in check.stderr, 'the blocker does not block'
    node = {**NODE, 'weights': 'random', 'class_names': [f'class{i}' for i in range(10)]}
    frames = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    # its own namespace: the module's typed node may still be running
    namespace = ['-r', '__ns:=/fallback']
    target = f'fallback/{PERCEPTION_NODE}'
    with probe_session(target, '/fallback/image') as probe, \
            running_node(PERCEPTION_MODULE, node, tmp_path, ros_args=namespace,
                         env=env) as perception:
        _wait(lambda: probe.count_subscribers('/fallback/image') > 0, 180,
              'the node to subscribe')
        # frames keep coming: a best-effort frame sent while discovery settles may be lost
        with probe.feeding(frames, rate_hz=2.0):
            first = probe.classifications.wait_for(lambda r: True, 120)
        assert first is not None, 'no frame_info'
        assert first.data['keep_ratio'] == KEEP_RATIO
        assert first.data['label'].startswith('class')
        status = _status(probe, target, 'typed_output', lambda v: True, 30)
        assert status['typed_output'].startswith(
            "off: vision_msgs.msg cannot be used (ModuleNotFoundError: No module named")
        # a reconfigure does not repeat the warning
        for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP,
                           Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
            assert probe.transition(transition), transition
        start = len(probe.classifications)
        with probe.feeding(frames, rate_hz=2.0):
            assert probe.classifications.wait_for(lambda r: True, 120, start) is not None
        assert probe.count_publishers(f'/{target}/classification') == 0
        assert len(probe.typed) == 0
        warnings = [line for line in perception.log_text().splitlines()
                    if 'typed output off' in line]
        assert len(warnings) == 1, warnings
        assert 'WARN' in warnings[0] and '~/frame_info' in warnings[0]
        assert 'rosdep install' in warnings[0] and 'wheels/vision-msgs' in warnings[0]

        # the manager (also without vision_msgs) measures frame_info latencies and its point
        # is what the node runs
        manager_parameters = {'accuracy_loss_max': 1.0, 'target_node': f'/{target}'}
        with running_node(MANAGER_MODULE, manager_parameters, tmp_path, ros_args=namespace,
                          env=env), probe.feeding(frames, rate_hz=4.0):
            _wait(lambda: probe.count_subscribers(f'/{target}/frame_info') >= 2, 60,
                  'the manager to subscribe to frame_info')
            probe.publish_budget(300.0)
            manager = _status(probe, 'dvfs_manager', 'applied', lambda v: v == 'True', 90)
            point = float(manager['keep_ratio'])
            assert point != KEEP_RATIO  # accuracy_loss_max 1: the cheapest ratio, 0.1
            start = len(probe.classifications)
            assert probe.classifications.wait_for(
                lambda r: r.data['keep_ratio'] == point, 60, start) is not None
            measured = _status(probe, 'dvfs_manager', 'measurements', lambda v: int(v) >= 5, 60)
            assert float(measured['last_latency_ms']) > 0
