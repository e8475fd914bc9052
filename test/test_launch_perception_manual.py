"""launch_testing test of launch/perception.launch.py with autostart:=false.

The lifecycle node must stay unconfigured (no model loaded, nothing published) until something
drives it; the test then drives it like a lifecycle manager would, through its ``change_state``
service (configure, then activate), and checks that it classifies. Every process must exit 0 on
SIGINT without logging an error. Skipped with a reason where the ROS 2 launch tools are not
installed.
"""
from __future__ import annotations

import time
import unittest

import pytest

import launch_support
from launch_support import CONFIGURE_TIMEOUT_S, LAUNCH_TOOLS_MISSING, PERCEPTION_NODE

launch_testing = pytest.importorskip('launch_testing', reason=LAUNCH_TOOLS_MISSING)

import launch  # noqa: E402
import launch_testing.markers  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402

# How long the node is watched staying unconfigured before the test drives it.
IDLE_S = 5.0


@launch_support.needs_data
@pytest.mark.launch_test
@launch_testing.markers.keep_alive
def generate_test_description() -> launch.LaunchDescription:
    return launch_support.perception_with_images(autostart=False)


class TestManualLifecycle(unittest.TestCase):

    def test_stays_unconfigured_until_driven(self, proc_output: object) -> None:
        with launch_support.probe('lifecycle_driver') as graph:
            driver = launch_support.LifecycleDriver(graph, PERCEPTION_NODE)
            self.assertEqual(driver.wait_for('unconfigured', 60.0), 'unconfigured')
            time.sleep(IDLE_S)
            self.assertEqual(driver.state(), 'unconfigured')
            topics = dict(graph.node.get_topic_names_and_types())
            self.assertNotIn(launch_support.CLASSIFICATION, topics)

            driver.request(Transition.TRANSITION_CONFIGURE)
            self.assertEqual(driver.wait_for('inactive', CONFIGURE_TIMEOUT_S), 'inactive')
            proc_output.assertWaitFor('configured:', timeout=10.0, stream='stderr')
            driver.request(Transition.TRANSITION_ACTIVATE)
            self.assertEqual(driver.wait_for('active', 60.0), 'active')
        self.assertIn('class_id', launch_support.first_classification())


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):

    def test_every_process_exits_0_without_errors(self, proc_info: object,
                                                  proc_output: object) -> None:
        launch_support.assert_clean_shutdown(proc_info, proc_output)
