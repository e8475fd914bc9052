"""Inference engines: ``torch`` (eager reference) and ``onnxruntime`` (faster on CPU).

``make_engine`` is the one constructor the node and tools use; ``'auto'`` picks ONNX Runtime when
it is installed and the device is the CPU, else eager PyTorch. Back ends are imported lazily, so a
machine without onnxruntime still imports the package and one serving cached ONNX graphs never
imports torch.
"""
from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from pls_perception.engines.base import InferenceEngine

if TYPE_CHECKING:
    from pls_perception.engines.torch_engine import TorchEngine
    from pls_perception.skipping.weights import LoadedModel

ENGINE_NAMES = ('auto', 'torch', 'onnxruntime')

__all__ = ['ENGINE_NAMES', 'InferenceEngine', 'TorchEngine', 'import_backend', 'make_engine',
           'onnxruntime_available', 'resolve_engine_name']


def __getattr__(name: str) -> Any:
    """``TorchEngine`` on first use: importing torch is what a cached onnxruntime start saves."""
    if name == 'TorchEngine':
        from pls_perception.engines.torch_engine import TorchEngine
        return TorchEngine
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def onnxruntime_available() -> bool:
    """True when the onnxruntime engine can be built: onnxruntime importable, onnx installed
    (found, not imported: it takes a second to import and only building graphs needs it)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return importlib.util.find_spec('onnx') is not None


def resolve_engine_name(name: str, device: str = 'cpu') -> str:
    """The engine 'auto' stands for on ``device`` ('onnxruntime' or 'torch'); others unchanged."""
    if name not in ENGINE_NAMES:
        raise ValueError(f'engine must be one of {ENGINE_NAMES}, got {name!r}')
    if name != 'auto':
        return name
    return 'onnxruntime' if device == 'cpu' and onnxruntime_available() else 'torch'


def import_backend(name: str, device: str = 'cpu') -> None:
    """Import the back end ``name`` stands for, ahead of building an engine: a node does it
    before it answers services, not while configuring.

    Only what serving cached graphs needs: ``onnx`` (whose ml_dtypes extension holds the GIL for
    0.6-1.1 s while it loads) and torch are imported when a graph must be built.
    """
    if resolve_engine_name(name, device) == 'onnxruntime':
        import pls_perception.engines.onnxruntime_engine  # noqa: F401


def make_engine(name: str, loaded: LoadedModel, device: str = 'cpu',
                **kw: Any) -> InferenceEngine:
    """Build the engine ``name`` ('auto' | 'torch' | 'onnxruntime') for a loaded model.

    Extra keyword arguments are onnxruntime options (``cache_dir``, ``ratios``, ...; see
    ``OnnxRuntimeEngine.from_loaded``); since 'auto' may pick either engine, the torch engine
    ignores them. 'auto' means onnxruntime on the CPU when importable, else torch.
    """
    name = resolve_engine_name(name, device)
    if name == 'torch':
        from pls_perception.engines.torch_engine import TorchEngine
        return TorchEngine(loaded.model, device=device)
    from pls_perception.engines.onnxruntime_engine import OnnxRuntimeEngine
    return OnnxRuntimeEngine.from_loaded(loaded, device=device, **kw)
