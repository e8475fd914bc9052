"""Launch the DVFS manager alone: /latency_budget in, keep_ratio + frequency_mhz out.

    ros2 launch pls_perception dvfs_manager.launch.py profile:=/path/to/profile.yaml

Parameters come from config/dvfs_manager.yaml, then the launch arguments below override them.
"""
from __future__ import annotations

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from pls_perception import paths


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument('profile', default_value='',
                              description='profile YAML; empty = shipped Orin Nano CPU profile'),
        DeclareLaunchArgument('target_node', default_value='/pls_perception_node'),
        DeclareLaunchArgument('params_file', default_value=str(paths.config_dir() /
                                                               'dvfs_manager.yaml')),
        DeclareLaunchArgument('log_level', default_value='info'),
        Node(package='pls_perception', executable='dvfs_manager', name='dvfs_manager',
             output='screen',
             parameters=[LaunchConfiguration('params_file'), {
                 'profile': LaunchConfiguration('profile'),
                 'target_node': LaunchConfiguration('target_node')}],
             ros_arguments=['--log-level', LaunchConfiguration('log_level')]),
    ])
