"""launch_testing test of launch/dvfs_manager.launch.py: the manager alone answers budgets.

With no perception node running, every accepted ``/latency_budget`` must still be solved and
published on ``~/operating_point`` (not applied, target unavailable): a loose budget gets a slow,
frugal point, a tight one a faster clock, each predicted within its budget on the shipped Orin
Nano CPU profile. The manager must exit 0 on SIGINT without logging an error. Skipped with a
reason where the ROS 2 launch tools are not installed.
"""
from __future__ import annotations

import json
import unittest

import pytest

import launch_support
from launch_support import LAUNCH_TOOLS_MISSING

launch_testing = pytest.importorskip('launch_testing', reason=LAUNCH_TOOLS_MISSING)

import launch  # noqa: E402
import launch_testing.markers  # noqa: E402
from std_msgs.msg import Float64, String  # noqa: E402

# On the Orin Nano CPU profile: 1000 ms leaves the minimum-EDP point feasible; 55 ms is met only
# by the accuracy-feasible ratios at a higher clock.
LOOSE_MS = 1000.0
TIGHT_MS = 55.0


@pytest.mark.launch_test
@launch_testing.markers.keep_alive
def generate_test_description() -> launch.LaunchDescription:
    return launch_support.launch_description('dvfs_manager.launch.py')


class TestManager(unittest.TestCase):

    def test_budgets_become_operating_points(self, proc_output: object) -> None:
        proc_output.assertWaitFor('objective edp', timeout=60.0, stream='stderr')
        points: dict[float, dict[str, object]] = {}

        def on_point(msg: String) -> None:
            point = json.loads(msg.data)
            points.setdefault(point['budget_ms'], point)
        with launch_support.probe('budget_publisher') as graph:
            publisher = graph.node.create_publisher(Float64, '/latency_budget', 10)
            graph.node.create_subscription(String, '/dvfs_manager/operating_point', on_point, 10)
            self.assertTrue(graph.spin_until(lambda: publisher.get_subscription_count() > 0,
                                             30.0), 'the manager never subscribed')
            for budget_ms in (LOOSE_MS, TIGHT_MS):
                publisher.publish(Float64(data=budget_ms))
                self.assertTrue(graph.spin_until(lambda: budget_ms in points, 30.0), points)
        for budget_ms, point in points.items():
            self.assertTrue(point['feasible'], point)
            self.assertLessEqual(point['latency_ms'], budget_ms, point)
            self.assertFalse(point['applied'] or point['target_available'], point)
        self.assertGreater(points[TIGHT_MS]['freq_mhz'], points[LOOSE_MS]['freq_mhz'], points)


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):

    def test_exits_0_without_errors(self, proc_info: object, proc_output: object) -> None:
        launch_support.assert_clean_shutdown(proc_info, proc_output)
