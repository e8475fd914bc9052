"""The initializers of an ONNX model read straight from its protobuf wire format.

A warm start checks every cached graph's initializers (each must be a placeholder into the
weight store) before ONNX Runtime loads it. Importing ``onnx`` for that costs 0.6-1.1 s here (its
``ml_dtypes`` extension), more than a third of a warm start that serves cached graphs, while
the few fields the check needs take a short walk over the wire format (protobuf encoding:
https://protobuf.dev/programming-guides/encoding/).
"""
from __future__ import annotations

from collections.abc import Iterator

# Field numbers in onnx.proto: ModelProto.graph, GraphProto.initializer, TensorProto.name,
# TensorProto.external_data, StringStringEntryProto.key / .value, GraphProto.node,
# NodeProto.attribute, AttributeProto.g / .graphs.
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_NAME, _TENSOR_EXTERNAL = 7, 5, 8, 13
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_GRAPH_NODE, _NODE_ATTRIBUTE, _ATTRIBUTE_GRAPH, _ATTRIBUTE_GRAPHS = 1, 5, 6, 11
_MAX_GRAPH_DEPTH = 4        # If branches in the main graph are depth 1
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def _varint(data: memoryview, i: int) -> tuple[int, int]:
    """The varint at ``data[i:]`` and the offset after it."""
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError('truncated or overlong varint')
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def _fields(data: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of each field of one message; ValueError if malformed."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, i = _varint(data, i)
            yield field, wire, value
            continue
        if wire == _LENGTH:
            size, i = _varint(data, i)
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
        else:
            raise ValueError(f'unsupported wire type {wire} (field {field})')
        if field == 0 or i + size > len(data):
            raise ValueError(f'field {field} runs past the end of its message')
        yield field, wire, data[i:i + size]
        i += size


def _submessages(data: memoryview, number: int) -> Iterator[memoryview]:
    for field, wire, value in _fields(data):
        if field == number:
            if wire != _LENGTH:
                raise ValueError(f'field {number} is not a message')
            yield value  # type: ignore[misc]


def _text(data: memoryview) -> str:
    return bytes(data).decode()     # UnicodeDecodeError is a ValueError


def _tensors(graph: memoryview, depth: int = 0) -> Iterator[memoryview]:
    """The initializers of ``graph`` and of the graphs its nodes hold (``If`` branches)."""
    if depth > _MAX_GRAPH_DEPTH:
        raise ValueError(f'graphs nested deeper than {_MAX_GRAPH_DEPTH}')
    yield from _submessages(graph, _GRAPH_INITIALIZER)
    for node in _submessages(graph, _GRAPH_NODE):
        for attribute in _submessages(node, _NODE_ATTRIBUTE):
            for field, wire, value in _fields(attribute):
                if field in (_ATTRIBUTE_GRAPH, _ATTRIBUTE_GRAPHS):
                    if wire != _LENGTH:
                        raise ValueError(f'attribute field {field} is not a graph')
                    yield from _tensors(value, depth + 1)  # type: ignore[arg-type]


def initializers(model: bytes) -> dict[str, dict[str, str]]:
    """Initializer name -> its external_data entries (location, offset, length), of a
    serialized ModelProto, subgraphs' included. ValueError for bytes that are not one, or
    that name an initializer twice."""
    graphs = list(_submessages(memoryview(model), _MODEL_GRAPH))
    if len(graphs) != 1:
        raise ValueError(f'a model has one graph, this has {len(graphs)}')
    found: dict[str, dict[str, str]] = {}
    for tensor in _tensors(graphs[0]):
        name, external = '', {}
        for field, wire, value in _fields(tensor):
            if field == _TENSOR_NAME and wire == _LENGTH:
                name = _text(value)  # type: ignore[arg-type]
            elif field == _TENSOR_EXTERNAL and wire == _LENGTH:
                entry = {f: _text(v) for f, w, v in _fields(value)  # type: ignore[arg-type]
                         if w == _LENGTH}
                external[entry.get(_ENTRY_KEY, '')] = entry.get(_ENTRY_VALUE, '')
        if name in found:       # one of them would go unchecked
            raise ValueError(f'initializer {name[:80]!r} appears twice')
        found[name] = external
    return found
