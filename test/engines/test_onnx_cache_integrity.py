"""The ONNX cache verifies itself: tampered, truncated, swapped or renamed files are rebuilt.

Every scenario starts from a copy of one pristine cache (ratios 1.0 and 0.5 of a small ResNet),
damages it the way the review did (random bytes, a pickled object array, an fc tensor replaced by
zeros of the same shape, an index naming a tensor outside the cache, ...) and checks that the next
engine logs each bad file once, with its path, and answers exactly like a fresh build.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from pls_perception.engines import onnxruntime_engine as ort_engine
from pls_perception.engines.onnxruntime_engine import OnnxRuntimeEngine
from pls_perception.skipping.network import SkippableResNet

pytestmark = pytest.mark.timeout(300)
RATIOS = (1.0, 0.5)
LOGGER = 'pls_perception.engines.onnxruntime_engine'


def _model() -> SkippableResNet:
    """A seeded random ResNet-18: every process builds the very same network."""
    torch.manual_seed(0)
    return SkippableResNet(torchvision.models.resnet18(num_classes=10)).eval()


def _engine(model: SkippableResNet, cache: Path) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(model, 'integrity', cache_dir=cache, intra_op_threads=1,
                             ratios=RATIOS[1:])


def _answers(engine: OnnxRuntimeEngine, batch: np.ndarray) -> dict[float, np.ndarray]:
    answers = {}
    for ratio in RATIOS:
        engine.set_keep_ratio(ratio)
        answers[ratio] = engine.infer(batch)
    return answers


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture()
def warnings() -> Iterator[list[str]]:
    """Warnings of the engine's logger (attached to it: ROS's launch logger class does not
    propagate to pytest's capture)."""
    handler = _Collect()
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


@pytest.fixture(scope='module')
def model() -> SkippableResNet:
    return _model()


@pytest.fixture(scope='module')
def pristine(tmp_path_factory: pytest.TempPathFactory, model: SkippableResNet
             ) -> tuple[Path, dict[float, np.ndarray]]:
    """A fresh build: its cache directory and its answers on the test batch."""
    cache = tmp_path_factory.mktemp('pristine')
    with _engine(model, cache) as engine:
        return engine.cache_dir, _answers(engine, _batch())


def _batch() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)


# ---------------------------------------------------------------- what the cache holds
def _indexes(key_dir: Path) -> dict[float, Path]:
    """Index file per keep ratio."""
    return {json.loads(p.read_text())['ratio']: p for p in key_dir.glob('graphs/*.json')}


def _index(key_dir: Path, ratio: float) -> dict:
    return json.loads(_indexes(key_dir)[ratio].read_text())


def _graph(key_dir: Path, ratio: float) -> Path:
    return key_dir / 'graphs' / f'{_index(key_dir, ratio)["graph_sha256"]}.onnx'


def _fc_weight(key_dir: Path) -> Path:
    """The classifier's weight matrix (10 x 512) in the weight store."""
    for path in key_dir.glob('weights/*.npy'):
        if np.load(path, mmap_mode='r').shape == (10, 512):
            return path
    raise AssertionError('no fc weight in the cache')


def _rewrite_index(path: Path, edit: Callable[[dict], None]) -> None:
    """Edit an index and re-sign it, as a consistent (not merely corrupt) tamper would."""
    index = json.loads(path.read_text())
    edit(index)
    index.pop('digest')
    index['digest'] = ort_engine.content_digest(index)
    path.write_text(json.dumps(index))


# ---------------------------------------------------------------- the damage
def _random_bytes(path: Path) -> list[Path]:
    path.write_bytes(os.urandom(max(path.stat().st_size, 64)))
    return [path]


