"""Build a `FramePipeline` from the perception node's parameter values (ROS-free).

Loads the weights (the data search of `paths` when none are given), applies the skip policy and
BN statistics, opens the DVFS backend (device emulation on the simulated one when asked), builds
the engine with only the first frame's graph before returning and the other prebuilt ratios in
the background, and warms up. Raises PlsError/ValueError/OSError for bad inputs; the node turns
them into a configure FAILURE.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch

from pls_perception import paths
from pls_perception.dvfs import DvfsBackend, get_backend
from pls_perception.dvfs.energy import EnergyMeter, profile_power_fn
from pls_perception.dvfs.simulated import profile_latency_model
from pls_perception.engines import make_engine, resolve_engine_name
from pls_perception.engines.int8_quantization import CalibrationSet
from pls_perception.operating_points.profiles import default_profile_path, load_profile
from pls_perception.pipeline.frame_pipeline import FramePipeline, Setpoint
from pls_perception.skipping.bn_recalibration import load_bn_states
from pls_perception.skipping.plans import load_policy
from pls_perception.skipping.weights import LoadedModel

ModelLoader = Callable[..., LoadedModel]


def build_pipeline(params: Mapping[str, Any], setpoint: Setpoint, model_loader: ModelLoader,
                   progress: Callable[[str], None] = lambda _: None) -> FramePipeline:
    """The configured pipeline for ``params`` (the node's parameter values), at ``setpoint``.

    ``progress`` hears what a long step is doing (loading weights, exporting a graph).
    """
    # '' = search the data dirs for the reference weights (paths.py); random only if asked
    weights = params['weights'] or str(paths.find_reference_weights())
    device = params['device']
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA device here; use device 'cpu'")
    if params['num_threads'] > 0:
        torch.set_num_threads(params['num_threads'])
    progress(f'loading the weights ({weights})')
    loaded = model_loader(weights, num_classes=params['num_classes'] or None,
                          allow_random=weights == 'random')
    class_names = params['class_names'] or loaded.class_names
    if len(class_names) != loaded.num_classes:
        raise ValueError(f'class_names has {len(class_names)} names but the model has '
                         f'{loaded.num_classes} classes')
    if any(params['input_size']):
        loaded = dataclasses.replace(loaded, preprocessing=dataclasses.replace(
            loaded.preprocessing, input_size=tuple(params['input_size'])))
    policy = load_policy(params['skip_policy'], loaded.sha256, loaded.model.depths)
    loaded.model.set_policy(policy)
    if params['bn_recalibration']:
        load_bn_states(loaded.model, params['bn_recalibration'])
    backend = get_backend(params['dvfs_backend'], sysfs_root=params['dvfs_sysfs_root'],
                          failover=True, **_emulation_options(params))
    try:
        meter = _energy_meter(params, backend)
        # onnxruntime options (the torch engine ignores them): the first frame's ratio now,
        # the others on the engine's build thread while frames flow.
        onnx_options = {}
        if resolve_engine_name(params['engine'], device) == 'onnxruntime':
            onnx_options = _onnx_options(params, loaded)
            progress(f'onnxruntime {params["precision"]}: loading the graph of keep ratio '
                     f'{setpoint.keep_ratio:g} from the cache, or building it (once, 10-30 s); '
                     'the other prebuild_ratios follow in the background (cache: '
                     f'{params["onnx_cache_dir"] or "default"})')
        elif params['precision'] != 'fp32':
            raise ValueError(f"precision {params['precision']!r} needs the onnxruntime engine "
                             f"(engine is {params['engine']!r})")
        engine = make_engine(params['engine'], loaded, device=device,
                             keep_ratio=setpoint.keep_ratio, **onnx_options)
    except BaseException:
        backend.reset()
        raise
    pipeline = FramePipeline(loaded, engine, backend, class_names, params['top_k'], meter,
                             info={'engine': engine.name, 'skip_policy': policy.name,
                                   'weights': loaded.source})
    try:
        progress('warming up')
        pipeline.apply(setpoint)
        pipeline.warm_up(params['warmup_frames'])
    except BaseException:
        pipeline.close()
        raise
    return pipeline


def _onnx_options(params: Mapping[str, Any], loaded: LoadedModel) -> dict[str, Any]:
    """OnnxRuntimeEngine options; an int8 calibration set is keyed now, read when quantizing."""
    calibration = None
    if params['precision'] == 'int8':
        calibration = CalibrationSet.from_cifar10(params['int8_calibration_images'],
                                                  loaded.preprocessing,
                                                  params['int8_calibration_data'] or None)
    return {'background_ratios': list(params['prebuild_ratios']),
            'cache_dir': params['onnx_cache_dir'] or None,
            'intra_op_threads': params['onnx_threads'], 'spinning': params['onnx_spinning'],
            'precision': params['precision'], 'calibration': calibration}


def _emulation_options(params: Mapping[str, Any]) -> dict[str, Any]:
    """Simulated-backend options: emulate the device profile's latency when asked to."""
    if params['dvfs_emulation'] != 'profile':
        return {}
    spec = params['energy_profile']
    profile = load_profile(default_profile_path() if spec in ('', 'none') else spec)
    return {'frequencies_mhz': list(profile.frequencies_mhz),
            'latency_model': profile_latency_model(profile),
            'device_name': profile.device_name}


def _energy_meter(params: Mapping[str, Any], backend: DvfsBackend) -> EnergyMeter | None:
    """Energy per frame from the profile's power model (zeus-measured when it can)."""
    spec = params['energy_profile']
    if spec == 'none':
        return None
    return EnergyMeter(profile_power_fn(load_profile(spec or default_profile_path())), backend)
