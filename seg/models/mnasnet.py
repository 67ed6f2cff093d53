"""MnasNet encoders (Tan et al., "MnasNet: Platform-Aware Neural Architecture Search for Mobile",
2019), with depth multiplier and output stride 8/16/32 by atrous convolution.

- `mnasnet_b1`: the variant without squeeze-and-excitation, which is what torchvision's
  `mnasnet0_5` / `0_75` / `1_0` / `1_3` are; their ImageNet weights load into it
  (`torchvision_key_map`).
- `mnasnet_a1`: the network of the paper's Figure 7, with squeeze-and-excitation (sigmoid gate,
  squeeze to a quarter of the block's input channels, as the TF reference) in three stages.
  torchvision has no A1, so it trains from scratch.

Both start with a 3x3 conv (stride 2) and a depthwise-separable layer (3x3 depthwise + BN + ReLU,
1x1 linear projection) and end, like MobileNetV2 in DeepLab, with the last block (320 channels at
multiplier 1.0); the 1280-channel 1x1 conv belongs to the classification form only.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from torch import nn

from seg.config import ChannelRounding
from seg.models.classifier import ClassificationTop
from seg.models.layers import ConvBNAct, Encoder, InvertedResidual, make_divisible
from seg.models.weights import WeightsError, conv_bn_keys, load_imagenet_weights


class StageSpec(NamedTuple):
    expansion: int
    kernel: int
    out: int
    repeats: int
    stride: int
    se: bool


# After the stem conv (32) and the separable layer (16): stages of inverted residual blocks.
B1 = [  # torchvision's MNASNet (and the TF reference's mnasnet-b1)
    StageSpec(3, 3, 24, 3, 2, False),
    StageSpec(3, 5, 40, 3, 2, False),
    StageSpec(6, 5, 80, 3, 2, False),
    StageSpec(6, 3, 96, 2, 1, False),
    StageSpec(6, 5, 192, 4, 2, False),
    StageSpec(6, 3, 320, 1, 1, False),
]
A1 = [  # Figure 7 of the paper (and the TF reference's mnasnet-a1)
    StageSpec(6, 3, 24, 2, 2, False),
    StageSpec(3, 5, 40, 3, 2, True),
    StageSpec(6, 3, 80, 4, 2, False),
    StageSpec(6, 3, 112, 2, 1, True),
    StageSpec(6, 5, 160, 3, 2, True),
    StageSpec(6, 3, 320, 1, 1, False),
]
STEM_CHANNELS = 32
SEPARABLE_CHANNELS = 16
LAST_CHANNELS = 1280  # the classification form's 1x1 conv; not scaled by the multiplier
SE_RATIO = 0.25
BN_EPS = 1e-5  # torchvision's


class MnasNet(Encoder):
    """MnasNet feature extractor returning `{"low_level", "mid_level", "out"}` (strides 4, 8 and the
    output stride: 24, 40 and 320 channels at multiplier 1.0); `channels` gives their counts."""

    def __init__(
        self,
        stages: list[StageSpec],
        depth_multiplier: float = 1.0,
        output_stride: int = 16,
        bn_eps: Optional[float] = None,
        tf_same_padding: bool = False,
    ) -> None:
        super().__init__()
        bn_eps = BN_EPS if bn_eps is None else bn_eps
        self.depth_multiplier = depth_multiplier
        self.bn_eps = bn_eps

        def width(c: int) -> int:
            # torchvision's `_round_to_multiple_of(c * alpha, 8)` and the TF reference's round_filters
            return make_divisible(c * depth_multiplier, 8)

        # (in, out, expansion, kernel, nominal stride, se) of every block, the separable layer first
        stem_channels = width(STEM_CHANNELS)
        layers = [(stem_channels, width(SEPARABLE_CHANNELS), 1, 3, 1, False)]
        for stage in stages:
            for i in range(stage.repeats):
                layers.append((layers[-1][1], width(stage.out), stage.expansion, stage.kernel,
                               stage.stride if i == 0 else 1, stage.se))  # fmt: skip
        placement = self._plan([layer[4] for layer in layers], output_stride)

        self.stem = ConvBNAct(3, stem_channels, 3, stride=2, bn_eps=bn_eps, tf_same_padding=tf_same_padding)
        # Expansion widths are not rounded (torchvision and the TF reference); the SE squeezes to a
        # quarter of the block's input channels. The first block (expansion 1) is the separable layer.
        self.blocks = nn.ModuleList(
            InvertedResidual(
                cin,
                cin * t,
                cout,
                k,
                stride,
                dilation,
                nn.ReLU,
                se_channels=max(1, int(cin * SE_RATIO)) if se else None,
                se_gate=nn.Sigmoid,
                bn_eps=bn_eps,
                tf_same_padding=tf_same_padding,
            )
            for (cin, cout, t, k, _, se), (stride, dilation) in zip(layers, placement)
        )
        self._tap([layer[1] for layer in layers])

    def classification_top(self, num_classes: int = 1000) -> nn.Module:
        """1x1 conv to 1280 + BN + ReLU, global average pool, fully connected (torchvision's)."""
        return ClassificationTop(self.channels["out"], num_classes, conv_channels=LAST_CHANNELS, bn_eps=self.bn_eps)


# torchvision's MNASNet (B1) builders by multiplier, for `pretrained` / `weights`.
TORCHVISION_ARCH = {0.5: "mnasnet0_5", 0.75: "mnasnet0_75", 1.0: "mnasnet1_0", 1.3: "mnasnet1_3"}


def mnasnet_b1(
    depth_multiplier: float = 1.0,
    output_stride: int = 16,
    channel_rounding: ChannelRounding | str = ChannelRounding.deeplab,
    pretrained: Optional[str] = None,
    weights: Optional[str] = None,
    bn_eps: Optional[float] = None,
    tf_same_padding: bool = False,
) -> MnasNet:
    """MnasNet-B1 encoder, optionally initialised from torchvision's `mnasnet*` ImageNet weights.

    `weights` is a local torchvision MNASNet state_dict file of the same multiplier;
    `pretrained="imagenet"` fetches torchvision's published weights (multipliers 0.5, 0.75, 1.0,
    1.3). Widths are multiples of 8 in both `channel_rounding` modes (torchvision and the TF
    reference agree).
    """
    ChannelRounding(channel_rounding)  # validates the value; both modes give the same network
    model = MnasNet(B1, depth_multiplier, output_stride, bn_eps, tf_same_padding)
    if weights is not None or pretrained is not None:
        arch = TORCHVISION_ARCH.get(depth_multiplier, "mnasnet")
        if weights is None and arch == "mnasnet":
            raise WeightsError(
                f"torchvision publishes MNASNet weights for depth multipliers {sorted(TORCHVISION_ARCH)}, "
                f"not {depth_multiplier}"
            )
        load_imagenet_weights(
            model,
            arch,
            torchvision_key_map(model),
            pretrained=pretrained,
            weights=weights,
            mismatch_hint="a torchvision MNASNet file fits only model.backbone.depth_multiplier equal to its own",
        )
    return model


def mnasnet_a1(
    depth_multiplier: float = 1.0,
    output_stride: int = 16,
    channel_rounding: ChannelRounding | str = ChannelRounding.deeplab,
    pretrained: Optional[str] = None,
    weights: Optional[str] = None,
    bn_eps: Optional[float] = None,
    tf_same_padding: bool = False,
) -> MnasNet:
    """MnasNet-A1 encoder (with squeeze-and-excitation). No torchvision weights fit it: torchvision's
    MNASNet is B1 (other stage depths, no SE), so `pretrained` and `weights` are refused."""
    ChannelRounding(channel_rounding)
    if weights is not None or pretrained is not None:
        raise WeightsError(
            "torchvision's MNASNet weights are MnasNet-B1 and do not fit MnasNet-A1: use backbone=mnasnet_b1 "
            "to load them, or leave model.backbone.pretrained and model.backbone.weights null"
        )
    return MnasNet(A1, depth_multiplier, output_stride, bn_eps, tf_same_padding)


def torchvision_key_map(model: MnasNet) -> dict[str, str]:
    """Our state_dict key -> that of torchvision's MNASNet (B1). torchvision's is one flat Sequential
    `layers`: stem conv, bn (0, 1), separable depthwise conv, bn (3, 4), projection conv, bn (6, 7),
    then one Sequential per stage (8-13) of blocks whose `layers` are expand conv, bn (0, 1),
    depthwise conv, bn (3, 4), projection conv, bn (6, 7)."""
    mapping = conv_bn_keys("stem", "layers.0", "layers.1")
    mapping.update(conv_bn_keys("blocks.0.depthwise", "layers.3", "layers.4"))
    mapping.update(conv_bn_keys("blocks.0.project", "layers.6", "layers.7"))
    stage_block = [(stage, i) for stage, spec in enumerate(B1) for i in range(spec.repeats)]
    for index, (stage, i) in enumerate(stage_block[: len(model.blocks) - 1], start=1):
        tv = f"layers.{8 + stage}.{i}.layers"
        for part, (conv, bn) in {"expand": (0, 1), "depthwise": (3, 4), "project": (6, 7)}.items():
            mapping.update(conv_bn_keys(f"blocks.{index}.{part}", f"{tv}.{conv}", f"{tv}.{bn}"))
    return mapping
