"""Building blocks shared by the backbones and heads: one block family for all of them.

`ConvBNAct` (conv -> BN -> act), `DepthwiseSeparable` (MobileNetV1's layer and DeepLabv3+'s
separable convs), `InvertedResidual` (MobileNetV2 / V3 and MnasNet blocks, with optional
`SqueezeExcitation`), and `Encoder`, the output-stride plumbing every encoder shares.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def make_divisible(value: float, divisor: int, min_value: Optional[int] = None) -> int:
    """Round `value` to the nearest multiple of `divisor`, never going down by more than 10%.

    This is the rounding of the MobileNet papers' reference code (and of torchvision); with
    divisor 1 it is plain rounding to the nearest integer.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation (or none).

    Padding keeps the "same" size at stride 1 for any dilation. With `tf_same_padding`, a strided
    conv pads like TensorFlow's "SAME" (the extra pixel goes after, not before, on even sizes), so
    weights converted from TensorFlow give the same numbers. `set_stride_dilation` changes a built
    layer's stride and dilation in place (used to switch the output stride).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        activation: Optional[Callable[[], nn.Module]] = nn.ReLU,
        bn_eps: float = 1e-5,
        tf_same_padding: bool = False,
    ) -> None:
        super().__init__()
        self.tf_same_padding = tf_same_padding
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps)
        if activation is not None:
            self.act = activation()
        self.set_stride_dilation(stride, dilation)

    def set_stride_dilation(self, stride: int, dilation: int) -> None:
        k = self.conv.kernel_size[0]
        self.conv.stride = (stride, stride)
        self.conv.dilation = (dilation, dilation)
        pad = 0 if self.tf_same_padding and stride > 1 else (k - 1) // 2 * dilation
        self.conv.padding = (pad, pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stride = self.conv.stride[0]
        if self.tf_same_padding and stride > 1:
            conv = self.conv
            left, right, top, bottom = tf_same_pad(x.shape[-2:], conv.kernel_size[0], stride, conv.dilation[0])
            if left != right or top != bottom:
                return super().forward(F.pad(x, (left, right, top, bottom)))
            # Odd sizes (513 -> 257 -> 129 ...): "SAME" is symmetric, the conv's own padding, and exported
            # graphs carry no separate Pad (converters leave it, with layout transposes, at full resolution).
            # Set for this call only, on the module itself, so that module hooks (multiply-add counts) see it.
            conv.padding = (top, left)
            try:
                return super().forward(x)
            finally:
                conv.padding = (0, 0)
        return super().forward(x)


def tf_same_pad(size: Sequence[int], kernel: int, stride: int, dilation: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding of TensorFlow's "SAME" for an input of `size` (H, W)."""
    span = (kernel - 1) * dilation + 1
    pads = []
    for n in size:
        total = max((math.ceil(n / stride) - 1) * stride + span - n, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return left, right, top, bottom


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation: pool, 1x1 reduce + ReLU, 1x1 expand + gate (MobileNetV3's
    hard-sigmoid by default; MnasNet-A1 gates with the sigmoid)."""

    def __init__(
        self,
        channels: int,
        squeeze_channels: int,
        gate: Callable[[], nn.Module] = partial(nn.Hardsigmoid, inplace=True),
    ) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean(dim=(2, 3), keepdim=True)
        scale = self.gate(self.fc2(self.relu(self.fc1(scale))))
        return x * scale


class DepthwiseSeparable(nn.Module):
    """kxk depthwise conv -> BN -> act, then 1x1 pointwise conv -> BN -> act: MobileNetV1's layer
    (Figure 3 of its paper) and DeepLabv3+'s "separable" ASPP and decoder convolutions."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        activation: Callable[[], nn.Module] = nn.ReLU,
        bn_eps: float = 1e-5,
        tf_same_padding: bool = False,
    ) -> None:
        super().__init__()
        self.depthwise = ConvBNAct(
            in_channels,
            in_channels,
            kernel_size,
            stride,
            dilation,
            groups=in_channels,
            activation=activation,
            bn_eps=bn_eps,
            tf_same_padding=tf_same_padding,
        )
        self.pointwise = ConvBNAct(in_channels, out_channels, 1, activation=activation, bn_eps=bn_eps)

    def set_stride_dilation(self, stride: int, dilation: int) -> None:
        self.depthwise.set_stride_dilation(stride, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class InvertedResidual(nn.Module):
    """[1x1 expand conv -> BN -> act] -> kxk depthwise conv -> BN -> act -> [squeeze-excitation]
    -> 1x1 linear projection conv -> BN, + identity when the shapes allow (stride 1, as many output
    channels as input ones).

    The block of MobileNetV2 (ReLU6, no SE), MobileNetV3 (ReLU or hard-swish, SE with hard-sigmoid
    gate) and MnasNet (ReLU, SE with sigmoid gate in A1). The expand conv is absent when
    `expanded_channels == in_channels` (expansion 1); `se_channels` is the squeeze width (None: no
    SE), `se_gate` its gate.
    """

    def __init__(
        self,
        in_channels: int,
        expanded_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        activation: Callable[[], nn.Module] = nn.ReLU,
        se_channels: Optional[int] = None,
        se_gate: Callable[[], nn.Module] = partial(nn.Hardsigmoid, inplace=True),
        bn_eps: float = 1e-5,
        tf_same_padding: bool = False,
    ) -> None:
        super().__init__()
        self.expand = (
            ConvBNAct(in_channels, expanded_channels, 1, activation=activation, bn_eps=bn_eps)
            if expanded_channels != in_channels
            else None
        )
        self.depthwise = ConvBNAct(
            expanded_channels,
            expanded_channels,
            kernel_size,
            stride,
            dilation,
            groups=expanded_channels,
            activation=activation,
            bn_eps=bn_eps,
            tf_same_padding=tf_same_padding,
        )
        self.se = None if se_channels is None else SqueezeExcitation(expanded_channels, se_channels, gate=se_gate)
        self.project = ConvBNAct(expanded_channels, out_channels, 1, activation=None, bn_eps=bn_eps)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.depthwise(out)
        if self.se is not None:
            out = self.se(out)
        out = self.project(out)
        return x + out if self.use_residual else out


def dilated_strides(strides: list[int], output_stride: int) -> list[tuple[int, int]]:
    """Per-layer (stride, dilation) so that the network's total stride stops at `output_stride`.

    Follows DeepLab: once the running stride has reached the output stride, a layer that would
    downsample keeps stride 1 and uses the current atrous rate, and the rate of every later layer
    is multiplied by the stride it dropped.
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"model.output_stride must be 8, 16 or 32, got {output_stride}")
    current_stride, rate, out = 1, 1, []
    for s in strides:
        if current_stride == output_stride and s > 1:
            out.append((1, rate))
            rate *= s
        else:
            current_stride *= s
            out.append((s, rate))
    return out


class Encoder(nn.Module):
    """What every encoder shares: a stride-2 `stem`, then `blocks` whose `depthwise` conv carries
    the block's stride and dilation, tapped at the last block of nominal stride 4 (`low_level`) and
    8 (`mid_level`). A subclass calls `_plan` for the blocks' (stride, dilation) before building
    them, sets `stem` and `blocks`, then calls `_tap`; `_last` post-processes the final block."""

    def _plan(self, block_strides: Sequence[int], output_stride: int) -> list[tuple[int, int]]:
        """(stride, dilation) of every block at `output_stride` (the stem keeps stride 2)."""
        self._nominal_strides = [2, *block_strides]
        self.output_stride = output_stride
        return dilated_strides(self._nominal_strides, output_stride)[1:]

    def _tap(self, block_channels: Sequence[int], out_channels: Optional[int] = None) -> None:
        """Feature taps and `channels` from each block's output width (`out_channels`: that of
        `out` when `_last` changes it)."""
        cumulative, self._taps, self.channels = 2, {}, {}
        for index, (stride, channels) in enumerate(zip(self._nominal_strides[1:], block_channels)):
            cumulative *= stride
            name = {4: "low_level", 8: "mid_level"}.get(cumulative)
            if name is not None:  # the last block at that stride wins
                self._taps[name] = index
                self.channels[name] = channels
        self.channels["out"] = block_channels[-1] if out_channels is None else out_channels

    def set_output_stride(self, output_stride: int) -> None:
        """Switch between output stride 8, 16 and 32 by changing strides and dilations only."""
        for block, (stride, dilation) in zip(self.blocks, self._plan(self._nominal_strides[1:], output_stride)):
            block.depthwise.set_stride_dilation(stride, dilation)

    def _last(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features: dict[str, torch.Tensor] = {}
        x = self.stem(x)
        low, mid = self._taps["low_level"], self._taps["mid_level"]
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index == low:
                features["low_level"] = x
            elif index == mid:
                features["mid_level"] = x
        features["out"] = self._last(x)
        return features
