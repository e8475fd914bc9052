"""Perception lifecycle node: camera images in, PLS-gated ResNet classifications out.

Thin ROS glue around the ROS-free core: ``image_conversion`` turns messages into RGB arrays,
``weights``/``engines`` run the skippable network, ``dvfs`` sets (or emulates) the processor
frequency. The node adds what only a node can: a lifecycle (configure loads the model and opens
the DVFS backend, cleanup frees and resets them), parameters that the DVFS manager changes while
frames flow, and a newest-frame-wins pipeline:

- the image subscription callback only stores the newest frame in a one-frame slot (an
  overwritten frame counts as dropped);
- inference runs in the node's own thread, never in an executor callback, and the node spins a
  ``SingleThreadedExecutor``: parameter, lifecycle and diagnostics callbacks stay prompt however
  slow a frame is. (Inference as a ``MultiThreadedExecutor`` callback was the first design: under a
  100 Hz camera the executor's thread-pool hand-offs kept the GIL so busy that eager PyTorch, which
  re-takes the GIL at every operator, ran each frame 7x slower and parameter requests waited 4 s);
- a (keep_ratio, frequency_mhz) change is stored as one pair under a lock and applied by the
  inference thread between frames (at once when idle), so an atomic update of both never lands
  half-way or in the middle of a frame.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import re
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.executors import ExternalShutdownException
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.lifecycle import LifecycleNode, LifecyclePublisher, LifecycleState
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import Subscription
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64, String

from pls_perception import paths
from pls_perception.bn_recalibration import load_bn_states
from pls_perception.dvfs import BACKEND_NAMES, DvfsBackend, FailoverBackend, get_backend
from pls_perception.dvfs.simulated import profile_latency_model
from pls_perception.energy import EnergyMeter, profile_power_fn
from pls_perception.engines import (ENGINE_NAMES, InferenceEngine, build_worker, make_engine,
                                   resolve_engine_name)
from pls_perception.errors import BackendError, ImageFormatError, PlsError, WeightsError
from pls_perception.frame_slot import NewestFrameSlot
from pls_perception.image_conversion import (DEFAULT_MAX_PIXELS, compressed_to_rgb,
                                             image_to_rgb)
from pls_perception.nodes.dvfs_manager_node import default_profile_path
from pls_perception.nodes.spin import make_executor
from pls_perception.nodes.threaded_transitions import ThreadedTransitions
from pls_perception.nodes.typed_output import FRAME_INFO_TOPIC, TypedOutput, frame_info_json
from pls_perception.profiles import load_profile
from pls_perception.skip_plans import load_policy
from pls_perception.weights import LoadedModel, load_model

NODE_NAME = 'pls_perception_node'
RECONFIGURE_REASON = 'reconfigure: deactivate+cleanup then configure'
IMAGE_TRANSPORTS = ('raw', 'compressed')
DVFS_EMULATIONS = ('stretch', 'profile')
QOS_RELIABILITIES = ('best_effort', 'reliable')
_DEVICE_PATTERN = re.compile(r'^(cpu|cuda(:\d+)?)$')
# Parameters that change while frames flow; every other parameter is read at configure.
RUNTIME_PARAMETERS = ('keep_ratio', 'frequency_mhz')
# A bad frame every millisecond must not flood the log.
WARN_THROTTLE_S = 5.0
# The ratios of the shipped profiles: graphs ready before activation, the manager never waits.
PREBUILD_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# Longest wait for the frame in flight when deactivating (a frame takes well under a second).
WORKER_JOIN_S = 30.0
# Longest waits at Ctrl-C for a transition in progress (a configure loading the model) and for
# a graph export on the engine's build thread.
TRANSITION_JOIN_S = 10.0
BUILD_JOIN_S = 1.0

ModelLoader = Callable[..., LoadedModel]
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


@dataclass(frozen=True)
class Setpoint:
    """What the next frame runs at. ``freq_mhz == 0`` leaves the processor alone."""

    keep_ratio: float
    freq_mhz: float


@dataclass
class FrameCounters:
    """Frames seen by the node since configure. Each field has exactly one writer thread.

    received = processed + dropped + rejected + failed + the frame waiting + the one in flight.
    """

    received: int = 0
    processed: int = 0
    dropped: int = 0
    rejected: int = 0
    failed: int = 0
    deadline_misses: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Classification:
    """One frame's result, before it is wrapped in a message."""

    class_id: int
    label: str
    score: float
    top_k: tuple[tuple[int, str, float], ...]
    keep_ratio: float
    freq_mhz: float
    preprocess_ms: float
    compute_ms: float
    emulated_ms: float
    energy_mj: float | None = None
    energy_source: str | None = None

    @property
    def latency_ms(self) -> float:
        """Network latency at the frequency in force: measured compute + emulated slow-down."""
        return self.compute_ms + self.emulated_ms


