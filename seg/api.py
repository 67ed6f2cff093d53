"""The Python API: build a model in one line, load any model file as a predictor.

    import seg
    seg.list_models()                       # backbones, heads and official releases by name
    model = seg.create_model(backbone="mnv2", head="deeplabv3plus", num_classes=21, output_stride=16)
    predictor = seg.load("best.pt")         # a checkpoint, an exported .onnx / .tflite / TorchScript file
    mask = predictor(image)                 # HxW uint8 class ids, for a numpy RGB image, a PIL image or a path

`create_model` composes the same config the tools compose (`conf/`), so a model built here is the
network `tools/train.py backbone=... head=...` trains, with the same defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from seg.commands import config_dir
from seg.errors import ConfigError

PathLike = str | os.PathLike


def compose(overrides: Sequence[str] = ()) -> Any:
    """The config the tools compose (conf/config.yaml) with these Hydra overrides, checked."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from seg.config import check_config, register_configs

    register_configs()
    try:
        if GlobalHydra.instance().is_initialized():  # inside a Hydra app: its own search path
            cfg = hydra_compose("config", overrides=list(overrides))
        else:
            with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
                cfg = hydra_compose("config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(str(exc).strip().splitlines()[0]) from None
    check_config(cfg)
    return cfg


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def list_models() -> dict[str, list[str]]:
    """What `create_model` and `from_pretrained` take: `backbones` and `heads` (config names, as
    `backbone=` / `head=` on the command line) and `pretrained` (official releases)."""
    from seg.pretrained import RELEASES

    return {"backbones": _names("backbone"), "heads": _names("head"), "pretrained": sorted(RELEASES)}


def create_model(
    backbone: str = "mnv2",
    head: str = "deeplabv3plus",
    num_classes: int = 21,
    output_stride: int = 16,
    pretrained: Optional[str] = None,
    **model: Any,
) -> Any:
    """A `Segmenter` (in training mode, random head): `backbone` and `head` are config names
    (`list_models()`), `pretrained="imagenet"` starts the encoder from torchvision's ImageNet
    weights, other keyword arguments set `model.*` keys (e.g. `align_corners=True`,
    `pixel_mean=[128, 128, 128]`). For an official release's trained weights: `seg.from_pretrained`."""
    from seg.models.segmenter import build_segmenter

    known = list_models()
    for value, kind in ((backbone, "backbones"), (head, "heads")):
        if value not in known[kind]:
            raise ConfigError(f"{kind[:-1]}={value!r} is not one of {', '.join(known[kind])}")
    if pretrained not in (None, "imagenet"):
        hint = " (an official release: seg.from_pretrained)" if pretrained in known["pretrained"] else ""
        raise ConfigError(f"pretrained={pretrained!r}: null or 'imagenet'{hint}")
    overrides = [
        f"backbone={backbone}",
        f"head={head}",
        f"dataset.num_classes={int(num_classes)}",
    ]
    if int(num_classes) != 21:  # the default names are VOC's 21
        overrides.append(f"dataset.class_names=[{','.join(f'class_{i}' for i in range(int(num_classes)))}]")
    overrides += [
        f"model.output_stride={int(output_stride)}",
        f"model.backbone.pretrained={'null' if pretrained is None else pretrained}",
    ]
    overrides += [f"model.{key}={_override_value(value)}" for key, value in model.items()]
    return build_segmenter(compose(overrides).model)


def _override_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    return str(value)


class Predictor:
    """Image -> HxW uint8 class ids, for any model file. Takes an HxWx3 uint8 RGB array, a PIL
    image or a path (read with the project's image reader); any size."""

    def __init__(self, run: Any, class_names: Sequence[str], description: str) -> None:
        self._run = run
        self.class_names = list(class_names)
        self.description = description

    def __call__(self, image: Any) -> np.ndarray:
        return self._run(as_rgb(image))

    def __repr__(self) -> str:
        return f"Predictor({self.description}, {len(self.class_names)} classes)"


def as_rgb(image: Any) -> np.ndarray:
    """An HxWx3 uint8 RGB array from an array (HxWx3 RGB, or HxW grey), a PIL image or a path."""
    from PIL import Image

    from seg.images import pil_to_rgb, read_image

    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return pil_to_rgb(image)  # the rules of the image reader: EXIF, alpha, 16-bit, palette
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got an array of shape {array.shape} and {array.dtype}")
    return np.ascontiguousarray(array)


def load(path: PathLike, max_size: int = 2048, fast: bool = True, threads: Optional[int] = None) -> Predictor:
    """A predictor for a training checkpoint (its PyTorch model; `fast`: batch norm folded) or an
    exported model (.onnx, .pte, .tflite — ours, or an official TF Lite DeepLab file — or TorchScript)."""
    from seg.export.runtime import sniff_model_file

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"seg.load: no such file: {path}")
    if sniff_model_file(path) == "checkpoint":
        from seg.engine.checkpoint import load_segmenter
        from seg.export.runtime import TorchPredictor
        from seg.fastpath import fast_model

        model, stored = load_segmenter(path)
        run = TorchPredictor(fast_model(model) if fast else model, max_size)
        return Predictor(run, stored.dataset.class_names, f"{path.name}: {model.name}")
    from seg.export.runtime import load_exported

    exported = load_exported(path, threads, max_size)
    return Predictor(exported, exported.meta["class_names"], f"{path.name}: {exported.meta['format']}")
