"""precision int8: agreement with fp32 on real images, the cache key, bad calibration input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pls_perception import paths
from pls_perception.engines.int8_quantization import (MIN_CALIBRATION_IMAGES, CalibrationSet,
                                                      quantize_in_subprocess)
from pls_perception.engines.onnxruntime_engine import OnnxRuntimeEngine
from pls_perception.errors import BackendError, DatasetError
from pls_perception.pipeline.parameters import validate_parameter
from pls_perception.skipping.network import SkippableResNet
from pls_perception.skipping.preprocessing import CIFAR10_PREPROCESSING

pytestmark = pytest.mark.timeout(600)


def _images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def _int8(model: SkippableResNet, cache: Path, calibration: CalibrationSet,
          **kw: object) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(model, 'small-resnet18', cache_dir=cache, intra_op_threads=1,
                             precision='int8', calibration=calibration, **kw)


def test_int8_agrees_with_fp32_on_a_fixed_test_subset(onnx_cache: Path) -> None:
    """Reference ResNet-152, 200 test images (20 per class), calibrated on 100 train images."""
    if not paths.reference_weights().is_file() or not paths.cifar10_tar().is_file():
        pytest.skip(f'needs the shared reference weights and CIFAR-10 in {paths.shared_dir()}')
    from pls_perception.io.datasets import load_cifar10
    from pls_perception.skipping.weights import load_model
    loaded = load_model(str(paths.reference_weights()))
    images, labels, _ = load_cifar10(per_class=20)
    batch = loaded.preprocessing.to_tensor(images).numpy()
    calibration = CalibrationSet.from_cifar10(100, loaded.preprocessing)
    ratios = (1.0, 0.5)
    with OnnxRuntimeEngine.from_loaded(loaded, cache_dir=onnx_cache, ratios=ratios,
                                       intra_op_threads=1) as fp32, \
            OnnxRuntimeEngine.from_loaded(loaded, cache_dir=onnx_cache, ratios=ratios,
                                          precision='int8', calibration=calibration,
                                          intra_op_threads=1) as int8:
        assert int8.cache_dir != fp32.cache_dir
        assert int8.status()['precision'] == 'int8'
        for ratio in ratios:
            fp32.set_keep_ratio(ratio)
            int8.set_keep_ratio(ratio)
            ours, theirs = int8.infer(batch).argmax(1), fp32.infer(batch).argmax(1)
            agreement = float((ours == theirs).mean())
            accuracy_gap = abs(float((ours == labels).mean() - (theirs == labels).mean()))
            # Measured on these 200 images: 96-98 % agreement, gaps of 1 point or less.
            assert agreement >= 0.90, (ratio, agreement)
            assert accuracy_gap <= 0.04, (ratio, accuracy_gap)


def test_int8_graphs_are_cached_under_their_calibration(small_model: SkippableResNet,
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    calibration = CalibrationSet.from_arrays(_images(16), 'noise A')
    with _int8(small_model, tmp_path, calibration) as engine:
        first_dir = engine.cache_dir
        logits = engine.infer(_images(2, seed=1))
    assert np.isfinite(logits).all() and logits.shape == (2, 10)

    def no_quantizing(*_: object, **__: object) -> bytes:
        raise AssertionError('a cached int8 graph was quantized again')
    import pls_perception.engines.onnxruntime_engine as ort_engine
    monkeypatch.setattr(ort_engine, 'quantize_in_subprocess', no_quantizing)
    same = CalibrationSet.from_arrays(_images(16), 'noise A, again')
    with _int8(small_model, tmp_path, same) as engine:
        assert engine.cache_dir == first_dir
        np.testing.assert_array_equal(engine.infer(_images(2, seed=1)), logits)
    other = CalibrationSet.from_arrays(_images(16, seed=5), 'noise B')
    with pytest.raises(AssertionError, match='quantized'):
        _int8(small_model, tmp_path, other)        # another calibration set: another graph
    fp32 = OnnxRuntimeEngine(small_model, 'small-resnet18', cache_dir=tmp_path,
                             intra_op_threads=1)
    assert fp32.cache_dir != first_dir and fp32.status()['precision'] == 'fp32'
    fp32.close()


def test_calibration_images_are_read_only_to_quantize(small_model: SkippableResNet,
                                                      tmp_path: Path) -> None:
    loads: list[int] = []

    def load() -> np.ndarray:
        loads.append(1)
        return _images(12)
    calibration = CalibrationSet('test:lazy', load, 'lazy noise')
    with _int8(small_model, tmp_path, calibration, ratios=(0.5,)):
        pass
    assert loads == [1]                            # two graphs, one read
    warm = CalibrationSet('test:lazy', load, 'lazy noise')
    with _int8(small_model, tmp_path, warm, ratios=(0.5,)):
        pass
    assert loads == [1]                            # warm cache: not read at all


@pytest.mark.parametrize('images, reason', [
    (_images(16, size=16), 'images are 16x16, the network takes 32x32'),
    (np.where(np.arange(16 * 3 * 32 * 32).reshape(16, 3, 32, 32) == 7, np.nan,
              _images(16)).astype(np.float32), 'NaN or infinite'),
    (_images(MIN_CALIBRATION_IMAGES - 1), f'need at least {MIN_CALIBRATION_IMAGES}'),
    (np.zeros((16, 32, 32, 3), np.float32), r'need N x 3 x H x W'),
])
def test_bad_calibration_images_are_rejected(small_model: SkippableResNet, tmp_path: Path,
                                             images: np.ndarray, reason: str) -> None:
    calibration = CalibrationSet('test:bad', lambda: images, 'the bad set')
    with pytest.raises(ValueError, match=f'the bad set.*{reason}'):
        _int8(small_model, tmp_path, calibration)
    assert not list(tmp_path.glob('*/graphs/*.json'))     # nothing cached


def test_bad_calibration_sources_and_options_are_rejected(small_model: SkippableResNet,
                                                          tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match='missing.tar.gz'):
        CalibrationSet.from_cifar10(100, CIFAR10_PREPROCESSING, tmp_path / 'missing.tar.gz')
    for bad in (MIN_CALIBRATION_IMAGES - 1, 0, True, 12.5):
        with pytest.raises(ValueError, match='at least'):
            CalibrationSet.from_cifar10(bad, CIFAR10_PREPROCESSING)   # type: ignore[arg-type]
    with pytest.raises(ValueError, match='NaN'):
        CalibrationSet.from_arrays(np.full((16, 3, 32, 32), np.inf, np.float32))
    with pytest.raises(ValueError, match='needs a calibration set'):
        OnnxRuntimeEngine(small_model, 'x', cache_dir=tmp_path, precision='int8')
    with pytest.raises(ValueError, match='precision must be one of'):
        OnnxRuntimeEngine(small_model, 'x', cache_dir=tmp_path, precision='int4')
    assert 'int4' in validate_parameter('precision', 'int4')
    assert validate_parameter('precision', 'int8') is None


def test_a_damaged_calibration_tarball_is_named(small_model: SkippableResNet,
                                                tmp_path: Path) -> None:
    tar = tmp_path / 'damaged.tar.gz'
    tar.write_bytes(b'not a tarball' * 100)
    calibration = CalibrationSet.from_cifar10(20, CIFAR10_PREPROCESSING, tar)
    assert calibration.key.startswith('cifar10:')
    with pytest.raises(DatasetError, match='damaged.tar.gz'):
        _int8(small_model, tmp_path, calibration)


def test_a_failed_quantization_says_why_and_leaves_no_scratch(tmp_path: Path) -> None:
    """The quantizer runs in a child Python; its error reaches the caller, its files go."""
    with pytest.raises(BackendError, match=r'int8 quantization failed \(exit 1\): [\w.]+Error: '):
        quantize_in_subprocess(b'not an ONNX model', _images(12), 'input', tmp_path)
    assert list(tmp_path.iterdir()) == []


def _own_session_logits(engine: OnnxRuntimeEngine, ratio: float, x: np.ndarray) -> np.ndarray:
    """What ``ratio``'s own int8 graph (the one it was calibrated in) answers."""
    entry = engine._entry(engine._masks(ratio), ratio)
    return engine._session(entry).run(None, {'input': x})[0]


