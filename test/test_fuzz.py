"""Fuzzing the two parsers that take untrusted bytes: camera frames and profile YAML files.

Whatever arrives on the wire or sits on disk, the node must only ever see the package's own
ImageFormatError / ProfileError (which it catches, counts and reports), never an IndexError or a
numpy/YAML exception that would kill a callback. Example counts are bounded so this stays fast.
"""
from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pls_perception.errors import ImageFormatError, ProfileError
from pls_perception.image_conversion import SUPPORTED_ENCODINGS, compressed_to_rgb, image_to_rgb
from pls_perception.profiles import load_profile

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
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8)),
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


def _load_expecting_profile_error(path: Path) -> None:
    try:
        load_profile(path)
    except ProfileError as e:
        assert str(e)


def test_valid_profile_base_loads(profile_dir: Path) -> None:
    path = profile_dir / 'valid.yaml'
    path.write_text(yaml.safe_dump(VALID_PROFILE))
    profile = load_profile(path)
    assert profile.latency_ms.shape == (2, 2)


@FUZZ
@given(mutations=st.lists(st.tuples(st.sampled_from(PROFILE_PATHS), st.booleans(), yaml_values),
                          min_size=1, max_size=3))
def test_load_profile_mutated_fields_raise_only_profile_error(
        profile_dir: Path, mutations: list[tuple[tuple[Any, ...], bool, Any]]) -> None:
    doc = copy.deepcopy(VALID_PROFILE)
    for path, delete, value in mutations:
        parent = doc
        try:
            for key in path[:-1]:
                parent = parent[key]
            if delete and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    target = profile_dir / 'mutated.yaml'
    target.write_text(yaml.safe_dump(doc, allow_unicode=True))
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
