"""Suite-wide isolation: every pytest process gets its own DDS domain and ROS log dir.

Set before any test imports rclpy, so concurrent test runs on one machine never see each other's
nodes, and subprocesses started by tests inherit the same isolation. The domain is claimed with an
exclusive lock file held for the life of the process, so two concurrent runs never share one.
"""
from __future__ import annotations

import fcntl
import logging
import os
import sys
import tempfile
from typing import IO

import pytest

_DOMAIN_RANGE = range(100, 200)
_domain_lock: IO[str] | None = None


def _claim_domain() -> int:
    """Lock the first free domain id in _DOMAIN_RANGE; the lock lives as long as pytest."""
    global _domain_lock
    lock_dir = os.path.join(tempfile.gettempdir(), 'pls_perception_ros_domains')
    os.makedirs(lock_dir, exist_ok=True)
    start = os.getpid() % len(_DOMAIN_RANGE)
    for i in range(len(_DOMAIN_RANGE)):
        domain = _DOMAIN_RANGE[(start + i) % len(_DOMAIN_RANGE)]
        handle = open(os.path.join(lock_dir, f'{domain}.lock'), 'w')
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _domain_lock = handle
        return domain
    raise RuntimeError(f'no free ROS domain id in {_DOMAIN_RANGE}')


if 'PLS_TEST_KEEP_DOMAIN' not in os.environ:
    os.environ['ROS_DOMAIN_ID'] = str(_claim_domain())
os.environ.setdefault('ROS_LOG_DIR', tempfile.mkdtemp(prefix='pls_ros_log_'))
os.environ.setdefault('AMENT_PREFIX_PATH', sys.prefix)
os.environ.setdefault('MPLBACKEND', 'Agg')
# ONNX graphs built by tests (random or tiny networks) go to a throw-away cache shared by the run.
os.environ.setdefault('PLS_ONNX_CACHE', tempfile.mkdtemp(prefix='pls_onnx_cache_'))


@pytest.fixture(autouse=True)
def _package_logs_reach_caplog() -> None:
    """The launch_testing pytest plugin imports ``launch.logging``, which makes every logger
    created afterwards a LaunchLogger with ``propagate = False``: the package's log records would
    never reach pytest's ``caplog``. Let them propagate, as they do outside launch."""
    for name, logger in logging.root.manager.loggerDict.items():
        if name.split('.', 1)[0] == 'pls_perception' and isinstance(logger, logging.Logger):
            logger.propagate = True
