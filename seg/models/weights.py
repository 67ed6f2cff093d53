"""ImageNet initialisation of the encoders from torchvision's classification checkpoints.

torchvision's `mobilenet_v2`, `mobilenet_v3_large`, `mobilenet_v3_small` and `mnasnet*` (MnasNet-B1)
state_dicts are mapped by name onto our modules; the classifier (and MobileNetV2's and MnasNet's
final 1280-channel conv, which the encoders do not use) are left out. Any tensor of ours without a
source, or of a different shape, is an error that names it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from seg.errors import SegError

# torchvision's weight enums, for `backbone.pretrained=imagenet`.
TORCHVISION_WEIGHTS = {
    "mobilenet_v2": "MobileNet_V2_Weights.IMAGENET1K_V1",
    "mobilenet_v3_large": "MobileNet_V3_Large_Weights.IMAGENET1K_V1",
    "mobilenet_v3_small": "MobileNet_V3_Small_Weights.IMAGENET1K_V1",
    "mnasnet0_5": "MNASNet0_5_Weights.IMAGENET1K_V1",
    "mnasnet0_75": "MNASNet0_75_Weights.IMAGENET1K_V1",
    "mnasnet1_0": "MNASNet1_0_Weights.IMAGENET1K_V1",
    "mnasnet1_3": "MNASNet1_3_Weights.IMAGENET1K_V1",
}


class WeightsError(SegError, RuntimeError):
    """A checkpoint that does not fit the model it is loaded into."""


def _conv_bn(ours: str, conv: str, bn: str) -> dict[str, str]:
    mapping = {f"{ours}.conv.weight": f"{conv}.weight"}
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        mapping[f"{ours}.bn.{name}"] = f"{bn}.{name}"
    return mapping


def _mnasnet_key_map(model: nn.Module) -> dict[str, str]:
    """torchvision's MNASNet is one flat Sequential `layers`: stem conv, bn (0, 1), separable
    depthwise conv, bn (3, 4), projection conv, bn (6, 7), then one Sequential per stage (8-13) of
    blocks whose `layers` are expand conv, bn (0, 1), depthwise conv, bn (3, 4), projection conv, bn (6, 7)."""
    from seg.models.mnasnet import B1

    mapping = _conv_bn("stem", "layers.0", "layers.1")
    mapping.update(_conv_bn("blocks.0.depthwise", "layers.3", "layers.4"))
    mapping.update(_conv_bn("blocks.0.project", "layers.6", "layers.7"))
    stage_block = [(stage, i) for stage, spec in enumerate(B1) for i in range(spec.repeats)]
    for index, (stage, i) in enumerate(stage_block[: len(model.blocks) - 1], start=1):
        tv = f"layers.{8 + stage}.{i}.layers"
        for part, (conv, bn) in {"expand": (0, 1), "depthwise": (3, 4), "project": (6, 7)}.items():
            mapping.update(_conv_bn(f"blocks.{index}.{part}", f"{tv}.{conv}", f"{tv}.{bn}"))
    return mapping


def torchvision_key_map(model: nn.Module, arch: str) -> dict[str, str]:
    """Our state_dict key -> torchvision's key, for every tensor of the encoder."""
    if arch.startswith("mnasnet"):
        return _mnasnet_key_map(model)
    mapping = _conv_bn("stem", "features.0.0", "features.0.1")
    for index, block in enumerate(model.blocks):
        tv = f"features.{index + 1}"
        ours = f"blocks.{index}"
        if arch == "mobilenet_v2":
            # torchvision: [expand (conv, bn)], depthwise (conv, bn), project conv, project bn
            j = 0
            if block.expand is not None:
                mapping.update(_conv_bn(f"{ours}.expand", f"{tv}.conv.0.0", f"{tv}.conv.0.1"))
                j = 1
            mapping.update(_conv_bn(f"{ours}.depthwise", f"{tv}.conv.{j}.0", f"{tv}.conv.{j}.1"))
            mapping.update(_conv_bn(f"{ours}.project", f"{tv}.conv.{j + 1}", f"{tv}.conv.{j + 2}"))
        else:
            # torchvision: block = [expand], depthwise, [se], project; each conv-bn a Sequential
            j = 0
            if block.expand is not None:
                mapping.update(_conv_bn(f"{ours}.expand", f"{tv}.block.0.0", f"{tv}.block.0.1"))
                j = 1
            mapping.update(_conv_bn(f"{ours}.depthwise", f"{tv}.block.{j}.0", f"{tv}.block.{j}.1"))
            j += 1
            if block.se is not None:
                for fc in ("fc1", "fc2"):
                    for p in ("weight", "bias"):
                        mapping[f"{ours}.se.{fc}.{p}"] = f"{tv}.block.{j}.{fc}.{p}"
                j += 1
            mapping.update(_conv_bn(f"{ours}.project", f"{tv}.block.{j}.0", f"{tv}.block.{j}.1"))
    if arch != "mobilenet_v2":
        last = f"features.{len(model.blocks) + 1}"
        mapping.update(_conv_bn("last_conv", f"{last}.0", f"{last}.1"))
    return mapping


