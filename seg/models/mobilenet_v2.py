"""MobileNetV2 encoder (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
2018) as DeepLab uses it: the stem and the 17 inverted-residual blocks, without the final
1280-channel 1x1 conv, with output stride 8/16/32 by atrous convolution.

Module names follow the TensorFlow reference (`stem`, `blocks.N.{expand,depthwise,project}`) so
that both torchvision's and DeepLab's checkpoints map onto them by name (`torchvision_key_map`
below, `tf_weights.py`).
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from seg.config import ChannelRounding
from seg.models.classifier import ClassificationTop
from seg.models.layers import ConvBNAct, Encoder, InvertedResidual, make_divisible
from seg.models.weights import load_imagenet_weights, no_published_width, torchvision_features_keys

# (expansion t, output channels c, repeats n, first stride s): Table 2 of the paper.
INVERTED_RESIDUAL_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
STEM_CHANNELS = 32
LAST_CHANNELS = 1280  # the classification form's final 1x1 conv (not part of DeepLab's encoder)
BN_EPS = 1e-5  # torchvision's; TensorFlow's MobileNetV2 uses 1e-3 (model.backbone.bn_eps)


class MobileNetV2(Encoder):
    """MobileNetV2 feature extractor returning `{"low_level", "mid_level", "out"}`.

    `low_level` is the last stride-4 feature map (24 channels at multiplier 1.0), `mid_level` the
    last stride-8 one (32 channels) and `out` the last block's output at the output stride (320).
    `channels` gives their channel counts.
    """

    def __init__(
        self,
        depth_multiplier: float = 1.0,
        output_stride: int = 16,
        channel_rounding: ChannelRounding | str = ChannelRounding.deeplab,
        bn_eps: Optional[float] = None,
        tf_same_padding: bool = False,
    ) -> None:
        super().__init__()
        rounding = ChannelRounding(channel_rounding)
        bn_eps = BN_EPS if bn_eps is None else bn_eps
        self.depth_multiplier = depth_multiplier
        self.bn_eps = bn_eps

        def width(c: int) -> int:
            if rounding is ChannelRounding.torchvision or depth_multiplier == 1.0:
                return make_divisible(c * depth_multiplier, 8)
            # DeepLab's dm != 1 checkpoints: min_depth = divisible_by = 1.
            return make_divisible(c * depth_multiplier, 1)

        def expansion(in_channels: int, t: int) -> int:
            if t == 1:
                return in_channels
            if rounding is ChannelRounding.torchvision:
                return int(round(in_channels * t))
            return make_divisible(in_channels * t, 8)

        stem_channels = width(STEM_CHANNELS)
        layers: list[tuple[int, int, int, int]] = []  # (in, expanded, out, nominal stride)
        in_channels = stem_channels
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            out_channels = width(c)
            for i in range(n):
                layers.append((in_channels, expansion(in_channels, t), out_channels, s if i == 0 else 1))
                in_channels = out_channels
        placement = self._plan([layer[3] for layer in layers], output_stride)

        self.stem = ConvBNAct(
            3, stem_channels, 3, stride=2, activation=nn.ReLU6, bn_eps=bn_eps, tf_same_padding=tf_same_padding
        )
        self.blocks = nn.ModuleList(
            InvertedResidual(
                cin, cexp, cout, 3, stride, dilation, nn.ReLU6, bn_eps=bn_eps, tf_same_padding=tf_same_padding
            )
            for (cin, cexp, cout, _), (stride, dilation) in zip(layers, placement)
        )
        self._tap([layer[2] for layer in layers])

    def classification_top(self, num_classes: int = 1000) -> nn.Module:
        """The paper's top: 1x1 conv to 1280 channels (1280 x multiplier above 1.0, never fewer) +
        ReLU6, global average pool, fully connected."""
        last = make_divisible(LAST_CHANNELS * max(1.0, self.depth_multiplier), 8)
        return ClassificationTop(
            self.channels["out"], num_classes, conv_channels=last, conv_activation=nn.ReLU6, bn_eps=self.bn_eps
        )


def mobilenet_v2(
    depth_multiplier: float = 1.0,
    output_stride: int = 16,
    channel_rounding: ChannelRounding | str = ChannelRounding.deeplab,
    pretrained: Optional[str] = None,
    weights: Optional[str] = None,
    bn_eps: Optional[float] = None,
    tf_same_padding: bool = False,
) -> MobileNetV2:
    """Build a MobileNetV2 encoder, optionally initialised from torchvision's ImageNet weights.

    `weights` is a local torchvision `mobilenet_v2` state_dict file; `pretrained="imagenet"` fetches
    torchvision's published weights through its weights API (only depth multiplier 1.0 exists).
    `bn_eps` (default 1e-5) and `tf_same_padding` reproduce TensorFlow checkpoints' numerics.
    """
    if pretrained is not None and weights is None and depth_multiplier != 1.0:
        raise no_published_width("MobileNetV2", depth_multiplier, "1.0")
    model = MobileNetV2(depth_multiplier, output_stride, channel_rounding, bn_eps, tf_same_padding)
    if weights is not None or pretrained is not None:
        load_imagenet_weights(
            model,
            "mobilenet_v2",
            torchvision_key_map(model),
            pretrained=pretrained,
            weights=weights,
            mismatch_hint="torchvision rounds MobileNetV2 widths differently: set "
            "model.backbone.channel_rounding=torchvision",
        )
    return model


def torchvision_key_map(model: MobileNetV2) -> dict[str, str]:
    """Our state_dict key -> that of torchvision's `mobilenet_v2`: `features.0` the stem, then
    `features.N+1.conv` of block N: [expand (conv, bn)], depthwise (conv, bn), projection conv, bn."""
    return torchvision_features_keys(model, "conv", flat_project=True)
