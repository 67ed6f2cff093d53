"""MobileNetV3-Large and -Small encoders (Howard et al., "Searching for MobileNetV3", 2019,
Tables 1 and 2): hard-swish, squeeze-and-excitation with hard-sigmoid gating, output stride
8/16/32 by atrous convolution.

The encoder keeps the final 1x1 conv (960 / 576 channels at multiplier 1.0) as the paper's
segmentation experiments and torchvision's segmentation models do. Channel widths are rounded to
multiples of 8 (the paper's reference code; torchvision and DeepLab's MobileNetV3 agree, so both
`channel_rounding` modes give the same network).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from seg.config import ChannelRounding
from seg.models.classifier import ClassificationTop
from seg.models.layers import ConvBNAct, Encoder, InvertedResidual, make_divisible
from seg.models.weights import conv_bn_keys, load_imagenet_weights, no_published_width, torchvision_features_keys


class BlockSpec(NamedTuple):
    kernel: int
    expanded: int
    out: int
    use_se: bool
    hardswish: bool
    stride: int


# Table 1 (Large) and Table 2 (Small): kernel, expansion size, output channels, SE, NL, stride.
LARGE = [
    BlockSpec(3, 16, 16, False, False, 1),
    BlockSpec(3, 64, 24, False, False, 2),
    BlockSpec(3, 72, 24, False, False, 1),
    BlockSpec(5, 72, 40, True, False, 2),
    BlockSpec(5, 120, 40, True, False, 1),
    BlockSpec(5, 120, 40, True, False, 1),
    BlockSpec(3, 240, 80, False, True, 2),
    BlockSpec(3, 200, 80, False, True, 1),
    BlockSpec(3, 184, 80, False, True, 1),
    BlockSpec(3, 184, 80, False, True, 1),
    BlockSpec(3, 480, 112, True, True, 1),
    BlockSpec(3, 672, 112, True, True, 1),
    BlockSpec(5, 672, 160, True, True, 2),
    BlockSpec(5, 960, 160, True, True, 1),
    BlockSpec(5, 960, 160, True, True, 1),
]
SMALL = [
    BlockSpec(3, 16, 16, True, False, 2),
    BlockSpec(3, 72, 24, False, False, 2),
    BlockSpec(3, 88, 24, False, False, 1),
    BlockSpec(5, 96, 40, True, True, 2),
    BlockSpec(5, 240, 40, True, True, 1),
    BlockSpec(5, 240, 40, True, True, 1),
    BlockSpec(5, 120, 48, True, True, 1),
    BlockSpec(5, 144, 48, True, True, 1),
    BlockSpec(5, 288, 96, True, True, 2),
    BlockSpec(5, 576, 96, True, True, 1),
    BlockSpec(5, 576, 96, True, True, 1),
]
STEM_CHANNELS = 16
BN_EPS = 1e-3  # the paper's reference code and torchvision's MobileNetV3 both use 0.001


class MobileNetV3(Encoder):
    """MobileNetV3 feature extractor returning `{"low_level", "mid_level", "out"}` (strides 4, 8
    and the output stride); `channels` gives their channel counts."""

    def __init__(
        self,
        specs: list[BlockSpec],
        depth_multiplier: float = 1.0,
        output_stride: int = 16,
        bn_eps: Optional[float] = None,
        tf_same_padding: bool = False,
        hidden_channels: int = 1280,  # the classification form's layer after pooling (Small: 1024)
    ) -> None:
        super().__init__()
        bn_eps = BN_EPS if bn_eps is None else bn_eps

        def width(c: int) -> int:
            return make_divisible(c * depth_multiplier, 8)

        self.depth_multiplier = depth_multiplier
        self.bn_eps = bn_eps
        self.hidden_channels = width(hidden_channels)
        placement = self._plan([s.stride for s in specs], output_stride)
        stem_channels = width(STEM_CHANNELS)
        self.stem = ConvBNAct(
            3, stem_channels, 3, stride=2, activation=nn.Hardswish, bn_eps=bn_eps, tf_same_padding=tf_same_padding
        )

        widths = [width(spec.out) for spec in specs]
        self.blocks = nn.ModuleList(
            InvertedResidual(
                cin,
                width(spec.expanded),
                cout,
                spec.kernel,
                stride,
                dilation,
                activation=nn.Hardswish if spec.hardswish else nn.ReLU,
                se_channels=make_divisible(width(spec.expanded) // 4, 8) if spec.use_se else None,
                bn_eps=bn_eps,
                tf_same_padding=tf_same_padding,
            )
            for cin, cout, spec, (stride, dilation) in zip([stem_channels, *widths], widths, specs, placement)
        )
        last_channels = 6 * widths[-1]
        self.last_conv = ConvBNAct(widths[-1], last_channels, 1, activation=nn.Hardswish, bn_eps=bn_eps)
        self._tap(widths, out_channels=last_channels)

    def classification_top(self, num_classes: int = 1000) -> nn.Module:
        """The paper's top after the final 1x1 conv: global average pool, 1x1 conv (no BN) to
        1280 / 1024 channels + hard-swish, then the classes (as torchvision, with Linear layers)."""
        return ClassificationTop(self.channels["out"], num_classes, hidden_channels=self.hidden_channels)

    def _last(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_conv(x)


def _build(
    arch: str,
    specs: list[BlockSpec],
    depth_multiplier: float,
    output_stride: int,
    channel_rounding: ChannelRounding | str,
    pretrained: Optional[str],
    weights: Optional[str],
    bn_eps: Optional[float],
    tf_same_padding: bool,
) -> MobileNetV3:
    ChannelRounding(channel_rounding)  # validates the value; both modes round to multiples of 8
    if pretrained is not None and weights is None and depth_multiplier != 1.0:
        family = {"mobilenet_v3_large": "MobileNetV3-Large", "mobilenet_v3_small": "MobileNetV3-Small"}[arch]
        raise no_published_width(family, depth_multiplier, "1.0")
    hidden = 1024 if arch == "mobilenet_v3_small" else 1280  # Tables 1 and 2
    model = MobileNetV3(specs, depth_multiplier, output_stride, bn_eps, tf_same_padding, hidden)
    if weights is not None or pretrained is not None:
        load_imagenet_weights(model, arch, torchvision_key_map(model), pretrained=pretrained, weights=weights)
    return model


def mobilenet_v3_large(
    depth_multiplier: float = 1.0,
    output_stride: int = 16,
    channel_rounding: ChannelRounding | str = ChannelRounding.deeplab,
    pretrained: Optional[str] = None,
    weights: Optional[str] = None,
    bn_eps: Optional[float] = None,
    tf_same_padding: bool = False,
) -> MobileNetV3:
    """MobileNetV3-Large encoder; the other arguments as in `mobilenet_v2`."""
    return _build(
        "mobilenet_v3_large",
        LARGE,
        depth_multiplier,
        output_stride,
        channel_rounding,
        pretrained,
        weights,
        bn_eps,
        tf_same_padding,
    )


def mobilenet_v3_small(
    depth_multiplier: float = 1.0,
    output_stride: int = 16,
    channel_rounding: ChannelRounding | str = ChannelRounding.deeplab,
    pretrained: Optional[str] = None,
    weights: Optional[str] = None,
    bn_eps: Optional[float] = None,
    tf_same_padding: bool = False,
) -> MobileNetV3:
    """MobileNetV3-Small encoder; the other arguments as in `mobilenet_v2`."""
    return _build(
        "mobilenet_v3_small",
        SMALL,
        depth_multiplier,
        output_stride,
        channel_rounding,
        pretrained,
        weights,
        bn_eps,
        tf_same_padding,
    )


def torchvision_key_map(model: MobileNetV3) -> dict[str, str]:
    """Our state_dict key -> that of torchvision's `mobilenet_v3_large` / `_small`: `features.0` the
    stem, `features.N+1.block` of block N: [expand], depthwise, [se], projection, each conv-bn a
    Sequential; then the last 1x1 conv."""
    mapping = torchvision_features_keys(model, "block", flat_project=False)
    last = f"features.{len(model.blocks) + 1}"
    mapping.update(conv_bn_keys("last_conv", f"{last}.0", f"{last}.1"))
    return mapping
