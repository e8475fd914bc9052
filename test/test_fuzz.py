"""Fuzzing every parser that takes untrusted bytes: camera frames and every file input.

Whatever arrives on the wire or sits on disk, the node must only ever see the package's own
ImageFormatError / ProfileError / WeightsError / DatasetError (which it catches, counts and
reports as one line naming the file), never an IndexError, a KeyError, a MemoryError or a
numpy/YAML/torch exception that would kill a callback. File inputs get structurally valid but
absurd content: huge and negative sizes, NaN/inf, wrong nesting, wrong types, non-UTF-8 bytes.
Example counts are bounded so this stays fast.
"""
from __future__ import annotations

import copy
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st
from tiny_cifar import jpeg_bytes, make_tar

from pls_perception.errors import DatasetError, ImageFormatError, ProfileError, WeightsError
from pls_perception.io.datasets import CIFAR10_CLASSES
from pls_perception.io.image_conversion import SUPPORTED_ENCODINGS, compressed_to_rgb, image_to_rgb
from pls_perception.operating_points.policy_profiles import load_accuracy_table
from pls_perception.operating_points.profiles import load_profile
from pls_perception.skipping.bn_recalibration import calibration_images, load_bn_states
from pls_perception.skipping.network import SkippableResNet
from pls_perception.skipping.plans import SkipPlan, load_plan
from pls_perception.skipping.weights import load_model

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

encodings = st.one_of(st.sampled_from(SUPPORTED_ENCODINGS + ('yuv422', '16UC1', '32FC1', '')),
                      st.text(max_size=12))
# ROS Image dimensions are uint32; go beyond on both sides to cover corrupt producers.
dimensions = st.one_of(st.integers(-4, 70), st.integers(-2**40, 2**40))


@FUZZ
@given(encoding=encodings, height=dimensions, width=dimensions, step=dimensions,
       is_bigendian=st.one_of(st.booleans(), st.integers(0, 255)),
       data=st.binary(max_size=4096))
def test_image_to_rgb_raises_only_image_format_error(encoding: str, height: int, width: int,
                                                     step: int, is_bigendian: bool | int,
                                                     data: bytes) -> None:
    try:
        rgb = image_to_rgb(encoding, height, width, step, is_bigendian, data)
    except ImageFormatError as e:
        assert str(e)  # a reason the node can log
        return
    assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8


@st.composite
def valid_frames(draw: st.DrawFn) -> tuple[str, int, int, int, bool, bytes]:
    encoding = draw(st.sampled_from(SUPPORTED_ENCODINGS))
    height, width = draw(st.integers(1, 16)), draw(st.integers(1, 16))
    channels = 1 if encoding.startswith('mono') else (4 if 'a' in encoding[1:4] else 3)
    depth = 2 if encoding.endswith('16') else 1
    step = width * channels * depth + draw(st.integers(0, 7))
    data = draw(st.binary(min_size=height * step, max_size=height * step + 8))
    return encoding, height, width, step, draw(st.booleans()), data


@FUZZ
@given(frame=valid_frames())
def test_image_to_rgb_accepts_every_well_formed_frame(
        frame: tuple[str, int, int, int, bool, bytes]) -> None:
    encoding, height, width, step, is_bigendian, data = frame
    rgb = image_to_rgb(encoding, height, width, step, is_bigendian, data)
    assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8
    if encoding == 'rgb8':
        rows = np.frombuffer(data[:height * step], np.uint8).reshape(height, step)
        np.testing.assert_array_equal(rgb, rows[:, :width * 3].reshape(height, width, 3))


def _encoded(fmt: str) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize('fmt', ['jpeg', 'png'])
@FUZZ
@given(data=st.data())
def test_compressed_to_rgb_raises_only_image_format_error(fmt: str, data: st.DataObject) -> None:
    valid = _encoded('JPEG' if fmt == 'jpeg' else 'PNG')
    # Truncate and corrupt a real file (the decoder gets past the header), or send pure noise.
    cut = data.draw(st.integers(0, len(valid)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)),
                               max_size=8))
    corrupted = bytearray(valid[:cut] if data.draw(st.booleans()) else valid)
    for index, value in flips:
        if index < len(corrupted):
            corrupted[index] = value
    payload = data.draw(st.one_of(st.just(bytes(corrupted)), st.binary(max_size=512)))
    declared = data.draw(st.sampled_from([fmt, '', 'rgb8; jpeg compressed bgr8', 'tiff', 'png']))
    try:
        rgb = compressed_to_rgb(declared, payload)
    except ImageFormatError as e:
        assert str(e)
        return
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8


