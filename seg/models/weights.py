"""ImageNet initialisation of the encoders from torchvision's classification checkpoints.

torchvision's `mobilenet_v2`, `mobilenet_v3_large`, `mobilenet_v3_small` and `mnasnet*` (MnasNet-B1)
state_dicts are mapped by name onto our modules, each family through the `torchvision_key_map` of
its own module; the classifier (and MobileNetV2's and MnasNet's final 1280-channel conv, which the
encoders do not use) are left out. Any tensor of ours without a source, or of a different shape, is
an error that names it.
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


def conv_bn_keys(ours: str, conv: str, bn: str) -> dict[str, str]:
    """Key map of one of our ConvBNAct (`ours`) from a source's conv and batch-norm prefixes."""
    mapping = {f"{ours}.conv.weight": f"{conv}.weight"}
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        mapping[f"{ours}.bn.{name}"] = f"{bn}.{name}"
    return mapping


def torchvision_features_keys(model: nn.Module, inner: str, flat_project: bool) -> dict[str, str]:
    """Key map of an encoder laid out as torchvision's MobileNetV2 and V3: `features.0` the stem
    (conv, bn), then `features.N+1.<inner>` for block N, a Sequential of [expand], depthwise, [se]
    and the projection, each conv-bn a Sequential (conv `.0`, bn `.1`) except a `flat_project`
    (MobileNetV2's), whose conv and bn are two entries."""
    mapping = conv_bn_keys("stem", "features.0.0", "features.0.1")
    for index, block in enumerate(model.blocks):
        tv, ours, j = f"features.{index + 1}.{inner}", f"blocks.{index}", 0
        for part in ("expand", "depthwise"):
            if getattr(block, part) is not None:
                mapping.update(conv_bn_keys(f"{ours}.{part}", f"{tv}.{j}.0", f"{tv}.{j}.1"))
                j += 1
        if block.se is not None:
            for name in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
                mapping[f"{ours}.se.{name}"] = f"{tv}.{j}.{name}"
            j += 1
        conv, bn = (f"{tv}.{j}", f"{tv}.{j + 1}") if flat_project else (f"{tv}.{j}.0", f"{tv}.{j}.1")
        mapping.update(conv_bn_keys(f"{ours}.project", conv, bn))
    return mapping


def load_torchvision_state_dict(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    arch: str,
    key_map: dict[str, str],
    source: str,
    mismatch_hint: Optional[str] = None,
) -> None:
    """Copy a torchvision classification state_dict into our encoder through `key_map` (our key ->
    torchvision's, the family's `torchvision_key_map`), checking every tensor. `mismatch_hint` is
    added to the error when shapes differ."""
    ours = model.state_dict()
    missing = sorted(k for k, tv in key_map.items() if tv not in state_dict)
    mismatched = [
        f"{k} {tuple(ours[k].shape)} <- {tv} {tuple(state_dict[tv].shape)}"
        for k, tv in key_map.items()
        if tv in state_dict and state_dict[tv].shape != ours[k].shape
    ]
    if missing or mismatched:
        lines = [f"{source} does not fit {arch} (depth_multiplier={model.depth_multiplier}):"]
        lines += [f"  missing in the file: {key_map[k]} (for {k})" for k in missing[:20]]
        lines += [f"  shape mismatch: {m}" for m in mismatched[:20]]
        if mismatched and mismatch_hint:
            lines.append(f"  {mismatch_hint}")
        raise WeightsError("\n".join(lines))
    model.load_state_dict({k: state_dict[tv] for k, tv in key_map.items()}, strict=True)


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


def no_published_width(family: str, depth_multiplier: float, published: str) -> WeightsError:
    """The error for `pretrained=imagenet` at a width torchvision does not publish."""
    return WeightsError(
        f"model.backbone.pretrained=imagenet: torchvision publishes ImageNet {family} weights only at depth "
        f"multiplier {published}, not {depth_multiplier:g}: pass a state_dict of this width with "
        "model.backbone.weights=FILE, or start from scratch with model.backbone.pretrained=null"
    )


def load_imagenet_weights(
    model: nn.Module,
    arch: str,
    key_map: dict[str, str],
    pretrained: Optional[str] = None,
    weights: Optional[str] = None,
    mismatch_hint: Optional[str] = None,
) -> None:
    """Initialise an encoder from a local torchvision file (`weights`) or torchvision's weights API
    (`pretrained="imagenet"`: torchvision's `arch` weights), through the family's `key_map`."""
    if weights is not None:
        load_torchvision_state_dict(model, read_state_dict(weights), arch, key_map, str(weights), mismatch_hint)
        return
    if pretrained != "imagenet":
        raise WeightsError(f"model.backbone.pretrained must be null or 'imagenet', got {pretrained!r}")
    from torchvision.models import get_weight

    enum_name = TORCHVISION_WEIGHTS[arch]
    try:
        state_dict = get_weight(enum_name).get_state_dict(progress=True)
    except Exception as exc:  # offline, or a blocked download
        raise WeightsError(
            f"could not fetch torchvision's ImageNet weights {enum_name} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}): download them where there is network access and pass "
            f"the file with model.backbone.weights=/path/to/{arch}.pth, or start from scratch with "
            "model.backbone.pretrained=null"
        ) from exc
    load_torchvision_state_dict(model, state_dict, arch, key_map, enum_name, mismatch_hint)
