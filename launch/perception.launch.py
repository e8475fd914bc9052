"""Launch the PLS perception node alone (a lifecycle node), e.g. inside an AV stack.

    ros2 launch pls_perception perception.launch.py weights:=/path/to/resnet152.pt

With autostart:=true (default) the node drives itself to active (its ``autostart`` parameter:
configure, then activate, in its own process); with autostart:=false it stays unconfigured for a
lifecycle manager to drive (``ros2 lifecycle set``, or launch_ros ``ChangeState`` events: it is a
``LifecycleNode``). Launch events are not used for autostart: launch_ros sends them through the
node's ``change_state`` service from the launch process; a request sent as soon as the service
is discovered can be lost (the node then stays unconfigured for good), and Ctrl-C while one is
pending makes ``ros2 launch`` exit 1 with a traceback.
Without ``weights`` the node searches for the reference weights (``pls_perception.paths``);
random weights only with ``weights:=random``. Parameters come from config/perception.yaml, then
the launch arguments below override them.
"""
from __future__ import annotations

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

from pls_perception import paths


def generate_launch_description() -> LaunchDescription:
    args = [
        DeclareLaunchArgument('weights', default_value='', description=paths.WEIGHTS_ARG_HELP),
        DeclareLaunchArgument('device', default_value='cpu', description='cpu | cuda'),
        DeclareLaunchArgument('dvfs_backend', default_value='simulated',
                              description='auto | cpufreq | nvidia | jetson | simulated'),
        DeclareLaunchArgument('dvfs_emulation', default_value='stretch',
                              description="simulated backend: stretch | profile (emulate the "
                                          "energy_profile's device latency)"),
        DeclareLaunchArgument('precision', default_value='fp32',
                              description='onnxruntime engine: fp32 | int8 (static quantization; '
                                          'each ratio graph built once, about 25 s)'),
        DeclareLaunchArgument('params_file', default_value=str(paths.config_dir() /
                                                               'perception.yaml'),
                              description='perception node parameters YAML'),
        DeclareLaunchArgument('autostart', default_value='true',
                              description='the node configures and activates itself'),
        DeclareLaunchArgument('log_level', default_value='info'),
    ]
    node = LifecycleNode(
        package='pls_perception', executable='perception_node', name='pls_perception_node',
        namespace='', output='screen',
        parameters=[LaunchConfiguration('params_file'), {
            'weights': LaunchConfiguration('weights'),
            'device': LaunchConfiguration('device'),
            'dvfs_backend': LaunchConfiguration('dvfs_backend'),
            'dvfs_emulation': LaunchConfiguration('dvfs_emulation'),
            'precision': LaunchConfiguration('precision'),
            'autostart': LaunchConfiguration('autostart')}],
        ros_arguments=['--log-level', LaunchConfiguration('log_level')])
    return LaunchDescription([*args, node])