# --------------------------------------------------------------------------- profile loader
VALID_PROFILE: dict[str, Any] = {
    'schema_version': 1,
    'device': {'name': 'fuzz', 'kind': 'cpu'},
    'ratios': [0.5, 1.0],
    'frequencies_mhz': [500.0, 1000.0],
    'reference_frequency_mhz': 1000.0,
    'accuracy': {'values': [0.8, 0.9], 'source': 'measured'},
    'latency_ms': {'values': [[4.0, 2.0], [8.0, 4.0]], 'source': 'measured',
                   'rule': 't(r,f) = t(r,f_ref) * f_ref / f'},
    'power_w': {'values': [1.0, 2.5], 'source': 'measured',
                'model': {'kind': 'two_zone', 'p_static_w': 0.5, 'c_w_per_mhz': 0.001,
                          'f_knee_mhz': 800.0}},
    'power_scale': {'values': [0.9, 1.0], 'source': 'modelled'},
    'notes': ['fuzz base'],
}

yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
              st.integers(-10**400, 10**400), st.sampled_from([2**63, -2**63 - 1, 300000000]),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
              st.text(min_size=1000, max_size=1000)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key/index path into a nested dict/list document."""
    out = [prefix] if prefix else []
    items = node.items() if isinstance(node, dict) else (
        enumerate(node) if isinstance(node, list) else ())
    for key, child in items:
        out += _paths(child, prefix + (key,))
    return out


PROFILE_PATHS = _paths(VALID_PROFILE)


@pytest.fixture(scope='module')
def profile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp('fuzz_profiles')


def _check_error(error: Exception, path: Path) -> None:
    """What the node logs: one bounded line naming the file."""
    message = str(error)
    assert str(path) in message and '\n' not in message and len(message) < 2000, message


def _load_expecting_profile_error(path: Path) -> None:
    try:
        load_profile(path)
    except ProfileError as e:
        _check_error(e, path)


def test_valid_profile_base_loads(profile_dir: Path) -> None:
    path = profile_dir / 'valid.yaml'
    path.write_text(yaml.safe_dump(VALID_PROFILE))
    profile = load_profile(path)
    assert profile.latency_ms.shape == (2, 2)


def _mutated(valid: dict[str, Any], mutations: list[tuple[tuple[Any, ...], bool, Any]]
             ) -> dict[str, Any]:
    """A copy of ``valid`` with each (path, delete, value) applied where the path still exists."""
    doc = copy.deepcopy(valid)
    for path, delete, value in mutations:
        parent = doc
        try:
            for key in (*path[:-1], None):
                if not isinstance(parent, (dict, list)):
                    raise TypeError       # a tensor, a tuple: replaced whole by another path
                if key is not None:
                    parent = parent[key]
            if delete and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    return doc


@FUZZ
@given(mutations=st.lists(st.tuples(st.sampled_from(PROFILE_PATHS), st.booleans(), yaml_values),
                          min_size=1, max_size=3))
def test_load_profile_mutated_fields_raise_only_profile_error(
        profile_dir: Path, mutations: list[tuple[tuple[Any, ...], bool, Any]]) -> None:
    target = profile_dir / 'mutated.yaml'
    target.write_text(yaml.safe_dump(_mutated(VALID_PROFILE, mutations), allow_unicode=True))
    _load_expecting_profile_error(target)


@FUZZ
@given(payload=st.one_of(st.binary(max_size=600),
                         st.text(max_size=300).map(lambda t: t.encode()),
                         st.integers(0, 2000).map(
                             lambda n: yaml.safe_dump(VALID_PROFILE).encode()[:n])))
def test_load_profile_arbitrary_bytes_raise_only_profile_error(profile_dir: Path,
                                                                payload: bytes) -> None:
    target = profile_dir / 'bytes.yaml'
    target.write_bytes(payload)
    _load_expecting_profile_error(target)


def test_load_profile_missing_or_directory_is_profile_error(profile_dir: Path) -> None:
    with pytest.raises(ProfileError, match='cannot read profile'):
        load_profile(profile_dir / 'does_not_exist.yaml')
    with pytest.raises(ProfileError):
        load_profile(profile_dir)


# --------------------------------------------------------------- YAML that expands or nests
def _alias_bomb(levels: int, fanout: int) -> str:
    lines = [f'a0: &a0 [{", ".join(["1.0"] * fanout)}]']
    lines += [f'a{i}: &a{i} [{", ".join([f"*a{i - 1}"] * fanout)}]' for i in range(1, levels)]
    return '\n'.join(lines) + f'\nratios: *a{levels - 1}\n'


@pytest.mark.parametrize('text', [
    _alias_bomb(9, 10),                        # 10^9 values in 200 bytes
    '&loop [*loop]\n',                         # a list that contains itself
    '[' * 50000 + ']' * 50000,                 # deeper than the parser's recursion
    'ratios: ' + '9' * 5000 + '\n',            # an integer of 5000 digits
])
@pytest.mark.parametrize('loader', ['profile', 'plan'])
def test_yaml_that_expands_or_nests_is_refused_cheaply(tmp_path: Path, text: str,
                                                       loader: str) -> None:
    path = tmp_path / 'absurd.yaml'
    path.write_text(text)
    with pytest.raises(ProfileError) as info:
        (load_profile if loader == 'profile' else load_plan)(path)
    _check_error(info.value, path)


# ------------------------------------------------------------------------------ skip plans
VALID_PLAN = SkipPlan(depths=(2, 2, 2, 2), order=((3, 1), (2, 1), (1, 1), (0, 1)),
                      block_macs=(5, 6, 7, 8), costs=(0.1, 0.2, 0.3, 0.4), method='greedy',
                      cost='kl', calibration_size=8, weights_sha256='a' * 64).to_dict()
PLAN_PATHS = _paths(VALID_PLAN)


@FUZZ
@given(mutations=st.lists(st.tuples(st.sampled_from(PLAN_PATHS), st.booleans(), yaml_values),
                          min_size=1, max_size=3), with_depths=st.booleans())
def test_load_plan_mutated_fields_raise_only_profile_error(
        profile_dir: Path, mutations: list[tuple[tuple[Any, ...], bool, Any]],
        with_depths: bool) -> None:
    target = profile_dir / 'plan.yaml'
    target.write_text(yaml.safe_dump(_mutated(VALID_PLAN, mutations), allow_unicode=True))
    try:
        plan = load_plan(target, depths=(2, 2, 2, 2) if with_depths else None)
    except ProfileError as e:
        _check_error(e, target)
        return
    assert plan.masks(0.5)          # a plan that loads is usable


@FUZZ
@given(payload=st.one_of(st.binary(max_size=600),
                         st.integers(0, 600).map(
                             lambda n: yaml.safe_dump(VALID_PLAN).encode()[:n] + b'\xff\xfe')))
def test_load_plan_arbitrary_bytes_raise_only_profile_error(profile_dir: Path,
                                                            payload: bytes) -> None:
    target = profile_dir / 'plan_bytes.yaml'
    target.write_bytes(payload)
    with pytest.raises(ProfileError) as info:
        load_plan(target)
    _check_error(info.value, target)


# ------------------------------------------------------------------------- accuracy tables
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(),
              st.text(max_size=8), st.sampled_from(['nan', 'inf', '1e999', '[1, [2]]', '7/9'])),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(
                                ['ratio', 'accuracy', 'policy', 'blocks_kept', 'n_images',
                                 'bn_recalibration', 'rows', 'meta', 'skip_policy', 'sha256']),
                                inner, max_size=5)),
    max_leaves=12)


@FUZZ
@given(document=json_values, as_csv=st.booleans())
def test_load_accuracy_table_raises_only_profile_error(profile_dir: Path, document: Any,
                                                       as_csv: bool) -> None:
    target = profile_dir / ('table.csv' if as_csv else 'table.json')
    if as_csv:
        rows = document if isinstance(document, list) else [document]
        lines = ['ratio,accuracy,n_images,blocks_kept']
        lines += [','.join(str(v) for v in (row.values() if isinstance(row, dict) else [row]))
                  for row in rows]
        target.write_text('\n'.join(lines))
    else:
        target.write_text(json.dumps(document))
    try:
        table = load_accuracy_table(target)
    except ProfileError as e:
        _check_error(e, target)
        return
    assert all(math.isfinite(a) for a in table.accuracy.values())


# ------------------------------------------------------------------------------ weights
def _absurd_tensors() -> st.SearchStrategy[Any]:
    """Tensors a state_dict could hold: wrong shapes (huge but empty), dtypes, NaN/inf."""
    return st.one_of(
        st.tuples(st.integers(0, 3), st.integers(0, 3)).map(lambda s: torch.zeros(*s)),
        st.sampled_from([10**9, 2**40]).map(lambda n: torch.zeros(n, 0)),
        st.sampled_from([float('nan'), float('inf')]).map(lambda v: torch.full((2,), v)),
        st.sampled_from([torch.int64, torch.bool, torch.complex64, torch.float16]).map(
            lambda d: torch.zeros(3, dtype=d)),
        st.integers(-10**6, 10**6), st.text(max_size=20), st.none(),
        st.lists(st.integers(), max_size=3))


@pytest.fixture(scope='module')
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).state_dict()


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_load_model_absurd_state_dicts_raise_only_weights_error(
        tmp_path: Path, resnet18_state: dict[str, torch.Tensor], data: st.DataObject) -> None:
    keys = sorted(resnet18_state)
    if data.draw(st.booleans()):       # a real state_dict with a few entries made absurd
        state: Any = dict(resnet18_state)
        for key in data.draw(st.lists(st.sampled_from(keys + ['x' * 1000]), min_size=1,
                                      max_size=3)):
            state[key] = data.draw(_absurd_tensors())
        if data.draw(st.booleans()):
            state.pop(data.draw(st.sampled_from(keys)))
    else:                              # any small structure
        state = data.draw(st.one_of(
            st.dictionaries(st.sampled_from(['fc.weight', 'fc.bias', 'state_dict', 'model',
                                             'conv1.weight']), _absurd_tensors(), max_size=3),
            _absurd_tensors()))
    if data.draw(st.booleans()):
        state = {'state_dict': state}
    path = tmp_path / 'weights.pt'
    torch.save(state, path)
    try:
        load_model(str(path), arch='resnet18')
    except WeightsError as e:
        _check_error(e, path)


# ------------------------------------------------------------------- BN statistics files
@pytest.fixture(scope='module')
def bn_model() -> SkippableResNet:
    torch.manual_seed(0)
    return SkippableResNet(torchvision.models.resnet18(num_classes=10)).eval()


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_load_bn_states_absurd_files_raise_only_weights_error(
        tmp_path: Path, bn_model: SkippableResNet, data: st.DataObject) -> None:
    bn = bn_model.bn_modules()['layer2.0.bn1']
    doc: dict[str, Any] = {'format': 'pls_perception.bn_states/1', 'depths': bn_model.depths,
                           'states': [{'masks': bn_model.masks_for(0.5),
                                       'stats': {'layer2.0.bn1': (bn.running_mean.clone(),
                                                                  bn.running_var.clone())}}]}
    paths = [('format',), ('depths',), ('states',), ('states', 0), ('states', 0, 'masks'),
             ('states', 0, 'stats'), ('states', 0, 'stats', 'layer2.0.bn1')]
    value = st.one_of(_absurd_tensors(), yaml_values,
                      st.tuples(_absurd_tensors(), _absurd_tensors()),
                      st.lists(st.lists(st.booleans(), max_size=3), max_size=5))
    doc = _mutated(doc, data.draw(st.lists(st.tuples(st.sampled_from(paths), st.booleans(),
                                                     value), min_size=1, max_size=3)))
    path = tmp_path / 'bn.pt'
    torch.save(doc, path)
    before = bn_model.bn_states()
    try:
        load_bn_states(bn_model, path)
    except WeightsError as e:
        _check_error(e, path)
        assert bn_model.bn_states().keys() == before.keys()    # nothing half-stored
    finally:
        bn_model.clear_bn_states()


# ------------------------------------------------------------------------ calibration sets
def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's first bytes)."""
    import struct
    import zlib
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    chunk = b'IHDR' + ihdr
    return (b'\x89PNG\r\n\x1a\n' + struct.pack('>I', len(ihdr)) + chunk
            + struct.pack('>I', zlib.crc32(chunk)) + b'\0\0\0\0IEND\xaeB`\x82')


