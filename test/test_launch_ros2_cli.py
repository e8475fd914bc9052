"""The README's user journey with the real ``ros2`` command-line tool (subprocesses, no rclpy).

``ros2 launch pls_perception demo.launch.py budget_schedule:=none`` starts the graph without the
schedule node, so the budgets published here are the only ones. Then, as a user would:
``ros2 lifecycle get`` until active, ``ros2 param get/set`` (a valid keep_ratio is applied, 1.5
is refused with a reason), ``ros2 topic pub -w 2`` a budget and ``ros2 topic echo`` the manager's
operating point for it (its keep ratio reaches the node), and ``ros2 topic echo`` one
classification. Ctrl-C (SIGINT) must stop everything with exit code 0 and no ERROR line; the ros2
daemon the CLI started is stopped at the end.
"""
from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import launch_support
from launch_support import CONFIGURE_TIMEOUT_S, LAUNCH_TOOLS_MISSING, PERCEPTION_NODE, poll
from launch_support import ros2_cli as ros2


ROS2 = launch_support.ros2_executable()
pytestmark = [
    pytest.mark.skipif(ROS2 is None, reason=LAUNCH_TOOLS_MISSING),
    launch_support.needs_data,
]
BUDGET_MS = 80.0


def double_param(name: str) -> float:
    out = ros2('param', 'get', PERCEPTION_NODE, name).stdout
    match = re.search(r'Double value is: (\S+)', out)
    assert match, out
    return float(match.group(1))


def echoed_point() -> subprocess.CompletedProcess:
    """The manager's latest operating point (JSON in a String, latched; echo shortens it).

    The QoS is given: without it echo copies the publishers' QoS, or takes volatile when it has
    not discovered them yet, and then never receives the latched point.
    """
    return ros2('topic', 'echo', '--once', '--qos-durability', 'transient_local',
                '--qos-reliability', 'reliable', '/dvfs_manager/operating_point', timeout_s=30.0)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[launch_support.RosLaunch]:
    launch_support.package_prefix()  # ros2 launch finds pls_perception through AMENT_PREFIX_PATH
    try:
        with launch_support.RosLaunch(['pls_perception', 'demo.launch.py',
                                       'budget_schedule:=none'], tmp_path / 'launch.log') as run:
            yield run
    finally:
        ros2('daemon', 'stop')


def test_documented_commands_drive_the_demo(demo: launch_support.RosLaunch) -> None:
    poll(lambda: ros2('lifecycle', 'get', PERCEPTION_NODE, timeout_s=30.0),
         lambda out: out.startswith('active'), CONFIGURE_TIMEOUT_S)

    assert double_param('keep_ratio') == 1.0
    accepted = ros2('param', 'set', PERCEPTION_NODE, 'keep_ratio', '0.5')
    assert 'Set parameter successful' in accepted.stdout, accepted
    refused = ros2('param', 'set', PERCEPTION_NODE, 'keep_ratio', '1.5')
    reason = re.search(r'Setting parameter failed: (.*keep_ratio.*1\.5.*)', refused.stderr)
    assert reason, refused
    assert double_param('keep_ratio') == 0.5

    # -w 2: the manager and the perception node both listen; with -w 1 the one budget could go
    # out once the node had matched and before the manager had
    published = ros2('topic', 'pub', '-w', '2', '--once', '/latency_budget',
                     'std_msgs/msg/Float64', f'{{data: {BUDGET_MS}}}')
    assert published.returncode == 0, published
    point = poll(echoed_point, lambda out: f'"budget_ms": {BUDGET_MS}' in out, 60.0)
    keep_ratio = float(re.search(r'"keep_ratio": ([\d.]+)', point).group(1))
    poll(lambda: ros2('param', 'get', PERCEPTION_NODE, 'keep_ratio'),
         lambda out: f'Double value is: {keep_ratio}' in out, 60.0)

    poll(lambda: ros2('topic', 'echo', '--once', launch_support.CLASSIFICATION, timeout_s=30.0),
         lambda out: 'class_id' in out, 60.0)

    assert demo.stop() == 0, demo.output()
    output = demo.output()
    started = output.count('process started with pid')
    assert started == 3 and output.count('process has finished cleanly') == started, output
    assert not launch_support.bad_lines(output), output


def test_ros2_finds_the_package_executables() -> None:
    launch_support.package_prefix()
    listed = ros2('pkg', 'executables', 'pls_perception')
    assert listed.returncode == 0, listed
    assert {line.split()[1] for line in listed.stdout.splitlines()} >= set(
        launch_support.EXECUTABLES), listed.stdout
