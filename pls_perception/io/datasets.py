"""Labelled image sets as uint8 arrays: the shared CIFAR-10 JPEG tarball and image folders.

The tarball is streamed with `tarfile` (no extraction to disk; the test split loads in about a
second) and JPEGs are decoded with PIL. Order is deterministic: by class, then file name, so a
slice (``limit``) or a per-class subset (``per_class``) is the same on every machine.
"""
from __future__ import annotations

import io
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from pls_perception import paths
from pls_perception.io.image_conversion import DEFAULT_MAX_PIXELS

CIFAR10_CLASSES: tuple[str, ...] = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog',
                                    'frog', 'horse', 'ship', 'truck')
SPLITS = ('train', 'test')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')

Dataset = tuple[np.ndarray, np.ndarray, list[str]]
# Checked before reading or decoding: a tar member or image header may claim gigabytes.
MAX_IMAGE_BYTES = 64 * 2**20


def _decode(data: bytes, name: str, size: tuple[int, int] | None = None) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > DEFAULT_MAX_PIXELS:
                raise ValueError(f'{image.width}x{image.height} pixels, more than '
                                 f'{DEFAULT_MAX_PIXELS}')
            image = image.convert('RGB')
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f'{name}: cannot decode image: {e}') from e


def _check_counts(limit: int | None, per_class: int | None) -> None:
    for label, value in (('limit', limit), ('per_class', per_class)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ValueError(f'{label} must be a positive int or None, got {value!r}')


def _select(items: list[tuple[int, str]], limit: int | None,
            per_class: int | None) -> list[tuple[int, str]]:
    """Sort by (label, name); keep the first ``per_class`` of each label, then ``limit``."""
    items = sorted(items)
    if per_class is not None:
        seen: dict[int, int] = defaultdict(int)
        kept = []
        for label, name in items:
            if seen[label] < per_class:
                seen[label] += 1
                kept.append((label, name))
        items = kept
    return items[:limit] if limit is not None else items


def _stack(images: list[np.ndarray], labels: list[int], names: list[str]) -> Dataset:
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(f'images differ in size ({sorted(shapes)[:3]} ...); pass size=(H, W)')
    array = np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8)
    return array, np.asarray(labels, dtype=np.int64), names


def load_cifar10(tar_path: str | Path | None = None, split: str = 'test', limit: int | None = None,
                 per_class: int | None = None) -> Dataset:
    """Images (N,32,32,3 uint8 RGB), labels (N, int64) and member names of one split.

    ``tar_path`` defaults to the shared copy (`paths.cifar10_tar()`). ``per_class`` keeps the
    first k images of each class, ``limit`` then keeps the first N (by class, then file name).
    """
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    _check_counts(limit, per_class)
    path = Path(tar_path) if tar_path is not None else paths.cifar10_tar()
    if not path.is_file():
        raise FileNotFoundError(f'CIFAR-10 tarball not found: {path}')
    class_index = {name: i for i, name in enumerate(CIFAR10_CLASSES)}
    data: dict[str, bytes] = {}
    items: list[tuple[int, str]] = []
    with tarfile.open(path, 'r|gz') as archive:
        for member in archive:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] != split:
                continue
            if parts[-2] not in class_index:
                raise ValueError(f'{path}: member {member.name!r} is not in a CIFAR-10 class '
                                 f'folder {CIFAR10_CLASSES}')
            if member.size > MAX_IMAGE_BYTES:
                raise ValueError(f'{path}: member {member.name!r} has {member.size} bytes, '
                                 f'more than an image may ({MAX_IMAGE_BYTES})')
            data[member.name] = archive.extractfile(member).read()
            items.append((class_index[parts[-2]], member.name))
    if not items:
        raise ValueError(f'{path}: no images under {split}/<class>/')
    chosen = _select(items, limit, per_class)
    images = [_decode(data[name], f'{path}:{name}') for _, name in chosen]
    return _stack(images, [label for label, _ in chosen], [name for _, name in chosen])


def load_image_folder(path: str | Path, size: tuple[int, int] | None = None,
                      limit: int | None = None, per_class: int | None = None,
                      class_names: tuple[str, ...] | None = None) -> Dataset:
    """Images of an ImageFolder tree (``<class>/<image>``) or of a flat folder (labels -1).

    Labels are the index of the folder name in ``class_names`` (default: the sorted folder
    names, torchvision's convention). Images are resized to ``size`` (H, W) when given; without
    it all images must have the same size. Names are paths relative to ``path``.
    """
    _check_counts(limit, per_class)
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f'image folder not found: {root}')
    class_dirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    items: list[tuple[int, str]] = []
    if class_dirs:
        names = tuple(class_names) if class_names is not None else tuple(class_dirs)
        unknown = [d for d in class_dirs if d not in names]
        if unknown:
            raise ValueError(f'{root}: class folders {unknown} are not among the class names '
                             f'{names}')
        for directory in class_dirs:
            items += [(names.index(directory), f'{directory}/{f.name}')
                      for f in (root / directory).iterdir()
                      if f.suffix.lower() in IMAGE_EXTENSIONS]
    else:
        items = [(-1, f.name) for f in root.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS]
    if not items:
        raise ValueError(f'{root}: no images ({", ".join(IMAGE_EXTENSIONS)}) found')
    chosen = _select(items, limit, per_class)
    images = [_decode((root / name).read_bytes(), str(root / name), size) for _, name in chosen]
    return _stack(images, [label for label, _ in chosen], [name for _, name in chosen])
