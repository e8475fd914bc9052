"""Bounded cost per frame: the review's huge frames, replayed in a child with capped memory.

An 8000x8000 PNG of 62 KB once took +0.94 GB and 4.3 s, a raw 8192x8192 mono8 frame +0.89 GB:
preprocessing made a float32 copy of the whole frame before resizing. Each case runs the node's
path (convert with the preprocessing's reduction, then ``to_array``) and the path of callers
that convert at full size (``to_array`` on the zero-copy view), and checks the peak growth of
the resident set: bounded by the network input, not by the frame (PNG: by its decoded bitmap).
"""
from __future__ import annotations

import pytest
from memory_probe import run

pytestmark = pytest.mark.timeout(300)

_SETUP = '''
import io
import numpy as np
from PIL import Image
from pls_perception.io.image_conversion import DEFAULT_MAX_PIXELS, compressed_to_rgb, image_to_rgb
from pls_perception.skipping.preprocessing import CIFAR10_PREPROCESSING, IMAGENET_PREPROCESSING
prep = {prep}
height, width = {height}, {width}
'''
_RAW = '''
channels = {{'mono8': 1, 'rgb8': 3, 'mono16': 2}}['{encoding}']
data = np.random.default_rng(0).integers(0, 256, height * width * channels, dtype=np.uint8)
data = data.tobytes()
def convert(**reduction):
    return image_to_rgb('{encoding}', height, width, width * channels, 0, data,
                        max_pixels={max_pixels}, **reduction)
'''
_COMPRESSED = '''
buffer = io.BytesIO()
Image.new('RGB', (width, height), (90, 140, 30)).save(buffer, '{fmt}')
data = buffer.getvalue()
del buffer
def convert(**reduction):
    return compressed_to_rgb('{fmt}'.lower(), data, max_pixels={max_pixels}, **reduction)
'''
MAX_8K = 8192 * 8192       # the limit the review ran with
DEFAULT = 'DEFAULT_MAX_PIXELS'


def _cost(prep: str, height: int, width: int, frame: str, node_path: bool,
          max_pixels: int | str = DEFAULT, **kw: object) -> dict[str, object]:
    setup = (_SETUP.format(prep=prep, height=height, width=width)
             + frame.format(max_pixels=max_pixels, **kw))
    reduction = 'reduction=prep.reduction' if node_path else ''
    return run(setup, f'prep.to_array(convert({reduction}))', cap_mb=3072)


@pytest.mark.parametrize('node_path', [True, False], ids=['node', 'full-size view'])
@pytest.mark.parametrize('encoding, height, width, max_pixels', [
    ('mono8', 8192, 8192, MAX_8K),          # the review's frame
    ('rgb8', 4096, 4096, DEFAULT),          # the largest accepted by default
    ('rgb8', 1080, 1920, DEFAULT),
])
def test_raw_frames_cost_memory_of_the_network_input(encoding: str, height: int, width: int,
                                                     max_pixels: int | str,
                                                     node_path: bool) -> None:
    outcome = _cost('CIFAR10_PREPROCESSING', height, width, _RAW, node_path, max_pixels,
                    encoding=encoding)
    assert outcome['error'] is None, outcome
    assert outcome['peak_mb'] < 24, outcome


def test_sixteen_bit_frames_are_reduced_without_a_full_size_copy() -> None:
    outcome = _cost('CIFAR10_PREPROCESSING', 8192, 8192, _RAW, True, MAX_8K, encoding='mono16')
    assert outcome['error'] is None, outcome
    assert outcome['peak_mb'] < 24, outcome


def test_panorama_for_a_cropping_model_is_cut_before_resizing() -> None:
    """16 x 1,000,000 pixels would resize to 232 x 14.5 M floats (40 GB) before the crop."""
    for node_path in (True, False):
        outcome = _cost('IMAGENET_PREPROCESSING', 16, 1_000_000, _RAW, node_path,
                        encoding='rgb8')
        assert outcome['error'] is None, outcome
        assert outcome['peak_mb'] < 48, outcome


def test_review_png_is_refused_before_decoding_at_the_default_limit() -> None:
    outcome = _cost('CIFAR10_PREPROCESSING', 8000, 8000, _COMPRESSED, True, fmt='PNG')
    assert outcome['error'] == 'ImageFormatError' and 'too large' in outcome['message']
    assert outcome['peak_mb'] < 16, outcome


@pytest.mark.parametrize('fmt, height, width, max_pixels, bound_mb', [
    ('JPEG', 8000, 8000, MAX_8K, 48),       # decoded at 1/8 scale
    ('PNG', 4096, 4096, DEFAULT, 4096 * 4096 * 4 / 2**20 + 24),   # decoded whole: 4 B/pixel
])
def test_compressed_frames_cost_at_most_their_decoded_bitmap(fmt: str, height: int, width: int,
                                                             max_pixels: int | str,
                                                             bound_mb: float) -> None:
    outcome = _cost('CIFAR10_PREPROCESSING', height, width, _COMPRESSED, True, max_pixels,
                    fmt=fmt)
    assert outcome['error'] is None, outcome
    assert outcome['peak_mb'] < bound_mb, outcome
