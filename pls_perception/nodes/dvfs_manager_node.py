"""DVFS manager node: latency budget in, (keep ratio, CPU frequency) out to the perception node.

Thin ROS glue over the ROS-free optimizer (pls_perception.operating_points.optimizer) and the
online latency correction (pls_perception.operating_points.latency_correction). Every accepted
``/latency_budget`` is solved on the
profile; the chosen point goes to the perception node as ONE SetParametersAtomically request, so
the node never runs a frame with the new ratio at the old frequency. The manager also listens to
the perception node's measured latencies and corrects its profile online (closed loop), and it
never blocks or crashes when the perception node is absent, restarting or rejecting updates: it
retries with back-off and re-applies the latest choice when the node comes back.

Whether the node is there is not learnt from its frames (a restarted node may get none): the
manager reads the node's ``keep_ratio`` and ``frequency_mhz`` every ``poll_period_s``. No answer
within ``request_timeout_s`` (crash, link down) makes the node unavailable; a node that answers
with another point than the applied one (restarted, or set by hand) gets the point again; and a
new process serving the node's name (a kill -9 and an immediate restart, while the crashed
process still lingers in the ROS graph until its DDS lease expires) counts as the node going away
and coming back. ``mode: manual`` stops the sending so an operator can set the node by hand;
``mode: auto`` hands control back and re-sends the latest point at once.

The profile's accuracy per ratio holds only under the skip policy it records; the manager checks
that the perception node runs that policy (from the ``skip_policy`` its classifications report)
and warns, in the log and on /diagnostics, when it does not.

Reference: docs/dvfs_manager.md. The module is over ~500 lines because it is one node whose
callbacks (budget, classifications, polls, updates, parameters) share the state of one
single-threaded executor; the ROS-free work is in the optimizer and the latency correction.
"""
from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import rclpy.parameter
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue, SetParametersResult
from rcl_interfaces.srv import GetParameters, SetParametersAtomically
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from std_msgs.msg import Float64, String

from pls_perception.errors import PlsError
from pls_perception.nodes.parameters import descriptor
from pls_perception.nodes.spin import spin_node
from pls_perception.operating_points.latency_correction import LatencyCorrection
from pls_perception.operating_points.optimizer import (OBJECTIVES, ON_INFEASIBLE, STRATEGIES,
                                                       OperatingPoint, OperatingPointSelector)
from pls_perception.operating_points.profiles import (PROPORTIONAL_POLICY, OperatingPointProfile,
                                                      default_profile_path, load_profile,
                                                      shipped_profiles_for)
from pls_perception.pipeline.frame_pipeline import Setpoint

NODE_NAME = 'dvfs_manager'
DEFAULT_TARGET_NODE = '/pls_perception_node'
TICK_S = 0.1
MODES = ('auto', 'manual')
# Parameters that take effect while the manager runs; the others are read once at start-up.
RUNTIME_PARAMETERS = ('mode', 'accuracy_loss_max', 'objective', 'strategy', 'hysteresis',
                      'on_infeasible', 'closed_loop', 'resolve_period_s', 'retry_initial_s',
                      'retry_max_s',
                      'request_timeout_s')
# Those the solver uses: changing one re-solves the latest budget at once.
SOLVER_PARAMETERS = ('accuracy_loss_max', 'objective', 'strategy', 'hysteresis',
                     'on_infeasible')
# A burst of invalid budgets (a planner gone wrong) logs one line per period, with a count.
REJECTED_BUDGET_LOG_PERIOD_S = 5.0
# Discovery of a restarted process's endpoints can lag its first answer: endpoints that appear
# within this long after the target came back (from going away) are its own, not a restart.
INSTANCE_SETTLE_S = 5.0
_NODE_NAME_PATTERN = re.compile(r'/?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*')


def _choice(name: str, value: Any, choices: Sequence[str]) -> str | None:
    return None if value in choices else f'{name} must be one of {tuple(choices)}, got {value!r}'