def test_int8_ratios_that_skip_share_one_gated_graph_and_answer_as_their_own(
        small_model: SkippableResNet, tmp_path: Path) -> None:
    """Ratio 1 (skips nothing) keeps a session of its own, without gates; each ratio answers
    exactly as its own graph does."""
    calibration = CalibrationSet.from_arrays(_images(16), 'noise')
    x = _images(3, seed=1)
    layer1_half = (0.5, 1.0, 1.0, 1.0)
    with _int8(small_model, tmp_path, calibration, ratios=(1.0, 0.5, layer1_half)) as engine:
        status = engine.status()
        assert status['int8_shared_graph'] == {'ratios': [0.5, layer1_half], 'error': None}
        sessions = [engine._graphs[engine._masks(r)].session for r in (1.0, 0.5, layer1_half)]
        assert sessions[1] is sessions[2] and sessions[0] is not sessions[1]
        assert not any(i.name.startswith('keep/') for i in sessions[0].get_inputs())
        for ratio in (1.0, 0.5, layer1_half):
            engine.set_keep_ratio(ratio)
            ours = engine.infer(x)
            np.testing.assert_array_equal(ours, _own_session_logits(engine, ratio, x))
            np.testing.assert_array_equal(engine.infer(x[:1]), ours[:1])    # another batch
        assert (engine.infer(x) != _own_session_logits(engine, 1.0, x)).any()
        own = {r: _own_session_logits(engine, r, x) for r in (1.0, 0.5)}
    with _int8(small_model, tmp_path, calibration, ratios=(1.0, 0.5),
               share_int8_graph=False) as engine:            # int8_shared_graph: false
        assert engine.status()['int8_shared_graph'] == {'ratios': [], 'error': 'turned off'}
        for ratio in (1.0, 0.5):
            engine.set_keep_ratio(ratio)
            np.testing.assert_array_equal(engine.infer(x), own[ratio])
    with _int8(small_model, tmp_path, calibration, gate_ratios=()) as engine:   # ratio 1 alone
        assert engine.status()['int8_shared_graph'] == {'ratios': [], 'error': None}
        assert engine._gated is None                      # not built: nothing would use it
        np.testing.assert_array_equal(engine.infer(x), own[1.0])


