"""image_conversion: every encoding, padding, endianness, zero-copy views and malformed input."""
from __future__ import annotations

import array
import io

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from pls_perception.errors import ImageFormatError
from pls_perception.io.image_conversion import SUPPORTED_ENCODINGS, compressed_to_rgb, image_to_rgb

EIGHT_BIT = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8')
SIXTEEN_BIT = ('rgb16', 'bgr16', 'rgba16', 'bgra16', 'mono16')


def _random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _grey(rgb: np.ndarray) -> np.ndarray:
    """The single channel a mono test image stores (its R channel, replicated on the way back)."""
    return rgb[:, :, 0]


def _encode(rgb: np.ndarray, encoding: str, padding: int = 0,
            bigendian: bool = False) -> tuple[bytes, int]:
    """Serialise ``rgb`` the way a camera driver would: (data, step).

    16-bit encodings store ``v * 257`` so the exact 8-bit value comes back.
    """
    height, width, _ = rgb.shape
    alpha = np.full((height, width, 1), 77, dtype=np.uint8)
    channels = {
        'rgb': rgb, 'bgr': rgb[:, :, ::-1],
        'rgba': np.concatenate([rgb, alpha], axis=2),
        'bgra': np.concatenate([rgb[:, :, ::-1], alpha], axis=2),
        'mono': _grey(rgb)[:, :, None],
    }[encoding.rstrip('0123456789')]
    if encoding.endswith('16'):
        dtype = '>u2' if bigendian else '<u2'
        pixels = (channels.astype(np.uint32) * 257).astype(dtype)
    else:
        pixels = channels.astype(np.uint8)
    rows = pixels.reshape(height, -1).view(np.uint8)
    padded = np.concatenate(
        [rows, np.full((height, padding), 0xAB, dtype=np.uint8)], axis=1)
    return padded.tobytes(), padded.shape[1]


def _expected(rgb: np.ndarray, encoding: str) -> np.ndarray:
    if encoding.startswith('mono'):
        return np.repeat(_grey(rgb)[:, :, None], 3, axis=2)
    return rgb


def test_supported_encodings_are_documented_set() -> None:
    assert set(SUPPORTED_ENCODINGS) == set(EIGHT_BIT) | set(SIXTEEN_BIT)


@pytest.mark.parametrize('encoding', SUPPORTED_ENCODINGS)
@pytest.mark.parametrize('padding', [0, 1, 3, 64])
@pytest.mark.parametrize('bigendian', [False, True])
def test_round_trip_every_encoding_with_padding(encoding: str, padding: int,
                                                bigendian: bool) -> None:
    rgb = _random_rgb(5, 7, seed=padding)
    data, step = _encode(rgb, encoding, padding, bigendian)
    out = image_to_rgb(encoding, 5, 7, step, bigendian, data)
    assert out.shape == (5, 7, 3)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, _expected(rgb, encoding))


@pytest.mark.parametrize('encoding', EIGHT_BIT)
def test_eight_bit_results_are_zero_copy_read_only_views(encoding: str) -> None:
    rgb = _random_rgb(4, 6)
    data, step = _encode(rgb, encoding, padding=2)
    buffer = bytearray(data)  # writable, so a copy would not be forced read-only by accident
    out = image_to_rgb(encoding, 4, 6, step, False, buffer)
    assert np.shares_memory(out, np.frombuffer(buffer, dtype=np.uint8))
    assert not out.flags.writeable
    buffer[0] ^= 0xFF  # the view follows the buffer: proof that nothing was copied
    assert out[0, 0].tolist() != _expected(rgb, encoding)[0, 0].tolist()


def test_accepts_rclpy_array_and_numpy_buffers() -> None:
    rgb = _random_rgb(3, 4)
    data, step = _encode(rgb, 'rgb8')
    from_array = image_to_rgb('rgb8', 3, 4, step, False, array.array('B', data))
    from_numpy = image_to_rgb('rgb8', 3, 4, step, False, np.frombuffer(data, np.uint8))
    np.testing.assert_array_equal(from_array, rgb)
    np.testing.assert_array_equal(from_numpy, rgb)


