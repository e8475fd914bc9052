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
shorter than a row, or data shorter than ``height * step`` raises ``ImageFormatError`` (with the
untrusted encoding or format string clipped to 80 characters).

Cost per frame
--------------
A network looks at a few hundred pixels a side, so a frame need not be converted at full size.
With ``reduction`` (the node passes its `Preprocessing.reduction`) a frame is box-filtered by
integer factors while it is converted, in integer arithmetic straight from the message buffer
(`box_sum`), so the memory a raw frame costs beyond its message is that of the reduced frame:
bounded by the network input, whatever the frame's size. JPEGs are decoded at 1/2 to 1/8 scale
(DCT scaling, ``draft``) before that. Only PNG must be decoded whole: up to 4 bytes per pixel,
plus 4 if it needs a colour conversion, which ``DEFAULT_MAX_PIXELS`` bounds
(``bench/bench_frame_cost.py`` measures all of this).
"""
from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pls_perception.errors import ImageFormatError, clip

# 4096 x 4096 (16.8 MP): above 4K UHD and 12 MP (4000x3000) cameras. The largest PNG accepted
# then costs its decoded bitmap, 64 MB (twice that if it needs a colour conversion), and under a
# second to decode on a busy 2-core machine (bench/bench_frame_cost.py); raw and JPEG frames
# cost about 5 MB whatever their size.
DEFAULT_MAX_PIXELS = 4096 * 4096
# Box-filter factors (rows, columns) for a frame of (height, width).
Reduction = Callable[[int, int], tuple[int, int]]
# 16-bit samples are scaled in slices of at most this many values (bounded temporaries).
_CHUNK_VALUES = 1 << 20


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


def box_sum(values: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """Sums over ``fy`` x ``fx`` blocks of a (..., H, W, C) array, as uint64.

    The H % fy rows and W % fx columns left over are dropped evenly from both edges. Works on
    any strided view (a message buffer, a BGR or broadcast grey view) without copying it: the
    only allocation is the result. A channel broadcast from one (grey) is summed once.
    """
    *lead, height, width, channels = values.shape
    if channels > 1 and values.strides[-1] == 0:
        summed = box_sum(values[..., :1], fy, fx)
        return np.broadcast_to(summed, (*summed.shape[:-1], channels))
    rows, cols = height // fy, width // fx
    top, left = (height - rows * fy) // 2, (width - cols * fx) // 2
    window = values[..., top:top + rows * fy, left:left + cols * fx, :]
    sums = np.zeros((*lead, rows, cols, channels), np.uint64)
    for i in range(fy):
        band = window[..., i::fy, :, :]
        for j in range(fx):
            np.add(sums, band[..., j::fx, :], out=sums)
    return sums


def _rounded_mean(sums: np.ndarray, divisor: int) -> np.ndarray:
    """round(sums / divisor) as uint8, exactly (integers: no float rounding)."""
    return ((2 * sums + divisor) // (2 * divisor)).astype(np.uint8)


def _factors(reduction: Reduction | None, height: int, width: int) -> tuple[int, int]:
    return (1, 1) if reduction is None else reduction(height, width)


def _check_size(height: int, width: int, max_pixels: int) -> None:
    if height <= 0 or width <= 0:
        raise ImageFormatError(f'image has zero size: got height={height!r}, width={width!r}')
    if height * width > max_pixels:
        raise ImageFormatError(
            f'image too large: {height}x{width} = {height * width} pixels exceeds the limit of '
            f'{max_pixels}; got height={height!r}, width={width!r}')


def image_to_rgb(encoding: str, height: int, width: int, step: int, is_bigendian: bool | int,
                 data: bytes | bytearray | memoryview | np.ndarray, *,
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 reduction: Reduction | None = None) -> np.ndarray:
    """Interpret raw ``sensor_msgs/Image`` fields as an HxWx3 uint8 RGB array.

    For 8-bit encodings the result is a read-only view on ``data`` (no copy), so keep ``data``
    alive and unmodified while the array is in use. With ``reduction`` the frame is first
    box-filtered by the factors it returns for (height, width) (rounded means; a small copy
    when they exceed 1). Raises ``ImageFormatError`` on a malformed frame.
    """
    layout = _LAYOUTS.get(encoding)
    if layout is None:
        raise ImageFormatError(
            f'unsupported encoding: got {clip(repr(encoding))}; supported: '
            f'{", ".join(SUPPORTED_ENCODINGS)}')
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
    # Reduce and scale before mono->RGB broadcasting (1/3 of the work) and without alpha.
    values = stored if layout.channels == 1 else stored[:, :, :3]
    fy, fx = _factors(reduction, height, width)
    if layout.bytes_per_channel == 2:
        stored = _scale_16_to_8(values, fy, fx)
    elif (fy, fx) != (1, 1):
        stored = _rounded_mean(box_sum(values, fy, fx), fy * fx)
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


def _scale_16_to_8(values: np.ndarray, fy: int = 1, fx: int = 1) -> np.ndarray:
    """``round(v * 255 / 65535)`` = ``round(v / 257)`` of each ``fy`` x ``fx`` block mean v.

    In integers, so exact (257 is odd: never a tie). Without reduction the rows are scaled a
    slice at a time into the uint8 result, so the temporaries stay small for any frame.
    """
    if (fy, fx) != (1, 1):
        return _rounded_mean(box_sum(values, fy, fx), fy * fx * 257)
    out = np.empty(values.shape, np.uint8)
    rows = max(1, _CHUNK_VALUES // max(1, values[0].size))
    for start in range(0, len(values), rows):
        out[start:start + rows] = _rounded_mean(
            values[start:start + rows].astype(np.uint32), 257)
    return out


def _compressed_codec(fmt: str) -> str | None:
    """The Pillow format named in a CompressedImage ``format`` string; None = sniff the bytes."""
    # image_transport writes e.g. 'rgb8; jpeg compressed bgr8' or 'png'; older drivers 'jpeg'.
    words = re.findall(r'[a-z0-9]+', fmt.lower())
    if not words:
        return None
    named = [_COMPRESSED_FORMATS[w] for w in words if w in _COMPRESSED_FORMATS]
    if not named:
        raise ImageFormatError(
            f'unsupported compressed format: got {clip(repr(fmt))}; supported: jpeg, png')
    return named[0]


def compressed_to_rgb(fmt: str, data: bytes | bytearray | memoryview | np.ndarray, *,
                      max_pixels: int = DEFAULT_MAX_PIXELS,
                      reduction: Reduction | None = None) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG or PNG) to an HxWx3 uint8 RGB array.

    ``fmt`` is the message's ``format`` field; an empty one lets the decoder sniff the bytes.
    The pixel count is checked from the header *before* decoding (no decompression bombs).
    16-bit grey PNGs are scaled to 8 bits like ``image_to_rgb``; Pillow itself reduces 16-bit
    colour PNGs to 8 bits per channel. With ``reduction`` the image is box-filtered by the
    factors it returns for (height, width), a JPEG decoded at reduced scale first. Raises
    ``ImageFormatError``.
    """
    from PIL import Image, UnidentifiedImageError

    codec = _compressed_codec(fmt)
    raw = bytes(data)
    if not raw:
        raise ImageFormatError(f'compressed image has no data (format {clip(repr(fmt))})')
    formats = [codec] if codec else sorted(set(_COMPRESSED_FORMATS.values()))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=formats)
            width, height = image.size
            _check_size(height, width, max_pixels)
            fy, fx = _factors(reduction, height, width)
            if (fy, fx) != (1, 1) and image.format == 'JPEG':
                image.draft('RGB', (width // fx, height // fy))   # at least the reduced size
            image.load()
    except ImageFormatError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
            Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageFormatError(
            f'cannot decode compressed image as {"/".join(formats)} (format {clip(repr(fmt))}, '
            f'{len(raw)} bytes): {e}') from e
    fy, fx = _factors(reduction, image.height, image.width)       # of the decoded size
    if image.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
        mono = np.asarray(image)
        if image.mode == 'I':
            mono = np.clip(mono, 0, 65535).astype(np.uint16)
        mono8 = _scale_16_to_8(mono[:, :, None], fy, fx)
        return np.repeat(mono8, 3, axis=2)
    if image.mode != 'RGB':
        image = image.convert('RGB')
    if (fy, fx) != (1, 1):
        image = image.reduce((fx, fy))
    return np.asarray(image)
