"""DVFS manager node: latency budget in, (keep ratio, CPU frequency) out to the perception node.

Thin ROS glue over the ROS-free optimizer (pls_perception.optimizer) and the online latency
correction (pls_perception.latency_correction). Every accepted ``/latency_budget`` is solved on the
profile; the chosen point goes to the perception node as ONE SetParametersAtomically request, so
the node never runs a frame with the new ratio at the old frequency. The manager also listens to
the perception node's measured latencies and corrects its profile online (closed loop), and it
never blocks or crashes when the perception node is absent, restarting or rejecting updates: it
retries with back-off and re-applies the latest choice when the node comes back.

The profile's accuracy per ratio holds only under the skip policy it records; the manager checks
that the perception node runs that policy (from the ``skip_policy`` its classifications report)
and warns, in the log and on /diagnostics, when it does not.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (FloatingPointRange, Parameter, ParameterDescriptor,
                                ParameterType, ParameterValue)
from rcl_interfaces.srv import SetParametersAtomically
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data)
from std_msgs.msg import Float64, String

from pls_perception import paths
from pls_perception.errors import PlsError
from pls_perception.latency_correction import LatencyCorrection
from pls_perception.optimizer import OperatingPoint, OperatingPointSelector
from pls_perception.profiles import PROPORTIONAL_POLICY, OperatingPointProfile, load_profile
from pls_perception.nodes.spin import spin_node

NODE_NAME = 'dvfs_manager'
DEFAULT_TARGET_NODE = '/pls_perception_node'
DEFAULT_PROFILE_NAME = 'orin_nano_cpu.yaml'
TICK_S = 0.1
# Consecutive classifications reporting another point than the one the node confirmed: the node
# restarted (or someone else changed it), so the point is sent again.
MISMATCH_FRAMES = 3


def default_profile_path() -> Path:
    """The shipped Orin Nano CPU profile."""
    return paths.config_dir() / 'profiles' / DEFAULT_PROFILE_NAME


def shipped_profiles_for(policy_name: str, device_name: str) -> list[Path]:
    """The shipped profiles (config/profiles) made for ``policy_name``, ``device_name``'s first."""
    found = []
    for path in sorted((paths.config_dir() / 'profiles').glob('*.yaml')):
        try:
            profile = load_profile(path)
        except (PlsError, OSError, ValueError):
            continue
        if profile.skip_policy.name == policy_name:
            found.append((profile.device_name != device_name, str(path)))
    return [Path(p) for _, p in sorted(found)]


@dataclass(frozen=True)
class Setpoint:
    """What the perception node should run."""

    keep_ratio: float
    freq_mhz: float


def _descriptor(description: str, read_only: bool = True,
                float_range: tuple[float, float] | None = None) -> ParameterDescriptor:
    d = ParameterDescriptor(description=description, read_only=read_only)
    if float_range is not None:
        d.floating_point_range = [FloatingPointRange(
            from_value=float_range[0], to_value=float_range[1], step=0.0)]
    return d


def _double_param(name: str, value: float) -> Parameter:
    return Parameter(name=name, value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE,
                                                     double_value=float(value)))