def test_sixteen_bit_scaling_rounds_like_opencv_convert_to_for_every_value() -> None:
    values = np.arange(65536, dtype='<u2')
    out = image_to_rgb('mono16', 1, values.size, values.size * 2, False, values.tobytes())
    expected = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out[0, :, 0], expected)
    colour = image_to_rgb('rgb16', 1, values.size // 3, values.size // 3 * 6, False,
                          values[: values.size // 3 * 3].tobytes())
    np.testing.assert_array_equal(colour.reshape(-1), expected[: values.size // 3 * 3])


def test_sixteen_bit_endianness_is_honoured() -> None:
    value = np.array([0x12FF], dtype='>u2')  # big-endian bytes 12 FF; little-endian reads FF12
    big = image_to_rgb('mono16', 1, 1, 2, True, value.tobytes())
    little = image_to_rgb('mono16', 1, 1, 2, False, value.tobytes())
    assert big[0, 0, 0] == round(0x12FF * 255 / 65535)
    assert little[0, 0, 0] == round(0xFF12 * 255 / 65535)


def test_odd_step_sixteen_bit_rows_are_read_unaligned() -> None:
    rgb = _random_rgb(3, 2, seed=5)
    data, step = _encode(rgb, 'rgb16', padding=1)
    assert step % 2 == 1
    np.testing.assert_array_equal(image_to_rgb('rgb16', 3, 2, step, False, data), rgb)


def test_extra_trailing_data_is_tolerated_like_cv_bridge() -> None:
    rgb = _random_rgb(2, 2)
    data, step = _encode(rgb, 'rgb8')
    np.testing.assert_array_equal(image_to_rgb('rgb8', 2, 2, step, 0, data + b'\0' * 9), rgb)


@settings(max_examples=60, deadline=None)
@given(height=st.integers(1, 9), width=st.integers(1, 9), padding=st.integers(0, 9),
       encoding=st.sampled_from(SUPPORTED_ENCODINGS), bigendian=st.booleans(),
       seed=st.integers(0, 2**16))
def test_round_trip_property(height: int, width: int, padding: int, encoding: str,
                             bigendian: bool, seed: int) -> None:
    rgb = _random_rgb(height, width, seed)
    data, step = _encode(rgb, encoding, padding, bigendian)
    out = image_to_rgb(encoding, height, width, step, bigendian, data)
    np.testing.assert_array_equal(out, _expected(rgb, encoding))


@pytest.mark.parametrize(('encoding', 'height', 'width', 'step', 'n_bytes', 'match'), [
    ('yuv422', 2, 2, 4, 8, 'unsupported encoding'),
    ('', 2, 2, 6, 12, 'unsupported encoding'),
    ('RGB8', 2, 2, 6, 12, 'unsupported encoding'),
    ('rgb8', 0, 2, 6, 0, 'zero size'),
    ('rgb8', 2, 0, 0, 0, 'zero size'),
    ('rgb8', -1, 2, 6, 0, 'zero size'),
    ('rgb8', 2, 2, 6, 11, 'data shorter'),
    ('rgb8', 2, 2, 8, 12, 'data shorter'),  # padding promised by step but missing
    ('rgb8', 2, 2, 5, 12, 'step shorter'),
    ('mono16', 2, 2, 3, 12, 'step shorter'),
    ('rgb8', 100_000, 100_000, 300_000, 16, 'too large'),
])
def test_malformed_frames_raise_image_format_error(encoding: str, height: int, width: int,
                                                   step: int, n_bytes: int, match: str) -> None:
    with pytest.raises(ImageFormatError, match=match):
        image_to_rgb(encoding, height, width, step, False, bytes(n_bytes))


def test_max_pixels_is_configurable() -> None:
    data, step = _encode(_random_rgb(4, 4), 'rgb8')
    with pytest.raises(ImageFormatError, match='too large'):
        image_to_rgb('rgb8', 4, 4, step, False, data, max_pixels=15)
    assert image_to_rgb('rgb8', 4, 4, step, False, data, max_pixels=16).shape == (4, 4, 3)


def test_error_messages_show_the_bad_value() -> None:
    with pytest.raises(ImageFormatError, match="'yuv422'"):
        image_to_rgb('yuv422', 1, 1, 2, False, bytes(2))
    with pytest.raises(ImageFormatError, match='got 5 bytes'):
        image_to_rgb('rgb8', 2, 1, 3, False, bytes(5))


def _compress(rgb: np.ndarray, pil_format: str, **save_kw: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format=pil_format, **save_kw)
    return out.getvalue()


@pytest.mark.parametrize('fmt', ['png', 'PNG', 'bgr8; png compressed bgr8', 'rgb8; png',
                                 ''])
def test_png_is_lossless_for_every_format_spelling(fmt: str) -> None:
    rgb = _random_rgb(6, 5)
    out = compressed_to_rgb(fmt, _compress(rgb, 'PNG'))
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize('fmt', ['jpeg', 'jpg', 'rgb8; jpeg compressed bgr8', ''])
def test_jpeg_decodes_like_pillow(fmt: str) -> None:
    ramp = np.arange(16, dtype=np.uint8) * 16  # smooth, so JPEG keeps it close
    rgb = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 255 - ramp[:, None]), axis=2)
    data = _compress(rgb, 'JPEG', quality=95)
    reference = np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))
    out = compressed_to_rgb(fmt, array.array('B', data))
    np.testing.assert_array_equal(out, reference)
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 4  # still the image


