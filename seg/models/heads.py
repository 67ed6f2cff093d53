"""Segmentation heads. Each takes the backbone's feature dict (`low_level` at stride 4,
`mid_level` at stride 8, `out` at the output stride) and returns logits at the stride of the
finest features it uses; the segmenter resizes them to the input size."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seg.models.aspp import ASPP
from seg.models.layers import ConvBNAct, DepthwiseSeparable


class DeepLabV3Head(nn.Module):
    """DeepLabv3 (Chen et al. 2017): ASPP (1x1, three atrous 3x3, image pooling) + 1x1 logits."""

    def __init__(
        self,
        in_channels: dict[str, int],
        num_classes: int,
        output_stride: int = 16,
        channels: int = 256,
        atrous_rates: Sequence[int] = (6, 12, 18),
        separable: bool = False,
        dropout: float = 0.1,
        align_corners: bool = False,  # no resize inside this head; accepted like every head's
    ) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels["out"], channels, atrous_rates, output_stride, separable, dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def set_output_stride(self, output_stride: int) -> None:
        self.aspp.set_output_stride(output_stride)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.aspp(features["out"]))


class AsppLiteHead(DeepLabV3Head):
    """The published DeepLab MobileNetV2 head (TF DeepLab model zoo): DeepLabv3's with no atrous
    branches, i.e. 1x1 conv branch + image pooling, concatenated, projected, dropout, 1x1 logits."""

    def __init__(
        self,
        in_channels: dict[str, int],
        num_classes: int,
        output_stride: int = 16,
        channels: int = 256,
        dropout: float = 0.1,
        align_corners: bool = False,  # no resize inside this head; accepted like every head's
    ) -> None:
        super().__init__(
            in_channels,
            num_classes,
            output_stride,
            channels,
            atrous_rates=(),
            dropout=dropout,
            align_corners=align_corners,
        )


class DeepLabV3PlusHead(nn.Module):
    """DeepLabv3+ (Chen et al., ECCV 2018): ASPP, then a decoder that upsamples the ASPP output to
    stride 4, concatenates the stride-4 features projected to 48 channels, and refines with two 3x3
    convs before the logits. The ASPP and decoder convs are depthwise-separable unless `separable`
    is False (the paper's and TF DeepLab's default, as `DeepLabV3PlusConfig`)."""

    def __init__(
        self,
        in_channels: dict[str, int],
        num_classes: int,
        output_stride: int = 16,
        channels: int = 256,
        atrous_rates: Sequence[int] = (6, 12, 18),
        low_level_channels: int = 48,
        decoder_channels: int = 256,
        separable: bool = True,
        dropout: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.aspp = ASPP(in_channels["out"], channels, atrous_rates, output_stride, separable, dropout)
        self.low_level_project = ConvBNAct(in_channels["low_level"], low_level_channels, 1)
        fused = channels + low_level_channels
        conv = DepthwiseSeparable if separable else ConvBNAct  # 3x3 conv -> BN -> ReLU
        self.decoder = nn.Sequential(conv(fused, decoder_channels, 3), conv(decoder_channels, decoder_channels, 3))
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)

    def set_output_stride(self, output_stride: int) -> None:
        self.aspp.set_output_stride(output_stride)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        low = self.low_level_project(features["low_level"])
        x = F.interpolate(
            self.aspp(features["out"]), size=low.shape[-2:], mode="bilinear", align_corners=self.align_corners
        )
        return self.classifier(self.decoder(torch.cat([x, low], dim=1)))


class LRASPPHead(nn.Module):
    """Lite Reduced ASPP (MobileNetV3 paper, Section 6.4): a 1x1 conv branch on the last features
    gated by a pooled 1x1 conv + sigmoid, upsampled to stride 8, with logits of both it and the
    stride-8 features summed. The pooling is global (the paper uses a large-stride 49x49 kernel), so
    the head works at any input size."""

    def __init__(
        self,
        in_channels: dict[str, int],
        num_classes: int,
        output_stride: int = 16,
        channels: int = 128,
        dropout: float = 0.0,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.branch = ConvBNAct(in_channels["out"], channels, 1)
        self.gate = nn.Sequential(nn.Conv2d(in_channels["out"], channels, 1, bias=False), nn.Sigmoid())
        self.dropout = nn.Dropout(dropout)
        self.low_classifier = nn.Conv2d(in_channels["mid_level"], num_classes, 1)
        self.high_classifier = nn.Conv2d(channels, num_classes, 1)

    def set_output_stride(self, output_stride: int) -> None:
        """No atrous convolutions in this head: nothing depends on the output stride."""

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        high, low = features["out"], features["mid_level"]
        x = self.branch(high) * self.gate(high.mean(dim=(2, 3), keepdim=True))
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return self.low_classifier(low) + self.high_classifier(self.dropout(x))


class AuxHead(nn.Module):
    """Auxiliary classifier on the backbone's stride-8 features (training only, off by default:
    `train.aux_loss_weight`)."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 128) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)