def load_torchvision_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], arch: str, source: str) -> None:
    """Copy a torchvision classification state_dict into our encoder, checking every tensor."""
    mapping = torchvision_key_map(model, arch)
    ours = model.state_dict()
    missing = sorted(k for k, tv in mapping.items() if tv not in state_dict)
    mismatched = [
        f"{k} {tuple(ours[k].shape)} <- {tv} {tuple(state_dict[tv].shape)}"
        for k, tv in mapping.items()
        if tv in state_dict and state_dict[tv].shape != ours[k].shape
    ]
    if missing or mismatched:
        lines = [f"{source} does not fit {arch} (depth_multiplier={model.depth_multiplier}):"]
        lines += [f"  missing in the file: {mapping[k]} (for {k})" for k in missing[:20]]
        lines += [f"  shape mismatch: {m}" for m in mismatched[:20]]
        if mismatched and arch == "mobilenet_v2":
            lines.append(
                "  torchvision rounds MobileNetV2 widths differently: set model.backbone.channel_rounding=torchvision"
            )
        if mismatched and arch.startswith("mnasnet"):
            lines.append("  a torchvision MNASNet file fits only model.backbone.depth_multiplier equal to its own")
        raise WeightsError("\n".join(lines))
    model.load_state_dict({k: state_dict[tv] for k, tv in mapping.items()}, strict=True)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from a local file (bare, or under a "state_dict" / "model" key), loaded safely."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"model.backbone.weights: no file at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, or one that needs arbitrary unpickling
        raise WeightsError(f"model.backbone.weights: cannot read {path} as a state_dict ({exc})") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"model.backbone.weights: {path} holds no state_dict")
    return obj


def load_imagenet_weights(model: nn.Module, arch: str, pretrained: Optional[str] = None, weights: Optional[str] = None) -> None:
    """Initialise an encoder from a local torchvision file (`weights`) or torchvision's weights API."""
    if weights is not None:
        load_torchvision_state_dict(model, read_state_dict(weights), arch, str(weights))
        return
    if pretrained != "imagenet":
        raise WeightsError(f"model.backbone.pretrained must be null or 'imagenet', got {pretrained!r}")
    from torchvision.models import get_weight

    enum_name = TORCHVISION_WEIGHTS[arch]
    try:
        state_dict = get_weight(enum_name).get_state_dict(progress=True)
    except Exception as exc:  # offline, or a blocked download
        raise WeightsError(
            f"could not fetch torchvision's {enum_name} ({exc}). Download it where there is network "
            f"access and pass the file with model.backbone.weights=/path/to/{arch}.pth"
        ) from exc
    load_torchvision_state_dict(model, state_dict, arch, enum_name)
