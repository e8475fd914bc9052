"""Serving records: what a warm start needs to serve cached ONNX graphs without PyTorch.

Cached graphs are filed under keys derived from the network: the weights' SHA-256, and per keep
ratio the skip masks and the BatchNorm statistics used at them. Deriving them needs the model in
PyTorch, and importing torch + torchvision alone takes 5-8 s and most of a gigabyte. A serving
record remembers what was derived, per configuration: one JSON file named after the
configuration's inputs (`record_key`: weights file, skip policy, BN statistics file, class count,
input size) that holds the weights' preprocessing, class names and stage depths, the policy name,
and per keep ratio the masks and the graph key. The engine adds each ratio it loads or builds; a
later start with the same inputs loads its graphs with ONNX Runtime and numpy alone. A ratio the
record lacks loads the model (and torch) when its graph is looked up.

A record verifies like the rest of the cache: it carries a digest of its contents and its own
key; one that fails is logged, ignored and rewritten by the next start that loads the model.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pls_perception.engines.onnxruntime_engine import (CorruptEntry, content_digest, read_capped,
                                                       warn_corrupt, write_atomic)
from pls_perception.skipping.preprocessing import Preprocessing
from pls_perception.skipping.ratios import Masks, ProportionalPolicy, Ratio, ratio_key

_LOG = logging.getLogger(__name__)
# Bumped when what a record holds, or how its key is made, changes.
RECORD_FORMAT = 1
# Far above a record of every ratio a node could be asked for (~1 kB per ratio).
_MAX_RECORD_BYTES = 4 * 2**20


def record_key(**inputs: Any) -> str:
    """The record name for a configuration's inputs (JSON-able values; files by SHA-256)."""
    return content_digest({'format': RECORD_FORMAT, **inputs})[:32]


@dataclass(frozen=True)
class ServedModel:
    """What serving needs of the loaded weights, short of the network itself."""

    weights_sha256: str
    preprocessing: Preprocessing
    class_names: tuple[str, ...]
    depths: tuple[int, ...]
    policy: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServedModel:
        """ValueError/TypeError/KeyError for anything that is not a record's model entry."""
        prep = data['preprocessing']
        preprocessing = Preprocessing(
            mean=tuple(map(float, prep['mean'])), std=tuple(map(float, prep['std'])),
            input_size=tuple(map(int, prep['input_size'])),
            resize_size=None if prep['resize_size'] is None else int(prep['resize_size']))
        return cls(str(data['weights_sha256']), preprocessing,
                   tuple(str(n) for n in data['class_names']),
                   tuple(int(d) for d in data['depths']), str(data['policy']))


class ServingRecord:
    """Keep ratio -> (skip masks, graph key) for one configuration, persisted as it grows.

    Thread-safe: the engine adds ratios from its build thread while frames look them up.
    """

    def __init__(self, path: Path, model: ServedModel,
                 graphs: dict[str, tuple[Masks, str]] | None = None) -> None:
        self.path = path
        self.model = model
        self._graphs = dict(graphs or {})
        self._lock = threading.Lock()

    @classmethod
    def path_for(cls, cache_dir: Path, key: str) -> Path:
        return cache_dir / 'serving' / f'{key}.json'

    @classmethod
    def load(cls, path: Path) -> ServingRecord | None:
        """The record at ``path``, verified; None if there is none or it fails (logged once)."""
        if not path.exists():
            return None
        try:
            return cls._parse(path, read_capped(path, _MAX_RECORD_BYTES))
        except CorruptEntry as e:
            warn_corrupt(e, 'serving record')
            return None

    @classmethod
    def open(cls, path: Path, model: ServedModel) -> ServingRecord:
        """The record at ``path`` for a model just loaded: what it holds if it describes the
        same model, else a new, empty one (the old one is overwritten on the first add)."""
        record = cls.load(path)
        if record is not None and record.model == model:
            return record
        if record is not None:
            _LOG.warning('serving record %s describes another model; starting it afresh', path)
        return cls(path, model)

    @property
    def ratios(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._graphs)

    def masks(self, ratio: Ratio) -> Masks | None:
        """The masks of ``ratio`` if recorded, or computable without the model (the
        proportional rule); else None. ValueError for an invalid ratio."""
        key = ratio_key(ratio, len(self.model.depths))
        with self._lock:
            found = self._graphs.get(key)
        if found is not None:
            return found[0]
        if self.model.policy == ProportionalPolicy.name:
            return ProportionalPolicy().masks(ratio, self.model.depths)
        return None

    def graph_key(self, masks: Masks) -> str | None:
        """The graph key recorded for ``masks`` (any ratio with those masks), else None."""
        with self._lock:
            return next((key for m, key in self._graphs.values() if m == masks), None)

    def add(self, ratio: Ratio, masks: Masks, graph_key: str) -> None:
        """Record ``ratio``; written at once (temp file + rename) if it is new."""
        entry = (masks, graph_key)
        key = ratio_key(ratio, len(self.model.depths))
        with self._lock:
            if self._graphs.get(key) == entry:
                return
            self._graphs[key] = entry
            # Another process may have added ratios meanwhile: keep them.
            on_disk = ServingRecord.load(self.path)
            if on_disk is not None and on_disk.model == self.model:
                self._graphs = {**on_disk._graphs, **self._graphs}
            body = {'key': self.path.stem, 'model': self.model.to_json(),
                    'graphs': {r: {'masks': [list(m) for m in ms], 'graph_key': g}
                               for r, (ms, g) in sorted(self._graphs.items())}}
            body['digest'] = content_digest(body)
            try:
                write_atomic(self.path, json.dumps(body, indent=1).encode())
            except OSError as e:     # a cache: the next start loads the model instead
                _LOG.warning('could not write the serving record %s: %s', self.path, e)

    @classmethod
    def _parse(cls, path: Path, data: bytes) -> ServingRecord:
        try:
            body = json.loads(data)
        except (ValueError, RecursionError) as e:
            raise CorruptEntry(path, f'not JSON ({e})') from e
        if not isinstance(body, dict) or body.get('digest') != content_digest(
                {k: v for k, v in body.items() if k != 'digest'}):
            raise CorruptEntry(path, 'its contents do not match its digest')
        if body.get('key') != path.stem:
            raise CorruptEntry(path, 'it is filed under another key')
        try:
            model = ServedModel.from_json(body['model'])
            graphs = {r: (tuple(tuple(bool(b) for b in stage) for stage in g['masks']),
                          str(g['graph_key'])) for r, g in body['graphs'].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CorruptEntry(path, f'malformed ({e!r})') from e
        return cls(path, model, graphs)
