"""Export of one keep ratio of a `SkippableResNet` to ONNX: the only part of the onnxruntime
engine that needs PyTorch.

The engine imports this module when a graph must be built, not when cached graphs are served,
so a node whose graphs are cached starts without importing torch (see `serving_record`).
"""
from __future__ import annotations

import hashlib
import io
import os
import signal
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
import torch.onnx

from pls_perception.engines.onnxruntime_engine import INPUT_NAME, OPSET, OUTPUT_NAME
from pls_perception.errors import BackendError
from pls_perception.skipping.network import SkippableResNet, physically_pruned_copy
from pls_perception.skipping.ratios import Ratio

# Longest a graph export may take (ResNet-152 takes seconds) before its process is killed.
EXPORT_TIMEOUT_S = 600.0


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state_dict's names and float32 contents (weights without a file hash)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def bn_digest(model: SkippableResNet, ratio: Ratio) -> str:
    """SHA-256 of the BatchNorm running statistics ``model`` uses at ``ratio``."""
    state = model.bn_state_for(ratio)
    digest = hashlib.sha256()
    for name in sorted(model.bn_modules()):
        for stat in ('running_mean', 'running_var'):
            digest.update(state[f'{name}.{stat}'].detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _export_bytes(model: torch.nn.Module, input_size: tuple[int, int]) -> bytes:
    """``model`` as an ONNX model (TorchScript exporter, dynamic batch) in memory."""
    dummy = torch.zeros(1, 3, *input_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter('ignore')   # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (dummy,), buffer, dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: 'batch'}, OUTPUT_NAME: {0: 'batch'}})
    return buffer.getvalue()


def export_ratio(model: SkippableResNet, ratio: Ratio, input_size: tuple[int, int],
                 scratch_dir: Path) -> bytes:
    """The kept blocks (with this ratio's BN statistics) as an ONNX model in memory.

    The TorchScript exporter holds the GIL for up to ~1 s at a time, which would stall a
    node's executor and inference threads; where the OS can fork, it runs in a child
    process (which inherits the loaded model, so nothing is re-imported) while this thread
    waits without the GIL. ``scratch_dir`` holds the child's output for that moment.
    """
    pruned = physically_pruned_copy(model, ratio).eval().float().cpu()
    if not hasattr(os, 'fork'):
        return _export_bytes(pruned, input_size)
    with tempfile.TemporaryDirectory(dir=scratch_dir) as tmp:
        out, error = Path(tmp) / 'exported.onnx', Path(tmp) / 'error.txt'
        pid = os.fork()
        if pid == 0:                      # child: export, write, leave at once
            code = 1
            try:
                torch.set_num_threads(1)
                out.write_bytes(_export_bytes(pruned, input_size))
                code = 0
            except BaseException:  # noqa: BLE001 - reported to the parent through a file
                error.write_text(traceback.format_exc(limit=-3))
            finally:
                os._exit(code)
        deadline = time.monotonic() + EXPORT_TIMEOUT_S
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise BackendError(f'exporting keep ratio {ratio!r} took over '
                                   f'{EXPORT_TIMEOUT_S:g} s; gave up')
            time.sleep(0.02)
        if not out.is_file():
            why = error.read_text() if error.is_file() else 'the export process died'
            raise BackendError(f'exporting keep ratio {ratio!r} failed: {why.strip()}')
        return out.read_bytes()
