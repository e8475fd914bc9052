"""Small sysfs helpers shared by the cpufreq and Jetson devfreq backends.

Reads and writes translate OSError into NotSupported / PermissionDenied (``raise ... from e``),
and :class:`MinMaxLimits` clamps a min/max pair to one value in an order the kernel accepts
(it rejects min > max) and restores the original pair.
"""
from __future__ import annotations

import os
from pathlib import Path

from pls_perception.dvfs.base import translate_os_error


def resolve(sysfs_root: str | Path, absolute: str) -> Path:
    """``absolute`` (e.g. '/sys/devices/...') under ``sysfs_root`` (a fake tree in tests)."""
    return Path(sysfs_root) / absolute.lstrip('/')


def read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as e:
        raise translate_os_error(e, str(path)) from e


def read_int(path: Path) -> int:
    text = read_text(path)
    try:
        return int(text)
    except ValueError as e:
        raise translate_os_error(OSError(f'expected an integer, got {text!r}'), str(path)) from e


def write_text(path: Path, value: str) -> None:
    try:
        if not path.exists():                 # never create a file the kernel did not offer
            raise FileNotFoundError(2, 'No such file or directory', str(path))
        with open(path, 'w') as fh:           # O_TRUNC, like `echo value > file`
            fh.write(value)
    except OSError as e:
        raise translate_os_error(e, str(path)) from e


class MinMaxLimits:
    """A (min, max) pair of sysfs files in one unit; remembers the first values it overwrote."""

    def __init__(self, min_path: Path, max_path: Path) -> None:
        self.min_path, self.max_path = min_path, max_path
        self.original: tuple[int, int] | None = None

    def writable(self) -> bool:
        return os.access(self.min_path, os.W_OK) and os.access(self.max_path, os.W_OK)

    def read(self) -> tuple[int, int]:
        return read_int(self.min_path), read_int(self.max_path)

    def _write_pair(self, lo: int, hi: int) -> None:
        cur_lo, _ = self.read()
        if lo > cur_lo:                         # raising: max first so min never exceeds it
            write_text(self.max_path, str(hi))
            write_text(self.min_path, str(lo))
        else:
            write_text(self.min_path, str(lo))
            write_text(self.max_path, str(hi))

    def clamp(self, value: int) -> None:
        if self.original is None:
            self.original = self.read()
        self._write_pair(value, value)

    def restore(self) -> None:
        if self.original is not None:
            self._write_pair(*self.original)
            self.original = None
