"""TorchScript export by tracing (the model has no data-dependent control flow), and its runner."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from seg.export.common import ExportError


def export_torchscript(
    module: nn.Module, path: str | os.PathLike, sample: torch.Tensor, metadata: Optional[dict[str, Any]] = None
) -> Path:
    """Trace `module` on `sample` and save it; sizes are traced as shape ops, so the file runs at
    any input size. The metadata JSON is also stored inside, as the extra file `seg.json`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic and deprecation
            traced = torch.jit.freeze(torch.jit.trace(module.eval(), (sample,), check_trace=False))
            torch.jit.save(traced, str(path), _extra_files={"seg.json": json.dumps(metadata or {})})
    except Exception as exc:
        raise ExportError(f"TorchScript export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    return path


class TorchScriptRunner:
    """Runs a TorchScript file: numpy in, numpy out (the model's first output)."""

    def __init__(self, path: str | os.PathLike, threads: Optional[int] = None) -> None:
        self.path = Path(path)
        if threads:
            torch.set_num_threads(int(threads))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.module = torch.jit.load(str(path), map_location="cpu").eval()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.module(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def set_torchscript_metadata(path: str | os.PathLike, metadata: dict[str, Any]) -> None:
    """Replace the `seg.json` extra file of a TorchScript file this process has just written."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu")
        torch.jit.save(module, str(path), _extra_files={"seg.json": json.dumps(metadata)})
