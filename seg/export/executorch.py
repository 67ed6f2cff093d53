"""ExecuTorch export (`export.format=executorch`): a `.pte` program whose layers run on the XNNPACK
delegate, float32 or int8, and its runner on ExecuTorch's Python runtime. PyTorch's mobile path
in place of TorchScript.

int8 is PT2E quantization with ExecuTorch's XNNPACKQuantizer: int8 weights per output channel,
symmetric; int8 activations per tensor, asymmetric, calibrated (min / max) on real images; a
checkpoint of `train.qat=true` brings its learned ranges instead (`seg/engine/qat.py`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn

from seg.engine.qat import quiet_import
from seg.export.common import ExportError, quiet_logging

MISSING = 'export.format=executorch needs the executorch package: pip install -e ".[executorch]"'


@contextlib.contextmanager
def _quiet_native() -> Iterator[None]:
    """The runtime's C++ side prints CPU-probing notes to stdout / stderr when it starts: silenced at
    the file-descriptor level, where Python's redirects do not reach."""
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _modules() -> Any:
    try:
        with quiet_import():
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower
    except ImportError as exc:
        raise ExportError(MISSING) from exc
    return XnnpackPartitioner, to_edge_transform_and_lower


def quantizer(float_modules: Sequence[str] = ()) -> Any:
    """XNNPACK's int8 quantizer; `float_modules` (paths in the exported wrapper: `model.backbone.stem`)
    stay float."""
    with quiet_import():
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    for name in float_modules:
        q.set_module_name(name, None)
    return q


def quantize_for_xnnpack(
    module: nn.Module, sample: torch.Tensor, calibration: Sequence[np.ndarray], float_modules: Sequence[str] = ()
) -> nn.Module:
    """`module` with int8 weights and activations (PT2E: prepare, calibrate on `calibration`, convert)."""
    from seg.engine.qat import _pt2e

    pt2e = _pt2e().quantize_pt2e
    try:
        with torch.no_grad():
            graph = torch.export.export(module.eval(), (sample,)).module()
            prepared = pt2e.prepare_pt2e(graph, quantizer([f"model.{m}" for m in float_modules]))
            for x in calibration:
                prepared(torch.from_numpy(np.ascontiguousarray(x)))
            return pt2e.convert_pt2e(prepared)
    except Exception as exc:
        raise ExportError(f"int8 quantization failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc


def export_executorch(module: nn.Module, path: str | os.PathLike, sample: torch.Tensor) -> Path:
    """Lower `module` (float, or quantized by PT2E) to an ExecuTorch program on XNNPACK, at the static
    size of `sample`, and write it to `path`."""
    partitioner, lower = _modules()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with quiet_logging("", "torch.export", "executorch"), torch.no_grad():
            program = torch.export.export(module, (sample,))
            executorch_program = lower(program, partitioner=[partitioner()]).to_executorch()
    except Exception as exc:
        raise ExportError(f"ExecuTorch export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    path.write_bytes(executorch_program.buffer)
    return path


class ExecuTorchRunner:
    """Runs a .pte file on ExecuTorch's runtime: numpy in, numpy out (the first output). `threads`:
    XNNPACK's thread pool, which is shared by every program of the process."""

    def __init__(self, path: str | os.PathLike, threads: Optional[int] = None) -> None:
        try:
            with quiet_import():
                from executorch.runtime import Runtime
        except ImportError as exc:
            raise ExportError(f'running {path} needs the executorch package: pip install -e ".[executorch]"') from exc
        self.path = Path(path)
        try:
            with _quiet_native():
                runtime = Runtime.get()
                if threads:
                    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

                    _unsafe_reset_threadpool(int(threads))
                self.method = runtime.load_program(self.path).load_method("forward")
        except (RuntimeError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"{path}: cannot load as an ExecuTorch program ({reason})") from exc

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.method.execute([torch.from_numpy(np.ascontiguousarray(x))])[0]
        return out.numpy().copy()
