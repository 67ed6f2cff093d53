"""Checks of an exported model against PyTorch on real images: largest logit difference, argmax
agreement, and the mIoU of a predictor on a labelled split."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from seg.export.runtime import Runner
from seg.metrics import ConfusionMatrix


def torch_runner(module: nn.Module) -> Runner:
    """A PyTorch module as a numpy-in, numpy-out runner (the reference of the checks)."""
    module = module.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    return run


def compare(
    reference: Runner,
    exported: Runner,
    inputs: Sequence[np.ndarray],
    labels: bool = False,
    valid: Optional[Sequence[tuple[int, int]]] = None,
    class_axis: int = 1,
) -> dict[str, Any]:
    """Run both on every input. Returns the largest absolute logit difference (None for label
    outputs) and the fraction of pixels whose argmax (or label) agrees; with `valid`, the (h, w)
    of each input's image part (letterboxed inputs), the agreement counts only those pixels.
    `class_axis`: of the logits, 1 for NCHW, -1 for NHWC (TF Lite)."""
    max_abs, agree, total = 0.0, 0, 0
    for i, x in enumerate(inputs):
        ref, out = reference(x), exported(x)
        if ref.shape != out.shape:
            return {
                "images": len(inputs),
                "max_abs_diff": None,
                "agreement": 0.0,
                "error": f"output shape {tuple(out.shape)} != PyTorch's {tuple(ref.shape)}",
            }
        if labels:
            a, b = ref, out
        else:
            max_abs = max(max_abs, float(np.abs(ref.astype(np.float64) - out.astype(np.float64)).max()))
            a, b = ref.argmax(class_axis), out.argmax(class_axis)
        if valid is not None:
            h, w = valid[i]
            a, b = a[..., :h, :w], b[..., :h, :w]
        agree += int((a == b).sum())
        total += a.size
    return {"images": len(inputs), "max_abs_diff": None if labels else max_abs, "agreement": agree / max(total, 1)}


def miou(
    predict: Callable[[np.ndarray], np.ndarray],
    samples: Sequence[tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    ignore_index: int = 255,
) -> Optional[float]:
    """mIoU of `predict` (image -> labels) over (image, mask) pairs, one confusion matrix for all."""
    if not samples:
        return None
    matrix = ConfusionMatrix(num_classes, ignore_index)
    for image, mask in samples:
        matrix.update(
            torch.from_numpy(predict(image).astype(np.int64)), torch.from_numpy(np.asarray(mask).astype(np.int64))
        )
    return float(matrix.compute()["miou"])


def format_check(name: str, result: dict[str, Any]) -> str:
    diff = result.get("max_abs_diff")
    diff_text = "n/a (label output)" if diff is None else f"{diff:.2e}"
    return (
        f"{name}: max abs logit diff {diff_text}, argmax agreement {100 * result['agreement']:.3f}% "
        f"({result['images']} images)"
    )