def test_compressed_grey_and_rgba_become_rgb() -> None:
    grey = _random_rgb(4, 4)[:, :, 0]
    out = compressed_to_rgb('png', _compress(grey, 'PNG'))
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))
    rgba = np.concatenate([_random_rgb(4, 4), np.full((4, 4, 1), 9, np.uint8)], axis=2)
    np.testing.assert_array_equal(compressed_to_rgb('png', _compress(rgba, 'PNG')), rgba[..., :3])


def test_compressed_sixteen_bit_grey_png_is_scaled() -> None:
    values = np.array([[0, 257, 65535, 32767]], dtype=np.uint16)
    out = compressed_to_rgb('png', _compress(values, 'PNG'))
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 255, 127])
    assert out.shape == (1, 4, 3)


@pytest.mark.parametrize(('fmt', 'data', 'match'), [
    ('tiff', b'II*\0', 'unsupported compressed format'),
    ('rgb8; theora compressed', b'xx', 'unsupported compressed format'),
    ('jpeg', b'', 'no data'),
    ('jpeg', b'not an image at all', 'cannot decode'),
    ('', b'not an image at all', 'cannot decode'),
])
def test_malformed_compressed_images_raise(fmt: str, data: bytes, match: str) -> None:
    with pytest.raises(ImageFormatError, match=match):
        compressed_to_rgb(fmt, data)


def test_compressed_format_mismatch_is_rejected() -> None:
    png = _compress(_random_rgb(4, 4), 'PNG')
    with pytest.raises(ImageFormatError, match='JPEG'):
        compressed_to_rgb('jpeg', png)


