"""budget_schedule node over real rclpy: steps in order, re-publishing, waiting for listeners."""
from __future__ import annotations

import threading
import time

import pytest

rclpy = pytest.importorskip('rclpy')

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from std_msgs.msg import Float64  # noqa: E402

from pls_perception.nodes.budget_schedule_node import BudgetScheduleNode  # noqa: E402


@pytest.mark.timeout(60)
def test_publishes_the_schedule_once_a_listener_is_there() -> None:
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    received: list[tuple[float, float]] = []
    try:
        node = BudgetScheduleNode(context=context, parameter_overrides=[
            Parameter('schedule', value='0:50,1:20'), Parameter('publish_rate_hz', value=5.0),
            Parameter('wait_for_subscribers', value=1)])
        executor.add_node(node)
        thread = threading.Thread(target=executor.spin, daemon=True)
        thread.start()
        time.sleep(1.5)                 # nobody listens: the clock has not started
        listener = rclpy.create_node('budget_listener', context=context)
        t0 = time.monotonic()
        listener.create_subscription(
            Float64, '/latency_budget',
            lambda m: received.append((time.monotonic() - t0, m.data)), 10)
        executor.add_node(listener)
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline and not any(b == 20.0 for _, b in received):
            time.sleep(0.05)
        time.sleep(0.6)
    finally:
        executor.shutdown()
        rclpy.shutdown(context=context)
    budgets = [b for _, b in received]
    assert budgets and budgets[0] == 50.0, received
    first_20 = budgets.index(20.0)
    assert set(budgets[:first_20]) == {50.0} and set(budgets[first_20:]) == {20.0}
    # 50 ms held for ~1 s after the listener appeared (not already over), re-published at 5 Hz.
    assert first_20 >= 3, received
    assert len(budgets) - first_20 >= 2, received


def test_bad_schedule_is_a_clear_error() -> None:
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        with pytest.raises(ValueError, match='budget schedule'):
            BudgetScheduleNode(context=context,
                               parameter_overrides=[Parameter('schedule', value='5:10')])
    finally:
        rclpy.shutdown(context=context)
