"""Static int8 quantization of a ratio graph (ONNX Runtime QDQ), calibrated on train images.

Why these settings: activations uint8, weights int8 per output channel with ``reduce_range``
(7-bit weights). On x86 CPUs without VNNI the u8 x s8 multiply-add of full-range weights
saturates: measured on the reference ResNet-152 at r = 1 (1,000 test images, 100 calibration
images), full range gave 75.1 % top-1 against 79.5 % in fp32 (86 % same predictions); with
``reduce_range`` 80.0 % (97 %), at about a third of the fp32 latency. MinMax calibration.

A `CalibrationSet` is what the graphs are calibrated on, and its ``key`` goes into the graph
cache key, so graphs calibrated on other images are never reused. The images are read only when
a graph is quantized: a warm start only hashes their source.

`quantize_in_subprocess` runs `quantize` in a child Python: ONNX Runtime's quantizer holds the
GIL for over a second at a time (graph rewriting in Python), which stalled a node's executor
(``get_state`` answered after 1.4 s during an int8 cold start, bench/bench_startup.py).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pls_perception import paths
from pls_perception.errors import BackendError, DatasetError
from pls_perception.io.file_inputs import sha256_of

if TYPE_CHECKING:
    from pls_perception.skipping.preprocessing import Preprocessing

PRECISIONS = ('fp32', 'int8')
# Fewer images give unstable activation ranges; more only lengthen each graph's calibration.
MIN_CALIBRATION_IMAGES = 10
DEFAULT_CALIBRATION_IMAGES = 100
_BATCH = 20
# Longest one graph's quantization may take (ResNet-152: under a minute) before it is killed.
QUANTIZE_TIMEOUT_S = 900.0


class CalibrationSet:
    """The preprocessed images (N x 3 x H x W float32) int8 graphs are calibrated on.

    ``key`` names them in the cache key; ``load`` gives them when a graph is quantized (called
    once, then kept). Checked on load: N >= MIN_CALIBRATION_IMAGES, the network's input size,
    finite values; ValueError naming ``source`` otherwise.
    """

    def __init__(self, key: str, load: Callable[[], np.ndarray], source: str) -> None:
        self.key = key
        self.source = source
        self._load = load
        self._images: np.ndarray | None = None

    @classmethod
    def from_arrays(cls, images: np.ndarray, source: str = 'arrays') -> CalibrationSet:
        """A set of images already in memory, keyed by their contents."""
        images = _checked(images, None, source)
        digest = hashlib.sha256(f'{images.dtype.str}{images.shape}'.encode())
        digest.update(images.data)
        return cls(f'arrays:{digest.hexdigest()}', lambda: images, source)

    @classmethod
    def from_cifar10(cls, n_images: int, preprocessing: Preprocessing,
                     tar_path: str | Path | None = None) -> CalibrationSet:
        """``n_images`` CIFAR-10 train-split images (balanced, deterministic; never the test
        split), keyed by the tarball's SHA-256, the count and the preprocessing.

        DatasetError naming the tarball if it is missing or unreadable.
        """
        if isinstance(n_images, bool) or not isinstance(n_images, int) \
                or n_images < MIN_CALIBRATION_IMAGES:
            raise ValueError(f'int8 calibration: need at least {MIN_CALIBRATION_IMAGES} '
                             f'images, got {n_images!r}')
        tar = Path(tar_path) if tar_path else paths.find_cifar10_tar()
        try:
            tar_sha256 = sha256_of(tar)
        except OSError as e:
            raise DatasetError(f'int8 calibration set {str(tar)!r}: {e.strerror or e}') from e

        def load() -> np.ndarray:
            from pls_perception.skipping.bn_recalibration import calibration_images
            images = calibration_images(n_images, tar)
            if len(images) < n_images:
                raise DatasetError(f'int8 calibration set {str(tar)!r}: only {len(images)} '
                                   f'train images (balanced over classes), {n_images} asked for')
            return preprocessing.to_array(images)

        spec = [tar_sha256, 'train', n_images, repr(preprocessing)]
        return cls('cifar10:' + hashlib.sha256(repr(spec).encode()).hexdigest(), load,
                   f'{tar} (train split, {n_images} images)')

    def images(self, input_size: tuple[int, int]) -> np.ndarray:
        """The calibration images, loaded on first use and checked against ``input_size``."""
        if self._images is None:
            self._images = _checked(self._load(), None, self.source)
        return _checked(self._images, input_size, self.source)


def _checked(images: object, input_size: tuple[int, int] | None, source: str) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[1] != 3:
        shape = getattr(images, 'shape', type(images).__name__)
        raise ValueError(f'int8 calibration set {source}: need N x 3 x H x W images, got {shape}')
    if len(images) < MIN_CALIBRATION_IMAGES:
        raise ValueError(f'int8 calibration set {source}: {len(images)} images, need at least '
                         f'{MIN_CALIBRATION_IMAGES}')
    if input_size is not None and tuple(images.shape[2:]) != tuple(input_size):
        raise ValueError(f'int8 calibration set {source}: images are {images.shape[2]}x'
                         f'{images.shape[3]}, the network takes {input_size[0]}x{input_size[1]}')
    images = np.ascontiguousarray(images, dtype=np.float32)
    if not np.isfinite(images).all():
        raise ValueError(f'int8 calibration set {source}: contains NaN or infinite values')
    return images


def quantize(model_bytes: bytes, images: np.ndarray, input_name: str) -> bytes:
    """The fp32 ONNX model ``model_bytes`` as a static-QDQ int8 model, calibrated on ``images``.

    Runs ONNX Runtime's pre-processing (shape inference, fusions) first, as its quantizer
    expects; ``images`` are fed to ``input_name`` in batches of 20.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = (
                images[i:i + _BATCH] for i in range(0, len(images), _BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    with tempfile.TemporaryDirectory(prefix='pls_int8_') as tmp:
        prepared, out = Path(tmp) / 'prepared.onnx', Path(tmp) / 'int8.onnx'
        quant_pre_process(onnx.load_model_from_string(model_bytes), prepared,
                          skip_symbolic_shape=True)
        quantize_static(prepared, out, _Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
        return out.read_bytes()


def quantize_in_subprocess(model_bytes: bytes, images: np.ndarray, input_name: str,
                           scratch_dir: Path) -> bytes:
    """`quantize` run by a child Python, while this thread waits without the GIL.

    ``scratch_dir`` holds the model, images and result for that moment. BackendError, with
    the last line of the child's stderr, if it fails or runs over QUANTIZE_TIMEOUT_S.
    """
    with tempfile.TemporaryDirectory(prefix='pls_int8_', dir=scratch_dir) as tmp:
        model, batch, out = (Path(tmp) / name for name in ('fp32.onnx', 'images.npy', 'int8.onnx'))
        model.write_bytes(model_bytes)
        np.save(batch, images, allow_pickle=False)
        command = [sys.executable, '-c', f'import {__name__} as q; q.quantize_files()',
                   str(model), str(batch), input_name, str(out)]
        # The child imports this package from where the parent did (a source tree or install).
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, 'PYTHONPATH': os.pathsep.join(
            p for p in (package_root, os.environ.get('PYTHONPATH')) if p)}
        try:
            done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, timeout=QUANTIZE_TIMEOUT_S,
                                  check=False)
        except subprocess.TimeoutExpired as e:
            raise BackendError(f'int8 quantization took over {QUANTIZE_TIMEOUT_S:g} s; '
                               'gave up') from e
        if done.returncode != 0 or not out.is_file():
            lines = done.stderr.decode(errors='replace').strip().splitlines()
            raise BackendError(f'int8 quantization failed (exit {done.returncode}): '
                               + (lines[-1] if lines else 'no message'))
        return out.read_bytes()


def quantize_files() -> None:
    """The child of `quantize_in_subprocess`: argv = model, images (.npy), input name, output.

    Leaves at once if its parent goes (a node stopped mid-build), rather than finish unseen.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(3)
    threading.Thread(target=watch, daemon=True).start()
    model, images, input_name, out = sys.argv[1:]
    Path(out).write_bytes(quantize(Path(model).read_bytes(), np.load(images), input_name))
