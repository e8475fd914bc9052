"""Dataset loading: the shared CIFAR-10 tarball (streamed) and image folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_cifar import jpeg_bytes, make_tar, make_tiny_cifar

from pls_perception import paths
from pls_perception.io.datasets import CIFAR10_CLASSES, load_cifar10, load_image_folder

SHARED_TAR = paths.cifar10_tar()
needs_shared = pytest.mark.skipif(not SHARED_TAR.is_file(),
                                  reason=f'shared CIFAR-10 tarball missing: {SHARED_TAR}')


@pytest.fixture()
def tiny_tar(tmp_path: Path) -> Path:
    return make_tiny_cifar(tmp_path / 'tiny.tar.gz')


def test_tiny_tar_order_and_selection(tiny_tar: Path) -> None:
    images, labels, names = load_cifar10(tiny_tar)
    assert images.shape == (9, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert labels.tolist() == [0, 0, 0, 3, 3, 3, 8, 8, 8]
    assert names[:3] == ['test/airplane/0000.jpg', 'test/airplane/0001.jpg',
                         'test/airplane/0002.jpg']
    assert abs(int(images[0, 5, 5, 2]) - 200) < 10   # test split, not train
    assert abs(int(images[1, 5, 5, 1]) - 80) < 10    # 0001.jpg
    _, labels, names = load_cifar10(tiny_tar, split='train', per_class=1)
    assert labels.tolist() == [0, 3, 8]
    assert all(n.startswith('train/') and n.endswith('0000.jpg') for n in names)
    _, labels, _ = load_cifar10(tiny_tar, per_class=2, limit=3)
    assert labels.tolist() == [0, 0, 3]
    assert load_cifar10(tiny_tar, limit=4)[1].tolist() == [0, 0, 0, 3]


@pytest.mark.parametrize(('kwargs', 'match'), [
    ({'split': 'val'}, 'split'), ({'limit': 0}, 'limit'), ({'per_class': -1}, 'per_class'),
    ({'limit': 2.5}, 'limit')])
def test_bad_arguments(tiny_tar: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_cifar10(tiny_tar, **kwargs)


def test_bad_tarballs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match='not found'):
        load_cifar10(tmp_path / 'missing.tar.gz')
    odd = make_tar(tmp_path / 'odd.tar.gz', [('test/unicorn/0000.jpg', jpeg_bytes((1, 2, 3)))])
    with pytest.raises(ValueError, match='unicorn'):
        load_cifar10(odd)
    corrupt = make_tar(tmp_path / 'corrupt.tar.gz', [('test/cat/0000.jpg', b'not a jpeg')])
    with pytest.raises(ValueError, match='0000.jpg: cannot decode'):
        load_cifar10(corrupt)
    empty = make_tar(tmp_path / 'empty.tar.gz', [('train/cat/0000.jpg', jpeg_bytes((1, 2, 3)))])
    with pytest.raises(ValueError, match='no images'):
        load_cifar10(empty)


@needs_shared
def test_shared_test_split() -> None:
    images, labels, names = load_cifar10(per_class=3)
    assert images.shape == (30, 32, 32, 3)
    assert labels.tolist() == [c for c in range(10) for _ in range(3)]
    assert names[0] == 'test/airplane/0000.jpg' and names[-1] == 'test/truck/0002.jpg'
    again, _, _ = load_cifar10(limit=3)
    np.testing.assert_array_equal(again, images[:3])
    assert 60 < images.mean() < 200


def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', (size[1], size[0]), color).save(path)


def test_image_folder_layout(tmp_path: Path) -> None:
    _png(tmp_path / 'dog' / 'b.png', (10, 20, 30))
    _png(tmp_path / 'dog' / 'a.png', (40, 50, 60))
    _png(tmp_path / 'cat' / 'z.png', (70, 80, 90))
    (tmp_path / 'cat' / 'notes.txt').write_text('ignored')
    images, labels, names = load_image_folder(tmp_path)
    assert names == ['cat/z.png', 'dog/a.png', 'dog/b.png']
    assert labels.tolist() == [0, 1, 1]
    assert images.shape == (3, 8, 6, 3)
    assert images[1, 0, 0].tolist() == [40, 50, 60]
    _, labels, _ = load_image_folder(tmp_path, class_names=CIFAR10_CLASSES, per_class=1)
    assert labels.tolist() == [3, 5]
    with pytest.raises(ValueError, match='not among the class names'):
        load_image_folder(tmp_path, class_names=('cat', 'bird'))


def test_flat_folder_and_sizes(tmp_path: Path) -> None:
    _png(tmp_path / 'one.png', (1, 2, 3), size=(8, 6))
    _png(tmp_path / 'two.png', (4, 5, 6), size=(16, 12))
    with pytest.raises(ValueError, match='differ in size'):
        load_image_folder(tmp_path)
    images, labels, names = load_image_folder(tmp_path, size=(4, 4))
    assert images.shape == (2, 4, 4, 3) and labels.tolist() == [-1, -1]
    assert names == ['one.png', 'two.png']
    assert load_image_folder(tmp_path, size=(4, 4), limit=1)[2] == ['one.png']


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / 'missing')
    with pytest.raises(ValueError, match='no images'):
        load_image_folder(tmp_path)
