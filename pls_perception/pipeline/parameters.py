"""The perception node's parameters as data: name, default, description, range, and the checks
a descriptor cannot express. ROS-free, so the rules are tested without a node;
nodes/perception_node.py declares them.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pls_perception.dvfs import BACKEND_NAMES
from pls_perception.engines import ENGINE_NAMES
from pls_perception.engines.int8_quantization import (DEFAULT_CALIBRATION_IMAGES,
                                                      MIN_CALIBRATION_IMAGES, PRECISIONS)
from pls_perception.io.image_conversion import DEFAULT_MAX_PIXELS
from pls_perception.skipping.ratios import PROFILE_RATIOS

IMAGE_TRANSPORTS = ('raw', 'compressed')
DVFS_EMULATIONS = ('stretch', 'profile')
QOS_RELIABILITIES = ('best_effort', 'reliable')
_DEVICE_PATTERN = re.compile(r'^(cpu|cuda(:\d+)?)$')
# Parameters that change while frames flow; every other parameter is read at configure.
RUNTIME_PARAMETERS = ('keep_ratio', 'frequency_mhz')
# Measured by bench/bench_threading.py (fp32 and int8, idle and with a busy process); see
# docs/engines.md.
ONNX_THREADS = 1
ONNX_SPINNING = False
# The ratios of the shipped profiles: graphs ready soon after activation, the manager never waits.
PREBUILD_RATIOS = PROFILE_RATIOS


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: default (None for a typed empty array), description and range."""

    name: str
    default: Any
    description: str
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None
    read_only: bool = False
    constraints: str = ''
    type_: str = ''


PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec(
        'keep_ratio', 1.0,
        'fraction of the residual blocks of every stage that run, in (0, 1]; changeable '
        'while active, applied before the next frame',
        float_range=(0.0, 1.0), constraints='0 < keep_ratio <= 1'),
    ParamSpec(
        'frequency_mhz', 0.0,
        'processor frequency to set (snapped to the nearest available one); 0 leaves the '
        'processor alone; changeable while active',
        float_range=(0.0, 100000.0)),
    ParamSpec(
        'weights', '',
        "state_dict path, 'imagenet' or 'random'; empty = the shared reference weights"),
    ParamSpec(
        'num_classes', 0,
        'number of classes; 0 = infer from the weights',
        int_range=(0, 100000)),
    ParamSpec(
        'class_names', None,
        'class labels in output order; unset = the labels that come with the weights',
        type_='string_array'),
    ParamSpec(
        'input_size', [0, 0],
        'network input [H, W]; [0, 0] = the size the weights were trained for'),
    ParamSpec(
        'device', 'cpu',
        "torch device: 'cpu', 'cuda' or 'cuda:N'"),
    ParamSpec(
        'dvfs_backend', 'auto',
        f'DVFS backend, one of {BACKEND_NAMES}; auto = first real one, else simulated. A '
        'real backend that fails while running is replaced by the simulated one (ERROR in '
        '/diagnostics)'),
    ParamSpec(
        'dvfs_sysfs_root', '/',
        'root the DVFS backends find sys/ under (a container bind mount, or a test tree)'),
    ParamSpec(
        'dvfs_emulation', 'stretch',
        "simulated backend only: 'stretch' (a frame's compute time x f_max / f) or 'profile' "
        '(each frame takes the latency of energy_profile\'s device at the keep ratio and '
        'frequency, when this host is faster: the device runs in real time, labelled '
        "'emulating <device>')"),
    ParamSpec(
        'energy_profile', '',
        'operating-point profile whose power model gives the modelled energy per frame '
        "(measured with zeus on a real backend when available); '' = the shipped Orin Nano "
        "CPU profile, 'none' = no energy figures"),
    ParamSpec(
        'bn_recalibration', '',
        'per-ratio BatchNorm statistics file (see pls_perception.skipping.bn_recalibration); '
        'empty = off'),
    ParamSpec(
        'engine', 'auto',
        f'inference engine, one of {ENGINE_NAMES}; auto = onnxruntime on the CPU when '
        'installed (about 4x faster than eager torch at batch 1), else torch'),
    ParamSpec(
        'precision', 'fp32',
        f"onnxruntime engine: one of {PRECISIONS}; int8 = static quantization of every ratio's "
        'graph, calibrated on int8_calibration_images train images (built once per ratio, '
        'about 25 s each for ResNet-152, then cached); faster, top-1 per ratio in '
        'docs/engines.md'),
    ParamSpec(
        'int8_calibration_images', DEFAULT_CALIBRATION_IMAGES,
        'precision int8: CIFAR-10 train-split images the graphs are calibrated on (balanced '
        'over classes; part of the cache key)',
        int_range=(MIN_CALIBRATION_IMAGES, 10000)),
    ParamSpec(
        'int8_calibration_data', '',
        "precision int8: the CIFAR-10 tarball whose train split calibrates; '' = searched "
        'like the reference weights'),
    ParamSpec(
        'int8_shared_graph', True,
        'precision int8: serve ratio 1 from its own graph and every other ratio from one gated '
        'int8 graph (the weights packed twice, not once per ratio: the engine holds 144 MB with '
        'ten ratios instead of 406; frames below ratio 1 about 1 ms slower here) rather than one '
        'session per ratio; docs/engines.md'),
    ParamSpec(
        'prebuild_ratios', list(PREBUILD_RATIOS),
        'onnxruntime engine: keep ratios whose graphs are loaded from the cache (or built) in '
        'the background once keep_ratio\'s graph is ready at configure; a ratio asked for '
        'before its graph is ready is built first, the previous ratio serving meanwhile (see '
        '/diagnostics)'),
    ParamSpec(
        'onnx_cache_dir', '',
        "onnxruntime engine: graph cache directory; '' = $PLS_ONNX_CACHE, else "
        '~/.cache/pls_perception/onnx'),
    ParamSpec(
        'onnx_threads', ONNX_THREADS,
        'onnxruntime engine: intra-op threads per inference; 0 = one per core. Default: '
        'fastest on a 2-core machine, idle or next to a busy process (bench_threading.py)',
        int_range=(0, 1024)),
    ParamSpec(
        'onnx_spinning', ONNX_SPINNING,
        'onnxruntime engine: idle intra-op threads busy-wait for the next work item (less '
        'latency on otherwise idle cores, burns CPU and slows other processes when they '
        'need the cores); no effect with 1 thread'),
    ParamSpec(
        'skip_policy', 'proportional',
        "which blocks a ratio keeps: 'proportional' or a skip-plan file (pls-plan)"),
    ParamSpec(
        'image_transport', 'raw',
        "'raw' (sensor_msgs/Image on image) or 'compressed' (CompressedImage on "
        'image/compressed)'),
    ParamSpec(
        'qos_reliability', 'best_effort',
        "image subscription reliability: 'best_effort' (sensor data) or 'reliable'"),
    ParamSpec(
        'qos_depth', 5,
        'image subscription queue depth (keep last)',
        int_range=(1, 1000)),
    ParamSpec(
        'top_k', 5,
        'number of ranked classes in each classification',
        int_range=(1, 1000)),
    ParamSpec(
        'warmup_frames', 2,
        'dummy inferences at configure',
        int_range=(0, 100)),
    ParamSpec(
        'num_threads', 0,
        'torch intra-op threads; 0 = leave torch\'s default',
        int_range=(0, 1024)),
    ParamSpec(
        'max_image_pixels', DEFAULT_MAX_PIXELS,
        'larger frames are rejected as malformed',
        int_range=(1, 1 << 31)),
    ParamSpec(
        'latency_window', 100,
        'frames in the diagnostics latency window',
        int_range=(1, 100000)),
    ParamSpec(
        'diagnostics_period_s', 1.0,
        'period of /diagnostics (read at start-up)',
        float_range=(0.05, 60.0)),
    ParamSpec(
        'autostart', False,
        'configure and activate right after start-up (main() only)',
        read_only=True),
)


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
    if name == 'precision':
        return _choice(value, PRECISIONS)
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