class FrameWindow:
    """Latency and energy of the last ``size`` frames, summarised for the diagnostics."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f'the window needs at least one frame, got {size!r}')
        self._frames: deque[tuple[float, float]] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, latency_ms: float, energy_mj: float | None) -> None:
        with self._lock:
            self._frames.append((latency_ms, math.nan if energy_mj is None else energy_mj))

    def summary(self) -> dict[str, float | int]:
        """Latency p50/p95/max and mean energy (NaN when unknown) over the window."""
        with self._lock:
            frames = np.asarray(self._frames, dtype=float).reshape(-1, 2)
        if frames.shape[0] == 0:
            return {'latency_p50_ms': math.nan, 'latency_p95_ms': math.nan,
                    'latency_max_ms': math.nan, 'energy_per_frame_mj': math.nan, 'frames': 0}
        latency, energy = frames[:, 0], frames[:, 1]
        p50, p95 = np.percentile(latency, [50, 95])
        known = energy[~np.isnan(energy)]
        return {'latency_p50_ms': float(p50), 'latency_p95_ms': float(p95),
                'latency_max_ms': float(latency.max()),
                'energy_per_frame_mj': float(known.mean()) if known.size else math.nan,
                'frames': int(frames.shape[0])}


class FramePipeline:
    """Everything a configured node owns and frees at cleanup: model, engine, DVFS backend.

    ROS-free: ``classify`` takes an RGB array. ``apply`` moves the network and the processor
    to a setpoint; call it between frames (the node does, from the inference thread).
    """

    def __init__(self, loaded: LoadedModel, engine: InferenceEngine, backend: DvfsBackend,
                 class_names: Sequence[str], top_k: int,
                 meter: EnergyMeter | None = None) -> None:
        self.loaded = loaded
        self.engine = engine
        self.backend = backend
        self.meter = meter
        self.class_names = tuple(class_names)
        self.top_k = min(top_k, len(self.class_names))
        self.applied: Setpoint | None = None

    def apply(self, setpoint: Setpoint) -> None:
        """Set the keep ratio and frequency; ``freq_mhz == 0`` hands the processor back."""
        if self.applied is not None and setpoint == self.applied:
            return
        self.engine.set_keep_ratio(setpoint.keep_ratio)
        if setpoint.freq_mhz > 0:
            self.backend.set_frequency_mhz(setpoint.freq_mhz)
        elif self.applied is not None and self.applied.freq_mhz > 0:
            self.backend.reset()
        self.applied = setpoint

    def warm_up(self, frames: int) -> None:
        """Run ``frames`` dummy inferences so the first real frame is not an outlier."""
        height, width = self.loaded.preprocessing.input_size
        black = np.zeros((height, width, 3), dtype=np.uint8)
        batch = self.loaded.preprocessing.to_tensor(black).numpy()
        for _ in range(frames):
            self.engine.infer(batch)

    def classify(self, rgb: np.ndarray,
                 interrupt: threading.Event | None = None) -> Classification:
        """Preprocess, infer, stretch latency to the set frequency, rank the classes.

        Energy covers inference plus emulated slow-down (the meter's window); ``interrupt`` set
        (a new operating point) cuts the emulated slow-down short.
        """
        t0 = time.perf_counter()
        batch = self.loaded.preprocessing.to_tensor(rgb).numpy()
        window = (self.meter.window('frame') if self.meter is not None
                  else contextlib.nullcontext([]))
        with window as readings:
            t1 = time.perf_counter()
            logits = self.engine.infer(batch)[0]
            compute_s = time.perf_counter() - t1
            emulated_s = self.backend.emulate(compute_s, self.engine.keep_ratio, interrupt)
        energy = readings[0] if readings else None
        shifted = logits.astype(np.float64) - logits.max()
        probs = np.exp(shifted) / np.exp(shifted).sum()
        order = np.argsort(-probs, kind='stable')[: self.top_k]
        top = tuple((int(i), self.class_names[i], float(probs[i])) for i in order)
        return Classification(
            class_id=top[0][0], label=top[0][1], score=top[0][2], top_k=top,
            keep_ratio=float(self.engine.keep_ratio),
            freq_mhz=float(self.backend.current_frequency_mhz()),
            preprocess_ms=(t1 - t0) * 1e3, compute_ms=compute_s * 1e3,
            emulated_ms=emulated_s * 1e3,
            energy_mj=None if energy is None else energy.energy_mj,
            energy_source=None if energy is None else energy.source)

    def close(self) -> None:
        """Free the engine and give the processor back to its original settings."""
        try:
            self.engine.close()
        finally:
            self.backend.reset()


def _descriptor(description: str, *, float_range: tuple[float, float] | None = None,
                int_range: tuple[int, int] | None = None, read_only: bool = False,
                constraints: str = '') -> ParameterDescriptor:
    descriptor = ParameterDescriptor(description=description, read_only=read_only,
                                     additional_constraints=constraints)
    if float_range is not None:
        descriptor.floating_point_range = [
            FloatingPointRange(from_value=float_range[0], to_value=float_range[1], step=0.0)]
    if int_range is not None:
        descriptor.integer_range = [
            IntegerRange(from_value=int_range[0], to_value=int_range[1], step=1)]
    return descriptor


def _choice(value: Any, choices: Sequence[str]) -> str | None:
    return None if value in choices else f'must be one of {tuple(choices)}, got {value!r}'


def validate_parameter(name: str, value: Any) -> str | None:
    """Why ``value`` is not acceptable for parameter ``name`` (None = fine).

    Ranges in the descriptors are checked by rclpy already; this adds what descriptors cannot
    express (open intervals, enumerations, cross-field rules checked at configure).
    """
    if name == 'keep_ratio':
        ok = isinstance(value, float) and math.isfinite(value) and 0.0 < value <= 1.0
        return None if ok else f'keep_ratio must be in (0, 1], got {value!r}'
    if name == 'prebuild_ratios':
        bad = [r for r in value if not (math.isfinite(r) and 0.0 < r <= 1.0)]
        return None if not bad else f'prebuild_ratios must all be in (0, 1], got {bad!r}'
    if name == 'frequency_mhz':
        ok = isinstance(value, float) and math.isfinite(value) and value >= 0.0
        return None if ok else (
            f'frequency_mhz must be >= 0 MHz (0 = leave the processor alone), got {value!r}')
    if name == 'dvfs_backend':
        return _choice(value, BACKEND_NAMES)
    if name == 'dvfs_emulation':
        return _choice(value, DVFS_EMULATIONS)
    if name == 'engine':
        return _choice(value, ENGINE_NAMES)
    if name == 'image_transport':
        return _choice(value, IMAGE_TRANSPORTS)
    if name == 'qos_reliability':
        return _choice(value, QOS_RELIABILITIES)
    if name == 'device' and not _DEVICE_PATTERN.match(str(value)):
        return f"device must be 'cpu', 'cuda' or 'cuda:N', got {value!r}"
    if name == 'input_size':
        ok = len(value) == 2 and (all(v == 0 for v in value) or all(v > 0 for v in value))
        return None if ok else f'input_size must be [H, W] > 0 or [0, 0] (model default), ' \
                               f'got {list(value)!r}'
    if name == 'class_names' and any(not str(n).strip() for n in value):
        return f'class_names must not contain empty names, got {list(value)!r}'
    return None


class PerceptionNode(LifecycleNode):
    """Managed node ``pls_perception_node``: see the module docstring and the README."""

    def __init__(self, node_name: str = NODE_NAME, *, model_loader: ModelLoader = load_model,
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
        self._info: dict[str, Any] = {}
        self._hardware_id = 'none'
        self._emulation = 'none'  # how the simulated backend makes frames last (frame JSON)
        self._progress = ''  # what a running configure is doing, for /diagnostics
        super().__init__(node_name, **kwargs)
        self._guard_change_state_service()
        self.transitions = ThreadedTransitions(self)
        self._declare_parameters()
        self._requested = Setpoint(self.get_parameter('keep_ratio').value,
                                   self.get_parameter('frequency_mhz').value)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # Diagnostics from start-up on, so a long configure reports what it is doing.
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._diagnostics_timer = self.create_timer(
            self._param('diagnostics_period_s'), self._publish_diagnostics)

    def _guard_change_state_service(self) -> None:
        """Answer an invalid transition id with success=False instead of dying.

        rclpy 7 (Jazzy) raises RCLError out of the change_state service callback when the
        requested transition id does not exist in the current state, which ends ``spin()``
        and with it the process: one mistyped ``ros2 lifecycle set`` would kill the node.
        """
        service = getattr(self, '_service_change_state', None)
        if service is None:  # enable_communication_interface=False
            return
        change_state = service.callback

        def guarded(request: Any, response: Any) -> Any:
            try:
                return change_state(request, response)
            except _rclpy.RCLError:
                self.get_logger().warning(
                    f'change_state: transition {request.transition.id} '
                    f'{request.transition.label!r} is not available from {self.lifecycle_state}')
                response.success = False
                return response
        service.callback = guarded

    # ------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> None:
        d = _descriptor
        self._declared: list[str] = []

        def declare(name: str, value: Any, descriptor: ParameterDescriptor) -> None:
            self.declare_parameter(name, value, descriptor)
            self._declared.append(name)
        declare('keep_ratio', 1.0, d(
            'fraction of the residual blocks of every stage that run, in (0, 1]; changeable '
            'while active, applied before the next frame', float_range=(0.0, 1.0),
            constraints='0 < keep_ratio <= 1'))
        declare('frequency_mhz', 0.0, d(
            'processor frequency to set (snapped to the nearest available one); 0 leaves the '
            'processor alone; changeable while active', float_range=(0.0, 100000.0)))
        declare('weights', '', d(
            "state_dict path, 'imagenet' or 'random'; empty = the shared reference weights"))
        declare('num_classes', 0, d(
            'number of classes; 0 = infer from the weights', int_range=(0, 100000)))
        declare('class_names', Parameter.Type.STRING_ARRAY, d(
            'class labels in output order; unset = the labels that come with the weights'))
        declare('input_size', [0, 0], d(
            'network input [H, W]; [0, 0] = the size the weights were trained for'))
        declare('device', 'cpu', d("torch device: 'cpu', 'cuda' or 'cuda:N'"))
        declare('dvfs_backend', 'auto', d(
            f'DVFS backend, one of {BACKEND_NAMES}; auto = first real one, else simulated. A '
            'real backend that fails while running is replaced by the simulated one (ERROR in '
            '/diagnostics)'))
        declare('dvfs_sysfs_root', '/', d(
            'root the DVFS backends find sys/ under (a container bind mount, or a test tree)'))
        declare('dvfs_emulation', 'stretch', d(
            "simulated backend only: 'stretch' (a frame's compute time x f_max / f) or 'profile' "
            '(each frame takes the latency of energy_profile\'s device at the keep ratio and '
            'frequency, when this host is faster: the device runs in real time, labelled '
            "'emulating <device>')"))
        declare('energy_profile', '', d(
            'operating-point profile whose power model gives the modelled energy per frame '
            "(measured with zeus on a real backend when available); '' = the shipped Orin Nano "
            "CPU profile, 'none' = no energy figures"))
        declare('bn_recalibration', '', d(
            'per-ratio BatchNorm statistics file (see pls_perception.bn_recalibration); '
            'empty = off'))
        declare('engine', 'auto', d(
            f'inference engine, one of {ENGINE_NAMES}; auto = onnxruntime on the CPU when '
            'installed (about 4x faster than eager torch at batch 1), else torch'))
        declare('prebuild_ratios', list(PREBUILD_RATIOS), d(
            'onnxruntime engine: keep ratios whose graphs are loaded from the cache (or built) in '
            'the background once keep_ratio\'s graph is ready at configure; a ratio asked for '
            'before its graph is ready is built first, the previous ratio serving meanwhile (see '
            '/diagnostics)'))
        declare('onnx_cache_dir', '', d(
            "onnxruntime engine: graph cache directory; '' = $PLS_ONNX_CACHE, else "
            '~/.cache/pls_perception/onnx'))
        declare('skip_policy', 'proportional', d(
            "which blocks a ratio keeps: 'proportional' or a skip-plan file (pls-plan)"))
        declare('image_transport', 'raw', d(
            "'raw' (sensor_msgs/Image on image) or 'compressed' (CompressedImage on "
            'image/compressed)'))
        declare('qos_reliability', 'best_effort', d(
            "image subscription reliability: 'best_effort' (sensor data) or 'reliable'"))
        declare('qos_depth', 5, d(
            'image subscription queue depth (keep last)', int_range=(1, 1000)))
        declare('top_k', 5, d(
            'number of ranked classes in each classification', int_range=(1, 1000)))
        declare('warmup_frames', 2, d(
            'dummy inferences at configure', int_range=(0, 100)))
        declare('num_threads', 0, d(
            'torch intra-op threads; 0 = leave torch\'s default', int_range=(0, 1024)))
        declare('max_image_pixels', DEFAULT_MAX_PIXELS, d(
            'larger frames are rejected as malformed', int_range=(1, 1 << 31)))
        declare('latency_window', 100, d(
            'frames in the diagnostics latency window', int_range=(1, 100000)))
        declare('diagnostics_period_s', 1.0, d(
            'period of /diagnostics (read at start-up)', float_range=(0.05, 60.0)))
        declare('autostart', False, d(
            'configure and activate right after start-up (main() only)', read_only=True))

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
            pipeline = self._build_pipeline()
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
            f'configured: {pipeline.loaded.source} on {self._info["engine"]} engine, '
            f'keep_ratio {applied.keep_ratio:g}, DVFS {pipeline.backend.describe()}')
        return TransitionCallbackReturn.SUCCESS

    def _build_pipeline(self) -> FramePipeline:
        """Load weights, build the engine, open the backend, warm up. Raises PlsError."""
        # '' = search the data dirs for the reference weights (paths.py); random only if asked
        weights = self._param('weights') or str(paths.find_reference_weights())
        device = self._param('device')
        if device.startswith('cuda') and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA device here; use device 'cpu'")
        if self._param('num_threads') > 0:
            torch.set_num_threads(self._param('num_threads'))
        num_classes = self._param('num_classes') or None
        self._progress = f'loading the weights ({weights})'
        loaded = self._model_loader(weights, num_classes=num_classes,
                                    allow_random=weights == 'random')
        class_names = self.get_parameter_or(
            'class_names', Parameter('class_names', value=[])).value or loaded.class_names
        if len(class_names) != loaded.num_classes:
            raise ValueError(f'class_names has {len(class_names)} names but the model has '
                             f'{loaded.num_classes} classes')
        if any(self._param('input_size')):
            loaded = dataclasses.replace(loaded, preprocessing=dataclasses.replace(
                loaded.preprocessing, input_size=tuple(self._param('input_size'))))
        policy = load_policy(self._param('skip_policy'), loaded.sha256, loaded.model.depths)
        loaded.model.set_policy(policy)
        self._apply_bn_recalibration(loaded)
        backend = get_backend(self._param('dvfs_backend'),
                              sysfs_root=self._param('dvfs_sysfs_root'), failover=True,
                              **self._emulation_options())
        try:
            meter = self._energy_meter(backend)
            # onnxruntime options (the torch engine ignores them): the first frame's ratio now,
            # the others on the engine's build thread while frames flow.
            keep_ratio = self._take_setpoint().keep_ratio
            if resolve_engine_name(self._param('engine'), device) == 'onnxruntime':
                self._progress = (f'onnxruntime: loading the graph of keep ratio {keep_ratio:g} '
                                  'from the cache, or exporting it (once, 10-30 s)')
                self.get_logger().info(
                    f'{self._progress}; the other prebuild_ratios follow in the background '
                    f'(cache: {self._param("onnx_cache_dir") or "default"})')
            engine = make_engine(self._param('engine'), loaded, device=device,
                                 keep_ratio=keep_ratio,
                                 background_ratios=list(self._param('prebuild_ratios')),
                                 cache_dir=self._param('onnx_cache_dir') or None,
                                 intra_op_threads=self._param('num_threads'))
        except BaseException:
            backend.reset()
            raise
        pipeline = FramePipeline(loaded, engine, backend, class_names, self._param('top_k'),
                                 meter)
        try:
            self._progress = 'warming up'
            pipeline.apply(self._take_setpoint())
            pipeline.warm_up(self._param('warmup_frames'))
        except BaseException:
            pipeline.close()
            raise
        self._info = {'engine': engine.name, 'skip_policy': policy.name,
                      'weights': loaded.source}
        self._hardware_id = backend.name
        self._emulation = 'none' if backend.is_real else getattr(
            getattr(backend, 'wrapped', backend), 'emulation', 'stretch')
        return pipeline

    def _emulation_options(self) -> dict[str, Any]:
        """Simulated-backend options: emulate the device profile's latency when asked to."""
        if self._param('dvfs_emulation') != 'profile':
            return {}
        spec = self._param('energy_profile')
        profile = load_profile(default_profile_path() if spec in ('', 'none') else spec)
        return {'frequencies_mhz': list(profile.frequencies_mhz),
                'latency_model': profile_latency_model(profile),
                'device_name': profile.device_name}

    def _energy_meter(self, backend: DvfsBackend) -> EnergyMeter | None:
        """Energy per frame from the profile's power model (zeus-measured when it can)."""
        spec = self._param('energy_profile')
        if spec == 'none':
            return None
        profile = load_profile(spec or default_profile_path())
        return EnergyMeter(profile_power_fn(profile), backend)

    def _apply_bn_recalibration(self, loaded: LoadedModel) -> None:
        path = self._param('bn_recalibration')
        if path:
            load_bn_states(loaded.model, path)

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
        reduction = self._pipeline.loaded.preprocessing.reduction   # caller holds the lock
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
        info = {**self._info, 'dvfs_backend': pipeline.backend.name,
                'dvfs_real': bool(pipeline.backend.is_real),
                'dvfs_emulation': self._emulation,
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
            backend, engine = pipeline.backend, pipeline.engine
            values.update({
                'keep_ratio': f'{engine.keep_ratio:g}',
                'frequency_mhz': f'{backend.current_frequency_mhz():g}',
                'frequency_requested_mhz': f'{self._take_setpoint().freq_mhz:g}',
                'dvfs_backend': backend.name,
                'dvfs_kind': 'real' if backend.is_real else 'simulated',
                'dvfs_emulation': self._emulation,
                'engine': engine.name,
                'skip_policy': self._info.get('skip_policy', ''),
                'energy_source': pipeline.meter.source if pipeline.meter else 'none',
            })
            if self._typed is not None:
                values['typed_output'] = self._typed.status()
            if isinstance(backend, FailoverBackend) and backend.fault is not None:
                fault = f'DVFS backend failed ({backend.fault}): running on the simulated backend'
                values['dvfs_fault'] = backend.fault
            status = engine.status()
            pending = status.get('pending_ratios', [])
            values['engine_pending_ratios'] = ' '.join(f'{r:g}' for r in pending) or 'none'
            background = status.get('background_ratios', [])
            values['engine_background_builds'] = ' '.join(f'{r:g}' for r in background) or 'none'
            if pending:
                problems.append(f'building the graph of ratio {status["requested_ratio"]:g}, '
                                f'serving {status["active_ratio"]:g} meanwhile')
            if status.get('build_errors'):
                values['engine_build_errors'] = '; '.join(status['build_errors'])
                problems.append(f'engine build errors: {values["engine_build_errors"]}')
        values.update({('window_frames' if k == 'frames' else k):
                       (f'{v:.4f}' if isinstance(v, float) else str(v))
                       for k, v in window.items()})
        values.update({f'frames_{k}': str(v) for k, v in counters.items()})
        values['budget_ms'] = 'none' if self._budget_ms is None else f'{self._budget_ms:g}'
        if counters['deadline_misses'] or counters['rejected'] or counters['failed']:
            problems.insert(0, f'{counters["deadline_misses"]} deadline misses, '
                               f'{counters["rejected"]} malformed frames, '
                               f'{counters["failed"]} failed frames')
        # The hardware as configured: a failed-over backend keeps its identity here.
        status = DiagnosticStatus(name=f'{self.get_fully_qualified_name()}: inference',
                                  hardware_id=self._hardware_id if pipeline else 'none')
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


def main(args: list[str] | None = None) -> None:
    """``ros2 run pls_perception perception_node``: spin the node until Ctrl-C."""
    # rclpy 7 (Jazzy) init() returns None, not a context manager, hence try/finally.
    rclpy.init(args=args)
    node: Optional[PerceptionNode] = None
    try:
        node = PerceptionNode()
        executor = make_executor()
        executor.add_node(node)
        if node.get_parameter('autostart').value:
            # Off the executor thread: the node answers its services while it configures.
            node.transitions.start(node.trigger_configure, node.trigger_activate)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        transition_done = True
        if node is not None:
            transition_done = node.transitions.join(TRANSITION_JOIN_S)
            if not transition_done:
                node.get_logger().warning(
                    f'a transition was still running {TRANSITION_JOIN_S:g} s after Ctrl-C; '
                    'stopping anyway')
            node.teardown()  # Ctrl-C skips the lifecycle: stop frames, free model and backend
            node.destroy_node()
        rclpy.try_shutdown()
        if not (build_worker.join_all(BUILD_JOIN_S) and transition_done):
            # A graph export is still inside torch/ONNX Runtime C++ code: a normal interpreter
            # exit would abort in static destructors. ROS clean-up and the DVFS reset are done
            # and cache writes are atomic, so end the process here.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


if __name__ == '__main__':
    main()
