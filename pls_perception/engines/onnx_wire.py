"""The initializers of an ONNX model read, and pointed elsewhere, in its protobuf wire format.

A warm start checks every cached graph's initializers (each must be a placeholder into the
weight store) before ONNX Runtime loads it, and an int8 graph's placeholders are pointed at the
weight files themselves so that ONNX Runtime maps them (`with_external_data`). Importing ``onnx``
for that costs 0.6-1.1 s here (its ``ml_dtypes`` extension), more than a third of a warm start
that serves cached graphs, while the few fields involved take a short walk over the wire format
(protobuf encoding: https://protobuf.dev/programming-guides/encoding/).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

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
    for field, wire, value, _ in _spans(data):
        yield field, wire, value


def _spans(data: memoryview) -> Iterator[tuple[int, int, int | memoryview, memoryview]]:
    """`_fields`, each with the bytes that encode it (key included)."""
    i = 0
    while i < len(data):
        start = i
        key, i = _varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, i = _varint(data, i)
            yield field, wire, value, data[start:i]
            continue
        if wire == _LENGTH:
            size, i = _varint(data, i)
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
        else:
            raise ValueError(f'unsupported wire type {wire} (field {field})')
        if field == 0 or i + size > len(data):
            raise ValueError(f'field {field} runs past the end of its message')
        yield field, wire, data[i:i + size], data[start:i + size]
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


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | _LENGTH) + _encode_varint(len(payload)) + payload


def _rewritten(data: memoryview, rewrite: Mapping[int, Callable[[memoryview], bytes]]) -> bytes:
    """``data`` with each length-delimited field numbered in ``rewrite`` replaced by what its
    function makes of it; every other field is copied as it is."""
    out = bytearray()
    for field, wire, value, span in _spans(data):
        if field in rewrite and wire == _LENGTH:
            out += _length_field(field, rewrite[field](value))  # type: ignore[arg-type]
        else:
            out += span
    return bytes(out)


def with_external_data(model: bytes, locations: Mapping[str, tuple[str, int, int]]) -> bytes:
    """``model`` with the external data of every initializer that has some (subgraphs'
    included) pointed at ``locations[name]`` = (file, offset, length). ValueError if one is not
    in ``locations``: it would keep pointing where it did."""
    missing: list[str] = []

    def tensor(data: memoryview) -> bytes:
        fields = list(_spans(data))
        if not any(f == _TENSOR_EXTERNAL for f, *_ in fields):
            return bytes(data)
        name = next((_text(v) for f, w, v, _ in fields  # type: ignore[arg-type]
                     if f == _TENSOR_NAME and w == _LENGTH), '')
        if name not in locations:
            missing.append(name)
            return bytes(data)
        file, offset, length = locations[name]
        kept = b''.join(bytes(span) for f, _, _, span in fields if f != _TENSOR_EXTERNAL)
        return kept + b''.join(
            _length_field(_TENSOR_EXTERNAL, _length_field(_ENTRY_KEY, k.encode())
                          + _length_field(_ENTRY_VALUE, v.encode()))
            for k, v in (('location', file), ('offset', str(offset)), ('length', str(length))))

    def graph(data: memoryview, depth: int = 0) -> bytes:
        if depth > _MAX_GRAPH_DEPTH:
            raise ValueError(f'graphs nested deeper than {_MAX_GRAPH_DEPTH}')
        subgraph = lambda g: graph(g, depth + 1)   # noqa: E731
        attribute = lambda a: _rewritten(a, {_ATTRIBUTE_GRAPH: subgraph,    # noqa: E731
                                             _ATTRIBUTE_GRAPHS: subgraph})
        node = lambda n: _rewritten(n, {_NODE_ATTRIBUTE: attribute})       # noqa: E731
        return _rewritten(data, {_GRAPH_INITIALIZER: tensor, _GRAPH_NODE: node})

    rewritten = _rewritten(memoryview(model), {_MODEL_GRAPH: graph})
    if missing:
        raise ValueError(f'{len(missing)} external initializers have no new location, '
                         f'e.g. {missing[0][:80]!r}')
    return rewritten
