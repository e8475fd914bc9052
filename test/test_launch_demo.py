"""launch_testing test of launch/demo.launch.py (runs under colcon test on a ROS 2 machine).

launch_testing is not installable from PyPI, so elsewhere this module is skipped. It starts the
demo graph with a short budget schedule and checks that the lifecycle node reaches active,
classifications flow, and a budget change reaches the perception node; then the exit codes.
"""
from __future__ import annotations

import json
import time
import unittest

import pytest

launch_testing = pytest.importorskip(
    'launch_testing', reason='launch_testing is not installable from PyPI (it comes with a ROS 2 '
    'distribution): run this with colcon test on a ROS 2 Jazzy machine')

import launch  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
import launch_testing.markers  # noqa: E402
import rclpy  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from launch_testing_ros import WaitForTopics  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from pls_perception import paths  # noqa: E402

TIGHT_MS = 100.0


@pytest.mark.launch_test
@launch_testing.markers.keep_alive
def generate_test_description() -> launch.LaunchDescription:
    demo = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(paths.share_dir() / 'launch' / 'demo.launch.py')),
        launch_arguments={'budget_schedule': f'0:5000,20:{TIGHT_MS:g}'}.items())
    return launch.LaunchDescription([demo, launch_testing.actions.ReadyToTest()])


class TestDemoGraph(unittest.TestCase):

    def test_lifecycle_reaches_active(self, proc_output: object) -> None:
        proc_output.assertWaitFor('active: classifying', timeout=180, stream='stderr')

    def test_classifications_flow(self) -> None:
        with WaitForTopics([('/pls_perception_node/frame_info', String)],
                           timeout=180.0) as wait:
            received = wait.received_messages('/pls_perception_node/frame_info')
        self.assertTrue(received)
        self.assertIn('latency_ms', json.loads(received[0].data))

    def test_budget_change_is_applied(self) -> None:
        rclpy.init()
        node = rclpy.create_node('demo_launch_test_listener')
        points: list[dict[str, object]] = []
        node.create_subscription(String, '/dvfs_manager/operating_point',
                                 lambda m: points.append(json.loads(m.data)), 10)
        try:
            deadline = time.monotonic() + 240.0
            while time.monotonic() < deadline and not any(
                    p['budget_ms'] == TIGHT_MS and p['applied'] for p in points):
                rclpy.spin_once(node, timeout_sec=0.5)
            self.assertTrue(any(p['budget_ms'] == TIGHT_MS and p['applied'] for p in points),
                            points[-3:])
        finally:
            node.destroy_node()
            rclpy.shutdown()


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):

    def test_exit_codes(self, proc_info: object) -> None:
        # SIGINT from launch: 0, or -2 when a process was still inside rclpy.
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0, -2, -15])
