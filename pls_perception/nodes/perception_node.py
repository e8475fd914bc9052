"""Perception lifecycle node: camera images in, PLS-gated ResNet classifications out.

Thin ROS glue around the ROS-free core: ``io.image_conversion`` turns messages into RGB arrays,
``pipeline`` builds and runs the model, engine and DVFS backend, ``pipeline.parameters`` holds the
parameters as data. The node adds what only a node can: a lifecycle (configure loads the model and opens
the DVFS backend, cleanup frees and resets them), parameters that the DVFS manager changes while
frames flow, and a newest-frame-wins pipeline:

- the image subscription callback only stores the newest frame in a one-frame slot (an
  overwritten frame counts as dropped);
- inference runs in the node's own thread, never in an executor callback, and the node spins a
  ``SingleThreadedExecutor``: parameter, lifecycle and diagnostics callbacks stay prompt however
  slow a frame is (eager PyTorch re-takes the GIL at every operator: next to a busy executor
  thread pool it ran 7x slower, bench/bench_gil_contention.py);
- lifecycle transitions run off the executor thread (threaded_transitions), so a configure that
  exports graphs for a minute never silences ``get_state`` or the parameter services;
- a (keep_ratio, frequency_mhz) change is stored as one pair under a lock and applied by the
  inference thread between frames (at once when idle), so an atomic update of both never lands
  half-way or in the middle of a frame.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn, Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import (LifecycleNode, LifecyclePublisher, LifecycleState,
                             TransitionCallbackReturn)
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import Subscription
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64, String

from pls_perception.engines import build_worker
from pls_perception.errors import BackendError, ImageFormatError, PlsError, WeightsError
from pls_perception.io.image_conversion import compressed_to_rgb, image_to_rgb
from pls_perception.nodes.parameters import descriptor
from pls_perception.nodes.spin import spin_node
from pls_perception.nodes.threaded_transitions import ThreadedTransitions
from pls_perception.nodes.typed_output import FRAME_INFO_TOPIC, TypedOutput, frame_info_json
from pls_perception.pipeline.build import ModelLoader, build_pipeline, import_for_configure
from pls_perception.pipeline.frame_pipeline import (FrameCounters, FramePipeline, FrameWindow,
                                                    Setpoint)
from pls_perception.pipeline.frame_slot import NewestFrameSlot
from pls_perception.pipeline.parameters import PARAMETERS, RUNTIME_PARAMETERS, validate_parameter

NODE_NAME = 'pls_perception_node'
RECONFIGURE_REASON = 'reconfigure: deactivate+cleanup then configure'
# A bad frame every millisecond must not flood the log.
WARN_THROTTLE_S = 5.0
# Longest wait for the frame in flight when deactivating (a frame takes well under a second).
WORKER_JOIN_S = 30.0
# Longest waits at Ctrl-C for a transition in progress (a configure loading the model) and for
# a graph export on the engine's build thread.
TRANSITION_JOIN_S = 10.0
BUILD_JOIN_S = 1.0

Transition = Callable[['PerceptionNode', LifecycleState], TransitionCallbackReturn]


def _log_bugs(callback: Transition) -> Transition:
    """rclpy turns an exception in a transition into ERROR silently: log the traceback first."""
    @functools.wraps(callback)
    def wrapper(self: PerceptionNode, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            return callback(self, state)
        except Exception:
            self.get_logger().error(f'{callback.__name__} raised (a bug, please report it):\n'
                                    f'{traceback.format_exc()}')
            raise
    return wrapper


class PerceptionNode(LifecycleNode):
    """Managed node ``pls_perception_node``: see the module docstring and the README."""

    def __init__(self, node_name: str = NODE_NAME, *, model_loader: ModelLoader | None = None,
                 **kwargs: Any) -> None:
        self._model_loader = model_loader
        self._pipeline: Optional[FramePipeline] = None
        self._pipeline_lock = threading.Lock()  # held for a whole frame and for teardown
        self._frame_info_pub: Optional[LifecyclePublisher] = None
        self._typed: Optional[TypedOutput] = None
        self._image_sub: Optional[Subscription] = None
        self._budget_sub: Optional[Subscription] = None
        # (message, receive time) from the image callback to the inference thread
        self._slot: Optional[NewestFrameSlot[tuple[Any, float]]] = None
        self._worker: Optional[threading.Thread] = None
        self._setpoint_lock = threading.Lock()
        # Set when a new setpoint arrives; cuts the emulated slow-down of the frame in flight.
        self._setpoint_changed = threading.Event()
        self._requested = Setpoint(1.0, 0.0)
        self._counters = FrameCounters()
        self._window: Optional[FrameWindow] = None
        self._budget_ms: Optional[float] = None
        self._progress = ''  # what a running configure is doing, for /diagnostics
        super().__init__(node_name, **kwargs)
        self.transitions = ThreadedTransitions(self)
        self._declare_parameters()
        if validate_parameter('engine', self._param('engine')) is None:
            import_for_configure(self._parameter_values())   # bad values: configure says
        self._requested = Setpoint(self.get_parameter('keep_ratio').value,
                                   self.get_parameter('frequency_mhz').value)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # Diagnostics from start-up on, so a long configure reports what it is doing.
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._diagnostics_timer = self.create_timer(
            self._param('diagnostics_period_s'), self._publish_diagnostics)


    # ------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> None:
        self._declared = [spec.name for spec in PARAMETERS]
        for spec in PARAMETERS:
            self.declare_parameter(
                spec.name,
                Parameter.Type.STRING_ARRAY if spec.type_ == 'string_array' else spec.default,
                descriptor(spec.description, float_range=spec.float_range,
                           int_range=spec.int_range, read_only=spec.read_only,
                           constraints=spec.constraints))

    @property
    def lifecycle_state(self) -> str:
        """Label of the current lifecycle state ('unconfigured', 'inactive', 'active', ...)."""
        return self._state_machine.current_state[1]

    @property
    def pipeline(self) -> Optional[FramePipeline]:
        """Model, engine and DVFS backend while configured, else None."""
        return self._pipeline

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Validate a (possibly atomic) set; runtime ones are stored as one setpoint."""
        configured = self.lifecycle_state != 'unconfigured'
        for param in params:
            if param.name not in RUNTIME_PARAMETERS and configured:
                return SetParametersResult(
                    successful=False,
                    reason=f'{param.name} is read at configure ({self.lifecycle_state} now); '
                           f'{RECONFIGURE_REASON}')
            why = validate_parameter(param.name, param.value)
            if why is not None:
                return SetParametersResult(successful=False, reason=why)
        values = {p.name: p.value for p in params if p.name in RUNTIME_PARAMETERS}
        if values:
            with self._setpoint_lock:
                self._requested = dataclasses.replace(
                    self._requested,
                    keep_ratio=values.get('keep_ratio', self._requested.keep_ratio),
                    freq_mhz=values.get('frequency_mhz', self._requested.freq_mhz))
                self._setpoint_changed.set()
            slot = self._slot
            if slot is not None:
                slot.nudge()  # applied by the inference thread now, not at the next frame
        return SetParametersResult(successful=True)

    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _parameter_values(self) -> dict[str, Any]:
        """Every declared parameter's value (None for an unset array such as class_names)."""
        return {name: self.get_parameter_or(name).value for name in self._declared}

    def _report_progress(self, step: str) -> None:
        """A configure step: into /diagnostics, and the log."""
        self._progress = step
        self.get_logger().info(step)

    # ------------------------------------------------------------------ lifecycle
    @_log_bugs
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        for name in self._declared:
            value = self.get_parameter_or(name).value
            why = None if value is None else validate_parameter(name, value)
            if why is not None:
                self.get_logger().error(f'configure failed: parameter {name}: {why}; set a '
                                        'valid value and configure again')
                return TransitionCallbackReturn.FAILURE
        try:
            pipeline = build_pipeline(self._parameter_values(), self._take_setpoint(),
                                      self._model_loader, self._report_progress)
        except WeightsError as e:
            self.get_logger().error(
                f'configure failed: {e}. Set the weights parameter to a ResNet state_dict '
                f"path ('ros2 param set {self.get_fully_qualified_name()} weights <path>'), "
                'or fix bn_recalibration, and configure again')
            return TransitionCallbackReturn.FAILURE
        except BackendError as e:
            self.get_logger().error(
                f'configure failed: DVFS backend {self._param("dvfs_backend")!r} cannot be used '
                f"({e}). Set dvfs_backend to 'simulated' (or 'auto'), or fix its permissions, "
                'and configure again')
            return TransitionCallbackReturn.FAILURE
        except (PlsError, ValueError, OSError) as e:
            self.get_logger().error(f'configure failed: {e}. Fix the parameters named above and '
                                    'configure again')
            return TransitionCallbackReturn.FAILURE
        finally:
            self._progress = ''
        self._pipeline = pipeline
        self._counters = FrameCounters()
        self._window = FrameWindow(self._param('latency_window'))
        self._create_entities()
        applied = pipeline.applied
        self.get_logger().info(
            f'configured: {pipeline.info["weights"]} on {pipeline.engine.name} engine, '
            f'keep_ratio {applied.keep_ratio:g}, DVFS {pipeline.backend.describe()}')
        return TransitionCallbackReturn.SUCCESS

    def _create_entities(self) -> None:
        self._frame_info_pub = self.create_lifecycle_publisher(String, FRAME_INFO_TOPIC, 10)
        self._typed = TypedOutput(self, self._pipeline.class_names)
        self._budget_sub = self.create_subscription(
            Float64, '/latency_budget', self._on_budget, 10)

    @_log_bugs
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        reliability = (ReliabilityPolicy.RELIABLE if self._param('qos_reliability') == 'reliable'
                       else ReliabilityPolicy.BEST_EFFORT)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self._param('qos_depth'),
                         reliability=reliability, durability=DurabilityPolicy.VOLATILE)
        compressed = self._param('image_transport') == 'compressed'
        self._slot = slot = NewestFrameSlot()
        self._worker = threading.Thread(target=self._serve, args=(slot,), daemon=True,
                                        name='pls_inference')
        self._worker.start()
        self._image_sub = self.create_subscription(
            CompressedImage if compressed else Image,
            'image/compressed' if compressed else 'image', self._on_image, qos)
        self.get_logger().info(f'active: classifying {self._image_sub.topic_name}')
        return super().on_activate(state)

    @_log_bugs
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self.get_logger().info('inactive: model kept, frames ignored')
        return super().on_deactivate(state)

    @_log_bugs
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.teardown()
        self.get_logger().info('cleaned up: model freed, DVFS backend reset')
        return TransitionCallbackReturn.SUCCESS

    @_log_bugs
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.teardown()
        self.get_logger().info(f'shut down from {state.label}')
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f'a transition from {state.label} raised: released everything; '
                                'the node is unconfigured again, fix the cause and configure')
        self.teardown()
        return TransitionCallbackReturn.SUCCESS

    def _stop_processing(self) -> None:
        """Unsubscribe, drop the waiting frame, let the frame in flight finish, stop the thread."""
        if self._image_sub is not None:
            self.destroy_subscription(self._image_sub)
            self._image_sub = None
        slot, worker, self._slot, self._worker = self._slot, self._worker, None, None
        if slot is not None and slot.close() is not None:
            self._counters.dropped += 1
        if worker is not None:
            worker.join(WORKER_JOIN_S)
            if worker.is_alive():
                self.get_logger().error(f'the inference thread did not stop within '
                                        f'{WORKER_JOIN_S:g} s; continuing without it')

    def teardown(self) -> None:
        """Undo configure (and activate); safe from any state and idempotent."""
        self._stop_processing()
        if self._budget_sub is not None:
            self.destroy_subscription(self._budget_sub)
            self._budget_sub = None
        if self._frame_info_pub is not None:
            self.destroy_lifecycle_publisher(self._frame_info_pub)
            self._frame_info_pub = None
        if self._typed is not None:
            self._typed.destroy()
            self._typed = None
        self.release_model()

    def release_model(self) -> None:
        """Free the model and reset the DVFS backend (waits for a frame in flight)."""
        with self._pipeline_lock:
            pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            pipeline.close()

    # ------------------------------------------------------------------ frames
    def _on_image(self, msg: Image | CompressedImage) -> None:
        """Keep only the newest frame; the inference thread picks it up."""
        slot = self._slot
        if slot is None:
            return
        self._counters.received += 1
        if slot.put((msg, time.monotonic())):  # (frame, when it arrived)
            self._counters.dropped += 1

    def _take_setpoint(self) -> Setpoint:
        with self._setpoint_lock:
            return self._requested

    def _to_rgb(self, msg: Image | CompressedImage) -> np.ndarray:
        """The frame reduced as it is converted to what the network needs (bounded cost)."""
        limit = self._param('max_image_pixels')
        reduction = self._pipeline.preprocessing.reduction   # caller holds the lock
        if isinstance(msg, CompressedImage):
            return compressed_to_rgb(msg.format, msg.data, max_pixels=limit, reduction=reduction)
        return image_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian,
                            msg.data, max_pixels=limit, reduction=reduction)

    def _serve(self, slot: NewestFrameSlot[tuple[Any, float]]) -> None:
        """The inference thread: apply the requested operating point, classify the newest frame.

        Nothing a frame does may end the thread: an unexpected error is logged and counted.
        """
        while slot.wait():
            item = slot.pop()
            try:
                self._process(item)
            except Exception:
                if not self.context.ok():
                    return  # shutting down (Ctrl-C): nothing left to publish to
                self._counters.failed += 1
                self.get_logger().error(
                    f'frame failed ({self._counters.failed} so far; a bug, please report it):\n'
                    f'{traceback.format_exc()}', throttle_duration_sec=WARN_THROTTLE_S)

    def _process(self, item: tuple[Image | CompressedImage, float] | None) -> None:
        """Apply the setpoint, then classify ``item`` (if any) and publish the result."""
        with self._pipeline_lock:
            pipeline = self._pipeline
            if pipeline is None:
                return
            with self._setpoint_lock:  # the frame below runs at this pair
                self._setpoint_changed.clear()
                setpoint = self._requested
            try:
                pipeline.apply(setpoint)
            except (BackendError, ValueError) as e:
                self.get_logger().error(f'cannot apply the operating point: {e}',
                                        throttle_duration_sec=WARN_THROTTLE_S)
            if item is None:
                return
            msg, received_at = item
            queue_ms = (time.monotonic() - received_at) * 1e3
            try:
                rgb = self._to_rgb(msg)
            except ImageFormatError as e:
                self._counters.rejected += 1
                self.get_logger().warning(
                    f'dropped a malformed frame ({self._counters.rejected} so far): {e}',
                    throttle_duration_sec=WARN_THROTTLE_S)
                return
            result = pipeline.classify(rgb, self._setpoint_changed)
        self._counters.processed += 1
        self._window.add(result.latency_ms, result.energy_mj)
        budget_ms = self._budget_ms
        if budget_ms is not None and result.latency_ms > budget_ms:
            self._counters.deadline_misses += 1
        info = {**pipeline.info, 'dvfs_backend': pipeline.backend.name,
                'dvfs_real': bool(pipeline.backend.is_real),
                'dvfs_emulation': pipeline.emulation,
                'keep_ratio_requested': setpoint.keep_ratio,
                'frequency_requested_mhz': setpoint.freq_mhz,
                'queue_ms': round(queue_ms, 3), 'frames': self._counters.as_dict()}
        typed, publisher = self._typed, self._frame_info_pub
        if typed is not None:
            typed.publish(msg.header, result.top_k)
        if publisher is not None:
            publisher.publish(String(data=frame_info_json(result, msg.header, info)))

    def _on_budget(self, msg: Float64) -> None:
        value = float(msg.data)
        self._budget_ms = value if math.isfinite(value) and value > 0 else None

    # ------------------------------------------------------------------ diagnostics
    def diagnostics_status(self) -> DiagnosticStatus:
        """The node's one DiagnosticStatus (also used by tests).

        ERROR when the DVFS backend failed (the node runs on the simulated one); WARN for deadline
        misses, malformed or failed frames, and a requested ratio still being built. While a
        configure runs, the message says what it is doing.
        """
        pipeline = self._pipeline
        window = self._window.summary() if self._window else {}
        counters = self._counters.as_dict()
        values: dict[str, str] = {'state': self.lifecycle_state}
        problems: list[str] = []
        progress = self._progress
        if progress:
            values['configure_step'] = progress
        fault = None
        if pipeline is not None:
            fault = pipeline.health(self._take_setpoint(), values, problems)
            if self._typed is not None:
                values['typed_output'] = self._typed.status()
        values.update({('window_frames' if k == 'frames' else k):
                       (f'{v:.4f}' if isinstance(v, float) else str(v))
                       for k, v in window.items()})
        values.update({f'frames_{k}': str(v) for k, v in counters.items()})
        values['budget_ms'] = 'none' if self._budget_ms is None else f'{self._budget_ms:g}'
        if counters['deadline_misses'] or counters['rejected'] or counters['failed']:
            problems.insert(0, f'{counters["deadline_misses"]} deadline misses, '
                               f'{counters["rejected"]} malformed frames, '
                               f'{counters["failed"]} failed frames')
        status = DiagnosticStatus(name=f'{self.get_fully_qualified_name()}: inference',
                                  hardware_id=pipeline.hardware_id if pipeline else 'none')
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        if fault is not None:
            status.level, status.message = DiagnosticStatus.ERROR, '; '.join([fault, *problems])
        elif problems:
            status.level, status.message = DiagnosticStatus.WARN, '; '.join(problems)
        else:
            status.level = DiagnosticStatus.OK
            status.message = f'{self.lifecycle_state}: {progress}' if progress else (
                self.lifecycle_state)
        return status

    def _publish_diagnostics(self) -> None:
        publisher = self._diagnostics_pub
        if publisher is None:
            return
        array = DiagnosticArray(status=[self.diagnostics_status()])
        array.header.stamp = self.get_clock().now().to_msg()
        publisher.publish(array)


def main(args: list[str] | None = None) -> NoReturn:
    """``ros2 run pls_perception perception_node``: spin the node until SIGINT or SIGTERM.

    The signal only sets an event (``spin.stop_requested``): rclpy's own handler would shut the
    context down under the inference thread and raise KeyboardInterrupt inside whatever runs.
    """
    def autostart(node: PerceptionNode) -> None:
        if node.get_parameter('autostart').value:
            # Off the executor thread: the node answers its services while it configures.
            node.transitions.start(node.trigger_configure, node.trigger_activate)

    def teardown(node: PerceptionNode) -> None:
        if not node.transitions.join(TRANSITION_JOIN_S):
            node.get_logger().warning(
                f'a transition was still running {TRANSITION_JOIN_S:g} s after the stop '
                'signal; stopping anyway')
        node.teardown()  # the signal skips the lifecycle: free model, reset backend
        # A graph export still running is cut off when the process ends; cache writes are
        # atomic, so it leaves no partial entry.
        build_worker.join_all(BUILD_JOIN_S)

    spin_node(PerceptionNode, NODE_NAME, args, startup_errors=(), started=autostart,
              stopping=teardown)


if __name__ == '__main__':
    main()
