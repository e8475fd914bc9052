"""onnx_wire reads a model's initializers as onnx does, and refuses what is not a model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pls_perception.engines.int8_gating import all_graphs
from pls_perception.engines.onnx_wire import initializers, with_external_data
from pls_perception.engines.onnxruntime_engine import OnnxRuntimeEngine
from pls_perception.skipping.network import SkippableResNet


def _as_onnx_reads_it(model: onnx.ModelProto) -> dict[str, dict[str, str]]:
    return {t.name: {e.key: e.value for e in t.external_data}
            for graph in all_graphs(model.graph) for t in graph.initializer}


def _model() -> onnx.ModelProto:
    inline = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), 'inline')
    external = TensorProto(name='w_ext', data_type=TensorProto.FLOAT, dims=[2, 3],
                           data_location=TensorProto.EXTERNAL)
    for key, value in (('location', 'placeholder.bin'), ('offset', '0'), ('length', '24')):
        entry = external.external_data.add()
        entry.key, entry.value = key, value
    node = helper.make_node('Add', ['x', 'inline'], ['y'], name='add_é')   # non-ASCII too
    graph = helper.make_graph(
        [node], 'g', [helper.make_tensor_value_info('x', TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info('y', TensorProto.FLOAT, [2, 3])], [inline, external])
    return helper.make_model(graph, doc_string='x' * 300)   # a long field before the graph


def test_reads_the_initializers_onnx_reads() -> None:
    model = _model()
    found = initializers(model.SerializeToString())
    assert found == _as_onnx_reads_it(model)
    assert found['w_ext'] == {'location': 'placeholder.bin', 'offset': '0', 'length': '24'}
    assert found['inline'] == {}


def _nested(model: onnx.ModelProto, levels: int) -> onnx.ModelProto:
    """``model`` with its graph ``levels`` deep in If branches, each level's own tensor too."""
    graph = model.graph
    for level in range(levels):
        own = numpy_helper.from_array(np.full(1, level, np.float32), f'level{level}')
        identity = helper.make_graph([helper.make_node('Identity', ['x'], ['y'])], 'else', [],
                                     [helper.make_tensor_value_info('y', TensorProto.FLOAT, None)])
        graph = helper.make_graph(
            [helper.make_node('If', ['c'], ['y'], then_branch=graph, else_branch=identity)],
            f'level{level}', [helper.make_tensor_value_info('c', TensorProto.BOOL, [])],
            [helper.make_tensor_value_info('y', TensorProto.FLOAT, None)], [own])
    return helper.make_model(graph)


def test_reads_the_initializers_in_if_branches() -> None:
    model = _nested(_model(), 2)
    found = initializers(model.SerializeToString())
    assert found == _as_onnx_reads_it(model)
    assert sorted(found) == ['inline', 'level0', 'level1', 'w_ext']


def test_refuses_graphs_nested_too_deep() -> None:
    assert len(initializers(_nested(_model(), 4).SerializeToString())) == 6
    with pytest.raises(ValueError, match='nested deeper than 4'):
        initializers(_nested(_model(), 5).SerializeToString())


def test_refuses_an_initializer_named_twice() -> None:
    """In a branch and in the main graph: one of the two would go unchecked."""
    model = _nested(_model(), 1)
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32), 'w_ext'))
    with pytest.raises(ValueError, match="'w_ext' appears twice"):
        initializers(model.SerializeToString())


def test_reads_a_cached_graph_as_onnx_does(small_model: SkippableResNet, tmp_path: Path) -> None:
    with OnnxRuntimeEngine(small_model, 'wire', cache_dir=tmp_path, intra_op_threads=1):
        pass
    graphs = list(tmp_path.glob('*/graphs/*.onnx'))
    index = json.loads(next(tmp_path.glob('*/graphs/*.json')).read_text())
    assert len(graphs) == 1
    data = graphs[0].read_bytes()
    found = initializers(data)
    assert found == _as_onnx_reads_it(onnx.load_model_from_string(data))
    assert sorted(found) == sorted(index['initializers'])


def _external_in_branches() -> onnx.ModelProto:
    """`_model` two If levels deep, each level's tensor external too (a 4-byte float)."""
    model = _nested(_model(), 2)
    for graph in all_graphs(model.graph):
        for tensor in graph.initializer:
            if tensor.name.startswith('level'):
                tensor.ClearField('raw_data')
                tensor.data_location = TensorProto.EXTERNAL
                for key, value in (('location', 'placeholder.bin'), ('offset', '0'),
                                   ('length', '4')):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
    return model


def test_points_external_initializers_elsewhere_as_onnx_would() -> None:
    """Every external initializer, in branches too, gets its new location; the rest of the
    model (inline tensors, nodes, doc string) stays as onnx has it."""
    model = _external_in_branches()
    locations = {'w_ext': ('weights/ext.npy', 128, 24), 'level0': ('weights/0.npy', 64, 4),
                 'level1': ('weights/1.npy', 192, 4)}
    rewritten = onnx.load_model_from_string(
        with_external_data(model.SerializeToString(), locations))
    for graph in all_graphs(model.graph):     # what onnx makes of the same change
        for tensor in graph.initializer:
            if tensor.name in locations:
                file, offset, length = locations[tensor.name]
                del tensor.external_data[:]
                for key, value in (('location', file), ('offset', str(offset)),
                                   ('length', str(length))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
    assert rewritten == model
    assert initializers(rewritten.SerializeToString())['level1'] == {
        'location': 'weights/1.npy', 'offset': '192', 'length': '4'}


def test_refuses_to_leave_an_external_initializer_where_it_pointed() -> None:
    """'level1' would keep pointing at the placeholder; an inline tensor needs no location."""
    data = _external_in_branches().SerializeToString()
    with pytest.raises(ValueError, match="1 external initializers .* 'level1'"):
        with_external_data(data, {'w_ext': ('a', 0, 24), 'level0': ('b', 0, 4)})
    with pytest.raises(ValueError, match='nested deeper than 4'):
        with_external_data(_nested(_model(), 5).SerializeToString(), {'w_ext': ('a', 0, 24)})


@pytest.mark.parametrize('damage', ['truncated', 'random', 'empty', 'two graphs', 'bad varint',
                                    'group wire type'])
def test_refuses_what_is_not_a_model(damage: str) -> None:
    data = _model().SerializeToString()
    bad = {'truncated': data[:len(data) // 2],
           'random': np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes(),
           'empty': b'',
           'two graphs': data + data,
           'bad varint': b'\x3a' + b'\xff' * 11,
           'group wire type': b'\x3b'}[damage]
    with pytest.raises(ValueError):
        initializers(bad)