members = st.tuples(
    st.sampled_from(['train', 'test', 'valid', '']),
    st.sampled_from(list(CIFAR10_CLASSES[:3]) + ['unicorn', '..']),
    st.one_of(st.just(jpeg_bytes((10, 200, 30))), st.just(jpeg_bytes((1, 2, 3), (40, 32))),
              st.just(_png_header(100_000, 100_000)), st.just(_png_header(0, 5)),
              st.binary(max_size=64)))


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(content=st.lists(members, max_size=6), damage=st.sampled_from(['none', 'cut', 'raw']))
def test_calibration_sets_raise_only_dataset_error(tmp_path: Path, content: list[Any],
                                                   damage: str) -> None:
    path = make_tar(tmp_path / 'set.tar.gz', [(f'{split}/{label}/{i:04d}.jpg', payload)
                                              for i, (split, label, payload) in
                                              enumerate(content)])
    if damage == 'cut':
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    elif damage == 'raw':
        path.write_bytes(b'\x1f\x8b' + bytes(range(256)))
    try:
        images = calibration_images(4, tar_path=path)
    except DatasetError as e:
        _check_error(e, path)
        return
    assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)


def test_calibration_member_larger_than_an_image_is_refused_before_reading(
        tmp_path: Path) -> None:
    path = make_tar(tmp_path / 'big.tar.gz', [('train/cat/0000.jpg', bytes(65 * 2**20))])
    with pytest.raises(DatasetError, match='more than an image may') as info:
        calibration_images(2, tar_path=path)
    _check_error(info.value, path)
