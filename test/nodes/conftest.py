"""Fixtures for the node tests: an rclpy context per module, a background executor, a probe node.

Everything is real rclpy over Fast DDS (the suite-wide conftest isolates the DDS domain). Each
module gets its own rclpy Context so a failing test cannot leave the default context behind.
"""
from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import rclpy
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String


class Spinner:
    """A MultiThreadedExecutor spinning in a background thread; add nodes while it runs."""

    def __init__(self, context: Context, num_threads: int = 4) -> None:
        self.executor = MultiThreadedExecutor(num_threads=num_threads, context=context)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True,
                                        name='test-executor')
        self._thread.start()

    def add(self, node: Node) -> Node:
        self.executor.add_node(node)
        return node

    def remove(self, node: Node) -> None:
        self.executor.remove_node(node)

    def shutdown(self) -> None:
        self.executor.shutdown(timeout_sec=10.0)
        self._thread.join(timeout=10.0)


@pytest.fixture(scope='module')
def ros_context() -> Iterator[Context]:
    context = Context()
    rclpy.init(context=context)
    yield context
    rclpy.try_shutdown(context=context)


@pytest.fixture
def spinner_factory(ros_context: Context) -> Iterator[Callable[[int], Spinner]]:
    """``spinner_factory(num_threads)`` -> a running Spinner, shut down after the test."""
    made: list[Spinner] = []

    def make(num_threads: int = 4) -> Spinner:
        made.append(Spinner(ros_context, num_threads))
        return made[-1]
    yield make
    for spin in made:
        spin.shutdown()


@pytest.fixture
def spinner(spinner_factory: Callable[[int], Spinner]) -> Spinner:
    return spinner_factory(4)


class ClassificationProbe:
    """A plain node that listens to a perception node's ``~/frame_info`` (JSON)."""

    def __init__(self, node: Node, topic: str) -> None:
        self.node = node
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.subscription = node.create_subscription(
            String, topic, lambda msg: self.messages.put(json.loads(msg.data)),
            QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))

    def next(self, timeout_s: float = 30.0) -> dict[str, Any]:
        try:
            return self.messages.get(timeout=timeout_s)
        except queue.Empty:
            pytest.fail(f'no classification within {timeout_s:g} s')

    def until(self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 30.0,
              what: str = 'a matching classification') -> dict[str, Any]:
        """Skip messages until one satisfies ``predicate``."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f'timed out after {timeout_s:g} s waiting for {what}')
            try:
                message = self.messages.get(timeout=remaining)
            except queue.Empty:
                continue
            if predicate(message):
                return message

    def drain(self) -> list[dict[str, Any]]:
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out


@pytest.fixture
def make_probe() -> Callable[[Node, str], ClassificationProbe]:
    """``make_probe(node, topic)`` -> a ClassificationProbe listening on ``topic``."""
    return ClassificationProbe
