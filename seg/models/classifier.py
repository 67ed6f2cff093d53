"""The encoders in their ImageNet classification form: encoder at output stride 32, then the
family's classification top (global average pool and a 1000-way fully connected layer, after the
final 1x1 conv or hidden layer the family's paper has). Used to count multiply-adds and parameters
against the papers' tables and to time the encoders (`tools/flops.py flops.classifier=true`,
`tools/benchmark.py tradeoff`); the segmenter never uses it.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from omegaconf import DictConfig
from torch import nn

from seg.models.layers import ConvBNAct


class ClassificationTop(nn.Module):
    """[1x1 conv + BN + act] -> global average pool -> [Linear + act] -> Linear(num_classes).

    Dropout is left out: this is the inference form, and dropout costs nothing there.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int = 1000,
        conv_channels: Optional[int] = None,
        conv_activation: Callable[[], nn.Module] = nn.ReLU,
        hidden_channels: Optional[int] = None,
        hidden_activation: Callable[[], nn.Module] = nn.Hardswish,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        channels = in_channels
        self.conv = None
        if conv_channels is not None:
            self.conv = ConvBNAct(channels, conv_channels, 1, activation=conv_activation, bn_eps=bn_eps)
            channels = conv_channels
        self.hidden = None
        if hidden_channels is not None:
            self.hidden = nn.Sequential(nn.Linear(channels, hidden_channels), hidden_activation())
            channels = hidden_channels
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            x = self.conv(x)
        # keepdim mean: exported as GlobalAveragePool (seg/export/onnx.py), any input size
        x = x.mean(dim=(2, 3), keepdim=True).flatten(1)
        if self.hidden is not None:
            x = self.hidden(x)
        return self.fc(x)


class Classifier(nn.Module):
    """Encoder (its `out` features) -> classification top; returns [N, num_classes] logits."""

    def __init__(self, encoder: nn.Module, top: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.top = top

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(self.encoder(x)["out"])


def build_classifier(backbone_cfg: DictConfig, num_classes: int = 1000, start_weights: bool = True) -> Classifier:
    """The classification form of the encoder a `model.backbone` config describes (output stride 32,
    as the classification networks are)."""
    from seg.models.segmenter import build_backbone

    encoder = build_backbone(backbone_cfg, output_stride=32, start_weights=start_weights)
    return Classifier(encoder, encoder.classification_top(num_classes))
