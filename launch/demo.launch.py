"""The whole demo graph: image source -> PLS perception node <- DVFS manager <- budget schedule.

    ros2 launch pls_perception demo.launch.py
    ros2 launch pls_perception demo.launch.py budget_schedule:='0:400,15:120,30:400' \\
        images:=/path/to/folder_or_bag weights:=/path/to/resnet152.pt
    ros2 launch pls_perception demo.launch.py budget_schedule:=none   # publish budgets yourself

The perception node is a launch_ros LifecycleNode driven to active by launch events (configure,
then activate when it reaches inactive: see perception.launch.py, included here). Parameters come
from config/perception.yaml and config/dvfs_manager.yaml, config/demo.yaml (image rate, budget
schedule), then the launch arguments (the demo uses the simulated DVFS backend). Weights and
images default to the data search of ``pls_perception.paths`` (never silently random).
``pls-demo`` starts the same graph with the same files where ros2 launch is not installed.
"""
from __future__ import annotations

from pathlib import Path

import yaml
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, NotEqualsSubstitution
from launch_ros.actions import Node

from pls_perception import paths


def generate_launch_description() -> LaunchDescription:
    here = Path(__file__).resolve().parent
    config = paths.config_dir()
    demo_yaml = str(config / 'demo.yaml')
    demo = yaml.safe_load(Path(demo_yaml).read_text())
    schedule = demo['budget_schedule']['ros__parameters']['schedule']
    log_level = LaunchConfiguration('log_level')
    args = [
        DeclareLaunchArgument('weights', default_value='', description=paths.WEIGHTS_ARG_HELP),
        DeclareLaunchArgument('images', default_value='cifar10', description=(
            "image folder, image tar or rosbag2; 'cifar10' = the CIFAR-10 tarball "
            f'{paths.DATA_SEARCH_HELP}')),
        DeclareLaunchArgument('device', default_value='cpu', description='cpu | cuda'),
        DeclareLaunchArgument('profile', default_value='',
                              description='profile YAML; empty = shipped Orin Nano CPU profile'),
        DeclareLaunchArgument('budget_schedule', default_value=schedule, description=(
            'latency budget steps "seconds:ms,..."; none = no schedule node (publish '
            '/latency_budget yourself)')),
        DeclareLaunchArgument('log_level', default_value='info'),
    ]
    perception = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(here / 'perception.launch.py')),
        launch_arguments={'weights': LaunchConfiguration('weights'),
                          'device': LaunchConfiguration('device'),
                          'dvfs_backend': 'simulated', 'autostart': 'true',
                          'dvfs_emulation': demo['pls_perception_node']['ros__parameters'][
                              'dvfs_emulation'],
                          'log_level': log_level}.items())
    return LaunchDescription([
        *args,
        perception,
        Node(package='pls_perception', executable='dvfs_manager', name='dvfs_manager',
             output='screen',
             parameters=[str(config / 'dvfs_manager.yaml'), demo_yaml,
                         {'profile': LaunchConfiguration('profile')}],
             ros_arguments=['--log-level', log_level]),
        Node(package='pls_perception', executable='image_source', name='image_source',
             output='screen',
             parameters=[demo_yaml, {'source': LaunchConfiguration('images')}],
             ros_arguments=['--log-level', log_level]),
        Node(package='pls_perception', executable='budget_schedule', name='budget_schedule',
             output='screen', condition=IfCondition(NotEqualsSubstitution(
                 LaunchConfiguration('budget_schedule'), 'none')),
             parameters=[demo_yaml, {'schedule': LaunchConfiguration('budget_schedule')}],
             ros_arguments=['--log-level', log_level]),
    ])