def test_a_ratio_the_gated_graph_was_not_cut_for_keeps_its_own_session(
        small_model: SkippableResNet, tmp_path: Path) -> None:
    """The gates are cut for the ratios the engine is given: here layer1's second block only
    (no profile ratios besides)."""
    calibration = CalibrationSet.from_arrays(_images(16), 'noise')
    x = _images(3, seed=1)
    layer1_half = (0.5, 1.0, 1.0, 1.0)
    with _int8(small_model, tmp_path, calibration, ratios=(layer1_half,),
               gate_ratios=()) as engine:
        (index,) = engine.cache_dir.glob('graphs/gated-*.json')
        assert json.loads(index.read_text())['runs'] == [[0, 1, 2]]
        engine.prepare([0.5])                       # skips a block in every stage
        engine.set_keep_ratio(0.5)
        np.testing.assert_array_equal(engine.infer(x), _own_session_logits(engine, 0.5, x))
        assert engine.status()['int8_shared_graph']['ratios'] == [layer1_half]


def test_a_ratio_with_its_own_batchnorm_statistics_keeps_its_own_session(
        small_model: SkippableResNet, tmp_path: Path) -> None:
    """Recalibrated statistics fold into other int8 weights: the gated graph cannot run them."""
    import torch
    bn = small_model.bn_modules()['layer1.0.bn1']
    small_model.set_bn_state(0.5, {'layer1.0.bn1': (bn.running_mean + 0.5,
                                                    bn.running_var * torch.tensor(2.0))})
    calibration = CalibrationSet.from_arrays(_images(16), 'noise')
    x = _images(3, seed=1)
    with _int8(small_model, tmp_path, calibration, ratios=(1.0, 0.5)) as engine:
        assert engine.status()['int8_shared_graph'] == {'ratios': [], 'error': None}
        assert engine._gated is not None                  # built for 0.5, which cannot use it
        engine.set_keep_ratio(0.5)
        np.testing.assert_array_equal(engine.infer(x), _own_session_logits(engine, 0.5, x))


