"""The segmenter: backbone -> head -> bilinear resize to the input size. It knows its own name and
input normalisation (mean/std buffers, saved with its weights): evaluation, prediction, export and
the benchmarks ask the model, not the config."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from seg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, pixel_mean_std
from seg.errors import ConfigError, UnsafeFileError
from seg.models.heads import AsppLiteHead, AuxHead, DeepLabV3Head, DeepLabV3PlusHead, LRASPPHead
from seg.models.mnasnet import mnasnet_a1, mnasnet_b1
from seg.models.mobilenet_v1 import mobilenet_v1
from seg.models.mobilenet_v2 import mobilenet_v2
from seg.models.mobilenet_v3 import mobilenet_v3_large, mobilenet_v3_small

# The only callables a config may name (`_target_`): this package's own builders. A config is data
# (a checkpoint's may come from anywhere), so nothing else is ever looked up or called.
BACKBONE_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    f"{fn.__module__}.{fn.__name__}": fn
    for fn in (mobilenet_v1, mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small, mnasnet_b1, mnasnet_a1)
}
HEAD_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    f"{cls.__module__}.{cls.__qualname__}": cls for cls in (AsppLiteHead, DeepLabV3Head, DeepLabV3PlusHead, LRASPPHead)
}


class Segmenter(nn.Module):
    """Composes an encoder that returns a feature dict with a head that consumes it.

    Works for any input size (513x513, 500x375, ...): the logits are resized to the input size.
    `forward` takes normalised images; `normalize` makes them from 0..255 pixels with the model's
    own `pixel_mean` / `pixel_std` (buffers, saved in its state_dict).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        output_stride: int,
        align_corners: bool = False,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
        name: str = "segmenter",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.output_stride = output_stride
        self.align_corners = align_corners
        self.name = name  # e.g. "mobilenet_v2 x0.5 + LRASPPHead"
        self.register_buffer("pixel_mean", torch.tensor(list(pixel_mean), dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(list(pixel_std), dtype=torch.float32).view(1, 3, 1, 1))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(images - pixel_mean) / pixel_std as float32, for uint8 or float images in 0..255, NCHW or CHW."""
        mean, std = self.pixel_mean, self.pixel_std
        if images.dim() == 3:
            mean, std = mean[0], std[0]
        return (images.float() - mean.to(images.device)) / std.to(images.device)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # Checkpoints written before the model held its normalisation: it comes from their config,
        # which built this model, so the values it has now are the right ones.
        for key in ("pixel_mean", "pixel_std"):
            state_dict.setdefault(prefix + key, getattr(self, key))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def set_output_stride(self, output_stride: int) -> None:
        """Switch to output stride 8, 16 or 32: dilations (and ASPP rates) change, weights don't."""
        self.backbone.set_output_stride(output_stride)
        self.head.set_output_stride(output_stride)
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor, output_size: Optional[tuple[int, int]] = None) -> torch.Tensor:
        """Logits at `output_size` (default: the input size), resized bilinearly in one step."""
        logits = self.head(self.backbone(x))
        size = x.shape[-2:] if output_size is None else output_size
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)


