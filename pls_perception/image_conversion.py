"""Camera frames to HxWx3 uint8 RGB arrays, without cv_bridge.

The distro cv_bridge cannot be installed here and the PyPI ``cv-bridge`` is broken with numpy 2,
so the node converts ``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` payloads itself.
The functions take the message *fields* (not the message) so this module stays ROS-free and is
unit-tested without rclpy.

Semantics follow cv_bridge's ``imgmsg_to_cv2(msg, 'rgb8')``:

- ``step`` is the row length in bytes and may include padding; ``is_bigendian`` selects the byte
  order of 16-bit samples (8-bit encodings ignore it).
- 8-bit encodings come back as zero-copy, read-only views on the message buffer (channel swaps,
  alpha drops and mono->RGB broadcasting are done with strides, not copies).
- 16-bit encodings are scaled to 8 bits like OpenCV's ``convertTo(alpha=255/65535)``:
  ``round(v * 255 / 65535)``; this necessarily copies.

Accepted encodings: see ``SUPPORTED_ENCODINGS``. Anything else, a zero or absurd size, a ``step``
shorter than a row, or data shorter than ``height * step`` raises ``ImageFormatError``.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np

from pls_perception.errors import ImageFormatError

# 8K x 8K: far beyond any camera the node is meant for, small enough to refuse memory bombs.
DEFAULT_MAX_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class _Layout:
    """How one encoding stores a pixel: channel count, bytes per channel, RGB channel order."""

    channels: int
    bytes_per_channel: int
    rgb_index: tuple[int, int, int]  # which stored channel holds R, G, B


_LAYOUTS: dict[str, _Layout] = {
    'rgb8': _Layout(3, 1, (0, 1, 2)),
    'bgr8': _Layout(3, 1, (2, 1, 0)),
    'rgba8': _Layout(4, 1, (0, 1, 2)),
    'bgra8': _Layout(4, 1, (2, 1, 0)),
    'mono8': _Layout(1, 1, (0, 0, 0)),
    'rgb16': _Layout(3, 2, (0, 1, 2)),
    'bgr16': _Layout(3, 2, (2, 1, 0)),
    'rgba16': _Layout(4, 2, (0, 1, 2)),
    'bgra16': _Layout(4, 2, (2, 1, 0)),
    'mono16': _Layout(1, 2, (0, 0, 0)),
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_LAYOUTS)
# CompressedImage.format as written by image_transport ('jpeg', 'bgr8; jpeg compressed bgr8', ...)
_COMPRESSED_FORMATS = {'jpeg': 'JPEG', 'jpg': 'JPEG', 'png': 'PNG'}


def _check_size(height: int, width: int, max_pixels: int) -> None:
    if height <= 0 or width <= 0:
        raise ImageFormatError(f'image has zero size: got height={height!r}, width={width!r}')
    if height * width > max_pixels:
        raise ImageFormatError(
            f'image too large: {height}x{width} = {height * width} pixels exceeds the limit of '
            f'{max_pixels}; got height={height!r}, width={width!r}')


def image_to_rgb(encoding: str, height: int, width: int, step: int, is_bigendian: bool | int,
                 data: bytes | bytearray | memoryview | np.ndarray, *,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Interpret raw ``sensor_msgs/Image`` fields as an HxWx3 uint8 RGB array.

    For 8-bit encodings the result is a read-only view on ``data`` (no copy), so keep ``data``
    alive and unmodified while the array is in use. Raises ``ImageFormatError`` on a malformed
    frame.
    """
    layout = _LAYOUTS.get(encoding)
    if layout is None:
        raise ImageFormatError(
            f'unsupported encoding: got {encoding!r}; supported: {", ".join(SUPPORTED_ENCODINGS)}')
    _check_size(height, width, max_pixels)
    pixel_bytes = layout.channels * layout.bytes_per_channel
    if step < width * pixel_bytes:
        raise ImageFormatError(
            f'step shorter than one row of {width} {encoding} pixels ({width * pixel_bytes} '
            f'bytes): got step={step!r}')
    buffer = memoryview(data).cast('B')
    if buffer.nbytes < height * step:
        raise ImageFormatError(
            f'data shorter than height*step = {height}*{step} = {height * step} bytes: got '
            f'{buffer.nbytes} bytes')
    if layout.bytes_per_channel == 1:
        dtype = np.dtype(np.uint8)
    else:
        dtype = np.dtype('>u2' if is_bigendian else '<u2')
    # A strided view straight onto the message buffer; np.ndarray checks the bounds.
    stored = np.ndarray(shape=(height, width, layout.channels), dtype=dtype, buffer=buffer,
                        strides=(step, pixel_bytes, layout.bytes_per_channel))
    if layout.bytes_per_channel == 2:  # scale before mono->RGB broadcasting: 1/3 of the work
        stored = _scale_16_to_8(stored if layout.channels == 1 else stored[:, :, :3])
    rgb = _select_rgb(stored, layout.rgb_index)
    rgb.flags.writeable = False
    return rgb


