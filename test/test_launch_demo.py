"""launch_testing test of launch/demo.launch.py: the whole graph classifies and follows budgets.

Runs under ``python -m pytest`` (launch_testing's pytest plugin) and ``colcon test``; skipped with
a reason where the ROS 2 launch tools are not installed. The demo runs with its default weights
and images (found by the data search of pls_perception.paths) and a short budget schedule; the
test checks that the lifecycle node reaches active, classifications flow, a budget change reaches
the perception node, and that every process exits 0 on SIGINT without logging an error.
"""
from __future__ import annotations

import json
import unittest

import pytest

import launch_support
from launch_support import CONFIGURE_TIMEOUT_S, LAUNCH_TOOLS_MISSING

launch_testing = pytest.importorskip('launch_testing', reason=LAUNCH_TOOLS_MISSING)

import launch  # noqa: E402
import launch_testing.markers  # noqa: E402
from std_msgs.msg import String  # noqa: E402

TIGHT_MS = 100.0


@launch_support.needs_data
@pytest.mark.launch_test
@launch_testing.markers.keep_alive
def generate_test_description() -> launch.LaunchDescription:
    return launch_support.launch_description(
        'demo.launch.py', {'budget_schedule': f'0:5000,20:{TIGHT_MS:g}'})


class TestDemoGraph(unittest.TestCase):

    def test_lifecycle_reaches_active(self, proc_output: object) -> None:
        proc_output.assertWaitFor('active: classifying', timeout=CONFIGURE_TIMEOUT_S,
                                  stream='stderr')

    def test_classifications_flow(self) -> None:
        self.assertIn('class_id', launch_support.first_classification())

    def test_budget_change_is_applied(self) -> None:
        points: list[dict[str, object]] = []

        def tight_applied() -> bool:
            return any(p['budget_ms'] == TIGHT_MS and p['applied'] for p in points)

        with launch_support.probe('demo_listener') as graph:
            graph.node.create_subscription(String, '/dvfs_manager/operating_point',
                                           lambda m: points.append(json.loads(m.data)), 10)
            applied = graph.spin_until(tight_applied, CONFIGURE_TIMEOUT_S + 60.0)
        self.assertTrue(applied, points[-3:])


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):

    def test_every_process_exits_0_without_errors(self, proc_info: object,
                                                  proc_output: object) -> None:
        launch_support.assert_clean_shutdown(proc_info, proc_output)
