"""Reading the package's file inputs safely: small text files (skip plans, profiles, accuracy
tables) and the SHA-256 that names a large one (weights, datasets) in caches and records.

Every such file is a few kilobytes. Reading it whole is only safe with a cap (a wrong path can
name a multi-gigabyte file or a device that never ends), and YAML/JSON parsers raise more than
their own error types on absurd content (RecursionError for deep nesting, ValueError for
integers of more than 4300 digits). Here all of that becomes one error of the caller's type
that names the file.
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from pls_perception.errors import PlsError, clip

# Far above any plan, profile or accuracy table the tools write (kilobytes).
MAX_TEXT_BYTES = 16 * 2**20
# YAML aliases reuse nodes: expanded, a kilobyte can describe gigabytes (or loop forever). A
# document is refused when walking it, aliases expanded, visits more values than this.
MAX_YAML_VALUES = 1_000_000
# What parsers raise besides their own errors on absurd but well-formed documents.
_PARSER_ERRORS = (RecursionError, ValueError, OverflowError, MemoryError)


def read_text(path: str | Path, what: str, error: type[PlsError],
              max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of ``path``; ``error`` naming ``what`` and the file on any problem."""
    path = Path(path)
    try:
        with open(path, 'rb') as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise error(f'cannot read {what} {str(path)!r}: {e.strerror or e}') from e
    if len(data) > max_bytes:
        raise error(f'{what} {str(path)!r} is larger than {max_bytes} bytes: not a {what}')
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as e:
        raise error(f'{what} {str(path)!r} is not UTF-8 text: {e}') from e


def load_yaml(path: str | Path, what: str, error: type[PlsError]) -> Any:
    """The parsed YAML document of ``path`` (safe loader), or ``error`` naming the file."""
    text = read_text(path, what, error)
    try:
        doc = yaml.safe_load(text)
    except (yaml.YAMLError, *_PARSER_ERRORS) as e:
        raise error(f'{what} {str(path)!r} is not valid YAML: '
                    f'{clip(_one_line(e), 200)}') from e
    if _expanded_size(doc, MAX_YAML_VALUES) > MAX_YAML_VALUES:
        raise error(f'{what} {str(path)!r} expands to more than {MAX_YAML_VALUES} values '
                    f'(YAML aliases): not a {what}')
    return doc


def sha256_of(path: str | Path) -> str:
    """SHA-256 of a file's bytes, remembered while its size, mtime and inode stay the same
    (weights files are hundreds of MB, and a node start names them more than once)."""
    path = Path(path).resolve()
    stat = path.stat()
    return _sha256_of_version(path, stat.st_size, stat.st_mtime_ns, stat.st_ino)


@functools.lru_cache(maxsize=16)
def _sha256_of_version(path: Path, size: int, mtime_ns: int, inode: int) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def load_json(path: str | Path, what: str, error: type[PlsError]) -> Any:
    """The parsed JSON document of ``path``, or ``error`` naming the file."""
    text = read_text(path, what, error)
    try:
        return json.loads(text)
    except _PARSER_ERRORS as e:     # JSONDecodeError is a ValueError
        raise error(f'{what} {str(path)!r} is not valid JSON: {clip(_one_line(e), 200)}') from e


def _expanded_size(doc: Any, limit: int) -> int:
    """Values in ``doc`` with every alias expanded, counting stops past ``limit``."""
    count, stack = 0, [doc]
    while stack and count <= limit:
        node = stack.pop()
        count += 1
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return count


def _one_line(error: BaseException) -> str:
    return ' '.join(str(error).split()) or type(error).__name__
