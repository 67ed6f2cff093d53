"""What every export format shares: the wrapper that fixes the exported signature, the metadata
written beside (and, for ONNX, inside) the exported file, and the error type of the export tools."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import nn

from seg.data.classes import voc_palette
from seg.errors import SegError
from seg.files import write_text_atomically


class ExportError(SegError, RuntimeError):
    """An export cannot be made, or the exported model does not match PyTorch."""


class ExportWrapper(nn.Module):
    """The exported signature around a segmenter.

    - `include_preprocessing`: the input is raw RGB uint8 NHWC and the normalisation runs inside
      (cast, subtract mean, multiply by 1/std, transpose); otherwise normalised float, NCHW.
    - `labels`: the output is the per-pixel argmax as uint8 [N, H, W]; otherwise float logits
      [N, C, H, W].
    - `channels_last`: TF Lite's layout, NHWC, at both ends: a float input [N, H, W, 3] and logits
      [N, H, W, C] (the converter folds the transposes into the first and last layers).
    - `input_normalization` (mean, std), one value each: the float input is (pixel - mean) / std, the
      same for every channel (all that TF Lite metadata can say), and the model's own per-channel
      normalisation is restored inside by one multiply-add.
    """

    def __init__(
        self,
        model: nn.Module,
        include_preprocessing: bool = False,
        labels: bool = False,
        input_normalization: Optional[tuple[float, float]] = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.include_preprocessing = include_preprocessing
        self.labels = labels
        self.channels_last = channels_last
        # The model's own normalisation (a Segmenter's pixel_mean / pixel_std buffers), per channel,
        # shaped for the input's layout: raw bytes and channels-last inputs are NHWC.
        nhwc = include_preprocessing or channels_last
        shape = (1, 1, 1, 3) if nhwc else (1, 3, 1, 1)
        mean = model.pixel_mean.detach().clone().reshape(shape)
        std = model.pixel_std.detach().clone().reshape(shape)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("inv_std", 1.0 / std, persistent=False)
        self.renormalize = input_normalization is not None and not include_preprocessing
        if self.renormalize:  # pixel = x * s + m, so the model's input is x * s / std + (m - mean) / std
            m, s = input_normalization  # type: ignore[misc]
            self.register_buffer("input_scale", s / std, persistent=False)
            self.register_buffer("input_shift", (m - mean) / std, persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image
        # Element-wise steps first, in the input's own layout; the transpose then sits next to the first conv.
        if self.include_preprocessing:
            x = (x.float() - self.mean) * self.inv_std
        elif self.renormalize:
            x = x * self.input_scale + self.input_shift
        if self.include_preprocessing or self.channels_last:
            x = x.permute(0, 3, 1, 2)
        logits = self.model(x)
        if self.channels_last:
            logits = logits.permute(0, 2, 3, 1)
        if self.labels:
            return logits.argmax(dim=-1 if self.channels_last else 1).to(torch.uint8)
        return logits


@contextlib.contextmanager
def quiet_logging(*names: str) -> Iterator[None]:
    """Converters log every pass at INFO, which the tools' (Hydra's) logging would print: raise
    these loggers ("" is the root logger) to WARNING for the duration."""
    loggers = [logging.getLogger(n or None) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_metadata(
    *,
    fmt: str,
    class_names: Sequence[str],
    model: nn.Module,
    normalization: Any,
    input_size: Optional[int],
    include_preprocessing: bool,
    output: str,
    checkpoint: str | os.PathLike,
    model_cfg: Any,
    quantize: Optional[str] = None,
    opset: Optional[int] = None,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Everything an app needs to feed the model and read its output, plus its provenance. The
    normalisation values are the model's own (`normalization` only names them). `channels_last`:
    the input and the logits are NHWC (TF Lite's layout), else NCHW where not raw bytes."""
    from seg.models.segmenter import part_names

    norm = str(normalization)
    mean, std = model.pixel_mean.flatten().tolist(), model.pixel_std.flatten().tolist()
    backbone, head = part_names(model_cfg)
    labels = output == "labels"
    return {
        "format": fmt,
        "quantize": quantize,
        "opset": opset,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "palette": voc_palette(max(len(class_names), 1)).tolist(),
        "input": {
            "name": "image",
            "layout": "NHWC" if include_preprocessing or channels_last else "NCHW",
            "dtype": "uint8" if include_preprocessing else "float32",
            "channels": "RGB",
            # null height/width: any size (export.dynamic=true)
            "height": input_size,
            "width": input_size,
        },
        "normalization": {
            "name": norm,
            "mean": [float(v) for v in mean],  # in 0..255 units: x_norm = (x - mean) / std
            "std": [float(v) for v in std],
            "included": include_preprocessing,
        },
        "output": {
            "name": "labels" if labels else "logits",
            "kind": "labels" if labels else "logits",
            "layout": "NHW" if labels else "NHWC" if channels_last else "NCHW",
            "dtype": "uint8" if labels else "float32",
        },
        "resize": "bilinear, align_corners=False",
        "model": {
            "backbone": backbone,
            "depth_multiplier": float(model_cfg.backbone.depth_multiplier),
            "head": head,
            "output_stride": int(model_cfg.output_stride),
        },
        "checkpoint": {"file": Path(checkpoint).name, "sha256": file_sha256(checkpoint)},
    }


def metadata_path(model_path: str | os.PathLike) -> Path:
    """The metadata JSON that goes with an exported file: `model.onnx` -> `model.onnx.json`."""
    return Path(f"{model_path}.json")


def write_metadata(model_path: str | os.PathLike, metadata: dict[str, Any]) -> Path:
    """MODEL.json beside the model, written atomically."""
    path = metadata_path(model_path)
    write_text_atomically(path, json.dumps(metadata, indent=2) + "\n")
    return path


def read_metadata(model_path: str | os.PathLike) -> Optional[dict[str, Any]]:
    """The metadata JSON beside `model_path`, or (ONNX) the copy in the model's metadata_props."""
    side = metadata_path(model_path)
    if side.is_file():
        return json.loads(side.read_text())
    if str(model_path).endswith(".onnx"):
        import onnx

        model = onnx.load(str(model_path), load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
        if "seg" in props:
            return json.loads(props["seg"])
    return None
