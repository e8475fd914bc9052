"""Launch the PLS perception node alone (a lifecycle node), e.g. inside an AV stack.

    ros2 launch pls_perception perception.launch.py weights:=/path/to/resnet152.pt

With autostart:=true (default) launch events drive it to active (configure, then activate once
it is inactive); with autostart:=false it stays unconfigured for a lifecycle manager to drive.
Without ``weights`` the node searches for the reference weights (``pls_perception.paths``);
random weights only with ``weights:=random``. Parameters come from config/perception.yaml, then
the launch arguments below override them.
"""
from __future__ import annotations

import lifecycle_msgs.msg
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState

from pls_perception import paths


def generate_launch_description() -> LaunchDescription:
    args = [
        DeclareLaunchArgument('weights', default_value='', description=paths.WEIGHTS_ARG_HELP),
        DeclareLaunchArgument('device', default_value='cpu', description='cpu | cuda'),
        DeclareLaunchArgument('dvfs_backend', default_value='simulated',
                              description='auto | cpufreq | nvidia | jetson | simulated'),
        DeclareLaunchArgument('params_file', default_value=str(paths.config_dir() /
                                                               'perception.yaml'),
                              description='perception node parameters YAML'),
        DeclareLaunchArgument('autostart', default_value='true',
                              description='drive the lifecycle node to active'),
        DeclareLaunchArgument('log_level', default_value='info'),
    ]
    node = LifecycleNode(
        package='pls_perception', executable='perception_node', name='pls_perception_node',
        namespace='', output='screen',
        parameters=[LaunchConfiguration('params_file'), {
            'weights': LaunchConfiguration('weights'),
            'device': LaunchConfiguration('device'),
            'dvfs_backend': LaunchConfiguration('dvfs_backend')}],
        ros_arguments=['--log-level', LaunchConfiguration('log_level')])
    autostart = IfCondition(LaunchConfiguration('autostart'))
    configure = EmitEvent(condition=autostart, event=ChangeState(
        lifecycle_node_matcher=matches_action(node),
        transition_id=lifecycle_msgs.msg.Transition.TRANSITION_CONFIGURE))
    activate_when_inactive = RegisterEventHandler(condition=autostart,
                                                  event_handler=OnStateTransition(
        target_lifecycle_node=node, start_state='configuring', goal_state='inactive',
        entities=[EmitEvent(event=ChangeState(
            lifecycle_node_matcher=matches_action(node),
            transition_id=lifecycle_msgs.msg.Transition.TRANSITION_ACTIVATE))]))
    return LaunchDescription([*args, node, activate_when_inactive, configure])
