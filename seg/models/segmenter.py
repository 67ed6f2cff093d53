"""The segmenter: backbone -> head -> bilinear resize to the input size."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn


class Segmenter(nn.Module):
    """Composes an encoder that returns a feature dict with a head that consumes it.

    Works for any input size (513x513, 500x375, ...): the logits are resized to the input size.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, output_stride: int, align_corners: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.output_stride = output_stride
        self.align_corners = align_corners

    def set_output_stride(self, output_stride: int) -> None:
        """Switch to output stride 8, 16 or 32: dilations (and ASPP rates) change, weights don't."""
        self.backbone.set_output_stride(output_stride)
        self.head.set_output_stride(output_stride)
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor, output_size: Optional[tuple[int, int]] = None) -> torch.Tensor:
        """Logits at `output_size` (default: the input size), resized bilinearly in one step."""
        logits = self.head(self.backbone(x))
        size = x.shape[-2:] if output_size is None else output_size
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)


def build_segmenter(model_cfg: DictConfig) -> Segmenter:
    """Build the segmenter a `model` config describes (backbone and head by their `_target_`)."""
    if model_cfg.output_stride not in (8, 16, 32):
        raise ValueError(f"model.output_stride must be 8, 16 or 32, got {model_cfg.output_stride}")
    backbone = instantiate(model_cfg.backbone, output_stride=model_cfg.output_stride, _convert_="all")
    head = instantiate(
        model_cfg.head,
        in_channels=dict(backbone.channels),
        num_classes=model_cfg.num_classes,
        output_stride=model_cfg.output_stride,
        align_corners=model_cfg.align_corners,
        _convert_="all",
    )
    return Segmenter(backbone, head, model_cfg.output_stride, model_cfg.align_corners)

