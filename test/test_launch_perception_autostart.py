"""launch_testing test of launch/perception.launch.py with autostart:=true (the default).

Launch events drive the lifecycle node to active with the reference weights; with a looping image
source beside it, it must answer ``get_state`` with active and publish classifications, and every
process must exit 0 on SIGINT without logging an error. Skipped with a reason where the ROS 2
launch tools are not installed.
"""
from __future__ import annotations

import unittest

import pytest

import launch_support
from launch_support import CONFIGURE_TIMEOUT_S, LAUNCH_TOOLS_MISSING, PERCEPTION_NODE

launch_testing = pytest.importorskip('launch_testing', reason=LAUNCH_TOOLS_MISSING)

import launch  # noqa: E402
import launch_testing.markers  # noqa: E402


@launch_support.needs_data
@pytest.mark.launch_test
@launch_testing.markers.keep_alive
def generate_test_description() -> launch.LaunchDescription:
    return launch_support.perception_with_images(autostart=True)


class TestAutostart(unittest.TestCase):

    def test_reaches_active_and_classifies(self, proc_output: object) -> None:
        proc_output.assertWaitFor('active: classifying', timeout=CONFIGURE_TIMEOUT_S,
                                  stream='stderr')
        with launch_support.probe('autostart_check') as graph:
            state = launch_support.LifecycleDriver(graph, PERCEPTION_NODE).wait_for('active', 30.0)
        self.assertEqual(state, 'active')
        self.assertIn('class_id', launch_support.first_classification())


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):

    def test_every_process_exits_0_without_errors(self, proc_info: object,
                                                  proc_output: object) -> None:
        launch_support.assert_clean_shutdown(proc_info, proc_output)
