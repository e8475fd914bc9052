"""Serving records: cached graphs served without the model, which is loaded only to build one.

The end-to-end check that a node's warm start imports no PyTorch runs the node as a process
(test/nodes/test_perception_startup.py); here the record itself, on a small ResNet.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pls_perception.engines.onnxruntime_engine import OnnxRuntimeEngine
from pls_perception.engines.serving_record import ServedModel, ServingRecord
from pls_perception.pipeline.build import build_pipeline
from pls_perception.pipeline.frame_pipeline import Setpoint
from pls_perception.pipeline.parameters import PARAMETERS
from pls_perception.skipping.network import SkippableResNet
from pls_perception.skipping.preprocessing import CIFAR10_PREPROCESSING
from pls_perception.skipping.weights import LoadedModel

pytestmark = pytest.mark.timeout(300)
WEIGHTS_ID = 'small-resnet18'


def _served(policy: str = 'proportional') -> ServedModel:
    return ServedModel(WEIGHTS_ID, CIFAR10_PREPROCESSING, tuple(f'c{i}' for i in range(10)),
                       (2, 2, 2, 2), policy)


def _engine(model: SkippableResNet | None, cache: Path, record: ServingRecord,
            **kw: Any) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(model, WEIGHTS_ID, cache_dir=cache, intra_op_threads=1,
                             serving=record, **kw)


class CountingLoader:
    """A model loader that counts its calls (each stands for importing torch and loading)."""

    def __init__(self, model: SkippableResNet) -> None:
        self.model, self.calls = model, 0

    def __call__(self) -> SkippableResNet:
        self.calls += 1
        return self.model


@pytest.fixture()
def recorded(small_model: SkippableResNet, tmp_path: Path, batch: np.ndarray
             ) -> tuple[Path, dict[float, np.ndarray]]:
    """A cache whose record holds ratios 1 and 0.5 (built with the model), and their logits."""
    path = ServingRecord.path_for(tmp_path, 'k' * 32)
    logits = {}
    with _engine(small_model, tmp_path, ServingRecord.open(path, _served()),
                 ratios=(0.5,)) as engine:
        for ratio in (1.0, 0.5):
            engine.set_keep_ratio(ratio)
            logits[ratio] = engine.infer(batch)
    return path, logits


def test_cached_graphs_are_served_without_the_model(small_model: SkippableResNet,
                                                    recorded: tuple[Path, dict], tmp_path: Path,
                                                    batch: np.ndarray) -> None:
    path, logits = recorded
    record = ServingRecord.load(path)
    assert record is not None and record.model == _served()
    assert set(record.ratios) == {'1.0', '0.5'}
    loader = CountingLoader(small_model)
    with _engine(None, tmp_path, record, ratios=(0.5,), model_loader=loader) as engine:
        for ratio in (1.0, 0.5):
            engine.set_keep_ratio(ratio)
            np.testing.assert_array_equal(engine.infer(batch), logits[ratio])
        # 0.3 keeps the same blocks as 0.5 here (2 per stage): its graph is found by masks
        engine.set_keep_ratio(0.3)
        assert engine.pending_ratios == ()
        np.testing.assert_array_equal(engine.infer(batch), logits[0.5])
        assert loader.calls == 0 and not engine.status()['torch_model_loaded']


def test_a_ratio_without_a_cached_graph_loads_the_model_once(small_model: SkippableResNet,
                                                            recorded: tuple[Path, dict],
                                                            tmp_path: Path) -> None:
    path, _ = recorded
    loader = CountingLoader(small_model)
    per_stage = (1.0, 0.5, 1.0, 0.5)      # masks no recorded ratio has
    with _engine(None, tmp_path, ServingRecord.load(path), model_loader=loader) as engine:
        engine.set_keep_ratio(per_stage)
        assert engine.wait_ready(120.0) and engine.keep_ratio == per_stage
        engine.set_keep_ratio(1.0)
        assert loader.calls == 1 and engine.status()['torch_model_loaded']
    # the record learnt the new ratio: the next start builds nothing and loads nothing
    again = CountingLoader(small_model)
    with _engine(None, tmp_path, ServingRecord.load(path), ratios=(per_stage,),
                 model_loader=again) as engine:
        assert engine.keep_ratio == 1.0 and per_stage in engine.ready_ratios
    assert again.calls == 0


def test_masks_come_from_the_record_or_the_proportional_rule(tmp_path: Path) -> None:
    masks = ((True, False),) * 4
    plan = ServingRecord(tmp_path / 'r.json', _served('plan:mine'))
    plan.add(0.5, masks, 'g' * 16)
    assert plan.masks(0.5) == masks and plan.masks(1 / 2) == masks
    assert plan.masks(0.7) is None            # a plan's other ratios need the model
    assert plan.graph_key(masks) == 'g' * 16 and plan.graph_key(((True, True),) * 4) is None
    proportional = ServingRecord(tmp_path / 'p.json', _served())
    assert proportional.masks(0.7) == ((True, True),) * 4
    for bad in (0.0, 1.5, float('nan'), (1.0, 0.5)):
        with pytest.raises(ValueError, match='keep ratio'):
            proportional.masks(bad)


def _rewrite(path: Path, edit: Any) -> None:
    body = json.loads(path.read_text())
    edit(body)
    path.write_text(json.dumps(body))


@pytest.mark.parametrize('damage', ['truncated', 'edited', 'renamed', 'not_a_record'])
def test_a_damaged_record_is_ignored_with_a_warning(recorded: tuple[Path, dict], damage: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    path, _ = recorded
    if damage == 'truncated':
        path.write_bytes(path.read_bytes()[:100])
    elif damage == 'edited':
        _rewrite(path, lambda b: b['graphs']['1.0'].update(graph_key='0' * 16))
    elif damage == 'renamed':
        path = path.rename(path.with_name('j' * 32 + '.json'))
    else:
        path.write_text(json.dumps({'key': path.stem, 'digest': 'x'}))
    with caplog.at_level(logging.WARNING):
        assert ServingRecord.load(path) is None
    assert 'serving record' in caplog.text and str(path) in caplog.text
    assert not path.exists()         # removed: the next start that loads the model rewrites it


def test_a_record_of_another_model_is_started_afresh(recorded: tuple[Path, dict],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    path, _ = recorded
    other = dataclasses.replace(_served(), class_names=tuple('abcdefghij'))
    with caplog.at_level(logging.WARNING):
        record = ServingRecord.open(path, other)
    assert record.ratios == () and 'another model' in caplog.text


def _params(**values: Any) -> dict[str, Any]:
    params = {p.name: [] if p.default is None else p.default for p in PARAMETERS}
    return {**params, 'engine': 'onnxruntime', 'dvfs_backend': 'simulated',
            'prebuild_ratios': [], 'warmup_frames': 1, 'onnx_threads': 1, **values}


def test_build_pipeline_serves_from_a_record_of_the_same_inputs_only(
        loaded_small: LoadedModel, tmp_path: Path) -> None:
    weights = tmp_path / 'small.pt'
    weights.write_bytes(b'stands for a weights file: the loader below returns the model')
    calls = []

    def loader(path: str, **kw: Any) -> LoadedModel:
        calls.append(kw)
        return dataclasses.replace(loaded_small, source=path, sha256=WEIGHTS_ID)

    rgb = np.random.default_rng(1).integers(0, 256, (32, 32, 3), np.uint8)
    results = []
    for num_classes in (0, 0, 10):           # 10: other inputs, another record
        params = _params(weights=str(weights), onnx_cache_dir=str(tmp_path / 'cache'),
                         num_classes=num_classes)
        pipeline = build_pipeline(params, Setpoint(1.0, 0.0), loader)
        try:
            results.append(pipeline.classify(rgb).label)
        finally:
            pipeline.close()
    assert len(calls) == 2 and calls[1]['num_classes'] == 10
    assert len(set(results)) == 1
    assert len(list((tmp_path / 'cache' / 'serving').glob('*.json'))) == 2