def _truncated(path: Path) -> list[Path]:
    with open(path, 'r+b') as f:
        f.truncate(path.stat().st_size // 2)
    return [path]


def weight_random_bytes(key_dir: Path) -> list[Path]:
    return _random_bytes(_fc_weight(key_dir))


def weight_pickled_object_array(key_dir: Path) -> list[Path]:
    path = _fc_weight(key_dir)
    with open(path, 'wb') as f:
        np.save(f, np.array([{'not': 'a tensor'}, None], dtype=object), allow_pickle=True)
    return [path]


def fc_replaced_by_zeros_of_same_shape(key_dir: Path) -> list[Path]:
    path = _fc_weight(key_dir)
    with open(path, 'wb') as f:
        np.save(f, np.zeros((10, 512), np.float32))
    return [path]


def weight_truncated(key_dir: Path) -> list[Path]:
    return _truncated(_fc_weight(key_dir))


def weight_header_claims_a_huge_array(key_dir: Path) -> list[Path]:
    path = _fc_weight(key_dir)
    data = np.load(path).tobytes()
    with open(path, 'wb') as f:
        np.lib.format.write_array_header_1_0(
            f, {'descr': '<f4', 'fortran_order': False, 'shape': (10**12, 512)})
        f.write(data)
    return [path]


def weights_swapped(key_dir: Path) -> list[Path]:
    fc = _fc_weight(key_dir)
    other = next(p for p in key_dir.glob('weights/*.npy') if p != fc)
    tmp = fc.with_suffix('.tmp')
    fc.rename(tmp)
    other.rename(fc)
    tmp.rename(other)
    return [fc, other]


def weight_deleted(key_dir: Path) -> list[Path]:
    path = _fc_weight(key_dir)
    path.unlink()
    return [path]


def index_names_a_file_outside_the_cache(key_dir: Path) -> list[Path]:
    path = _indexes(key_dir)[1.0]
    _rewrite_index(path, lambda i: i['initializers'].__setitem__(0, '../../../etc/passwd'))
    return [path]


def index_names_another_valid_tensor(key_dir: Path) -> list[Path]:
    path = _indexes(key_dir)[0.5]
    names = set(_index(key_dir, 1.0)['initializers']) - set(_index(key_dir, 0.5)['initializers'])
    _rewrite_index(path, lambda i: i['initializers'].__setitem__(0, sorted(names)[0]))
    return [path]


def index_edited_without_its_digest(key_dir: Path) -> list[Path]:
    path = _indexes(key_dir)[1.0]
    path.write_text(path.read_text().replace('"policy": "proportional"', '"policy": "x"'))
    return [path]


def index_random_bytes(key_dir: Path) -> list[Path]:
    return _random_bytes(_indexes(key_dir)[0.5])


def indexes_swapped(key_dir: Path) -> list[Path]:
    full, half = _indexes(key_dir)[1.0], _indexes(key_dir)[0.5]
    tmp = full.with_suffix('.tmp')
    full.rename(tmp)
    half.rename(full)
    tmp.rename(half)
    return [full, half]


def graph_random_bytes(key_dir: Path) -> list[Path]:
    return _random_bytes(_graph(key_dir, 1.0))


def graph_truncated(key_dir: Path) -> list[Path]:
    return _truncated(_graph(key_dir, 0.5))


def graphs_swapped(key_dir: Path) -> list[Path]:
    full, half = _graph(key_dir, 1.0), _graph(key_dir, 0.5)
    tmp = full.with_suffix('.tmp')
    full.rename(tmp)
    half.rename(full)
    tmp.rename(half)
    return [full, half]


def graph_renamed(key_dir: Path) -> list[Path]:
    path = _graph(key_dir, 1.0)
    path.rename(path.with_name('0' * 64 + '.onnx'))
    return [path]


DAMAGE = [weight_random_bytes, weight_pickled_object_array, fc_replaced_by_zeros_of_same_shape,
          weight_truncated, weight_header_claims_a_huge_array, weights_swapped, weight_deleted,
          index_names_a_file_outside_the_cache, index_names_another_valid_tensor,
          index_edited_without_its_digest, index_random_bytes, indexes_swapped,
          graph_random_bytes, graph_truncated, graphs_swapped, graph_renamed]


@pytest.mark.parametrize('damage', DAMAGE, ids=[d.__name__ for d in DAMAGE])
def test_damaged_cache_is_logged_once_per_file_and_rebuilt(
        pristine: tuple[Path, dict[float, np.ndarray]], model: SkippableResNet,
        tmp_path: Path, damage: Callable[[Path], list[Path]], warnings: list[str]) -> None:
    key_dir, expected = pristine
    cache = tmp_path / 'cache'
    shutil.copytree(key_dir, cache / key_dir.name)
    damaged = damage(cache / key_dir.name)
    with _engine(model, cache) as engine:
        answers = _answers(engine, _batch())
    for ratio in RATIOS:
        np.testing.assert_array_equal(answers[ratio], expected[ratio])
    for path in damaged:
        assert sum(str(path) in w for w in warnings) == 1, warnings
    assert len(warnings) == len(damaged), warnings
    assert not any('passwd' in str(p) for p in cache.rglob('*'))
    warnings.clear()
    with _engine(model, cache) as engine:       # healed: loads without a word
        answers = _answers(engine, _batch())
    assert warnings == []
    for ratio in RATIOS:
        np.testing.assert_array_equal(answers[ratio], expected[ratio])


def test_placeholder_file_is_recreated(pristine: tuple[Path, dict[float, np.ndarray]],
                                       model: SkippableResNet, tmp_path: Path) -> None:
    key_dir, expected = pristine
    cache = tmp_path / 'cache'
    shutil.copytree(key_dir, cache / key_dir.name)
    (cache / key_dir.name / 'graphs' / 'placeholder.bin').unlink()
    with _engine(model, cache) as engine:
        np.testing.assert_array_equal(_answers(engine, _batch())[1.0], expected[1.0])


_BUILDER = '''
import logging, sys
sys.path.insert(0, sys.argv[2])
from test_onnx_cache_integrity import _batch, _model
from pls_perception.engines.onnxruntime_engine import OnnxRuntimeEngine
warnings = []
class Collect(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            warnings.append(record.getMessage())
logging.getLogger('pls_perception').addHandler(Collect())
with OnnxRuntimeEngine(_model(), 'integrity', cache_dir=sys.argv[1], intra_op_threads=1,
                       ratios=(0.5,)) as engine:
    engine.infer(_batch())
print('WARNINGS', len(warnings), warnings)
'''


def test_processes_building_one_cache_at_once_never_see_half_an_entry(
        pristine: tuple[Path, dict[float, np.ndarray]], model: SkippableResNet,
        tmp_path: Path, warnings: list[str]) -> None:
    _, expected = pristine
    here = str(Path(__file__).parent)
    builders = [subprocess.Popen([sys.executable, '-c', _BUILDER, str(tmp_path), here],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
    for builder in builders:
        out, err = builder.communicate(timeout=240)
        assert builder.returncode == 0, err[-2000:]
        assert 'WARNINGS 0 []' in out, out
    with _engine(model, tmp_path) as engine:
        answers = _answers(engine, _batch())
    assert warnings == []
    for ratio in RATIOS:
        np.testing.assert_array_equal(answers[ratio], expected[ratio])