def validate_parameter(name: str, value: Any) -> str | None:
    """Why ``value`` is not acceptable for manager parameter ``name`` (None = fine).

    rclpy checks the descriptors' types and ranges; this adds what they cannot express
    (enumerations, an open interval, a node name).
    """
    if name == 'mode':
        return _choice(name, value, MODES)
    if name == 'objective':
        return _choice(name, value, OBJECTIVES)
    if name == 'strategy':
        return _choice(name, value, STRATEGIES)
    if name == 'on_infeasible':
        return _choice(name, value, ON_INFEASIBLE)
    if name == 'hysteresis' and not (isinstance(value, float) and 0.0 <= value < 1.0):
        return f'hysteresis must be a fraction in [0, 1), got {value!r}'
    if name == 'target_node' and not _NODE_NAME_PATTERN.fullmatch(str(value)):
        return f"target_node must be a node name like '/pls_perception_node', got {value!r}"
    return None


def check_parameters(values: Mapping[str, Any]) -> str | None:
    """Why the parameter set ``values`` is not acceptable (None = fine): each value, then the
    rules between them."""
    for name, value in values.items():
        why = validate_parameter(name, value)
        if why is not None:
            return why
    initial, longest = values.get('retry_initial_s'), values.get('retry_max_s')
    if initial is not None and longest is not None and initial > longest:
        return (f'retry_initial_s must be <= retry_max_s, got {initial!r} > {longest!r}')
    return None


def _double_param(name: str, value: float) -> Parameter:
    return Parameter(name=name, value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE,
                                                     double_value=float(value)))