class TrainNet(nn.Module):
    """The segmenter plus the optional auxiliary head, as training runs it: returns `(logits,
    aux_logits or None)`, both at the input size.

    One module so that DDP synchronises the gradients of both. The auxiliary head reads the
    backbone's stride-8 features through a forward hook, leaving the segmenter's forward untouched.
    """

    def __init__(self, model: Segmenter, aux: Optional[AuxHead] = None) -> None:
        super().__init__()
        self.model, self.aux = model, aux
        self._features: Optional[torch.Tensor] = None
        if aux is not None:
            model.backbone.register_forward_hook(self._keep_features)

    @classmethod
    def build(cls, model: Segmenter, aux_loss_weight: float, num_classes: int) -> "TrainNet":
        """With an auxiliary head when `aux_loss_weight > 0`."""
        aux = AuxHead(model.backbone.channels["mid_level"], num_classes) if aux_loss_weight > 0 else None
        return cls(model, aux)

    def _keep_features(self, _module: nn.Module, _inputs: Any, outputs: dict) -> None:
        self._features = outputs["mid_level"]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        logits = self.model(x)
        if self.aux is None:
            return logits, None
        aux = self.aux(self._features)
        self._features = None
        return logits, F.interpolate(aux, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _builder_arguments(node: Any, key: str, builders: Mapping[str, Callable[..., nn.Module]]) -> tuple[Callable, dict]:
    """The allowed builder a config node names and its keyword arguments (plain values only)."""
    values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    target = values.pop("_target_", None)
    if target not in builders:
        raise UnsafeFileError(
            f"{key}._target_={target!r} is not one of this package's builders ({', '.join(sorted(builders))})"
        )
    for name, value in values.items():
        if isinstance(name, str) and name.startswith("_") and name.endswith("_"):
            raise UnsafeFileError(f"{key}.{name}: special key refused (a model config holds only plain values)")
        if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)):
            raise UnsafeFileError(f"{key}.{name}: nested value refused (a model config holds only plain values)")
    return builders[target], values


def build_backbone(backbone_cfg: Any, output_stride: int, start_weights: bool = True) -> nn.Module:
    """The encoder a `model.backbone` config describes, built by one of BACKBONE_BUILDERS.
    `start_weights=False` leaves out its ImageNet start (`pretrained`, `weights`): for counting,
    timing, or weights loaded next from a checkpoint, nothing is fetched."""
    builder, kwargs = _builder_arguments(backbone_cfg, "model.backbone", BACKBONE_BUILDERS)
    if not start_weights:
        kwargs.update(pretrained=None, weights=None)
    return builder(**kwargs, output_stride=output_stride)


def part_names(model_cfg: Any) -> tuple[str, str]:
    """The backbone builder's and the head's names a `model` config gives: (`mobilenet_v2`, `LRASPPHead`)."""
    return tuple(
        str(OmegaConf.select(model_cfg, f"{part}._target_")).rsplit(".", 1)[-1]  # type: ignore[return-value]
        for part in ("backbone", "head")
    )


def model_name(model_cfg: Any) -> str:
    """What a `model` config builds, in words: `mobilenet_v2 x0.5 + LRASPPHead`."""
    backbone, head = part_names(model_cfg)
    return f"{backbone} x{float(OmegaConf.select(model_cfg, 'backbone.depth_multiplier')):g} + {head}"


def input_normalization(model_cfg: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The model's per-channel (mean, std) in 0..255 units: `model.pixel_mean` / `model.pixel_std`
    when set, else those of the `model.normalization` preset."""
    mean, std = pixel_mean_std(OmegaConf.select(model_cfg, "normalization"))
    given_mean, given_std = OmegaConf.select(model_cfg, "pixel_mean"), OmegaConf.select(model_cfg, "pixel_std")
    return (
        tuple(float(v) for v in given_mean) if given_mean is not None else mean,
        tuple(float(v) for v in given_std) if given_std is not None else std,
    )


def build_segmenter(model_cfg: DictConfig, start_weights: bool = True) -> Segmenter:
    """Build the segmenter a `model` config describes: backbone and head by their `_target_`, which
    must name one of this package's builders (BACKBONE_BUILDERS, HEAD_BUILDERS). `start_weights`:
    see `build_backbone`."""
    if model_cfg.output_stride not in (8, 16, 32):
        raise ConfigError(f"model.output_stride must be 8, 16 or 32, got {model_cfg.output_stride}")
    backbone = build_backbone(model_cfg.backbone, model_cfg.output_stride, start_weights)
    head_builder, head_kwargs = _builder_arguments(model_cfg.head, "model.head", HEAD_BUILDERS)
    head = head_builder(
        in_channels=dict(backbone.channels),
        num_classes=model_cfg.num_classes,
        output_stride=model_cfg.output_stride,
        align_corners=model_cfg.align_corners,
        **head_kwargs,
    )
    mean, std = input_normalization(model_cfg)
    return Segmenter(
        backbone, head, model_cfg.output_stride, model_cfg.align_corners, mean, std, name=model_name(model_cfg)
    )
