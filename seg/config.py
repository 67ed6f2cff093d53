"""Structured configs: every key a user may set, with its type and default.

Hydra merges `conf/*.yaml` onto these dataclasses, so a typo in an override (`train.lrr=0.1`) or a
value of the wrong type fails at start-up, naming the key. The dataclasses are registered with
Hydra's ConfigStore in `register_configs()`, which every tool calls before `@hydra.main` runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from seg.data.classes import VOC_CLASSES


class ChannelRounding(str, Enum):
    # DeepLab's MobileNetV2 feature extractor: block widths rounded to multiples of 8 at depth
    # multiplier 1.0 and not rounded otherwise; expansion widths always rounded to multiples of 8.
    deeplab = "deeplab"
    # torchvision: every block width rounded to a multiple of 8, expansion widths to the nearest
    # integer. Needed to load torchvision's ImageNet weights.
    torchvision = "torchvision"


class Normalization(str, Enum):
    imagenet = "imagenet"  # (x/255 - mean) / std with ImageNet statistics (torchvision weights)
    deeplab = "deeplab"  # x/127.5 - 1 (TensorFlow DeepLab checkpoints)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


@dataclass
class BackboneConfig:
    """A MobileNet encoder; `_target_` names its builder in `seg/models/`."""

    _target_: str = "seg.models.mobilenet_v2.mobilenet_v2"
    depth_multiplier: float = 1.0
    channel_rounding: ChannelRounding = ChannelRounding.deeplab
    # "imagenet": torchvision's ImageNet weights through its weights API (downloads when online).
    pretrained: Optional[str] = None
    # Path of a local torchvision state_dict (.pth) to initialise from; wins over `pretrained`.
    weights: Optional[str] = None


@dataclass
class HeadConfig:
    _target_: str = MISSING
    dropout: float = 0.1


@dataclass
class AsppLiteConfig(HeadConfig):
    """The head of the published DeepLab MobileNetV2 rows: 1x1 branch + image pooling."""

    _target_: str = "seg.models.heads.AsppLiteHead"
    channels: int = 256


@dataclass
class DeepLabV3Config(HeadConfig):
    _target_: str = "seg.models.heads.DeepLabV3Head"
    channels: int = 256
    # Given for output stride 16; doubled at output stride 8, halved at 32.
    atrous_rates: List[int] = field(default_factory=lambda: [6, 12, 18])
    separable: bool = False


@dataclass
class DeepLabV3PlusConfig(HeadConfig):
    _target_: str = "seg.models.heads.DeepLabV3PlusHead"
    channels: int = 256
    atrous_rates: List[int] = field(default_factory=lambda: [6, 12, 18])
    low_level_channels: int = 48
    decoder_channels: int = 256
    # Depthwise-separable ASPP and decoder convs, as the DeepLabv3+ paper and TF DeepLab's defaults.
    separable: bool = True


@dataclass
class LRASPPConfig(HeadConfig):
    _target_: str = "seg.models.heads.LRASPPHead"
    channels: int = 128
    dropout: float = 0.0


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: Any = MISSING  # one of the *Config head schemas above, chosen by `head=...`
    num_classes: int = "${dataset.num_classes}"  # type: ignore[assignment]
    output_stride: int = 16
    normalization: Normalization = Normalization.imagenet
    align_corners: bool = False


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@dataclass
class SyntheticConfig:
    """The built-in dataset (`seg/data/synthetic.py`); any change here generates a new cache folder."""

    num_train: int = 600
    num_val: int = 100
    image_size: int = 128  # square images, pixels
    seed: int = 0
    min_objects: int = 1  # objects per image
    max_objects: int = 3
    min_scale: float = 0.16  # object half-extent as a fraction of image_size
    max_scale: float = 0.36
    min_visible: float = 0.5  # occlusion limit: each object keeps at least this fraction visible
    ignore_border: int = 1  # width of the 255 band along instance outlines (0: none)
    jpeg_quality: int = 90


@dataclass
class CocoConfig:
    # Training images whose selected annotations cover this many pixels or fewer are dropped
    # (null: keep all). Val is never filtered.
    min_pixels: Optional[int] = 1000


class DatasetName(str, Enum):
    synthetic = "synthetic"
    voc = "voc"
    voc_aug = "voc_aug"
    coco = "coco"
    folder = "folder"


@dataclass
class DatasetConfig:
    """Which files to read. `name` selects the reader in `seg/data/__init__.py`; data/README.md
    describes each dataset's layout under `root`."""

    name: DatasetName = DatasetName.synthetic
    # synthetic: cache folder (generated into a subfolder keyed by the parameters); voc/voc_aug: the
    # folder holding VOCdevkit (or VOC2012 itself); coco: the folder holding annotations/ and
    # train2017/; folder: the folder holding images_dir and masks_dir.
    root: str = ".cache/synthetic"
    train_split: str = "train"
    val_split: str = "val"
    num_classes: int = 21  # must equal len(class_names)
    ignore_index: int = 255  # mask value that counts for nothing (0..255; masks are uint8)
    class_names: List[str] = field(default_factory=lambda: list(VOC_CLASSES))
    num_workers: int = 2
    skip_bad: bool = False  # skip unreadable or invalid samples with a counted warning
    # dataset=folder: images and masks paired by file stem (relative to root, or absolute)
    images_dir: str = "images"
    masks_dir: str = "masks"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    coco: CocoConfig = field(default_factory=CocoConfig)


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    max_iters: int = 30000
    batch_size: int = 16
    crop_size: int = 513
    lr: float = 0.007
    momentum: float = 0.9
    weight_decay: float = 4e-5
    poly_power: float = 0.9
    warmup_iters: int = 0
    backbone_lr_mult: float = 1.0
    # Random scale augmentation; scale_step > 0 draws from {min, min+step, ..., max} as DeepLab does.
    scale_min: float = 0.5
    scale_max: float = 2.0
    scale_step: float = 0.25
    flip: bool = True
    seed: int = 0
    deterministic: bool = False


@dataclass
class EvalConfig:
    output_stride: Optional[int] = None  # None: the model's own output stride
    scales: List[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    max_images: Optional[int] = None
    save_predictions: bool = False


@dataclass
class FlopsConfig:
    input_size: int = 513  # DeepLab's eval crop (output_stride * k + 1)


@dataclass
class BenchmarkConfig:
    task: str = "data"  # data | train | eval | latency; `tools/benchmark.py TASK` sets it
    threads: int = 2
    warmup: int = 5
    runs: int = 20
    workers: List[int] = field(default_factory=lambda: [0, 1, 2])
    output: Optional[str] = None  # where to write the JSON result (default: the run directory)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    flops: FlopsConfig = field(default_factory=FlopsConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    checkpoint: Optional[str] = None  # a checkpoint to evaluate / export / predict with


HEAD_SCHEMAS = {
    "aspp_lite": AsppLiteConfig,
    "deeplabv3": DeepLabV3Config,
    "deeplabv3plus": DeepLabV3PlusConfig,
    "lraspp": LRASPPConfig,
}


def register_configs() -> None:
    """Register the schemas; `conf/*.yaml` files name them in their defaults lists."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for name, schema in HEAD_SCHEMAS.items():
        cs.store(group="head", name=f"{name}_schema", node=schema, package="model.head")