class DvfsManagerNode(Node):
    """Solves the operating point for each budget and applies it to the perception node."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.declare_parameter('profile', '', _descriptor(
            'operating-point profile YAML; empty = the shipped Orin Nano CPU profile'))
        self.declare_parameter('accuracy_loss_max', 0.05, _descriptor(
            'largest accepted top-1 accuracy loss vs. keep ratio 1 (fraction)',
            float_range=(0.0, 1.0)))
        self.declare_parameter('objective', 'edp', _descriptor(
            'what to minimise among feasible points: edp | energy | latency'))
        self.declare_parameter('strategy', 'joint', _descriptor(
            "joint (exact search over ratio x frequency) | alg2 (the paper's Algorithm 2)"))
        self.declare_parameter('hysteresis', 0.05, _descriptor(
            'keep the current point unless the new one is better by this fraction',
            float_range=(0.0, 1.0)))
        self.declare_parameter('target_node', DEFAULT_TARGET_NODE, _descriptor(
            'fully qualified name of the perception node to drive'))
        self.declare_parameter('closed_loop', True, _descriptor(
            'correct the profile latencies online from the measured ones'))
        self.declare_parameter('correction_alpha', 0.3, _descriptor(
            'EWMA weight of a new measurement in the global latency correction factor',
            float_range=(0.01, 1.0)))
        self.declare_parameter('resolve_period_s', 0.5, _descriptor(
            'shortest time between two re-solves triggered by latency corrections',
            float_range=(0.0, 60.0)))
        self.declare_parameter('retry_initial_s', 0.5, _descriptor(
            'first back-off after a failed or rejected update', float_range=(0.01, 60.0)))
        self.declare_parameter('retry_max_s', 8.0, _descriptor(
            'longest back-off between retries', float_range=(0.01, 600.0)))
        self.declare_parameter('request_timeout_s', 3.0, _descriptor(
            'an unanswered update counts as failed after this long', float_range=(0.1, 600.0)))

        p = self.get_parameter
        profile_path = p('profile').value or str(default_profile_path())
        self.profile_path = profile_path
        self.profile: OperatingPointProfile = load_profile(profile_path)
        self.accuracy_loss_max = float(p('accuracy_loss_max').value)
        self.objective = str(p('objective').value)
        self.strategy = str(p('strategy').value)
        self.hysteresis = float(p('hysteresis').value)
        self.closed_loop = bool(p('closed_loop').value)
        self.resolve_period_s = float(p('resolve_period_s').value)
        self.retry_initial_s = float(p('retry_initial_s').value)
        self.retry_max_s = float(p('retry_max_s').value)
        self.request_timeout_s = float(p('request_timeout_s').value)
        self.selector = OperatingPointSelector(
            self.profile, accuracy_loss_max=self.accuracy_loss_max, objective=self.objective,
            strategy=self.strategy, hysteresis=self.hysteresis)
        self.correction = LatencyCorrection(
            self.profile.ratios, self.profile.frequencies_mhz,
            alpha_global=float(p('correction_alpha').value))
        target = str(p('target_node').value).rstrip('/')
        self.target_node = target if target.startswith('/') else '/' + target

        # State (single-threaded executor: no locks needed).
        self.budget_ms: float | None = None
        self.point: OperatingPoint | None = None
        self.desired: Setpoint | None = None
        self.applied: Setpoint | None = None
        self.target_available = False
        self._future: Any = None
        self._sent: Setpoint | None = None
        self._sent_at = 0.0
        self._backoff_s = self.retry_initial_s
        self._next_try = 0.0
        self._last_resolve = 0.0
        self._mismatches = 0
        self.stats = {'budgets': 0, 'budgets_rejected': 0, 'updates_sent': 0,
                      'updates_applied': 0, 'updates_failed': 0, 'measurements': 0,
                      'measurements_ignored': 0, 'deadline_misses': 0, 'resolves': 0}
        self.last_failure = ''
        self.last_latency_ms = math.nan
        # The skip policy the target reports (None: not heard yet) and, when it is not the
        # profile's, what is wrong and what to do ('' = no mismatch known).
        self.target_policy: str | None = None
        self.policy_mismatch = ''

        self._client = self.create_client(SetParametersAtomically,
                                          f'{self.target_node}/set_parameters_atomically')
        self._point_pub = self.create_publisher(String, '~/operating_point', QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.create_subscription(Float64, '/latency_budget', self._on_budget, 10)
        self.create_subscription(String, f'{self.target_node}/frame_info',
                                 self._on_classification, qos_profile_sensor_data)
        self.create_timer(TICK_S, self._tick)
        self.create_timer(1.0, self._publish_diagnostics)
        self.get_logger().info(
            f'profile {profile_path} ({len(self.profile.ratios)} ratios x '
            f'{len(self.profile.frequencies_mhz)} frequencies), objective {self.objective}, '
            f'strategy {self.strategy}, accuracy_loss_max {self.accuracy_loss_max}, '
            f'skip_policy {self.profile.skip_policy.name}, '
            f'target {self.target_node}, closed_loop {self.closed_loop}')

    # ---------------------------------------------------------------- budget -> operating point
    def _on_budget(self, msg: Float64) -> None:
        budget_ms = float(msg.data)
        if not math.isfinite(budget_ms) or budget_ms <= 0.0:
            self.stats['budgets_rejected'] += 1
            self.get_logger().warning(
                f'rejected latency budget {budget_ms!r} ms: it must be finite and > 0; '
                f'keeping {self.budget_ms} ms')
            return
        self.stats['budgets'] += 1
        changed = budget_ms != self.budget_ms
        self.budget_ms = budget_ms
        self._resolve(log=changed)
        self._tick()  # send now, not at the next tick: budget-to-ratio reaction time

    def _solve_profile(self) -> OperatingPointProfile:
        if self.closed_loop and self.correction.total_samples:
            return self.correction.apply(self.profile)
        return self.profile

    def _resolve(self, log: bool = True) -> None:
        assert self.budget_ms is not None
        self.selector.profile = self._solve_profile()
        point = self.selector.update(self.budget_ms)
        self.stats['resolves'] += 1
        self._last_resolve = time.monotonic()
        setpoint = Setpoint(float(point.keep_ratio), float(point.freq_mhz))
        moved = setpoint != self.desired
        self.point = point
        self.desired = setpoint
        if moved:
            self._backoff_s = self.retry_initial_s
            self._next_try = 0.0
        if moved or log:
            self.get_logger().info(
                f'budget {self.budget_ms:g} ms -> keep_ratio {setpoint.keep_ratio:g}, '
                f'{setpoint.freq_mhz:g} MHz, predicted {point.latency_ms:.2f} ms '
                f'{point.energy_mj:.2f} mJ, feasible {point.feasible} ({point.reason})')
        self._publish_point()

    def point_dict(self) -> dict[str, Any]:
        """The current choice as the JSON object published on ~/operating_point."""
        point = self.point
        assert point is not None and self.desired is not None
        return {
            'budget_ms': self.budget_ms,
            'keep_ratio': self.desired.keep_ratio,
            'freq_mhz': self.desired.freq_mhz,
            'latency_ms': float(point.latency_ms),
            'energy_mj': float(point.energy_mj),
            'edp': float(point.edp),
            'feasible': bool(point.feasible),
            'reason': str(point.reason),
            'correction_factor': self.correction.factor_at(self.desired.keep_ratio,
                                                           self.desired.freq_mhz),
            'applied': self.applied == self.desired,
            'target_available': self.target_available,
        }

    def _publish_point(self) -> None:
        self._point_pub.publish(String(data=json.dumps(self.point_dict())))

    # ---------------------------------------------------------------- sending to the target
    def _tick(self) -> None:
        now = time.monotonic()
        if self._future is not None:
            if not self._future.done() and now - self._sent_at > self.request_timeout_s:
                self._client.remove_pending_request(self._future)
                self._future = None
                self._failed(f'no answer within {self.request_timeout_s:g} s')
            else:
                return
        ready = self._client.service_is_ready()
        if not ready:
            if self.target_available:
                self.get_logger().warning(
                    f'{self.target_node} is gone (no set_parameters_atomically service); '
                    f'will re-apply the latest operating point when it comes back')
            self.target_available = False
            self.applied = None
            self.target_policy, self.policy_mismatch = None, ''  # it may come back with another
            return
        if not self.target_available:
            self.get_logger().info(f'{self.target_node} is available')
            self.target_available = True
            self.applied = None
            self._backoff_s = self.retry_initial_s
            self._next_try = 0.0
        if self.desired is None or self.desired == self.applied or now < self._next_try:
            return
        self._send(self.desired)

    def _send(self, setpoint: Setpoint) -> None:
        request = SetParametersAtomically.Request(parameters=[
            _double_param('keep_ratio', setpoint.keep_ratio),
            _double_param('frequency_mhz', setpoint.freq_mhz)])
        self._sent = setpoint
        self._sent_at = time.monotonic()
        self.stats['updates_sent'] += 1
        self._future = self._client.call_async(request)
        self._future.add_done_callback(self._on_response)

    def _on_response(self, future: Any) -> None:
        if future is not self._future:
            return  # timed out and already counted as failed
        self._future = None
        try:
            result = future.result().result
        except Exception as e:  # noqa: BLE001 - any transport failure is retried, never fatal
            self._failed(f'request failed: {e!r}')
            return
        if not result.successful:
            self._failed(f'rejected: {result.reason}')
            return
        self.applied = self._sent
        self._mismatches = 0
        self._backoff_s = self.retry_initial_s
        self.stats['updates_applied'] += 1
        self.get_logger().info(f'{self.target_node} applied keep_ratio {self._sent.keep_ratio:g}'
                               f', frequency_mhz {self._sent.freq_mhz:g}')
        self._publish_point()

    def _failed(self, why: str) -> None:
        self.stats['updates_failed'] += 1
        self.last_failure = why
        self._next_try = time.monotonic() + self._backoff_s
        self.get_logger().warning(
            f'operating point update of {self.target_node} {why}; retrying in '
            f'{self._backoff_s:g} s')
        self._backoff_s = min(self._backoff_s * 2.0, self.retry_max_s)

    # ---------------------------------------------------------------- closed loop
    def _on_classification(self, msg: String) -> None:
        try:
            data = json.loads(msg.data)
            latency_ms = float(data['latency_ms'])
            keep_ratio = float(data['keep_ratio'])
            freq_mhz = float(data['frequency_mhz'])
        except (ValueError, KeyError, TypeError) as e:
            self.stats['measurements_ignored'] += 1
            self.get_logger().warning(f'unreadable classification message ({e!r})',
                                      throttle_duration_sec=5.0)
            return
        self._check_policy(data.get('skip_policy'))
        self.stats['measurements'] += 1
        self.last_latency_ms = latency_ms
        if self.budget_ms is not None and latency_ms > self.budget_ms:
            self.stats['deadline_misses'] += 1
        self._check_restart(keep_ratio, freq_mhz)
        cell = self.correction.cell_of(keep_ratio, freq_mhz)
        if cell is None:
            self.stats['measurements_ignored'] += 1
            return
        predicted_ms = float(self.profile.latency_ms[cell[0]][cell[1]])
        self.correction.update(keep_ratio, freq_mhz, latency_ms, predicted_ms)
        if (self.closed_loop and self.budget_ms is not None
                and time.monotonic() - self._last_resolve >= self.resolve_period_s):
            self._resolve(log=False)

    def _check_restart(self, keep_ratio: float, freq_mhz: float) -> None:
        """Re-send when the node keeps reporting another point than the one it confirmed."""
        if self.applied is None or self._future is not None:
            return
        same = (abs(keep_ratio - self.applied.keep_ratio) < 1e-6
                and self.correction.cell_of(keep_ratio, freq_mhz)
                == self.correction.cell_of(self.applied.keep_ratio, self.applied.freq_mhz))
        self._mismatches = 0 if same else self._mismatches + 1
        if self._mismatches >= MISMATCH_FRAMES:
            self.get_logger().warning(
                f'{self.target_node} runs keep_ratio {keep_ratio:g} at {freq_mhz:g} MHz, not '
                f'the applied point (restarted?); sending it again')
            self._mismatches = 0
            self.applied = None

    # ---------------------------------------------------------------- skip policy
    def _check_policy(self, reported: Any) -> None:
        """Compare the target's skip policy with the profile's; one WARN per new mismatch.

        Learnt from the classifications the manager already listens to: each carries the name of
        the policy the node actually runs (``skip_policy``: 'proportional' or 'plan:<plan file
        stem>', :func:`pls_perception.skip_plans.plan_name`), set at configure and so right after
        a restart too. A profile records the same name (``pls-profile --skip-policy`` names it with
        the same function) beside the plan's fingerprint, which the node does not publish, so the
        names are what is compared: a renamed copy of the profile's plan file reads as a mismatch
        (a false alarm on the safe side); two different plans saved under one file stem cannot be
        told apart. A node that reports no policy (older versions) is not checked.
        """
        if not isinstance(reported, str) or not reported or reported == self.target_policy:
            return
        self.target_policy = reported
        wanted = self.profile.skip_policy
        if reported == wanted.name:
            self.policy_mismatch = ''
            return
        shipped = shipped_profiles_for(reported, self.profile.device_name)
        spec = 'proportional' if reported == PROPORTIONAL_POLICY else '<plan.yaml>'
        use = (f'e.g. {shipped[0]}' if shipped else
               f'make one with pls-profile --skip-policy {spec}')
        setting = wanted.plan_file or (wanted.name if wanted.is_proportional else
                                       f'the plan file with fingerprint {wanted.plan_fingerprint}')
        self.policy_mismatch = (
            f'{self.target_node} runs skip policy {reported!r} but profile {self.profile_path} is '
            f'for {wanted.name!r}, so its accuracy per ratio is wrong for the node: use a profile '
            f'made for {reported!r} ({use}) or set the node\'s skip_policy to {setting}; '
            f'operating points are still sent')
        self.get_logger().warning(self.policy_mismatch)

    # ---------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        status = DiagnosticStatus(name=f'{self.get_name()}: operating point',
                                  hardware_id='pls_perception')
        values = {'target_node': self.target_node, 'target_available': self.target_available,
                  'profile': self.profile_path,
                  'profile_skip_policy': self.profile.skip_policy.name,
                  'target_skip_policy': self.target_policy or 'unknown',
                  'correction_global_factor': f'{self.correction.global_factor:.3f}',
                  'last_latency_ms': f'{self.last_latency_ms:.2f}',
                  'last_failure': self.last_failure, **self.stats}
        if self.point is None:
            status.level, status.message = DiagnosticStatus.OK, 'waiting for /latency_budget'
        else:
            values.update({k: str(v) for k, v in self.point_dict().items()})
            if not self.target_available:
                status.level = DiagnosticStatus.WARN
                status.message = f'{self.target_node} unavailable'
            elif not self.point.feasible:
                status.level = DiagnosticStatus.WARN
                status.message = f'budget {self.budget_ms:g} ms infeasible: {self.point.reason}'
            elif self.applied != self.desired:
                status.level = DiagnosticStatus.WARN
                status.message = 'operating point not applied yet'
            else:
                status.level = DiagnosticStatus.OK
                status.message = (f'keep_ratio {self.desired.keep_ratio:g} at '
                                  f'{self.desired.freq_mhz:g} MHz')
        if self.policy_mismatch:
            values['policy_mismatch'] = self.policy_mismatch
            mismatch = (f'skip policy mismatch: node {self.target_policy}, profile '
                        f'{self.profile.skip_policy.name}')
            status.message = (mismatch if status.level == DiagnosticStatus.OK
                              else f'{mismatch}; {status.message}')
            status.level = DiagnosticStatus.WARN
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)


def main(args: list[str] | None = None) -> int:
    """``ros2 run pls_perception dvfs_manager``: solve and apply operating points until Ctrl-C."""
    return spin_node(DvfsManagerNode, NODE_NAME, args, (PlsError, OSError, ValueError),
                     '. Pass a valid profile YAML with --ros-args -p profile:=<path> '
                     '(see config/profiles/).')


if __name__ == '__main__':
    raise SystemExit(main())
