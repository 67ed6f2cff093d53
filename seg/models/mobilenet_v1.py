"""MobileNetV1 encoder (Howard et al., "MobileNets: Efficient Convolutional Neural Networks for
Mobile Vision Applications", 2017, Table 1): a standard 3x3 conv with stride 2, then 13
depthwise-separable layers (3x3 depthwise + BN + ReLU, 1x1 pointwise + BN + ReLU), with width
multiplier alpha (`depth_multiplier`) and output stride 8/16/32 by atrous convolution.

The resolution multiplier rho of the paper is the input size (`flops.input_size`); it does not
change the network. Module names follow the TensorFlow reference (`Conv2d_0`,
`Conv2d_N_{depthwise,pointwise}` -> `stem`, `blocks.N-1.{depthwise,pointwise}`).
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from seg.config import ChannelRounding
from seg.models.classifier import ClassificationTop
from seg.models.layers import ConvBNAct, DepthwiseSeparable, Encoder, make_divisible
from seg.models.weights import WeightsError

# (pointwise output channels, depthwise stride) of the 13 depthwise-separable layers: Table 1.
SEPARABLE_SETTING = [
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
]
STEM_CHANNELS = 32
MIN_DEPTH = 8  # the TF reference's floor on every width
BN_EPS = 1e-3  # the TF reference's batch-norm epsilon (the only published MobileNetV1 weights)


class MobileNetV1(Encoder):
    """MobileNetV1 feature extractor returning `{"low_level", "mid_level", "out"}`.

    `low_level` is the last stride-4 feature map (128 channels at alpha 1.0), `mid_level` the last
    stride-8 one (256) and `out` the last layer's output at the output stride (1024). `channels`
    gives their channel counts.
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
            if rounding is ChannelRounding.torchvision:
                return make_divisible(c * depth_multiplier, 8)
            # The paper's int(c * alpha) (with the TF reference's floor of 8), which DeepLab uses.
            return max(int(c * depth_multiplier), MIN_DEPTH)

        stem_channels = width(STEM_CHANNELS)
        placement = self._plan([s for _, s in SEPARABLE_SETTING], output_stride)
        self.stem = ConvBNAct(3, stem_channels, 3, stride=2, bn_eps=bn_eps, tf_same_padding=tf_same_padding)
        widths = [width(c) for c, _ in SEPARABLE_SETTING]
        self.blocks = nn.ModuleList(
            DepthwiseSeparable(cin, cout, 3, stride, dilation, bn_eps=bn_eps, tf_same_padding=tf_same_padding)
            for cin, cout, (stride, dilation) in zip([stem_channels, *widths], widths, placement)
        )
        self._tap(widths)

    def classification_top(self, num_classes: int = 1000) -> nn.Module:
        """The paper's top: global average pool and a fully connected layer on the 1024*alpha features."""
        return ClassificationTop(self.channels["out"], num_classes)


def mobilenet_v1(
    depth_multiplier: float = 1.0,
    output_stride: int = 16,
    channel_rounding: ChannelRounding | str = ChannelRounding.deeplab,
    pretrained: Optional[str] = None,
    weights: Optional[str] = None,
    bn_eps: Optional[float] = None,
    tf_same_padding: bool = False,
) -> MobileNetV1:
    """Build a MobileNetV1 encoder at width multiplier `depth_multiplier` (alpha).

    `channel_rounding=deeplab` (default) takes the paper's widths, int(c * alpha);
    `torchvision` rounds them to multiples of 8 as torchvision's MobileNets do (the same widths
    at alpha 1.0, 0.75, 0.5 and 0.25). torchvision publishes no MobileNetV1, so `pretrained` and
    `weights` are refused.
    """
    if weights is not None or pretrained is not None:
        raise WeightsError(
            "torchvision has no MobileNetV1 ImageNet weights to load: leave model.backbone.pretrained "
            "and model.backbone.weights null for backbone=mnv1*"
        )
    return MobileNetV1(depth_multiplier, output_stride, channel_rounding, bn_eps, tf_same_padding)
