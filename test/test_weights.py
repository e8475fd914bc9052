"""Model loading: state_dict files (fp16/fp32), 'imagenet', 'random' and every loading error."""
from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from pls_perception import paths
from pls_perception.errors import WeightsError
from pls_perception.io.datasets import CIFAR10_CLASSES
from pls_perception.skipping.network import SkippableResNet
from pls_perception.skipping.preprocessing import CIFAR10_PREPROCESSING, IMAGENET_PREPROCESSING
from pls_perception.skipping.weights import load_model

torch.set_num_threads(1)
REFERENCE_SHA256 = '3aabae40448b51a43e11b1270ae6d7b81e5ab842488f3262412f53afdf3c5643'


@pytest.fixture(scope='module')
def resnet18_7() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=7).eval()


@pytest.fixture()
def saved(tmp_path: Path, resnet18_7: torch.nn.Module) -> Path:
    path = tmp_path / 'r18.pt'
    torch.save(resnet18_7.state_dict(), path)
    return path


def _output(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.no_grad():
        return model(torch.randn(2, 3, 32, 32))


@pytest.mark.skipif(not paths.reference_weights().is_file(),
                    reason=f'reference weights missing: {paths.reference_weights()}')
def test_reference_weights() -> None:
    loaded = load_model(str(paths.reference_weights()))
    assert isinstance(loaded.model, SkippableResNet)
    assert not loaded.model.training
    assert loaded.num_classes == 10
    assert loaded.sha256 == REFERENCE_SHA256
    assert loaded.class_names == CIFAR10_CLASSES
    assert loaded.preprocessing == CIFAR10_PREPROCESSING
    assert loaded.model.depths == (3, 8, 36, 3)
    assert all(t.dtype == torch.float32 for t in loaded.model.state_dict().values()
               if t.is_floating_point())


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_state_dict_file_fp32_and_fp16(tmp_path: Path, resnet18_7: torch.nn.Module,
                                       dtype: torch.dtype) -> None:
    path = tmp_path / 'w.pt'
    torch.save({k: v.to(dtype) if v.is_floating_point() else v
                for k, v in resnet18_7.state_dict().items()}, path)
    loaded = load_model(str(path), arch='resnet18')
    assert loaded.num_classes == 7
    assert loaded.class_names == tuple(f'class_{i}' for i in range(7))
    assert loaded.source == str(path)
    tolerance = 0 if dtype == torch.float32 else 0.05
    torch.testing.assert_close(_output(loaded.model), _output(resnet18_7), rtol=tolerance,
                               atol=tolerance)


def test_checkpoint_with_nested_state_dict(tmp_path: Path, resnet18_7: torch.nn.Module) -> None:
    path = tmp_path / 'ckpt.pt'
    torch.save({'epoch': 3, 'state_dict': resnet18_7.state_dict()}, path)
    assert load_model(path, arch='resnet18', num_classes=7).num_classes == 7


def _expect(match: str, weights: object, **kwargs: object) -> str:
    with pytest.raises(WeightsError, match=match) as info:
        load_model(weights, **kwargs)
    return str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    message = _expect('does not exist', str(tmp_path / 'nope.pt'))
    assert str(tmp_path / 'nope.pt') in message and 'imagenet' in message
    assert 'is not a file' in _expect('not a file', str(tmp_path))
    _expect('no weights given', '')


def test_truncated_file(tmp_path: Path, saved: Path) -> None:
    data = saved.read_bytes()
    truncated = tmp_path / 'truncated.pt'
    truncated.write_bytes(data[: len(data) // 2])
    assert str(truncated) in _expect('truncated or corrupt', str(truncated), arch='resnet18')
    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'\x00not a torch file' * 10)
    _expect('truncated or corrupt', str(garbage), arch='resnet18')


@pytest.mark.parametrize('content', [[1, 2, 3], torch.zeros(3), {'a': 1}, {}])
def test_not_a_state_dict(tmp_path: Path, content: object) -> None:
    path = tmp_path / 'odd.pt'
    torch.save(content, path)
    assert str(path) in _expect('not a state_dict', str(path))


def test_state_dict_without_fc(tmp_path: Path) -> None:
    path = tmp_path / 'nofc.pt'
    torch.save({'conv.weight': torch.zeros(1)}, path)
    _expect('no 2-D fc.weight', str(path))


def test_wrong_architecture(saved: Path) -> None:
    message = _expect('does not match torchvision resnet50', str(saved), arch='resnet50')
    assert str(saved) in message and 'missing keys' in message
    assert 'shape mismatches' in message


def test_mismatched_shape(tmp_path: Path, resnet18_7: torch.nn.Module) -> None:
    state = dict(resnet18_7.state_dict())
    state['layer2.0.conv1.weight'] = torch.zeros(128, 64, 5, 5)
    path = tmp_path / 'shape.pt'
    torch.save(state, path)
    message = _expect('shape mismatches', str(path), arch='resnet18')
    assert 'layer2.0.conv1.weight (128, 64, 5, 5) vs (128, 64, 3, 3)' in message


def test_extra_keys(tmp_path: Path, resnet18_7: torch.nn.Module) -> None:
    state = dict(resnet18_7.state_dict(), extra=torch.zeros(1))
    path = tmp_path / 'extra.pt'
    torch.save(state, path)
    _expect('unexpected keys \\(1\\): extra', str(path), arch='resnet18')


def test_num_classes_mismatch(saved: Path) -> None:
    _expect('has 7 classes', str(saved), arch='resnet18', num_classes=10)


def test_unknown_arch(saved: Path) -> None:
    with pytest.raises(ValueError, match='arch'):
        load_model(str(saved), arch='resnet9000')
    with pytest.raises(ValueError, match='num_classes'):
        load_model(str(saved), num_classes=0)


def test_random_needs_permission() -> None:
    _expect('allow_random', 'random')
    with pytest.warns(UserWarning, match='RANDOM'):
        loaded = load_model('random', arch='resnet18', allow_random=True)
    assert loaded.num_classes == 10 and loaded.source == 'random' and loaded.sha256 is None
    assert loaded.preprocessing == CIFAR10_PREPROCESSING
    with pytest.warns(UserWarning):
        assert load_model('random', arch='resnet18', num_classes=1000,
                          allow_random=True).preprocessing == IMAGENET_PREPROCESSING


def test_imagenet_offline_names_alternatives(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError('Name or service not known')

    monkeypatch.setattr(torchvision.models._api, 'load_state_dict_from_url', offline)
    message = _expect('cannot get torchvision', 'imagenet', arch='resnet18')
    assert 'state_dict file' in message and 'random' in message
    assert str(paths.reference_weights()) in message
    _expect('1000 classes', 'imagenet', num_classes=10)


@pytest.mark.parametrize('value', [float('nan'), float('inf'), -float('inf')])
def test_nan_or_infinite_weights_are_rejected_naming_tensor_and_file(
        tmp_path: Path, resnet18_7: torch.nn.Module, value: float) -> None:
    """The review's file: NaN in fc.weight configured and published "score": NaN."""
    state = {k: v.clone() for k, v in resnet18_7.state_dict().items()}
    state['fc.weight'][3, 5] = value
    path = tmp_path / 'nan.pt'
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"tensor 'fc.weight' holds 1 NaN or infinite") as info:
        load_model(str(path), arch='resnet18')
    assert str(path) in str(info.value)
    state['fc.weight'][3, 5] = 0.0
    state['layer1.0.bn1.running_var'] = state['layer1.0.bn1.running_var'].half()
    state['layer1.0.bn1.running_var'][0] = value      # fp16 files are checked too
    torch.save(state, path)
    with pytest.raises(WeightsError, match='layer1.0.bn1.running_var'):
        load_model(str(path), arch='resnet18')


def test_absurd_class_count_is_rejected_before_building(tmp_path: Path) -> None:
    """A zero-width fc.weight of 10^9 rows is a few bytes on disk but a 8 TB classifier."""
    from memory_probe import run
    path = tmp_path / 'billion.pt'
    torch.save({'fc.weight': torch.zeros(10**9, 0), 'fc.bias': torch.zeros(1)}, path)
    outcome = run('from pls_perception.skipping.weights import load_model',
                  f'load_model({str(path)!r}, arch="resnet18")', cap_mb=1024)
    assert outcome['error'] == 'WeightsError', outcome
    assert str(path) in outcome['message'] and outcome['peak_mb'] < 100, outcome


@pytest.mark.parametrize('tensor, match', [
    (torch.zeros(7).to_sparse(), 'layout torch.sparse_coo'),
    (torch.zeros(7, dtype=torch.complex64), 'dtype torch.complex64'),
    (torch.zeros(7, device='meta'), 'device meta'),
])
@pytest.mark.filterwarnings('ignore:Validating sparse tensor invariants')
def test_exotic_tensors_are_rejected(tmp_path: Path, resnet18_7: torch.nn.Module,
                                     tensor: torch.Tensor, match: str) -> None:
    state = dict(resnet18_7.state_dict())
    state['fc.bias'] = tensor
    path = tmp_path / 'exotic.pt'
    torch.save(state, path)
    with pytest.raises(WeightsError, match=match):
        load_model(str(path), arch='resnet18')
