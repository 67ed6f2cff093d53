"""Running a model on one image, whatever it is: a checkpoint's PyTorch model (fast path) or an
exported file (ONNX, TorchScript, TFLite). Shared by predict and by the export checks.

A static-size model sees the image letterboxed: scaled down so its longer side fits (never
up), padded bottom/right with the mean colour (DeepLab's evaluation pads the same way); the
output is cropped back and resized to the image. Logits are resized bilinearly before the argmax,
in strips of rows, so a very large image never holds full-size logits in memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seg.data.transforms import normalize, pixel_mean_std
from seg.export.common import ExportError, read_metadata

Runner = Callable[[np.ndarray], np.ndarray]

# Elements of one strip of full-size logits (64 MB of float32).
_STRIP_ELEMENTS = 1 << 24


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an HxWx3 uint8 image (area averaging when shrinking, to avoid aliasing)."""
    if image.shape[:2] == (height, width):
        return image
    shrink = height < image.shape[0] or width < image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def fit_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(h, w) scaled down, keeping the aspect ratio, so that the longer side is at most `max_side`."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def letterbox(image: np.ndarray, size: int, pad_value: tuple[int, int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """The image scaled to fit `size` x `size` and padded bottom/right; returns it and the size of
    the image part."""
    h, w = fit_size(*image.shape[:2], size)
    scaled = resize_image(image, h, w)
    canvas = np.empty((size, size, 3), dtype=np.uint8)
    canvas[:] = pad_value
    canvas[:h, :w] = scaled
    return canvas, (h, w)


def upsample_argmax(logits: torch.Tensor, height: int, width: int) -> np.ndarray:
    """argmax over classes of `logits` [C, h, w] resized bilinearly (align_corners=False) to
    height x width, as uint8; computed in strips of rows with the same weights F.interpolate uses."""
    c, h, w = logits.shape
    logits = logits.float()
    if (h, w) == (height, width):
        return logits.argmax(0).to(torch.uint8).numpy()
    rows = max(1, _STRIP_ELEMENTS // (c * width))
    if rows >= height:
        full = F.interpolate(logits[None], size=(height, width), mode="bilinear", align_corners=False)
        return full[0].argmax(0).to(torch.uint8).numpy()
    # Rows first (source row and weight of each output row), then each strip's columns by
    # F.interpolate, which leaves the strip's rows as they are (scale 1).
    src = ((torch.arange(height, dtype=torch.float64) + 0.5) * (h / height) - 0.5).clamp(min=0)
    top = src.floor().long().clamp(max=h - 1)
    bottom = (top + 1).clamp(max=h - 1)
    weight = (src - top).float().view(1, -1, 1)
    out = np.empty((height, width), dtype=np.uint8)
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        a, b = logits[:, top[r0:r1]], logits[:, bottom[r0:r1]]
        strip = a + (b - a) * weight[:, r0:r1]
        strip = F.interpolate(strip[None], size=(r1 - r0, width), mode="bilinear", align_corners=False)
        out[r0:r1] = strip[0].argmax(0).to(torch.uint8).numpy()
    return out


def resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    if labels.shape == (height, width):
        return labels
    return cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)


class TorchPredictor:
    """Image -> labels with a PyTorch segmenter (at the image's size, capped at `max_size`)."""

    def __init__(self, model: nn.Module, normalization: Any, max_size: int = 2048) -> None:
        self.model = model
        self.normalization = normalization
        self.max_size = max_size

    def __call__(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        scaled = resize_image(image, *fit_size(height, width, self.max_size))
        x = normalize(torch.from_numpy(np.ascontiguousarray(scaled)).permute(2, 0, 1)[None], self.normalization)
        with torch.inference_mode():
            logits = self.model(x)
        return upsample_argmax(logits[0], height, width)


class ExportedPredictor:
    """Image -> labels with an exported model, following its metadata (input layout, whether the
    normalisation is inside, static size or not, logits or labels out)."""

    def __init__(self, runner: Runner, metadata: dict[str, Any], max_size: int = 2048) -> None:
        self.runner = runner
        self.meta = metadata
        self.max_size = max_size
        mean, _ = pixel_mean_std(metadata["normalization"]["name"])
        self.pad_value = tuple(int(round(v)) for v in mean)

    def model_input(self, image: np.ndarray) -> np.ndarray:
        """An HxWx3 uint8 image as the model's input array (batch of one)."""
        if self.meta["normalization"]["included"]:
            return np.ascontiguousarray(image[None])
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
        return normalize(x, self.meta["normalization"]["name"]).numpy()

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """The model's input for `image` and the (h, w) of the part of the output that is the image."""
        size = self.meta["input"]["height"]
        if size:
            canvas, valid = letterbox(image, int(size), self.pad_value)
            return self.model_input(canvas), valid
        scaled = resize_image(image, *fit_size(*image.shape[:2], self.max_size))
        return self.model_input(scaled), scaled.shape[:2]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        x, (h, w) = self.prepare(image)
        out = self.runner(x)[0]
        if self.meta["output"]["kind"] == "labels":
            return resize_labels(np.ascontiguousarray(out[:h, :w]).astype(np.uint8), height, width)
        return upsample_argmax(torch.from_numpy(np.ascontiguousarray(out[:, :h, :w])), height, width)


def load_runner(path: str | os.PathLike, threads: Optional[int] = None) -> Runner:
    """The runner for an exported file, chosen by its suffix (.onnx, .tflite, else TorchScript)."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"model not found (no such file): {path}")
    if path.suffix == ".onnx":
        from seg.export.onnx import OnnxRunner

        return OnnxRunner(path, threads)
    if path.suffix == ".tflite":
        from seg.export.tflite import TFLiteRunner

        return TFLiteRunner(path, threads)
    if path.suffix in (".pt", ".ts", ".pth"):
        from seg.export.torchscript import TorchScriptRunner

        return TorchScriptRunner(path, threads)
    raise ExportError(f"{path}: unknown model file type (expected .onnx, .tflite or a TorchScript .pt)")


def load_exported(path: str | os.PathLike, threads: Optional[int] = None, max_size: int = 2048) -> ExportedPredictor:
    """An ExportedPredictor for a file written by tools/export.py (its metadata tells how to feed it)."""
    runner = load_runner(path, threads)
    metadata = read_metadata(path)
    if metadata is None:
        raise ExportError(
            f"{path}: no metadata (expected {path}.json beside it, or ONNX metadata); export it with tools/export.py"
        )
    return ExportedPredictor(runner, metadata, max_size)
