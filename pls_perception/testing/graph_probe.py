"""Drive and observe a running pls_perception graph from outside, as a user's stack would.

Benchmarks (bench/) and the load/fault tests start the real node executables as separate
processes and talk to them only over DDS: this module holds that harness once. ``NodeProcess``
starts an executable with parameter files and stops it cleanly; ``PipelineProbe`` is an rclpy
node that publishes camera frames and latency budgets, records the results (``~/frame_info``
JSON, and the typed ``~/classification`` where vision_msgs is installed), diagnostics and
parameter events with receive times, and calls the lifecycle and parameter services.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import ParameterEvent
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Float64, String

from pls_perception.nodes.typed_output import load_vision_msgs

PERCEPTION_NODE = 'pls_perception_node'
PERCEPTION_MODULE = 'pls_perception.nodes.perception_node'
MANAGER_MODULE = 'pls_perception.nodes.dvfs_manager_node'


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid`` in MB (Linux /proc)."""
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024.0
    raise ValueError(f'no VmRSS in /proc/{pid}/status, got pid={pid!r}')


def torch_loaded(pid: int) -> bool:
    """Whether process ``pid`` has imported PyTorch (its library is mapped; Linux /proc)."""
    return 'libtorch_cpu' in Path(f'/proc/{pid}/maps').read_text()


class NodeProcess:
    """One node executable in its own process, given parameters the way launch gives them.

    Runs ``command`` (default ``python -m <module>``) with ``--params-file`` for each of
    ``params_files`` and then for ``parameters`` (written to ``<name>_params.yaml``; later files
    win, as in the parameters list of a launch_ros Node), then ``ros_args``. ``name`` (default:
    the module's last part) names the files in ``log_dir``. Output goes to ``log_path``
    (``<name>.log``, appended to unless ``append_log`` is False) so a failure can show it.
    ``env`` entries are added to this process's environment.
    """

    def __init__(self, module: str, parameters: Mapping[str, Any] | None = None,
                 ros_args: list[str] | None = None, log_dir: Path | None = None, *,
                 params_files: Sequence[Path] = (), name: str | None = None,
                 command: Sequence[str] | None = None, append_log: bool = True,
                 env: Mapping[str, str] | None = None) -> None:
        self.module = module
        self.name = name or module.rsplit('.', 1)[-1]
        self._dir = Path(log_dir or tempfile.mkdtemp(prefix='pls_proc_'))
        self._dir.mkdir(parents=True, exist_ok=True)
        self.params_path = self._dir / f'{self.name}_params.yaml'
        self.params_path.write_text(
            yaml.safe_dump({'/**': {'ros__parameters': dict(parameters or {})}}))
        self.log_path = self._dir / f'{self.name}.log'
        self._log = self.log_path.open('ab' if append_log else 'wb')
        self.cmd = [*(command or [sys.executable, '-m', module]), '--ros-args']
        for f in [*params_files, self.params_path]:
            self.cmd += ['--params-file', str(f)]
        self.cmd += ros_args or []
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, 'PYTHONUNBUFFERED': '1', **(env or {})})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors='replace')

    def tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of the log."""
        return '\n'.join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGINT (what Ctrl-C and launch send), then SIGKILL after ``timeout_s``; exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        """Crash-stop (SIGKILL): what a segfault or the OOM killer looks like to the graph."""
        if self.alive():
            self.proc.kill()
            self.proc.wait(10.0)
        self._log.close()


@dataclass
class Received:
    """A message with the probe's monotonic receive time (``time.perf_counter()``)."""

    t_s: float
    data: Any


