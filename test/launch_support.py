"""Shared by the launch tests (test_launch_*.py): an ament prefix with this package, output checks.

Launch files find executables and files through the ament index
(``<prefix>/lib/pls_perception/<exe>``, ``<prefix>/share/pls_perception/...``), which the editable
install of the dev venv (``pip install -e .``) does not provide. ``package_prefix()`` therefore
uses the prefix that already indexes the package (``colcon test``, a sourced install) or else
runs ``colcon build --symlink-install`` of this checkout into a temp dir once per pytest process
(about 2 s) and puts it in front of ``AMENT_PREFIX_PATH``. Its files are symlinks into the
checkout, so the tests always run the working tree.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pls_perception import paths
from pls_perception.paths import PACKAGE_NAME, REPO_ROOT

LAUNCH_TOOLS_MISSING = (
    'the ROS 2 launch tools (launch_testing, launch_ros, ros2cli) are not installed: run '
    'scripts/setup-venv.sh with ../shared/wheels/ros2-jazzy present, or source ROS 2 Jazzy')
EXECUTABLES = ('perception_node', 'dvfs_manager', 'image_source', 'budget_schedule')
# Waits, not speed claims: a cold ONNX cache exports every prebuilt graph at configure, and the
# CI machine is shared (2 cores).
CONFIGURE_TIMEOUT_S = 240.0
# Bad-output markers: an ERROR/FATAL log line or a traceback from any launched process.
BAD_OUTPUT = ('[ERROR]', '[FATAL]', 'Traceback (most recent call last)')
PERCEPTION_NODE = '/pls_perception_node'
# The launch tests run the real network on real images.
needs_data = pytest.mark.skipif(
    not (paths.reference_weights().is_file() and paths.cifar10_tar().is_file()),
    reason='needs the reference weights and CIFAR-10 (pls_perception.paths)')
CLASSIFICATION = f'{PERCEPTION_NODE}/classification'


def _indexed_prefix() -> Path | None:
    """The prefix that already indexes this package with its executables, if any."""
    try:
        from ament_index_python.packages import get_package_prefix
        prefix = Path(get_package_prefix(PACKAGE_NAME))
    except Exception:  # noqa: BLE001 - not importable or not indexed: build one
        return None
    exes = [prefix / 'lib' / PACKAGE_NAME / name for name in EXECUTABLES]
    return prefix if all(exe.is_file() for exe in exes) else None


def colcon_executable() -> Path:
    """The colcon of the test environment (requirements-test.txt), else the one on PATH."""
    beside = Path(sys.executable).parent / 'colcon'
    found = beside if beside.is_file() else shutil.which('colcon')
    if found is None:
        raise RuntimeError(f'colcon not found next to {sys.executable} or on PATH: '
                           'pip install -r requirements-test.txt')
    return Path(found)


def colcon(base: Path, verb: str, *args: str,
           timeout_s: float = 240.0) -> subprocess.CompletedProcess:
    """``colcon <verb>`` on this checkout with build/, install/ and log/ under ``base``."""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    exe = colcon_executable()
    env['PATH'] = f'{exe.parent}{os.pathsep}{env.get("PATH", "")}'
    return subprocess.run(
        [str(exe), '--log-base', str(base / 'log'), verb, '--base-paths', str(REPO_ROOT),
         '--build-base', str(base / 'build'), '--install-base', str(base / 'install'), *args],
        cwd=base, env=env, capture_output=True, text=True, timeout=timeout_s)


def colcon_build(base: Path, *args: str) -> Path:
    """``colcon build`` this checkout into ``base``; the install dir."""
    result = colcon(base, 'build', *args)
    if result.returncode != 0:
        raise RuntimeError(f'colcon build {" ".join(args)} failed in {base}:\n'
                           f'{result.stdout}{result.stderr}')
    return base / 'install'


@functools.cache
def package_prefix() -> Path:
    """An ament prefix with this package, first on ``AMENT_PREFIX_PATH`` of this process."""
    existing = _indexed_prefix()
    if existing is not None:
        return existing
    base = Path(tempfile.mkdtemp(prefix='pls_launch_prefix_'))
    atexit.register(shutil.rmtree, base, True)
    prefix = colcon_build(base, '--symlink-install') / PACKAGE_NAME
    os.environ['AMENT_PREFIX_PATH'] = os.pathsep.join(
        [str(prefix), *filter(None, os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep))])
    return prefix


def bad_lines(text: str) -> list[str]:
    """The lines of ``text`` holding an ERROR or FATAL log line or a traceback."""
    return [line for line in text.splitlines() if any(marker in line for marker in BAD_OUTPUT)]


def assert_clean_shutdown(proc_info: Any, proc_output: Any) -> None:
    """Post-shutdown check: every process exited 0 (SIGINT is a normal stop) and logged no
    ERROR/FATAL line or traceback, at shutdown or before."""
    import launch_testing.asserts
    launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0])
    bad = [f'{io.process_name}: {line}' for io in proc_output
           for line in bad_lines(io.text.decode(errors='replace'))]
    assert not bad, 'launched processes logged errors:\n' + '\n'.join(bad)


def launch_file(name: str) -> Path:
    """``share/pls_perception/launch/<name>`` as ``ros2 launch`` finds it (the ament index)."""
    from ament_index_python.packages import get_package_share_directory
    package_prefix()
    return Path(get_package_share_directory(PACKAGE_NAME)) / 'launch' / name


def published_type(topic: str, timeout_s: float) -> type:
    """The message class ``topic`` is published with, read from the ROS graph.

    Lets a test read a topic whose type is not fixed here (the perception node's classification).
    """
    from rosidl_runtime_py.utilities import get_message

    with probe('type_probe') as graph:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            types = dict(graph.node.get_topic_names_and_types()).get(topic)
            if types:
                return get_message(types[0])
            time.sleep(0.2)
    raise AssertionError(f'{topic} did not appear in the ROS graph within {timeout_s:g} s')


class Probe:
    """A plain rclpy node in its own context and executor, for a launch test to talk to the graph
    (the test process has no global ``rclpy.init``)."""

    def __init__(self, name: str) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f'launch_test_{name}_{os.getpid()}', context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Spin until ``done()`` or the timeout; whether ``done()`` became true."""
        deadline = time.monotonic() + timeout_s
        while not done() and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.2)
        return done()

    def call(self, client: Any, request: Any, timeout_s: float) -> Any | None:
        """The service's response, or None when it did not answer in time."""
        if not client.wait_for_service(timeout_sec=timeout_s):
            return None
        future = client.call_async(request)
        if self.spin_until(future.done, timeout_s):
            return future.result()
        client.remove_pending_request(future)
        return None

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@contextlib.contextmanager
def probe(name: str) -> Iterator[Probe]:
    """A ``Probe`` closed on exit."""
    made = Probe(name)
    try:
        yield made
    finally:
        made.close()


