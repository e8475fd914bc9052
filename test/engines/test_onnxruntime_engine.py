"""OnnxRuntimeEngine: same logits as eager torch, one weight copy, cache, background builds."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from pls_perception.engines import TorchEngine
from pls_perception.engines.onnxruntime_engine import (CACHE_ENV, OnnxRuntimeEngine,
                                                       default_cache_dir, execution_providers)
from pls_perception.errors import BackendError
from pls_perception.skipping.network import SkippableResNet

pytestmark = pytest.mark.timeout(180)


def _engine(model: SkippableResNet, cache: Path, **kw: object) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(model, 'small-resnet18', cache_dir=cache, intra_op_threads=1, **kw)


def _torch_logits(model: SkippableResNet, batch: np.ndarray, ratio: float) -> np.ndarray:
    with model.using_ratio(ratio), torch.inference_mode():
        return model(torch.from_numpy(batch)).numpy()


def test_logits_match_torch_at_every_prepared_ratio(small_model: SkippableResNet, onnx_cache: Path,
                                                    batch: np.ndarray) -> None:
    with _engine(small_model, onnx_cache, ratios=(0.5,)) as engine:
        assert engine.name == 'onnxruntime'
        assert set(engine.ready_ratios) == {1.0, 0.5}
        for ratio in (1.0, 0.5):
            engine.set_keep_ratio(ratio)
            assert engine.keep_ratio == ratio and engine.pending_ratios == ()
            logits = engine.infer(batch)
            assert logits.dtype == np.float32 and logits.shape == (4, 10)
            np.testing.assert_allclose(logits, _torch_logits(small_model, batch, ratio),
                                       rtol=0, atol=1e-4)


def test_ratios_share_one_copy_of_each_weight(small_model: SkippableResNet,
                                              tmp_path: Path) -> None:
    with _engine(small_model, tmp_path, ratios=(0.5,)) as engine:
        full_bytes = sum(v.numpy().nbytes for v in engine._weights.values())
        graphs = sorted(engine.cache_dir.glob('graphs/*.json'))
        names = [set(json.loads(p.read_text())['initializers']) for p in graphs]
    assert len(names) == 2
    # The r=0.5 graph's tensors are a subset of r=1's: held once, not twice.
    smaller, larger = sorted(names, key=len)
    assert smaller < larger
    stored = sum(p.stat().st_size for p in engine.cache_dir.glob('weights/*.npy'))
    assert stored < 1.05 * full_bytes + 128 * len(larger)   # .npy headers


def test_cache_is_reused_without_exporting(small_model: SkippableResNet, onnx_cache: Path,
                                           batch: np.ndarray, monkeypatch: pytest.MonkeyPatch,
                                           ) -> None:
    with _engine(small_model, onnx_cache) as engine:
        expected = engine.infer(batch)

    def no_export(self: OnnxRuntimeEngine, ratio: float) -> bytes:
        raise AssertionError('the cached graph should have been used')
    monkeypatch.setattr(OnnxRuntimeEngine, '_export', no_export)
    with _engine(small_model, onnx_cache) as engine:
        np.testing.assert_array_equal(engine.infer(batch), expected)


def test_corrupt_cache_entry_is_rebuilt(small_model: SkippableResNet, tmp_path: Path,
                                        batch: np.ndarray) -> None:
    with _engine(small_model, tmp_path) as engine:
        expected = engine.infer(batch)
        graph = next(engine.cache_dir.glob('graphs/*.onnx'))
    graph.write_bytes(b'not an onnx model')
    with _engine(small_model, tmp_path) as engine:
        np.testing.assert_allclose(engine.infer(batch), expected, atol=1e-6)
    assert graph.stat().st_size > 100


def test_other_weights_get_another_cache_entry(small_model: SkippableResNet, onnx_cache: Path,
                                               batch: np.ndarray) -> None:
    with _engine(small_model, onnx_cache) as engine:
        first_dir, first = engine.cache_dir, engine.infer(batch)
    with torch.no_grad():
        small_model.fc.bias.add_(1.0)
    with OnnxRuntimeEngine(small_model, 'other-weights', cache_dir=onnx_cache) as engine:
        assert engine.cache_dir != first_dir
        np.testing.assert_allclose(engine.infer(batch), first + 1.0, atol=1e-4)


def test_recalibrated_batchnorm_goes_into_the_graph(small_model: SkippableResNet, onnx_cache: Path,
                                                    batch: np.ndarray) -> None:
    with _engine(small_model, onnx_cache, ratios=(0.5,)) as engine:
        engine.set_keep_ratio(0.5)
        before = engine.infer(batch)
    # Fake recalibrated statistics for the r=0.5 mask.
    bn = small_model.bn_modules()['layer1.0.bn1']
    stats = {'layer1.0.bn1': (bn.running_mean + 0.5, bn.running_var * 2.0)}
    small_model.set_bn_state(0.5, stats)
    with _engine(small_model, onnx_cache, ratios=(0.5,)) as engine:
        engine.set_keep_ratio(0.5)
        after = engine.infer(batch)
        engine.set_keep_ratio(1.0)
        full = engine.infer(batch)
    assert not np.allclose(before, after, atol=1e-3)
    np.testing.assert_allclose(after, _torch_logits(small_model, batch, 0.5), atol=1e-4)
    np.testing.assert_allclose(full, _torch_logits(small_model, batch, 1.0), atol=1e-4)


def test_unbuilt_ratio_builds_in_background_while_previous_serves(
        small_model: SkippableResNet, tmp_path: Path, batch: np.ndarray,
        monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    original = OnnxRuntimeEngine._export

    def slow_export(self: OnnxRuntimeEngine, ratio: float) -> bytes:
        assert release.wait(60), 'test did not release the build'
        return original(self, ratio)

    engine = _engine(small_model, tmp_path)
    try:
        full = engine.infer(batch)
        monkeypatch.setattr(OnnxRuntimeEngine, '_export', slow_export)
        engine.set_keep_ratio(0.5)
        engine.set_keep_ratio(0.5)             # asking again does not queue a second build
        assert engine.keep_ratio == 1.0 and engine.requested_ratio == 0.5
        assert engine.pending_ratios == (0.5,)
        status = engine.status()
        assert status['active_ratio'] == 1.0 and status['pending_ratios'] == [0.5]
        np.testing.assert_array_equal(engine.infer(batch), full)   # still serving r=1
        release.set()
        assert engine.wait_ready(120)
        assert engine.keep_ratio == 0.5 and engine.pending_ratios == ()
        np.testing.assert_allclose(engine.infer(batch), _torch_logits(small_model, batch, 0.5),
                                   atol=1e-4)
    finally:
        release.set()
        engine.close()


def test_build_finishing_after_a_newer_request_does_not_switch(
        small_model: SkippableResNet, onnx_cache: Path) -> None:
    with _engine(small_model, onnx_cache) as engine:
        engine.set_keep_ratio(0.3)     # not prepared: builds in the background
        engine.set_keep_ratio(1.0)     # ready: immediate
        assert engine.wait_ready(120)
        assert engine.keep_ratio == 1.0 and 0.3 in engine.ready_ratios


def test_concurrent_switching_and_inference(small_model: SkippableResNet, onnx_cache: Path,
                                            batch: np.ndarray) -> None:
    with _engine(small_model, onnx_cache, ratios=(0.5,)) as engine:
        expected = {r: _torch_logits(small_model, batch, r) for r in (1.0, 0.5)}
        errors: list[str] = []
        stop = threading.Event()

        def switcher() -> None:
            while not stop.is_set():
                for ratio in (1.0, 0.5):
                    engine.set_keep_ratio(ratio)

        thread = threading.Thread(target=switcher)
        thread.start()
        try:
            for _ in range(30):
                out = engine.infer(batch)
                if not any(np.allclose(out, e, atol=1e-4) for e in expected.values()):
                    errors.append('output matches neither ratio')
        finally:
            stop.set()
            thread.join()
        assert not errors


def test_switch_is_fast(small_model: SkippableResNet, onnx_cache: Path) -> None:
    import time
    with _engine(small_model, onnx_cache, ratios=(0.5,)) as engine:
        times = []
        for i in range(200):
            start = time.perf_counter()
            engine.set_keep_ratio(0.5 if i % 2 else 1.0)
            times.append(time.perf_counter() - start)
    assert sorted(times)[len(times) // 2] < 1e-3


def test_rejects_bad_input_and_use_after_close(small_model: SkippableResNet, onnx_cache: Path,
                                               batch: np.ndarray) -> None:
    engine = _engine(small_model, onnx_cache)
    with pytest.raises(ValueError, match='keep ratio'):
        engine.set_keep_ratio(0.0)
    with pytest.raises(ValueError, match='Nx3x32x32'):
        engine.infer(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match='Nx3xHxW'):
        engine.infer(batch[0])
    engine.close()
    engine.close()
    with pytest.raises(BackendError, match='closed'):
        engine.set_keep_ratio(0.5)
    with pytest.raises(ValueError, match='intra_op_threads'):
        OnnxRuntimeEngine(small_model, 'x', cache_dir=onnx_cache, intra_op_threads=-1)


def test_cache_dir_default_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert default_cache_dir() == Path.home() / '.cache' / 'pls_perception' / 'onnx'
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert default_cache_dir() == tmp_path


def test_providers_follow_device() -> None:
    import onnxruntime as ort
    assert execution_providers('cpu') == ['CPUExecutionProvider']
    cuda = execution_providers('cuda')
    assert cuda[-1] == 'CPUExecutionProvider'
    assert ('CUDAExecutionProvider' in cuda) == (
        'CUDAExecutionProvider' in ort.get_available_providers())
    with pytest.raises(ValueError, match='device'):
        execution_providers('tpu')


def test_agrees_with_torch_engine_on_shared_test_slice(onnx_cache: Path) -> None:
    from pls_perception import paths
    if not paths.reference_weights().is_file() or not paths.cifar10_tar().is_file():
        pytest.skip(f'needs the shared reference weights and CIFAR-10 in {paths.shared_dir()}')
    from pls_perception.io.datasets import load_cifar10
    from pls_perception.skipping.weights import load_model
    loaded = load_model(str(paths.reference_weights()))
    images, _, _ = load_cifar10(per_class=10)
    batch = loaded.preprocessing.to_tensor(images).numpy()
    reference = TorchEngine(loaded.model)
    with OnnxRuntimeEngine.from_loaded(loaded, cache_dir=onnx_cache, ratios=(0.5, 0.2),
                                       intra_op_threads=1) as engine:
        for ratio in (1.0, 0.5, 0.2):
            engine.set_keep_ratio(ratio)
            reference.set_keep_ratio(ratio)
            ours, theirs = engine.infer(batch), reference.infer(batch)
            np.testing.assert_array_equal(ours.argmax(1), theirs.argmax(1))
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-3)


_RSS_CHILD = '''
import json, sys
import torch, torchvision
from pls_perception.engines.onnxruntime_engine import OnnxRuntimeEngine
from pls_perception.skipping.network import SkippableResNet
torch.manual_seed(0)
model = SkippableResNet(torchvision.models.resnet18(num_classes=10)).eval()
def rss_mb():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
before = rss_mb()
engine = OnnxRuntimeEngine(model, 'small-resnet18', cache_dir=sys.argv[1], ratios=(0.5,),
                           intra_op_threads=1)
weights_mb = sum(v.numpy().nbytes for v in engine._weights.values()) / 2**20
print(json.dumps({'engine_mb': rss_mb() - before, 'weights_mb': weights_mb}))
'''


def test_sessions_use_the_shared_weights_in_place(small_model: SkippableResNet,
                                                  onnx_cache: Path) -> None:
    import subprocess
    import sys
    _engine(small_model, onnx_cache, ratios=(0.5,)).close()     # warm cache: no build in child
    proc = subprocess.run([sys.executable, '-c', _RSS_CHILD, str(onnx_cache)], check=True,
                          capture_output=True, text=True, timeout=120)
    rss = json.loads(proc.stdout.strip().splitlines()[-1])
    # Copies per session would add at least the weights again (1.5x for r=1 plus r=0.5).
    assert rss['engine_mb'] < 1.4 * rss['weights_mb'] + 15, rss


def test_policy_change_takes_effect_at_next_switch(small_model: SkippableResNet,
                                                   onnx_cache: Path) -> None:
    from pls_perception.skipping.network import SkipPolicy

    class KeepAll(SkipPolicy):
        name = 'keep_all'

        def masks(self, ratio: object, depths: tuple[int, ...]) -> tuple[tuple[bool, ...], ...]:
            return tuple((True,) * n for n in depths)

    with _engine(small_model, onnx_cache, ratios=(0.5,)) as engine:
        engine.set_keep_ratio(1.0)
        with pytest.raises(ValueError):
            engine.set_keep_ratio(True)  # type: ignore[arg-type]  # not the cached 1.0
        engine.set_keep_ratio(0.5)
        half = engine.infer(np.ones((1, 3, 32, 32), np.float32))
        small_model.set_policy(KeepAll())
        engine.set_keep_ratio(0.5)      # same ratio, now the r=1 mask: already loaded
        assert engine.pending_ratios == ()
        full = engine.infer(np.ones((1, 3, 32, 32), np.float32))
    assert not np.allclose(half, full)


def test_background_ratios_build_after_construction_without_switching(
        small_model: SkippableResNet, tmp_path: Path, batch: np.ndarray) -> None:
    # A cold start builds only keep_ratio before the constructor returns.
    # (ResNet-18 has two blocks per stage: 0.5 and 0.25 share one graph.)
    with _engine(small_model, tmp_path, keep_ratio=1.0, background_ratios=(0.5, 0.25)) as engine:
        assert engine.keep_ratio == 1.0
        assert engine.pending_ratios == ()        # nobody waits for a background ratio
        assert engine.wait_ready(120)
        assert engine.status()['background_ratios'] == []
        assert set(engine.ready_ratios) == {1.0, 0.5}
        assert engine.keep_ratio == 1.0           # built, not switched to
        engine.set_keep_ratio(0.5)
        assert engine.keep_ratio == 0.5 and engine.pending_ratios == ()
        np.testing.assert_allclose(engine.infer(batch), _torch_logits(small_model, batch, 0.5),
                                   rtol=0, atol=1e-4)


def test_asking_for_a_queued_background_ratio_switches_to_it_when_built(
        small_model: SkippableResNet, tmp_path: Path) -> None:
    with _engine(small_model, tmp_path, background_ratios=(0.75, 0.5, 0.25)) as engine:
        engine.set_keep_ratio(0.25)               # queued behind the others: jumps the queue
        assert engine.requested_ratio == 0.25
        assert engine.wait_ready(120)
        assert engine.keep_ratio == 0.25 and engine.status()['build_errors'] == []


def test_close_does_not_wait_for_background_builds(small_model: SkippableResNet,
                                                   tmp_path: Path) -> None:
    engine = _engine(small_model, tmp_path, background_ratios=(0.75, 0.5, 0.25))
    engine.close()
    status = engine.status()
    assert status['pending_ratios'] == [] and status['background_ratios'] == []
    with pytest.raises(BackendError, match='closed'):
        engine.set_keep_ratio(0.5)