@dataclass
class ReceivedLog:
    """Messages in arrival order, appended by subscription callbacks, awaited by the caller."""

    items: list[Received] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def add(self, data: Any) -> None:
        with self.cond:
            self.items.append(Received(time.perf_counter(), data))
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[Received], bool], timeout_s: float,
                 start: int = 0) -> Received | None:
        """First item at index >= ``start`` matching ``predicate``, waiting up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                for item in self.items[start:]:
                    if predicate(item):
                        return item
                start = len(self.items)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.cond.wait(remaining)

    def __len__(self) -> int:
        with self.cond:
            return len(self.items)


def make_image(rgb: np.ndarray, stamp_ns: int, frame_id: str = 'camera') -> Image:
    """An rgb8 ``sensor_msgs/Image`` holding ``rgb`` (HxWx3 uint8) stamped ``stamp_ns``."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f'expected an HxWx3 uint8 array, got {rgb.dtype} {rgb.shape!r}')
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = 'rgb8'
    msg.is_bigendian = 0
    msg.step = msg.width * 3
    msg.data = np.ascontiguousarray(rgb).tobytes()
    return msg


def stamp_ns_of(classification: Mapping[str, Any]) -> int:
    """The source image stamp (ns) carried by a frame_info JSON object."""
    stamp = classification['stamp']
    return int(stamp['sec']) * 1_000_000_000 + int(stamp['nanosec'])


def header_stamp_ns(msg: Any) -> int:
    """The source image stamp (ns) of a message with a header (a typed Classification)."""
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