def _select_rgb(stored: np.ndarray, rgb_index: tuple[int, int, int]) -> np.ndarray:
    """The R, G, B channels of ``stored`` as a view (basic slicing and broadcasting only)."""
    if stored.shape[2] == 1:
        return np.broadcast_to(stored, (*stored.shape[:2], 3))
    if rgb_index == (0, 1, 2):
        return stored[:, :, :3]
    return stored[:, :, 2::-1]  # (2, 1, 0): BGR -> RGB


def _scale_16_to_8(values: np.ndarray) -> np.ndarray:
    """``round(v * 255 / 65535)`` = ``round(v / 257)``, exactly.

    257 is odd, so v / 257 is never a tie, and it stays >= 0.5/257 away from one, far more than
    float32's rounding error on values <= 65535: float32 multiply-and-truncate is exact here.
    """
    scaled = values.astype(np.float32)
    scaled *= np.float32(1.0 / 257.0)
    scaled += np.float32(0.5)
    return scaled.astype(np.uint8)


def _compressed_codec(fmt: str) -> str | None:
    """The Pillow format named in a CompressedImage ``format`` string; None = sniff the bytes."""
    # image_transport writes e.g. 'rgb8; jpeg compressed bgr8' or 'png'; older drivers 'jpeg'.
    words = re.findall(r'[a-z0-9]+', fmt.lower())
    if not words:
        return None
    named = [_COMPRESSED_FORMATS[w] for w in words if w in _COMPRESSED_FORMATS]
    if not named:
        raise ImageFormatError(
            f'unsupported compressed format: got {fmt!r}; supported: jpeg, png')
    return named[0]


def compressed_to_rgb(fmt: str, data: bytes | bytearray | memoryview | np.ndarray, *,
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG or PNG) to an HxWx3 uint8 RGB array.

    ``fmt`` is the message's ``format`` field; an empty one lets the decoder sniff the bytes.
    The pixel count is checked from the header *before* decoding (no decompression bombs).
    16-bit grey PNGs are scaled to 8 bits like ``image_to_rgb``; Pillow itself reduces 16-bit
    colour PNGs to 8 bits per channel. Raises ``ImageFormatError``.
    """
    from PIL import Image, UnidentifiedImageError

    codec = _compressed_codec(fmt)
    raw = bytes(data)
    if not raw:
        raise ImageFormatError(f'compressed image has no data (format {fmt!r})')
    formats = [codec] if codec else sorted(set(_COMPRESSED_FORMATS.values()))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=formats)
            width, height = image.size
            _check_size(height, width, max_pixels)
            image.load()
    except ImageFormatError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
            Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageFormatError(
            f'cannot decode compressed image as {"/".join(formats)} (format {fmt!r}, '
            f'{len(raw)} bytes): {e}') from e
    if image.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
        mono = np.asarray(image).astype(np.uint32)
        mono8 = _scale_16_to_8(np.clip(mono, 0, 65535))
        return np.repeat(mono8[:, :, None], 3, axis=2)
    return np.asarray(image.convert('RGB'))
