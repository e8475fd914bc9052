"""make_engine: picks the engine by name and device; 'auto' prefers onnxruntime on the CPU."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pls_perception.engines import (TorchEngine, make_engine, onnxruntime_available,
                                    resolve_engine_name)
from pls_perception.skipping.weights import LoadedModel


def test_torch_by_name_ignores_onnxruntime_options(loaded_small: LoadedModel,
                                                   tmp_path: Path) -> None:
    engine = make_engine('torch', loaded_small, cache_dir=tmp_path)
    assert isinstance(engine, TorchEngine) and engine.name == 'torch'
    assert not any(tmp_path.iterdir())


def test_auto_prefers_onnxruntime_on_cpu_only(loaded_small: LoadedModel, tmp_path: Path,
                                              batch: np.ndarray) -> None:
    assert onnxruntime_available()
    with make_engine('auto', loaded_small, cache_dir=tmp_path, intra_op_threads=1) as engine:
        assert engine.name == 'onnxruntime'
        expected = TorchEngine(loaded_small.model).infer(batch)
        np.testing.assert_allclose(engine.infer(batch), expected, atol=1e-4)
    assert resolve_engine_name('auto', 'cpu') == 'onnxruntime'
    assert resolve_engine_name('auto', 'cuda') == 'torch'
    assert resolve_engine_name('onnxruntime', 'cuda') == 'onnxruntime'


def test_unknown_engine_is_rejected(loaded_small: LoadedModel) -> None:
    with pytest.raises(ValueError, match="'tensorflow'"):
        make_engine('tensorflow', loaded_small)
    with pytest.raises(ValueError, match="'tensorflow'"):
        resolve_engine_name('tensorflow')


@pytest.mark.parametrize('name, device, imported', [
    ('auto', 'cpu', True), ('onnxruntime', 'cpu', True), ('torch', 'cpu', False),
    ('auto', 'cuda', False)])
def test_import_backend_imports_only_what_the_engine_needs(name: str, device: str,
                                                           imported: bool) -> None:
    # a fresh interpreter: this one has imported onnxruntime already. Serving cached graphs
    # needs neither onnx (a second to import) nor torch: building a graph imports them.
    code = ('import sys; from pls_perception.engines import import_backend; '
            f'import_backend({name!r}, {device!r}); '
            "print('onnxruntime' in sys.modules, 'onnx' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == [str(imported), 'False', 'False']