class PipelineProbe(Node):
    """Publishes frames and budgets to a perception graph and records what comes back:
    ``classifications`` holds the frame_info JSON, ``typed`` the vision_msgs Classification
    messages (empty where vision_msgs is not installed)."""

    def __init__(self, target: str = PERCEPTION_NODE, image_topic: str = 'image',
                 name: str = 'pls_graph_probe', **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.target = target
        self.image_pub = self.create_publisher(Image, image_topic, qos_profile_sensor_data)
        self.budget_pub = self.create_publisher(Float64, '/latency_budget', 10)
        reliable = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.classifications = ReceivedLog()
        self.typed = ReceivedLog()
        self.diagnostics = ReceivedLog()
        self.parameter_events = ReceivedLog()
        self.create_subscription(String, f'/{target}/frame_info',
                                 lambda m: self.classifications.add(json.loads(m.data)), reliable)
        msgs, _ = load_vision_msgs()
        if msgs is not None:
            self.create_subscription(msgs.Classification, f'/{target}/classification',
                                     self.typed.add, reliable)
        self.create_subscription(DiagnosticArray, '/diagnostics', self.diagnostics.add, reliable)
        self.create_subscription(ParameterEvent, '/parameter_events', self._on_parameter_event,
                                 reliable)
        self._change_state = self.create_client(ChangeState, f'/{target}/change_state')
        self._get_state = self.create_client(GetState, f'/{target}/get_state')
        self._set_params = self.create_client(SetParameters, f'/{target}/set_parameters')
        self._get_params = self.create_client(GetParameters, f'/{target}/get_parameters')
        self._published_ns: dict[int, float] = {}
        # The target's parameters as last announced; each event logs the merged state.
        self._parameter_state: dict[str, Any] = {}

    def _on_parameter_event(self, msg: ParameterEvent) -> None:
        if msg.node.lstrip('/') != self.target:
            return
        changed = {p.name: parameter_value_to_python(p.value)
                   for p in [*msg.new_parameters, *msg.changed_parameters]}
        if changed:
            self._parameter_state.update(changed)
            self.parameter_events.add(dict(self._parameter_state))

    # --- publishing ---------------------------------------------------------------------------
    def publish_frame(self, rgb: np.ndarray, stamp_ns: int | None = None) -> int:
        """Publish one rgb8 frame; returns its stamp (ns), the key of :meth:`latency_s`."""
        stamp_ns = time.time_ns() if stamp_ns is None else stamp_ns
        msg = make_image(rgb, stamp_ns)
        self._published_ns[stamp_ns] = time.perf_counter()
        self.image_pub.publish(msg)
        return stamp_ns

    def publish_raw(self, msg: Image) -> None:
        """Publish an arbitrary (possibly malformed) Image message as is."""
        self.image_pub.publish(msg)

    def publish_budget(self, budget_ms: float) -> float:
        """Publish ``budget_ms`` on /latency_budget; returns the perf_counter publish time."""
        t_s = time.perf_counter()
        self.budget_pub.publish(Float64(data=float(budget_ms)))
        return t_s

    # --- observing ----------------------------------------------------------------------------
    def latency_s(self, received: Received) -> float | None:
        """Publish-to-receive time of a classification whose frame this probe published."""
        t0 = self._published_ns.get(stamp_ns_of(received.data))
        return None if t0 is None else received.t_s - t0

    def wait_classification(self, stamp_ns: int | None = None, timeout_s: float = 30.0,
                            start: int = 0) -> Received | None:
        """The classification of the frame stamped ``stamp_ns`` (any one if None)."""
        return self.classifications.wait_for(
            lambda r: stamp_ns is None or stamp_ns_of(r.data) == stamp_ns, timeout_s, start)

    def round_trip(self, rgb: np.ndarray, timeout_s: float = 30.0) -> tuple[float, dict[str, Any]]:
        """Publish one frame and wait for its classification: (end-to-end s, classification)."""
        start = len(self.classifications)
        stamp_ns = self.publish_frame(rgb)
        received = self.wait_classification(stamp_ns, timeout_s, start)
        if received is None:
            raise TimeoutError(f'no classification of frame {stamp_ns} within {timeout_s} s')
        return received.t_s - self._published_ns[stamp_ns], received.data

    @contextmanager
    def feeding(self, frames: np.ndarray, rate_hz: float) -> Iterator[list[int]]:
        """Publish ``frames`` round-robin at ``rate_hz`` from a thread during the block; yields
        the list of published stamps (growing)."""
        if not rate_hz > 0:
            raise ValueError(f'rate_hz must be > 0, got {rate_hz!r}')
        stamps: list[int] = []
        stop = threading.Event()

        def feed() -> None:
            t0 = time.perf_counter()
            while not stop.is_set():
                stamps.append(self.publish_frame(frames[len(stamps) % len(frames)]))
                delay_s = t0 + len(stamps) / rate_hz - time.perf_counter()
                if delay_s > 0:
                    stop.wait(delay_s)

        thread = threading.Thread(target=feed, name='pls_probe_feed', daemon=True)
        thread.start()
        try:
            yield stamps
        finally:
            stop.set()
            thread.join(10.0)

    def diagnostic_values(self, received: Received) -> dict[str, dict[str, str]]:
        """``{status name: {key: value}}`` of one received DiagnosticArray."""
        return {s.name: {kv.key: kv.value for kv in s.values} for s in received.data.status}

    def node_status(self, received: Received, node: str | None = None) -> dict[str, str]:
        """Key/values of the status that node ``node`` (default: the target) put in one
        received DiagnosticArray; statuses are named '<node name or /fq/name>: <what>'.
        Empty if that node's status is not in it."""
        node = (node or self.target).lstrip('/')
        for name, values in self.diagnostic_values(received).items():
            if name.lstrip('/').split(':', 1)[0].strip() == node:
                return values
        return {}

    # --- services -----------------------------------------------------------------------------
    def _call(self, client: Any, request: Any, timeout_s: float) -> Any:
        if not client.wait_for_service(timeout_sec=timeout_s):
            raise TimeoutError(f'service {client.srv_name} not available after {timeout_s} s')
        future = client.call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout_s):
            client.remove_pending_request(future)
            raise TimeoutError(f'service {client.srv_name} did not answer in {timeout_s} s')
        return future.result()

    def wait_until_answering(self, timeout_s: float = 120.0) -> str:
        """Poll the target's lifecycle state until it answers; returns the state label.

        A service can look available before requests really reach it (discovery still in
        progress, or a crashed predecessor's endpoints not yet expired), so ask until answered.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.lifecycle_state(timeout_s=min(2.0, timeout_s))
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

    def lifecycle_state(self, timeout_s: float = 10.0) -> str:
        return self._call(self._get_state, GetState.Request(), timeout_s).current_state.label

    def transition(self, transition_id: int, timeout_s: float = 60.0) -> bool:
        request = ChangeState.Request()
        request.transition.id = transition_id
        return bool(self._call(self._change_state, request, timeout_s).success)

    def activate(self, timeout_s: float = 120.0) -> None:
        """configure + activate the target lifecycle node (from unconfigured)."""
        self.wait_until_answering(timeout_s)
        for transition_id, name in ((Transition.TRANSITION_CONFIGURE, 'configure'),
                                    (Transition.TRANSITION_ACTIVATE, 'activate')):
            if not self.transition(transition_id, timeout_s):
                raise RuntimeError(f'{self.target}: {name} transition failed')

    def wait_for_graphs(self, timeout_s: float = 300.0) -> None:
        """Wait until the target's /diagnostics report no inference graph still building (its
        ``prebuild_ratios`` load or build in the background after configure)."""
        start = len(self.diagnostics)

        def built(received: Received) -> bool:
            status = self.node_status(received)
            return bool(status) and all(status.get(key, 'none') == 'none' for key in (
                'engine_pending_ratios', 'engine_background_builds'))
        if self.diagnostics.wait_for(built, timeout_s, start) is None:
            raise TimeoutError(f'{self.target} still building graphs after {timeout_s:g} s')

    def set_parameters(self, values: Mapping[str, Any],
                       timeout_s: float = 10.0) -> list[tuple[bool, str]]:
        """Set parameters on the target; ``[(successful, reason)]`` per parameter."""
        request = SetParameters.Request()
        request.parameters = [Parameter(k, value=v).to_parameter_msg()
                              for k, v in values.items()]
        response = self._call(self._set_params, request, timeout_s)
        return [(r.successful, r.reason) for r in response.results]

    def get_parameters(self, names: list[str], timeout_s: float = 10.0) -> dict[str, Any]:
        response = self._call(self._get_params, GetParameters.Request(names=names), timeout_s)
        return {n: parameter_value_to_python(v) for n, v in zip(names, response.values)}


@contextmanager
def probe_session(target: str = PERCEPTION_NODE,
                  image_topic: str = 'image') -> Iterator[PipelineProbe]:
    """A :class:`PipelineProbe` spinning in a background thread, in its own rclpy context (so it
    neither needs nor disturbs the default one); all torn down on exit."""
    context = Context()
    rclpy.init(context=context)
    probe = PipelineProbe(target, image_topic, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(probe)
    thread = threading.Thread(target=executor.spin, name='pls_probe_spin', daemon=True)
    thread.start()
    try:
        yield probe
    finally:
        executor.shutdown()
        probe.destroy_node()
        rclpy.try_shutdown(context=context)
        thread.join(5.0)


@contextmanager
def running_node(module: str, parameters: Mapping[str, Any] | None = None,
                 log_dir: Path | None = None, activate_with: PipelineProbe | None = None,
                 ros_args: list[str] | None = None,
                 env: Mapping[str, str] | None = None) -> Iterator[NodeProcess]:
    """A node process for the ``with`` block (lifecycle-activated through ``activate_with`` if
    given); its log tail goes to stderr if the block fails, and it is always stopped."""
    node = NodeProcess(module, parameters, ros_args=ros_args, log_dir=log_dir, env=env)
    try:
        if activate_with is not None:
            activate_with.activate()
        yield node
    except BaseException:
        print(f'--- {module} log ({node.log_path}) ---\n{node.log_text()[-4000:]}',
              file=sys.stderr)
        raise
    finally:
        node.stop()
