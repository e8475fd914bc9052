"""Test helper: tiny CIFAR-10-layout tarballs (split/class/NNNN.jpg), built in a temp dir."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

from PIL import Image

from pls_perception.io.datasets import CIFAR10_CLASSES


def jpeg_bytes(color: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new('RGB', (size[1], size[0]), color).save(buffer, format='JPEG', quality=95)
    return buffer.getvalue()


def make_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, 'w:gz') as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def make_tiny_cifar(path: Path, classes: tuple[str, ...] = ('ship', 'airplane', 'cat'),
                    per_class: int = 3) -> Path:
    """Both splits, deliberately unsorted; colour encodes (class, index, split)."""
    members = []
    for split in ('train', 'test'):
        for name in classes:
            for i in reversed(range(per_class)):
                color = (CIFAR10_CLASSES.index(name) * 25, i * 80 % 256,
                         200 if split == 'test' else 0)
                members.append((f'{split}/{name}/{i:04d}.jpg', jpeg_bytes(color)))
    return make_tar(path, members)
