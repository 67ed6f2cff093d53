"""TFLite (LiteRT) export through the optional `litert-torch` package (`pip install ".[tflite]"`),
and a runner on the LiteRT interpreter (`ai-edge-litert`, installed with it)."""

from __future__ import annotations

import copy
import os
import types
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seg.export.common import ExportError, quiet_logging

MISSING = (
    'export.format=tflite needs the optional litert-torch package: pip install ".[tflite]" '
    "(see README, Export for apps)"
)


def _pool_by_resize(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # Same values as mean + expand (bilinear from 1x1 is a constant), written as TF DeepLab does:
    # the LiteRT converter turns expand-then-concat into a BROADCAST_TO with a wrong shape.
    pooled = self.conv(x.mean(dim=(2, 3), keepdim=True))
    return F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)


def export_tflite(module: nn.Module, path: str | os.PathLike, sample: torch.Tensor) -> Path:
    """Convert `module` for LiteRT at the static size of `sample`."""
    try:
        import litert_torch
    except ImportError as exc:
        raise ExportError(MISSING) from exc
    from seg.models.aspp import ImagePooling

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = copy.deepcopy(module).eval()
    for m in module.modules():
        if isinstance(m, ImagePooling):
            m.forward = types.MethodType(_pool_by_resize, m)
    try:
        with quiet_logging("", "absl", "jax", "litert_torch"):
            edge = litert_torch.convert(module, (sample,))
            edge.export(str(path))
    except Exception as exc:
        raise ExportError(f"TFLite conversion failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    return path


class TFLiteRunner:
    """Runs a .tflite file on the LiteRT interpreter: numpy in, numpy out."""

    def __init__(self, path: str | os.PathLike, threads: Optional[int] = None) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise ExportError(f'running {path} needs the ai-edge-litert package: pip install ".[tflite]"') from exc
        self.path = Path(path)
        self.interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if tuple(x.shape) != tuple(self.input["shape"]):
            self.interpreter.resize_tensor_input(self.input["index"], list(x.shape))
            self.interpreter.allocate_tensors()
        self.interpreter.set_tensor(self.input["index"], np.ascontiguousarray(x))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"]).copy()