def test_truncated_compressed_image_raises() -> None:
    png = _compress(_random_rgb(32, 32), 'PNG')
    with pytest.raises(ImageFormatError, match='cannot decode'):
        compressed_to_rgb('png', png[: len(png) // 2])


def test_compressed_size_limit_checked_before_decoding() -> None:
    png = _compress(_random_rgb(10, 10), 'PNG')
    with pytest.raises(ImageFormatError, match='too large'):
        compressed_to_rgb('png', png, max_pixels=99)


def test_untrusted_strings_are_clipped_in_errors() -> None:
    """A 1000-character encoding or format string once went whole into every log line."""
    for call in (lambda: image_to_rgb('x' * 1000, 1, 1, 3, False, bytes(3)),
                 lambda: compressed_to_rgb('y' * 1000, b'data'),
                 lambda: compressed_to_rgb('png ' + 'z' * 1000, b'not a png')):
        with pytest.raises(ImageFormatError, match='more characters') as info:
            call()
        assert len(str(info.value)) < 300


# ------------------------------------------------------------------ reduction while converting
def _block_means(values: np.ndarray, fy: int, fx: int, divisor: int = 1) -> np.ndarray:
    """Reference: round(mean / divisor) of each block, remainder split evenly (float64)."""
    h, w = values.shape[:2]
    rows, cols = h // fy, w // fx
    top, left = (h - rows * fy) // 2, (w - cols * fx) // 2
    window = values[top:top + rows * fy, left:left + cols * fx].astype(np.float64)
    means = window.reshape(rows, fy, cols, fx, -1).mean(axis=(1, 3)) / divisor
    return np.floor(means + 0.5).astype(np.uint8)


@pytest.mark.parametrize('encoding', SUPPORTED_ENCODINGS)
@pytest.mark.parametrize('factors', [(1, 1), (2, 3), (5, 4), (7, 1)])
def test_reduction_gives_exact_rounded_block_means(encoding: str,
                                                   factors: tuple[int, int]) -> None:
    rgb = _random_rgb(23, 29, seed=3)
    data, step = _encode(rgb, encoding, padding=3)
    out = image_to_rgb(encoding, 23, 29, step, False, data, reduction=lambda h, w: factors)
    # 16-bit frames store v * 257: the block mean / 257 is the 8-bit block mean, exactly.
    expected = _block_means(_expected(rgb, encoding), *factors)
    assert out.shape == (23 // factors[0], 29 // factors[1], 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_sixteen_bit_reduction_rounds_the_mean_of_raw_values() -> None:
    values = np.random.default_rng(4).integers(0, 65536, (12, 10), dtype=np.uint16)
    out = image_to_rgb('mono16', 12, 10, 20, False, values.astype('<u2').tobytes(),
                       reduction=lambda h, w: (3, 2))
    expected = _block_means(values[:, :, None], 3, 2, divisor=257)
    np.testing.assert_array_equal(out[:, :, :1], expected)


def test_reduction_reads_the_view_without_copying_the_frame() -> None:
    from pls_perception.io.image_conversion import box_sum
    frame = np.random.default_rng(5).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    bgr = frame[:, :, ::-1]
    grey = np.broadcast_to(frame[:, :, :1], frame.shape)
    np.testing.assert_array_equal(box_sum(bgr, 4, 6), box_sum(frame, 4, 6)[:, :, ::-1])
    sums = box_sum(grey, 4, 6)
    assert sums.strides[-1] == 0         # grey summed once, broadcast again
    np.testing.assert_array_equal(sums, box_sum(np.repeat(frame[:, :, :1], 3, axis=2), 4, 6))


def test_compressed_reduction_decodes_a_jpeg_at_reduced_scale() -> None:
    y, x = np.linspace(0, 255, 480)[:, None], np.linspace(0, 255, 640)[None, :]
    rgb = np.stack(np.broadcast_arrays(y, x, 255 - x), axis=2).astype(np.uint8)
    data = _compress(rgb, 'JPEG', quality=95)
    full = compressed_to_rgb('jpeg', data)
    reduced = compressed_to_rgb('jpeg', data, reduction=lambda h, w: (h // 60, w // 80))
    assert full.shape == (480, 640, 3) and reduced.shape == (60, 80, 3)
    reference = _block_means(full, 8, 8)
    assert np.abs(reduced.astype(int) - reference.astype(int)).mean() < 2
    png = compressed_to_rgb('png', _compress(rgb, 'PNG'), reduction=lambda h, w: (8, 8))
    np.testing.assert_array_equal(png, _block_means(rgb, 8, 8))
