"""sha256_of: the digest of the bytes on disk, remembered only while the file stays the same."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pls_perception.io.file_inputs import sha256_of


def test_sha256_follows_the_file(tmp_path: Path) -> None:
    path = tmp_path / 'weights.bin'
    path.write_bytes(b'a' * (3 << 20))
    assert sha256_of(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_of(str(path)) == sha256_of(tmp_path / '.' / 'weights.bin')
    # rewritten in place, same size and inode: the write's new mtime tells it apart (set
    # explicitly, so a coarse filesystem clock cannot hide it)
    stat = path.stat()
    with open(path, 'r+b') as f:
        f.write(b'b')
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert sha256_of(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    replaced = tmp_path / 'new.bin'
    replaced.write_bytes(b'c' * 10)
    os.replace(replaced, path)           # a new file under the old name
    assert sha256_of(path) == hashlib.sha256(b'c' * 10).hexdigest()
