"""Suite-wide isolation: every pytest process gets its own DDS domain and ROS log dir.

Set before any test imports rclpy, so concurrent test runs on one machine never see each other's
nodes, and subprocesses started by tests inherit the same isolation.
"""
from __future__ import annotations

import os
import sys
import tempfile

if 'PLS_TEST_KEEP_DOMAIN' not in os.environ:
    os.environ['ROS_DOMAIN_ID'] = str(100 + os.getpid() % 100)
os.environ.setdefault('ROS_LOG_DIR', tempfile.mkdtemp(prefix='pls_ros_log_'))
os.environ.setdefault('AMENT_PREFIX_PATH', sys.prefix)
os.environ.setdefault('MPLBACKEND', 'Agg')
