"""Build a `FramePipeline` from the perception node's parameter values (ROS-free).

Loads the weights (the data search of `paths` when none are given), applies the skip policy and
BN statistics, opens the DVFS backend (device emulation on the simulated one when asked), builds
the engine with only the first frame's graph before returning and the other prebuilt ratios in
the background, and warms up. Raises PlsError/ValueError/OSError for bad inputs; the node turns
them into a configure FAILURE.

With the onnxruntime engine, a serving record of the same inputs (`serving_record`) replaces the
first two steps: the cached graphs are served with ONNX Runtime and numpy alone, and PyTorch is
imported only if a graph must be built.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pls_perception import paths
from pls_perception.dvfs import DvfsBackend, get_backend
from pls_perception.dvfs.energy import EnergyMeter, profile_power_fn
from pls_perception.dvfs.simulated import profile_latency_model
from pls_perception.engines import (InferenceEngine, import_backend, make_engine,
                                    resolve_engine_name)
from pls_perception.engines.int8_quantization import CalibrationSet
from pls_perception.errors import PlsError
from pls_perception.io.file_inputs import sha256_of
from pls_perception.operating_points.profiles import default_profile_path, load_profile
from pls_perception.pipeline.frame_pipeline import FramePipeline, Setpoint

if TYPE_CHECKING:
    from pls_perception.engines.serving_record import ServedModel, ServingRecord
    from pls_perception.skipping.preprocessing import Preprocessing
    from pls_perception.skipping.weights import LoadedModel

ModelLoader = Callable[..., 'LoadedModel']


def build_pipeline(params: Mapping[str, Any], setpoint: Setpoint,
                   model_loader: ModelLoader | None = None,
                   progress: Callable[[str], None] = lambda _: None) -> FramePipeline:
    """The configured pipeline for ``params`` (the node's parameter values), at ``setpoint``.

    ``model_loader`` is `skipping.weights.load_model` unless given (tests pass small models);
    ``progress`` hears what a long step is doing (loading weights, exporting a graph).
    """
    # '' = search the data dirs for the reference weights (paths.py); random only if asked
    weights = params['weights'] or str(paths.find_reference_weights())
    device = params['device']
    engine_name = resolve_engine_name(params['engine'], device)
    if engine_name == 'torch' and params['precision'] != 'fp32':
        raise ValueError(f"precision {params['precision']!r} needs the onnxruntime engine "
                         f"(engine is {params['engine']!r})")
    load = functools.partial(_load_model, params, weights, model_loader, progress)
    if engine_name == 'onnxruntime':
        record, served, loaded = _find_serving(params, weights, load, progress)
    else:
        record, loaded = None, load()
        served = _served_model(loaded)
    class_names = params['class_names'] or served.class_names
    if len(class_names) != len(served.class_names):
        raise ValueError(f'class_names has {len(class_names)} names but the model has '
                         f'{len(served.class_names)} classes')
    backend = get_backend(params['dvfs_backend'], sysfs_root=params['dvfs_sysfs_root'],
                          failover=True, **_emulation_options(params))
    try:
        meter = _energy_meter(params, backend)
        if engine_name == 'onnxruntime':
            engine = _onnxruntime_engine(params, setpoint, record, served, loaded, load,
                                         progress)
        else:
            engine = make_engine('torch', loaded, device=device)
    except BaseException:
        backend.reset()
        raise
    pipeline = FramePipeline(served.preprocessing, engine, backend, class_names,
                             params['top_k'], meter,
                             info={'engine': engine.name, 'skip_policy': served.policy,
                                   'weights': loaded.source if loaded is not None else weights})
    try:
        progress('warming up')
        pipeline.apply(setpoint)
        pipeline.warm_up(params['warmup_frames'])
    except BaseException:
        pipeline.close()
        raise
    return pipeline


def import_for_configure(params: Mapping[str, Any]) -> None:
    """Import, ahead of configure, what configuring with ``params`` will need.

    Imports hold the GIL (torch for seconds, onnx's ml_dtypes extension for up to one), so a node
    does this before it answers services. Serving cached graphs (a serving record of these
    inputs exists) needs only onnxruntime; loading the model or building a graph needs torch,
    and onnx too for the onnxruntime engine. Bad values are left for configure to report.
    """
    try:
        engine_name = resolve_engine_name(params['engine'], params['device'])
        if engine_name == 'onnxruntime':
            import_backend(engine_name)
            record = _record_path(params, params['weights'] or
                                  str(paths.find_reference_weights()))
            if record is not None and record.is_file():
                return
            import onnx  # noqa: F401
        import pls_perception.skipping.weights  # noqa: F401 - torch, torchvision
    except (PlsError, ValueError, OSError):
        return


def _load_model(params: Mapping[str, Any], weights: str, model_loader: ModelLoader | None,
                progress: Callable[[str], None]) -> LoadedModel:
    """The weights in PyTorch, with the input size, skip policy and BN statistics asked for."""
    import dataclasses

    import torch

    from pls_perception.skipping.bn_recalibration import load_bn_states
    from pls_perception.skipping.plans import load_policy
    from pls_perception.skipping.weights import load_model

    device = params['device']
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA device here; use device 'cpu'")
    if params['num_threads'] > 0:
        torch.set_num_threads(params['num_threads'])
    progress(f'loading the weights ({weights})')
    loaded = (model_loader or load_model)(weights, num_classes=params['num_classes'] or None,
                                          allow_random=weights == 'random')
    if any(params['input_size']):
        loaded = dataclasses.replace(loaded, preprocessing=dataclasses.replace(
            loaded.preprocessing, input_size=tuple(params['input_size'])))
    loaded.model.set_policy(load_policy(params['skip_policy'], loaded.sha256,
                                        loaded.model.depths))
    if params['bn_recalibration']:
        load_bn_states(loaded.model, params['bn_recalibration'])
    return loaded


def _served_model(loaded: LoadedModel) -> ServedModel:
    from pls_perception.engines.serving_record import ServedModel
    return ServedModel(loaded.sha256 or '', loaded.preprocessing, tuple(loaded.class_names),
                       loaded.model.depths, loaded.model.policy.name)


def _record_name(params: Mapping[str, Any], weights: str) -> str | None:
    """The serving record name for these inputs; None for weights that are not a file
    ('random', 'imagenet') or an input file that cannot be read (loading reports it)."""
    from pls_perception.engines.serving_record import record_key
    if weights in ('random', 'imagenet') or not Path(weights).expanduser().is_file():
        return None
    policy, bn = params['skip_policy'], params['bn_recalibration']
    try:
        return record_key(
            weights=sha256_of(Path(weights).expanduser()), num_classes=params['num_classes'],
            input_size=list(params['input_size']),
            skip_policy=policy if policy == 'proportional' else [Path(policy).name,
                                                                 sha256_of(policy)],
            bn_recalibration=sha256_of(bn) if bn else '')
    except OSError:
        return None


def _record_path(params: Mapping[str, Any], weights: str) -> Path | None:
    """Where the serving record of these inputs is or will be; None if they have none."""
    from pls_perception.engines.onnxruntime_engine import default_cache_dir
    from pls_perception.engines.serving_record import ServingRecord
    name = _record_name(params, weights)
    if name is None:
        return None
    cache = params['onnx_cache_dir']
    return ServingRecord.path_for(Path(cache) if cache else default_cache_dir(), name)


def _find_serving(params: Mapping[str, Any], weights: str, load: Callable[[], LoadedModel],
                  progress: Callable[[str], None]
                  ) -> tuple[ServingRecord | None, ServedModel, LoadedModel | None]:
    """The serving record of these inputs, what it serves, and the model if it had to be
    loaded: not when the record was written before, so cached graphs are served without
    PyTorch. No record for weights that are not a file (they are loaded every time)."""
    from pls_perception.engines.serving_record import ServingRecord
    path = _record_path(params, weights)
    if path is None:
        loaded = load()
        return None, _served_model(loaded), loaded
    record = ServingRecord.load(path)
    if record is not None:
        progress(f'serving cached graphs without PyTorch (record {path})')
        return record, record.model, None
    loaded = load()
    served = _served_model(loaded)
    return ServingRecord.open(path, served), served, loaded


def _onnxruntime_engine(params: Mapping[str, Any], setpoint: Setpoint,
                        record: ServingRecord | None, served: ServedModel,
                        loaded: LoadedModel | None, load: Callable[[], LoadedModel],
                        progress: Callable[[str], None]) -> InferenceEngine:
    """The onnxruntime engine: the first frame's ratio now, the others on its build thread;
    without ``loaded``, the model is loaded only if a graph must be built."""
    from pls_perception.engines.onnxruntime_engine import OnnxRuntimeEngine
    progress(f'onnxruntime {params["precision"]}: loading the graph of keep ratio '
             f'{setpoint.keep_ratio:g} from the cache, or building it (once, 10-30 s); '
             'the other prebuild_ratios follow in the background (cache: '
             f'{params["onnx_cache_dir"] or "default"})')
    options = dict(_onnx_options(params, served.preprocessing), serving=record,
                   device=params['device'], keep_ratio=setpoint.keep_ratio)
    if loaded is not None:
        return OnnxRuntimeEngine.from_loaded(loaded, **options)
    return OnnxRuntimeEngine(None, served.weights_sha256,
                             input_size=served.preprocessing.input_size,
                             model_loader=lambda: load().model, **options)


def _onnx_options(params: Mapping[str, Any], preprocessing: Preprocessing) -> dict[str, Any]:
    """OnnxRuntimeEngine options; an int8 calibration set is keyed now, read when quantizing."""
    calibration = None
    if params['precision'] == 'int8':
        calibration = CalibrationSet.from_cifar10(params['int8_calibration_images'],
                                                  preprocessing,
                                                  params['int8_calibration_data'] or None)
    return {'background_ratios': list(params['prebuild_ratios']),
            'cache_dir': params['onnx_cache_dir'] or None,
            'intra_op_threads': params['onnx_threads'], 'spinning': params['onnx_spinning'],
            'precision': params['precision'], 'calibration': calibration,
            'share_int8_graph': params['int8_shared_graph']}


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