class DvfsManagerNode(Node):
    """Solves the operating point for each budget and applies it to the perception node."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._destroying = False
        self._declare_parameters()
        p = self.get_parameter
        why = check_parameters({name: p(name).value for name in self._declared})
        if why is not None:
            raise ValueError(why)
        profile_path = p('profile').value or str(default_profile_path())
        self.profile_path = profile_path
        self.profile: OperatingPointProfile = load_profile(profile_path)
        self.poll_period_s = float(p('poll_period_s').value)
        self._read_runtime_parameters()
        self.selector = OperatingPointSelector(
            self.profile, accuracy_loss_max=self.accuracy_loss_max, objective=self.objective,
            strategy=self.strategy, hysteresis=self.hysteresis,
            on_infeasible=self.on_infeasible)
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
        # What the target last said it runs (its keep_ratio and frequency_mhz parameters).
        self.target_point: Setpoint | None = None
        self._future: Any = None
        self._sent: Setpoint | None = None
        self._sent_at = 0.0
        self._applied_at = 0.0
        self._backoff_s = self.retry_initial_s
        self._next_try = 0.0
        self._last_resolve = 0.0
        self._poll: Any = None
        self._polled_at = -math.inf
        # Endpoint ids of the target's /parameter_events publishers: one per process serving it.
        self._instances: frozenset[tuple[int, ...]] = frozenset()
        # Until then, new endpoints are the returned process's own (inf: the target went away).
        self._settle_until = -math.inf
        self._rejected_unlogged = 0
        self._rejected_latest = math.nan
        self._rejected_logged_at = -math.inf
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
        self._poll_client = self.create_client(GetParameters,
                                               f'{self.target_node}/get_parameters')
        self._point_pub = self.create_publisher(String, '~/operating_point', QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.create_subscription(Float64, '/latency_budget', self._on_budget, 10)
        self.create_subscription(String, f'{self.target_node}/frame_info',
                                 self._on_classification, qos_profile_sensor_data)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._on_parameters_set)
        self.create_timer(TICK_S, self._tick)
        self.create_timer(1.0, self._publish_diagnostics)
        self.get_logger().info(
            f'profile {profile_path} ({len(self.profile.ratios)} ratios x '
            f'{len(self.profile.frequencies_mhz)} frequencies), objective {self.objective}, '
            f'strategy {self.strategy}, accuracy_loss_max {self.accuracy_loss_max}, '
            f'skip_policy {self.profile.skip_policy.name}, '
            f'target {self.target_node}, closed_loop {self.closed_loop}, mode {self.mode}')

    # ---------------------------------------------------------------- parameters
    def _declare_parameters(self) -> None:
        self._declared: list[str] = []

        def declare(name: str, value: Any, description: str,
                    float_range: tuple[float, float] | None = None,
                    constraints: str = '') -> None:
            self.declare_parameter(name, value, descriptor(
                description, read_only=name not in RUNTIME_PARAMETERS,
                float_range=float_range, constraints=constraints))
            self._declared.append(name)
        declare('mode', 'auto',
                'auto: send each operating point to the target; manual: solve and publish them '
                'but send nothing, so the target can be set by hand (auto re-sends at once)',
                constraints=' | '.join(MODES))
        declare('profile', '',
                'operating-point profile YAML; empty = the shipped Orin Nano CPU profile')
        declare('accuracy_loss_max', 0.05,
                'largest accepted top-1 accuracy loss vs. keep ratio 1 (fraction)', (0.0, 1.0))
        declare('objective', 'edp', 'what to minimise among feasible points',
                constraints=' | '.join(OBJECTIVES))
        declare('strategy', 'joint',
                "joint (exact search over ratio x frequency) | alg2 (the paper's Algorithm 2)",
                constraints=' | '.join(STRATEGIES))
        declare('hysteresis', 0.05,
                'keep the current point unless the new one is better by this fraction',
                (0.0, 1.0), constraints='0 <= hysteresis < 1')
        declare('on_infeasible', 'fastest',
                'when no point meets the budget within accuracy_loss_max: fastest (the fastest '
                'accuracy-feasible point, the paper) | relax_accuracy (deadline first: the most '
                'accurate point that meets the budget)', constraints=' | '.join(ON_INFEASIBLE))
        declare('target_node', DEFAULT_TARGET_NODE,
                'fully qualified name of the perception node to drive')
        declare('closed_loop', True, 'correct the profile latencies online from the measured ones')
        declare('correction_alpha', 0.3,
                'EWMA weight of a new measurement in the global latency correction factor',
                (0.01, 1.0))
        declare('resolve_period_s', 0.5,
                'shortest time between two re-solves triggered by latency corrections',
                (0.0, 60.0))
        declare('retry_initial_s', 0.5, 'first back-off after a failed or rejected update',
                (0.01, 60.0), constraints='<= retry_max_s')
        declare('retry_max_s', 8.0, 'longest back-off between retries', (0.01, 600.0))
        declare('request_timeout_s', 3.0,
                'an unanswered update or poll counts as failed after this long (an unanswered '
                'poll makes the target unavailable)', (0.1, 600.0))
        declare('poll_period_s', 1.0,
                "how often the target's keep_ratio and frequency_mhz are read, to notice a "
                'restart or an absence without frames', (0.1, 60.0))

    def _read_runtime_parameters(self) -> None:
        p = self.get_parameter
        self.mode = str(p('mode').value)
        self.accuracy_loss_max = float(p('accuracy_loss_max').value)
        self.objective = str(p('objective').value)
        self.strategy = str(p('strategy').value)
        self.hysteresis = float(p('hysteresis').value)
        self.on_infeasible = str(p('on_infeasible').value)
        self.closed_loop = bool(p('closed_loop').value)
        self.resolve_period_s = float(p('resolve_period_s').value)
        self.retry_initial_s = float(p('retry_initial_s').value)
        self.retry_max_s = float(p('retry_max_s').value)
        self.request_timeout_s = float(p('request_timeout_s').value)

    def _on_set_parameters(self, params: list[rclpy.parameter.Parameter]) -> SetParametersResult:
        """Validate a runtime change against the values it leaves in force."""
        values = {name: self.get_parameter(name).value
                  for name in ('retry_initial_s', 'retry_max_s')}
        values.update({param.name: param.value for param in params})
        why = check_parameters(values)
        return SetParametersResult(successful=why is None, reason=why or '')

    def _on_parameters_set(self, params: list[rclpy.parameter.Parameter]) -> None:
        """Take an accepted change into effect: a new mode or solver setting acts at once."""
        was_mode = self.mode
        self._read_runtime_parameters()
        names = {param.name for param in params}
        if names & set(SOLVER_PARAMETERS):
            self.selector.accuracy_loss_max = self.accuracy_loss_max
            self.selector.objective = self.objective
            self.selector.strategy = self.strategy
            self.selector.hysteresis = self.hysteresis
            self.selector.on_infeasible = self.on_infeasible
        if self.mode != was_mode:
            self.get_logger().info(
                f'mode auto: sending operating points to {self.target_node} again'
                if self.mode == 'auto' else
                f'mode manual: operating points are solved and published but not sent; set '
                f'{self.target_node} by hand, and mode auto to hand control back')
            self.applied = None  # the target may run anything now: send again in auto
            self._backoff_s = self.retry_initial_s
            self._next_try = 0.0
        if self.budget_ms is not None and (self.mode != was_mode
                                           or names & set(SOLVER_PARAMETERS)):
            self._resolve()
            self._tick()

    # ---------------------------------------------------------------- budget -> operating point
    def _on_budget(self, msg: Float64) -> None:
        budget_ms = float(msg.data)
        if not math.isfinite(budget_ms) or budget_ms <= 0.0:
            self.stats['budgets_rejected'] += 1
            self._rejected_unlogged += 1
            self._rejected_latest = budget_ms
            self._log_rejected_budgets(time.monotonic())
            return
        self.stats['budgets'] += 1
        changed = budget_ms != self.budget_ms
        self.budget_ms = budget_ms
        self._resolve(log=changed)
        self._tick()  # send now, not at the next tick: budget-to-ratio reaction time

    def _log_rejected_budgets(self, now: float) -> None:
        """One WARN per REJECTED_BUDGET_LOG_PERIOD_S for the budgets rejected since the last."""
        if not self._rejected_unlogged or now - self._rejected_logged_at \
                < REJECTED_BUDGET_LOG_PERIOD_S:
            return
        n = self._rejected_unlogged
        what = (f'rejected latency budget {self._rejected_latest!r} ms' if n == 1 else
                f'rejected {n} latency budgets in the last '
                f'{now - self._rejected_logged_at:.1f} s (the latest {self._rejected_latest!r} '
                f'ms)')
        self.get_logger().warning(f'{what}: a budget must be finite and > 0; keeping '
                                  f'{self.budget_ms} ms')
        self._rejected_unlogged = 0
        self._rejected_logged_at = now

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
            'mode': self.mode,
        }

    def destroy_node(self) -> None:
        """A parameter response or timer firing while the node is destroyed publishes nothing
        (its publisher may already be gone: InvalidHandleError on the executor thread)."""
        self._destroying = True
        self._future = None
        super().destroy_node()

    def _publish_point(self) -> None:
        if self.point is not None and not self._destroying:
            self._point_pub.publish(String(data=json.dumps(self.point_dict())))

    # ---------------------------------------------------------------- watching the target
    def _set_available(self, available: bool, why: str = '') -> None:
        """Log each change once; either way the point is no longer known to be applied."""
        if available == self.target_available:
            return
        self.target_available = available
        self.applied = None
        if available:
            self.get_logger().info(f'{self.target_node} is available')
            self._backoff_s = self.retry_initial_s
            self._next_try = 0.0
            if self._settle_until == math.inf:  # back after going away: its endpoints lag
                self._settle_until = time.monotonic() + INSTANCE_SETTLE_S
        else:
            self._settle_until = math.inf
            self.get_logger().warning(
                f'{self.target_node} went away ({why}); will re-apply the latest operating '
                f'point when it is back')
            self.target_point = None
            self.target_policy, self.policy_mismatch = None, ''  # it may come back with another
        self._publish_point()

    def _new_instance(self) -> bool:
        """True when a process not seen before serves the target's name: it restarted.

        A crashed process stays in the ROS graph until its DDS lease expires, so service
        availability alone misses a kill -9 followed by an immediate restart.
        """
        gids = frozenset(
            tuple(info.endpoint_gid)
            for info in self.get_publishers_info_by_topic('/parameter_events')
            if f'{info.node_namespace.rstrip("/")}/{info.node_name}' == self.target_node)
        restarted = bool(self._instances) and bool(gids - self._instances)
        self._instances = gids
        return restarted and time.monotonic() >= self._settle_until

    def _drop_poll(self) -> None:
        if self._poll is not None:
            self._poll_client.remove_pending_request(self._poll)
            self._poll = None

    def _watch_target(self, now: float) -> None:
        """Availability from the graph and from polling the target's setpoint parameters."""
        if not self._client.service_is_ready():
            self._drop_poll()
            self._set_available(False, 'its parameter services left the ROS graph')
            return
        if self._new_instance():
            self._drop_poll()
            self._set_available(False, 'a new process serves it now: it restarted')
        if self._poll is not None:
            if now - self._polled_at <= self.request_timeout_s:
                return
            self._drop_poll()
            self._set_available(False, f'no answer to get_parameters within '
                                       f'{self.request_timeout_s:g} s')
        elif self.target_available and now - self._polled_at < self.poll_period_s:
            return
        self._polled_at = now
        self._poll = self._poll_client.call_async(
            GetParameters.Request(names=['keep_ratio', 'frequency_mhz']))
        self._poll.add_done_callback(self._on_poll)

    def _on_poll(self, future: Any) -> None:
        if future is not self._poll:
            return  # timed out, or sent to a process that has been replaced since
        self._poll = None
        try:
            values = future.result().values
        except Exception:  # noqa: BLE001 - a transport failure is one more unanswered poll
            return
        self._set_available(True)
        doubles = [v.double_value for v in values if v.type == ParameterType.PARAMETER_DOUBLE]
        self.target_point = Setpoint(*doubles) if len(doubles) == 2 else None
        if (self.applied is None or self._future is not None or self._polled_at < self._applied_at
                or self.target_point == self.applied):
            return
        if self.mode == 'auto':
            runs = ('no double keep_ratio and frequency_mhz' if self.target_point is None else
                    f'keep_ratio {self.target_point.keep_ratio:g} at '
                    f'{self.target_point.freq_mhz:g} MHz')
            self.get_logger().warning(
                f'{self.target_node} runs {runs}, not the applied point (set by someone else, '
                f'or restarted); sending it again')
        self.applied = None
        self._publish_point()

    # ---------------------------------------------------------------- sending to the target
    def _tick(self) -> None:
        now = time.monotonic()
        self._log_rejected_budgets(now)
        self._watch_target(now)
        if self._future is not None:
            if self._future.done() or now - self._sent_at <= self.request_timeout_s:
                return
            self._client.remove_pending_request(self._future)
            self._future = None
            self._failed(f'no answer within {self.request_timeout_s:g} s')
        if (self.mode == 'manual' or not self.target_available or self.desired is None
                or self.desired == self.applied or now < self._next_try):
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
        self._applied_at = time.monotonic()
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
        cell = self.correction.cell_of(keep_ratio, freq_mhz)
        if cell is None:
            self.stats['measurements_ignored'] += 1
            return
        predicted_ms = float(self.profile.latency_ms[cell[0]][cell[1]])
        self.correction.update(keep_ratio, freq_mhz, latency_ms, predicted_ms)
        if (self.closed_loop and self.budget_ms is not None
                and time.monotonic() - self._last_resolve >= self.resolve_period_s):
            self._resolve(log=False)

    # ---------------------------------------------------------------- skip policy
    def _check_policy(self, reported: Any) -> None:
        """Compare the target's skip policy with the profile's; one WARN per new mismatch.

        Learnt from the classifications the manager already listens to: each carries the name of
        the policy the node actually runs (``skip_policy``: 'proportional' or 'plan:<plan file
        stem>', :func:`pls_perception.skipping.plans.plan_name`), set at configure and so right
        after
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
        runs = self.target_point
        values = {'mode': self.mode, 'target_node': self.target_node,
                  'target_available': self.target_available,
                  'target_keep_ratio': 'unknown' if runs is None else f'{runs.keep_ratio:g}',
                  'target_frequency_mhz': 'unknown' if runs is None else f'{runs.freq_mhz:g}',
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
            elif self.mode == 'manual':
                status.level = DiagnosticStatus.OK
                status.message = 'manual control (mode manual): operating points are not sent'
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


def main(args: list[str] | None = None) -> NoReturn:
    """``ros2 run pls_perception dvfs_manager``: solve and apply operating points until Ctrl-C."""
    spin_node(DvfsManagerNode, NODE_NAME, args,
                     (PlsError, OSError, ValueError, ParameterException),
                     '. Pass a valid profile YAML with --ros-args -p profile:=<path> '
                     '(see config/profiles/).')


if __name__ == '__main__':
    main()