class LifecycleDriver:
    """``get_state`` / ``change_state`` of one lifecycle node through its services."""

    def __init__(self, graph: Probe, node_name: str) -> None:
        from lifecycle_msgs.srv import ChangeState, GetState

        self._graph = graph
        self._get = graph.node.create_client(GetState, f'{node_name}/get_state')
        self._change = graph.node.create_client(ChangeState, f'{node_name}/change_state')

    def state(self, timeout_s: float = 5.0) -> str | None:
        """The current state's label, or None when the node did not answer in time."""
        from lifecycle_msgs.srv import GetState

        response = self._graph.call(self._get, GetState.Request(), timeout_s)
        return None if response is None else response.current_state.label

    def wait_for(self, label: str, timeout_s: float) -> str | None:
        """Poll until the node is in ``label`` or the timeout; the last label seen."""
        seen: list[str | None] = [None]

        def reached() -> bool:
            seen[0] = self.state() or seen[0]
            return seen[0] == label
        deadline = time.monotonic() + timeout_s
        while not reached() and time.monotonic() < deadline:
            time.sleep(1.0)
        return seen[0]

    def request(self, transition_id: int) -> None:
        """Ask for a transition without waiting (a cold configure takes minutes): poll
        ``wait_for`` for its outcome."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        assert self._change.wait_for_service(timeout_sec=30.0), 'no change_state service'
        self._change.call_async(ChangeState.Request(transition=Transition(id=transition_id)))


def launch_description(launch_name: str, arguments: dict[str, str] | None = None,
                       *actions: Any) -> Any:
    """What a launch test starts: ``launch/<launch_name>`` with ``arguments``, then ``actions``,
    then ReadyToTest."""
    import launch
    import launch_testing.actions
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    included = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(launch_file(launch_name))),
        launch_arguments=(arguments or {}).items())
    return launch.LaunchDescription([included, *actions, launch_testing.actions.ReadyToTest()])


def perception_with_images(autostart: bool) -> Any:
    """perception.launch.py with the reference weights and ``autostart``, images beside it."""
    return launch_description(
        'perception.launch.py', {'weights': str(paths.find_reference_weights()),
                                 'autostart': str(autostart).lower()}, image_source_node())


def image_source_node() -> Any:
    """A launch_ros Node: 20 CIFAR-10 test images (found by the data search) looped at 5 Hz."""
    from launch_ros.actions import Node

    return Node(package=PACKAGE_NAME, executable='image_source', name='image_source',
                output='screen', parameters=[{'per_class': 2, 'rate_hz': 5.0, 'loop': True}])


def first_classification(timeout_s: float = CONFIGURE_TIMEOUT_S) -> str:
    """The first message on the perception node's classification topic, as YAML text (whatever
    its type: both the JSON String and vision_msgs/Classification carry ``class_id``)."""
    from launch_testing_ros import WaitForTopics
    from rosidl_runtime_py import message_to_yaml

    msg_type = published_type(CLASSIFICATION, timeout_s)
    with WaitForTopics([(CLASSIFICATION, msg_type)], timeout=timeout_s) as wait:
        return message_to_yaml(wait.received_messages(CLASSIFICATION)[0])


def ros2_executable() -> Path | None:
    """The ``ros2`` CLI of the test environment, else the one on PATH; None if absent."""
    beside = Path(sys.executable).parent / 'ros2'
    found = beside if beside.is_file() else shutil.which('ros2')
    return None if found is None else Path(found)


def ros2_cli(*args: str, env: dict[str, str] | None = None,
             timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    """One ``ros2 ...`` command, as typed in a shell (``env`` carries the ament prefixes)."""
    return subprocess.run([str(ros2_executable()), *args], capture_output=True, text=True,
                          timeout=timeout_s, env=env)


def poll(command: Callable[[], subprocess.CompletedProcess], done: Callable[[str], bool],
         timeout_s: float) -> str:
    """Repeat ``command`` until ``done(stdout)``; the last stdout (asserted done). CLI graph
    queries go through the ros2 daemon, whose view of a new node lags behind discovery."""
    deadline = time.monotonic() + timeout_s
    while True:
        out = command().stdout
        if done(out) or time.monotonic() > deadline:
            assert done(out), f'gave up after {timeout_s:g} s; last output:\n{out}'
            return out
        time.sleep(2.0)


class RosLaunch:
    """``ros2 launch <args>`` in the background with its output in ``log``; stopped by SIGINT
    as Ctrl-C would (``with`` stops it on the way out, also when a test fails)."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        ros2 = ros2_executable()
        assert ros2 is not None, LAUNCH_TOOLS_MISSING
        self.log = log
        self._file = open(log, 'wb')
        # its own session: if it hangs, the whole launched graph can be killed by group
        self.process = subprocess.Popen([str(ros2), 'launch', *args], stdout=self._file,
                                        stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)

    def __enter__(self) -> RosLaunch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def output(self) -> str:
        return self.log.read_text(errors='replace')

    def wait_for_output(self, text: str, timeout_s: float) -> None:
        """Until ``text`` is in the output; AssertionError with the output's tail otherwise."""
        deadline = time.monotonic() + timeout_s
        while text not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = '\n'.join(self.output().splitlines()[-30:])
                raise AssertionError(f'no {text!r} from ros2 launch (exit code '
                                     f'{self.process.poll()}) within {timeout_s:g} s:\n{tail}')
            time.sleep(0.5)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGINT, then wait; the exit code. Kills the group if it does not stop in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError(f'ros2 launch did not stop within {timeout_s:g} s of SIGINT')
        finally:
            self._file.close()
