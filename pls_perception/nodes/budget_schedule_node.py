"""Budget schedule node: publishes ``/latency_budget`` (std_msgs/Float64, ms) from a schedule.

Stands in for the planner of an AV stack that tightens and relaxes the perception deadline, so the
DVFS manager's adaptation is visible in the demo and testable. The schedule logic lives in the
ROS-free pls_perception.operating_points.budget_schedule; this node only keeps time and publishes.
The budget is
published at each change and re-published at ``publish_rate_hz`` so late subscribers catch up.
With ``wait_for_subscribers`` the schedule's clock starts only once that many subscribers are
matched (e.g. the DVFS manager and the perception node), so step times are as written.
"""
from __future__ import annotations

import time
from typing import Any, NoReturn

from rclpy.node import Node
from std_msgs.msg import Float64

from pls_perception.nodes.parameters import descriptor
from pls_perception.nodes.spin import spin_node
from pls_perception.operating_points.budget_schedule import BudgetSchedule

NODE_NAME = 'budget_schedule'
DEFAULT_SCHEDULE = '0:40,10:15,20:60'


class BudgetScheduleNode(Node):
    """Publishes the scheduled latency budget on /latency_budget."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.declare_parameter('schedule', DEFAULT_SCHEDULE, descriptor(
            'budget steps "seconds:ms,..." from the node start, e.g. "0:40,10:15,20:60"',
            read_only=True))
        self.declare_parameter('loop', False, descriptor('repeat the schedule', read_only=True))
        self.declare_parameter('period_s', 0.0, descriptor(
            'loop period; 0 = the last step lasts as long as the one before it',
            float_range=(0.0, 1e6), read_only=True))
        self.declare_parameter('publish_rate_hz', 1.0, descriptor(
            'how often the budget in force is re-published', float_range=(0.01, 100.0),
            read_only=True))
        self.declare_parameter('wait_for_subscribers', 0, descriptor(
            'start the schedule once this many /latency_budget subscribers match',
            int_range=(0, 1000), read_only=True))
        p = self.get_parameter
        self.schedule = BudgetSchedule(str(p('schedule').value), loop=bool(p('loop').value),
                                       period_s=float(p('period_s').value))
        self._publisher = self.create_publisher(Float64, '/latency_budget', 10)
        self._wait_for = int(p('wait_for_subscribers').value)
        self._start: float | None = None
        self._current_ms: float | None = None
        self._last_publish = 0.0
        self._period_s = 1.0 / float(p('publish_rate_hz').value)
        self.create_timer(0.05, self._tick)
        self.get_logger().info(f'publishing /latency_budget from {self.schedule}')

    def _tick(self) -> None:
        now = time.monotonic()
        if self._start is None:
            if self._publisher.get_subscription_count() < self._wait_for:
                return
            self._start = now
        budget_ms = self.schedule.budget_at(now - self._start)
        if budget_ms != self._current_ms:
            self.get_logger().info(f't = {now - self._start:.1f} s: budget {budget_ms:g} ms')
        elif now - self._last_publish < self._period_s:
            return
        self._current_ms = budget_ms
        self._last_publish = now
        self._publisher.publish(Float64(data=budget_ms))


def main(args: list[str] | None = None) -> NoReturn:
    """``ros2 run pls_perception budget_schedule``: publish the schedule until Ctrl-C."""
    spin_node(BudgetScheduleNode, NODE_NAME, args)


if __name__ == '__main__':
    main()