def test_a_damaged_gated_graph_is_logged_and_rebuilt(small_model: SkippableResNet,
                                                     tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    calibration = CalibrationSet.from_arrays(_images(16), 'noise')
    x = _images(3, seed=1)
    with _int8(small_model, tmp_path, calibration, ratios=(0.5,)) as engine:
        expected = engine.infer(x)
        (index,) = engine.cache_dir.glob('graphs/gated-*.json')
    graph = index.parent / f"{json.loads(index.read_text())['graph_sha256']}.onnx"
    graph.write_bytes(graph.read_bytes()[:-10])
    with _int8(small_model, tmp_path, calibration, ratios=(0.5,)) as engine:
        assert engine.status()['int8_shared_graph']['ratios'] == [0.5]
        np.testing.assert_array_equal(engine.infer(x), expected)
    assert [r.message for r in caplog.records if str(graph) in r.message] != []
    assert graph.is_file()                                   # written afresh


def test_a_damaged_int8_weight_file_is_logged_and_rebuilt(small_model: SkippableResNet,
                                                         tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """int8 sessions map the weight files themselves: each is verified before they do."""
    calibration = CalibrationSet.from_arrays(_images(16), 'noise')
    x = _images(3, seed=1)
    with _int8(small_model, tmp_path, calibration) as engine:      # ratio 1 alone
        expected = engine.infer(x)
        names = engine._entry(engine._masks(1.0), 1.0).names
        weight = max(map(engine._weight_path, names), key=lambda p: p.stat().st_size)
    data = weight.read_bytes()
    weight.write_bytes(data[:-8] + bytes(b ^ 0xFF for b in data[-8:]))   # the data ends it
    with _int8(small_model, tmp_path, calibration) as engine:
        np.testing.assert_array_equal(engine.infer(x), expected)
    assert [r.message for r in caplog.records if str(weight) in r.message] != []
    assert weight.read_bytes() == data                           # written afresh


def test_a_gated_graph_of_an_older_format_is_rebuilt(small_model: SkippableResNet,
                                                     tmp_path: Path) -> None:
    """An index without the parameter inputs (written before they were) is not a reason to
    give every ratio its own session: the gated graph is built afresh."""
    from pls_perception.engines.onnxruntime_engine import content_digest
    calibration = CalibrationSet.from_arrays(_images(16), 'noise')
    with _int8(small_model, tmp_path, calibration, ratios=(0.5,)):
        pass
    (path,) = tmp_path.glob('*/graphs/gated-*.json')
    index = json.loads(path.read_text())
    del index['inputs'], index['digest']
    path.write_text(json.dumps({**index, 'digest': content_digest(index)}))
    with _int8(small_model, tmp_path, calibration, ratios=(0.5,)) as engine:
        assert engine.status()['int8_shared_graph'] == {'ratios': [0.5], 'error': None}
    assert 'inputs' in json.loads(path.read_text())


def test_cached_int8_ratios_are_served_without_the_model(small_model: SkippableResNet,
                                                          tmp_path: Path) -> None:
    from pls_perception.engines.serving_record import ServedModel, ServingRecord
    served = ServedModel('small-resnet18', CIFAR10_PREPROCESSING,
                         tuple(f'c{i}' for i in range(10)), (2, 2, 2, 2), 'proportional')
    path = ServingRecord.path_for(tmp_path, 'k' * 32)
    calibration = CalibrationSet.from_arrays(_images(16), 'noise')
    x = _images(3, seed=1)
    with _int8(small_model, tmp_path, calibration, ratios=(0.5,),
               serving=ServingRecord.open(path, served)) as engine:
        expected = engine.infer(x)
    loads: list[int] = []

    def loader() -> SkippableResNet:
        loads.append(1)
        return small_model
    with OnnxRuntimeEngine(None, 'small-resnet18', cache_dir=tmp_path, intra_op_threads=1,
                           precision='int8', calibration=calibration, ratios=(0.5,),
                           serving=ServingRecord.load(path), model_loader=loader) as engine:
        assert engine.status()['int8_shared_graph']['ratios'] == [0.5]
        np.testing.assert_array_equal(engine.infer(x), expected)
    assert loads == []
