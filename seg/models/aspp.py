"""Atrous Spatial Pyramid Pooling (Chen et al., "Rethinking Atrous Convolution for Semantic Image
Segmentation", 2017): a 1x1 branch, one 3x3 atrous branch per rate, and image pooling, concatenated
and projected.

With no atrous rates it is the head of the published DeepLab MobileNetV2 rows (1x1 branch + image
pooling only). Rates are given for output stride 16 and rescaled by `set_output_stride`, so a model
trained at 16 evaluates at 8 with the rates doubled (6/12/18 -> 12/24/36), as DeepLab does.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from seg.models.layers import ConvBNAct, DepthwiseSeparable


class ImagePooling(nn.Module):
    """Global average pool -> 1x1 conv -> BN -> ReLU, broadcast back to the feature size.

    Written as mean + expand (not AdaptiveAvgPool + interpolate) so it exports at any input size.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(x.mean(dim=(2, 3), keepdim=True))
        return pooled.expand(-1, -1, x.shape[2], x.shape[3])


class ASPP(nn.Module):
    def __init__(
        self,
        in_channels: int,
        channels: int = 256,
        atrous_rates: Sequence[int] = (6, 12, 18),
        output_stride: int = 16,
        separable: bool = False,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.base_rates = [int(r) for r in atrous_rates]
        rates = self._rates_at(output_stride)
        self.conv1x1 = ConvBNAct(in_channels, channels, 1)
        branch = DepthwiseSeparable if separable else ConvBNAct  # 3x3 atrous conv -> BN -> ReLU
        self.atrous = nn.ModuleList(branch(in_channels, channels, 3, dilation=r) for r in rates)
        self.image_pooling = ImagePooling(in_channels, channels)
        self.project = ConvBNAct(channels * (2 + len(rates)), channels, 1)
        self.dropout = nn.Dropout(dropout)
        self.out_channels = channels

    def _rates_at(self, output_stride: int) -> list[int]:
        return [max(1, r * 16 // output_stride) for r in self.base_rates]

    def set_output_stride(self, output_stride: int) -> None:
        for branch, rate in zip(self.atrous, self._rates_at(output_stride)):
            branch.set_stride_dilation(1, rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # TF DeepLab's concatenation order, so its projection weights load as they are
        branches = [self.image_pooling(x), self.conv1x1(x)] + [branch(x) for branch in self.atrous]
        return self.dropout(self.project(torch.cat(branches, dim=1)))
