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
from omegaconf import MISSING, OmegaConf

from seg.data.classes import VOC_CLASSES
from seg.errors import ConfigError


class Choice(str, Enum):
    """A config key's fixed set of values. A member is its value wherever it goes: equal to and
    hashed as that string, printed, formatted and repr'd as it, JSON-encoded as it, so the code past
    the config reads `cfg.model.normalization == "deeplab"` and never unwraps `.value` (configs read
    back from checkpoints hold the plain strings)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    def __repr__(self) -> str:
        return repr(self.value)


class ChannelRounding(Choice):
    # DeepLab's MobileNetV2 feature extractor: block widths rounded to multiples of 8 at depth
    # multiplier 1.0 and not rounded otherwise; expansion widths always rounded to multiples of 8.
    deeplab = "deeplab"
    # torchvision: every block width rounded to a multiple of 8, expansion widths to the nearest
    # integer. Needed to load torchvision's ImageNet weights.
    torchvision = "torchvision"


class Normalization(Choice):
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
    # Numerics of TensorFlow checkpoints (set by tools/convert_tf.py): batch-norm epsilon (null: the
    # architecture's default: 1e-5 for MobileNetV2 and MnasNet, 1e-3 for MobileNetV1 and V3) and TF
    # "SAME" padding.
    bn_eps: Optional[float] = None
    tf_same_padding: bool = False


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
    # The input's per-channel mean and std in 0..255 units, RGB; when set they replace
    # `normalization` (TF Lite's DeepLab files: [128, 128, 128] and [128, 128, 128]).
    pixel_mean: Optional[List[float]] = None
    pixel_std: Optional[List[float]] = None
    align_corners: bool = False
    # The batch norms hold the identity because the source folded them into the convs (TF Lite
    # files): they carry no statistics of real data, so training freezes them (train.freeze_bn).
    folded_batch_norm: bool = False


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
    min_objects: int = 2  # objects per image
    max_objects: int = 3
    min_scale: float = 0.3  # object half-extent as a fraction of image_size
    max_scale: float = 0.5
    min_visible: float = 0.5  # occlusion limit: each object keeps at least this fraction visible
    max_rotation: float = 10.0  # degrees, either way
    # How typical a class's colours and textures are (harder: wider hue bands, weaker texture bias).
    hue_spread: float = 8.0  # degrees either side of each of the class's two hues
    texture_bias: float = 0.9  # probability that a body / part takes its class's favourite texture
    ignore_border: int = 1  # width of the 255 band along instance outlines (0: none)
    jpeg_quality: int = 90


@dataclass
class CocoConfig:
    # Training images whose selected annotations cover this many pixels or fewer are dropped
    # (null: keep all). Val is never filtered.
    min_pixels: Optional[int] = 1000


class DatasetName(Choice):
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


class AmpDtype(Choice):
    bfloat16 = "bfloat16"
    float16 = "float16"  # with a gradient scaler


@dataclass
class DistillConfig:
    """`train.distill_from=CKPT`: the student also learns the teacher's per-pixel class
    distributions (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015)."""

    temperature: float = 2.0  # softens both distributions; the term is scaled by temperature^2
    weight: float = 1.0  # loss = cross-entropy + weight * temperature^2 * KL(teacher || student)


@dataclass
class TrainConfig:
    """`tools/train.py`. Defaults are the published DeepLab MobileNetV2 recipe on VOC train_aug;
    `conf/train/synthetic.yaml` holds the quick CPU settings of the built-in dataset."""

    max_iters: int = 30000
    batch_size: int = 16  # global batch: split evenly between torchrun processes
    crop_size: int = 513
    lr: float = 0.007
    momentum: float = 0.9
    weight_decay: float = 4e-5  # on conv/linear weights only, as DeepLab (not on BN or biases)
    poly_power: float = 0.9
    warmup_iters: int = 0
    warmup_factor: float = 0.1  # lr multiplier at iteration 0 of the warm-up
    backbone_lr_mult: float = 1.0
    # Random scale augmentation; scale_step > 0 draws from {min, min+step, ..., max} as DeepLab does.
    scale_min: float = 0.5
    scale_max: float = 2.0
    scale_step: float = 0.25
    flip: bool = True
    jitter: bool = False  # colour jitter
    # Loss: cross-entropy ignoring dataset.ignore_index.
    class_weights: Optional[List[float]] = None  # one per class
    label_smoothing: float = 0.0
    aux_loss_weight: float = 0.0  # > 0: an extra classifier on the stride-8 features (training only)
    seed: int = 0
    deterministic: bool = False
    # Cadence, in iterations (0: only at the end).
    eval_every: int = 2000
    checkpoint_every: int = 1000
    log_every: int = 20
    eval_max_images: Optional[int] = None  # periodic and final val evaluation (None: whole split)
    vis_images: int = 4  # val images in the TensorBoard grid
    # Start points: resume restores everything (model, optimizer, schedule, data order, RNG);
    # init_from loads model weights only (fine-tuning). resume: "auto" (the run dir's last.pt, if
    # any) or a path.
    resume: Optional[str] = None
    init_from: Optional[str] = None
    # A teacher checkpoint of ours (any backbone, head or output stride, the same classes; a converted
    # official model too, or pretrained:NAME): see `distill`.
    distill_from: Optional[str] = None
    distill: DistillConfig = field(default_factory=DistillConfig)
    # Quantization-aware fine-tuning of train.init_from's model: fake int8 weights and activations as
    # the int8 exports run them (seg/engine/qat.py); the export then uses the learned ranges.
    qat: bool = False
    device: str = "auto"  # auto: cuda:<local rank> when CUDA is available, else cpu
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    amp_dtype: AmpDtype = AmpDtype.bfloat16
    channels_last: bool = True  # on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the model
    sync_bn: bool = True  # SyncBatchNorm under torchrun (GPUs only)
    # Batch norm in inference mode: statistics frozen, scale and shift still trained (DeepLab's
    # fine-tuning on trainval at small batch). null: frozen when model.folded_batch_norm (weights
    # converted from a TF Lite file), else trained.
    freeze_bn: Optional[bool] = None
    progress: bool = True  # progress bar
    # CPU training: intra-op threads. null: as many as cores are free, re-checked every few seconds,
    # so that training beside other busy processes does not wait on its own descheduled threads
    # (seg/engine/cpu_share.py); a number fixes it.
    cpu_threads: Optional[int] = None


@dataclass
class EvalConfig:
    output_stride: Optional[int] = None  # None: the model's own output stride
    scales: List[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    max_images: Optional[int] = None
    save_predictions: bool = False
    # Pad each image (bottom/right, with the mean pixel) to this square size and crop the prediction
    # back, as TF DeepLab's evaluation does with its 513x513 crop. null: no padding.
    pad_to: Optional[int] = None


@dataclass
class LayerExampleConfig:
    """`flops.layer_example=true`: one conv layer, standard against depthwise-separable (the MobileNet
    paper's example: a 14x14 map, 512 -> 512 channels, 3x3 kernel)."""

    size: int = 14  # h = w of the feature map
    in_channels: int = 512  # d_i
    out_channels: int = 512  # d_j
    kernel: int = 3  # k


@dataclass
class FlopsConfig:
    input_size: int = 513  # DeepLab's eval crop (output_stride * k + 1); the resolution in classifier form
    # Count model.backbone in its ImageNet classification form (output stride 32, global average
    # pool, 1000-way fully connected, plus the family's last 1x1 conv / hidden layer), as the
    # encoders' papers report it, instead of the segmenter.
    classifier: bool = False
    # Print the one-layer worked example (formula and hook count) instead of counting a model.
    layer_example: bool = False
    layer: LayerExampleConfig = field(default_factory=LayerExampleConfig)


@dataclass
class LatencyConfig:
    """`tools/benchmark.py latency`: batch-1 CPU latency of our models and of their peers."""

    input_size: int = 513
    peer_input_size: int = 512  # peers whose strides need a multiple of 16 (smp's DeepLabV3+)
    models: Optional[List[str]] = None  # names to run (None: all; the table lists the names)
    # also et_fp32, et_int8: ExecuTorch on XNNPACK (pip install ".[executorch]"); tfl_fp32, tfl_int8: our
    # TF Lite exports on LiteRT (pip install ".[tflite]")
    modes: List[str] = field(default_factory=lambda: ["eager", "fast", "ort_fp32", "ort_int8"])
    calibration_images: int = 16  # train images of the dataset that calibrate the int8 models
    agreement_images: int = 8  # val images on which int8 and fp32 argmaxes are compared
    # Training checkpoints to add as rows ("trained 1: ..."), each calibrated and compared on its
    # own dataset's images: the int8 agreement of trained weights (the other rows are random).
    checkpoints: List[str] = field(default_factory=list)
    # Official TF Lite files (e.g. ../shared/fixtures/official/models/*.tflite) as peer rows on LiteRT, each
    # racing the checkpoint at the same position in `checkpoints` (its conversion, tools/convert_tf.py),
    # which then runs at the file's input size with its signature; needs modes tfl_fp32 / tfl_int8.
    tflite_peers: List[str] = field(default_factory=list)
    peak_runs: int = 10  # timed runs of each peak measurement (matmul, 1x1 conv)


@dataclass
class TradeoffConfig:
    """`tools/benchmark.py tradeoff`: batch-1 CPU latency of the encoders in their ImageNet
    classification form against their multiply-adds, one curve per family."""

    mnv1_multipliers: List[float] = field(default_factory=lambda: [1.0, 0.75, 0.5, 0.25])  # width alpha
    mnv1_sizes: List[int] = field(default_factory=lambda: [224, 192, 160, 128])  # resolution rho
    mnv2_multipliers: List[float] = field(default_factory=lambda: [0.5, 0.75, 1.0, 1.4])
    mnv3: List[str] = field(default_factory=lambda: ["large", "small"])
    mnasnet_b1_multipliers: List[float] = field(default_factory=lambda: [0.5, 0.75, 1.0, 1.3])
    input_size: int = 224  # of every family but MobileNetV1 (which runs over mnv1_sizes)
    modes: List[str] = field(default_factory=lambda: ["eager", "ort_fp32"])  # PyTorch eager, ONNX Runtime fp32
    output_dir: Optional[str] = None  # tradeoff.png, tradeoff.json, tradeoff.md (None: the run directory)


@dataclass
class TrainBenchConfig:
    """`tools/benchmark.py train benchmark.train.contention=[none,busy,training]`: the default run's
    training speed (`python tools/train.py`, data loading included) alone, beside one busy process,
    and beside a second training, each condition `seconds` long, in turns, `rounds` times."""

    contention: List[str] = field(default_factory=list)  # empty: the step-throughput table instead
    seconds: float = 40.0  # each condition's duration (the first `warmup_seconds` are not counted)
    warmup_seconds: float = 12.0
    rounds: int = 1
    args: List[str] = field(default_factory=list)  # extra overrides for the training processes


@dataclass
class OfficialBenchConfig:
    """`tools/benchmark.py official`: the official DeepLab TF Lite files on LiteRT against our
    conversion of them on PyTorch and its ONNX export, on real VOC images. Relative paths are
    relative to the current directory."""

    models_dir: str = "../shared/fixtures/official/models"  # the .tflite files (each one found is run)
    # Folders holding VOCdevkit/VOC2012: every SegmentationClass/*.png with its JPEGImages/*.jpg
    voc_root: List[str] = field(default_factory=lambda: ["../shared/fixtures/official", "../shared/fixtures/real"])
    # Images with no ground truth: agreement with the official runtime only
    extra_images: List[str] = field(default_factory=lambda: ["../shared/fixtures/official/images/bird.bmp"])
    output_dir: Optional[str] = None  # official.md, official.json (None: the run directory)
    # Also our TF Lite fp32 and int8 exports of each conversion on LiteRT (needs litert-torch)
    tflite: bool = True


@dataclass
class CompressionBenchConfig:
    """`tools/benchmark.py compression`: fp32, int8 PTQ and int8 QAT exports of float checkpoints and
    their `train.qat=true` fine-tunes (pairs, same order): mIoU, size, ONNX Runtime latency. The
    exports follow `export.input_size`, `export.eval_images`, `export.calibration_images`."""

    float_checkpoints: List[str] = field(default_factory=list)
    qat_checkpoints: List[str] = field(default_factory=list)
    format: str = "onnx"  # onnx (ONNX Runtime) or executorch (XNNPACK; pip install ".[executorch]")


@dataclass
class BenchmarkConfig:
    # data | train | eval | latency | tradeoff | official | web | compression; `tools/benchmark.py TASK` sets it
    task: str = "data"
    threads: int = 2
    warmup: int = 5
    runs: int = 20
    workers: List[int] = field(default_factory=lambda: [0, 1, 2])
    output: Optional[str] = None  # where to write the JSON result (default: the run directory)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    tradeoff: TradeoffConfig = field(default_factory=TradeoffConfig)
    train: TrainBenchConfig = field(default_factory=TrainBenchConfig)
    official: OfficialBenchConfig = field(default_factory=OfficialBenchConfig)
    compression: CompressionBenchConfig = field(default_factory=CompressionBenchConfig)


class ExportFormat(Choice):
    onnx = "onnx"
    torchscript = "torchscript"  # legacy (PyTorch has deprecated TorchScript): executorch is its successor
    # A .pte program on ExecuTorch's XNNPACK delegate, float32 or int8; needs pip install ".[executorch]"
    executorch = "executorch"
    tflite = "tflite"  # needs the optional litert-torch package: pip install ".[tflite]"
    # A folder with a browser app (seg/web/) around an ONNX model: uint8 RGB in, labels out, int8
    # unless export.quantize=none; needs onnxruntime-web's files (npm ci --prefix seg/web)
    web = "web"


class ExportOutput(Choice):
    logits = "logits"  # float [N, C, H, W]
    labels = "labels"  # class indices [N, H, W] (uint8): the argmax runs inside the graph


class Quantize(Choice):
    int8 = "int8"  # onnx, web: ONNX Runtime static QDQ; executorch, tflite: PT2E (XNNPACK's / litert-torch's quantizer)
    none = "none"  # float32


@dataclass
class ExportConfig:
    """`tools/export.py checkpoint=PATH`: one exported file plus a metadata JSON beside it."""

    format: ExportFormat = ExportFormat.onnx
    path: Optional[str] = None  # default: beside the checkpoint, named after it
    input_size: int = 513  # square input for static exports
    dynamic: bool = False  # dynamic height and width (batch stays 1)
    opset: Optional[int] = None  # None: the exporter's current default
    # Static ONNX: the final logits resize, from up to 48 rows of logits, as two MatMuls with
    # bilinear weights (same values, faster on ONNX Runtime); false keeps it a Resize op.
    resize_matmul: bool = True
    # int8 (onnx, web, executorch, tflite) or none (fp32); null: the format's default, int8 for web, none for the others
    quantize: Optional[Quantize] = None
    calibration_images: int = 32  # train-split images of the dataset that calibrate int8
    # int8: modules (state_dict paths) kept in float. The stem and first block run at half the
    # input resolution, where ONNX Runtime's int8 kernels are slower than float on x86; [] for all int8.
    # web, executorch, tflite: this default becomes [] (every layer int8; see export_float_modules).
    float_modules: List[str] = field(default_factory=lambda: ["backbone.stem", "backbone.blocks.0"])
    include_preprocessing: bool = False  # input raw uint8 RGB NHWC; normalisation inside the graph
    output: Optional[ExportOutput] = None  # null: the format's default, labels for web, logits for the others
    check_images: int = 4  # val images the exported model is compared with PyTorch on
    eval_images: Optional[int] = 50  # val images for the fp32/int8 mIoU report (None: all)
    min_agreement: Optional[float] = None  # argmax agreement required (None: 0.999 fp32, 0.98 int8)
    overwrite: bool = False  # replace an existing file at export.path (never the checkpoint itself)


@dataclass
class PredictConfig:
    """`tools/predict.py checkpoint=PATH|model=FILE input=IMAGE|DIR|PATTERN|VIDEO|WEBCAM output=DIR`: the tool maps
    `model=`, `input=`, `output=` onto the keys below."""

    model: Optional[str] = None  # an exported model (.onnx, .torchscript.pt, .tflite) instead of a checkpoint
    # An image, a folder (searched recursively), a glob pattern ('photos/**/*.jpg'), a video file
    # (mp4, avi, mov, mkv, webm: told by its content) or a webcam index (0)
    input: Optional[str] = None
    # Folder for NAME.png (palette mask) and NAME_overlay.jpg; NAME_overlay.mp4 (and NAME/frame_NNNNNN.png)
    # for a video or a webcam
    output: Optional[str] = None
    fast: bool = True  # checkpoint: batch-norm folded, channels_last, inference mode
    max_size: int = 2048  # longest side the model sees (larger images are scaled down, masks back up)
    threads: Optional[int] = None  # intra-op threads (None: the runtime's default)
    alpha: float = 0.5  # overlay opacity
    overwrite: bool = False  # replace existing files in the output folder (inputs are never written)
    # Images (video frames, tiles) a forward, for a checkpoint; exported models run one at a time
    # unless their batch dimension is dynamic (tools/export.py writes batch 1)
    batch_size: int = 1
    device: str = "auto"  # checkpoint: auto (cuda when available), cpu, cuda or cuda:N
    # ONNX models: ONNX Runtime execution providers in order, e.g. [CUDAExecutionProvider,
    # CPUExecutionProvider] (null: the CPU)
    providers: Optional[List[str]] = None
    # Sliding window at full resolution for images larger than a tile (max_size then does not
    # apply): overlapping tiles, probabilities blended with weights favouring tile centres
    tile: bool = False
    tile_size: int = 513  # tile side (a static-size exported model tiles at its own input size)
    tile_overlap: float = 0.25  # fraction of a tile shared with its neighbour, in [0, 1)
    save_frames: bool = False  # video / webcam: also NAME/frame_NNNNNN.png, the mask of every frame
    max_frames: Optional[int] = None  # video / webcam: stop after this many frames (null: at the stream's end)
    display: Optional[bool] = None  # webcam: a live window, nothing written (null: when a display exists)
    progress: bool = True  # progress bar


@dataclass
class ConvertConfig:
    """`tools/convert_tf.py source=PATH output=FILE experiment=...` (the tool maps `source=` and
    `output=` onto these keys)."""

    # A TF Lite DeepLab file (.tflite), a model-zoo release archive (.tar.gz), its
    # frozen_inference_graph.pb, or a model.ckpt-NNNN prefix
    source: Optional[str] = None
    output: Optional[str] = None  # the checkpoint to write (default: <source name>.pt beside the source)
    # The converted model's output stride (the weights are the same at any): null: the file's own
    # (TF Lite, frozen graphs), else 16
    output_stride: Optional[int] = None
    overwrite: bool = False  # replace an existing file at `output`


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    flops: FlopsConfig = field(default_factory=FlopsConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    convert: ConvertConfig = field(default_factory=ConvertConfig)
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


# ---------------------------------------------------------------------------------------------
# Values: ranges and consistency (the schema above checks keys and types; this, what they mean)
# ---------------------------------------------------------------------------------------------

# Heads with an image-pooling branch: batch norm over one pooled value per image, which training
# cannot normalise with a single image per process.
IMAGE_POOLING_HEADS = {schema._target_ for schema in (AsppLiteConfig, DeepLabV3Config, DeepLabV3PlusConfig)}


def _value_problems(cfg: Any) -> list[str]:
    """Every out-of-range or inconsistent value of a composed config, as `key=value: why`."""
    problems: list[str] = []

    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            problems.append(f"{key}={OmegaConf.select(cfg, key)} {why}")

    def positive_or_none(key: str) -> None:
        value = OmegaConf.select(cfg, key)
        need(value is None or value > 0, key, "must be > 0 (or null)")

    m, d, t, e = cfg.model, cfg.dataset, cfg.train, cfg.eval
    need(m.output_stride in (8, 16, 32), "model.output_stride", "must be 8, 16 or 32")
    need(m.num_classes > 0, "model.num_classes", "must be > 0")
    for key in ("pixel_mean", "pixel_std"):
        values = m.get(key)
        need(values is None or len(values) == 3, f"model.{key}", "must be 3 values (R, G, B in 0..255 units) or null")
    need(m.get("pixel_std") is None or all(v > 0 for v in m.pixel_std), "model.pixel_std", "must all be > 0")
    need(
        OmegaConf.select(m, "head.dropout", default=0.0) is None
        or 0.0 <= OmegaConf.select(m, "head.dropout", default=0.0) < 1.0,
        "model.head.dropout",
        "must be in [0, 1)",
    )
    need(d.num_workers >= 0, "dataset.num_workers", "must be >= 0")
    need(t.max_iters > 0, "train.max_iters", "must be > 0")
    need(t.batch_size > 0, "train.batch_size", "must be > 0")
    need(t.crop_size > 0, "train.crop_size", "must be > 0")
    need(t.lr > 0, "train.lr", "must be > 0")
    need(t.momentum >= 0, "train.momentum", "must be >= 0")
    need(t.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    need(t.poly_power >= 0, "train.poly_power", "must be >= 0")
    need(
        0 <= t.warmup_iters < max(t.max_iters, 1),
        "train.warmup_iters",
        f"must be in [0, train.max_iters={t.max_iters})",
    )
    need(0 < t.warmup_factor <= 1, "train.warmup_factor", "must be in (0, 1]")
    need(t.backbone_lr_mult >= 0, "train.backbone_lr_mult", "must be >= 0")
    need(t.scale_min > 0, "train.scale_min", "must be > 0")
    need(t.scale_min <= t.scale_max, "train.scale_min", f"must be <= train.scale_max={t.scale_max}")
    need(t.scale_step >= 0, "train.scale_step", "must be >= 0")
    need(0 <= t.label_smoothing < 1, "train.label_smoothing", "must be in [0, 1)")
    need(t.aux_loss_weight >= 0, "train.aux_loss_weight", "must be >= 0")
    need(t.distill.temperature > 0, "train.distill.temperature", "must be > 0")
    need(t.distill.weight >= 0, "train.distill.weight", "must be >= 0")
    for key in ("eval_every", "checkpoint_every", "vis_images"):
        need(t[key] >= 0, f"train.{key}", "must be >= 0")
    need(t.log_every > 0, "train.log_every", "must be > 0")
    positive_or_none("train.eval_max_images")
    positive_or_none("train.cpu_threads")
    if t.class_weights is not None:
        need(
            len(t.class_weights) == m.num_classes,
            "train.class_weights",
            f"has {len(t.class_weights)} values for {m.num_classes} classes (model.num_classes)",
        )
        need(all(w >= 0 for w in t.class_weights), "train.class_weights", "must all be >= 0")
    need(len(e.scales) > 0 and all(s > 0 for s in e.scales), "eval.scales", "must be a non-empty list of values > 0")
    need(
        e.output_stride is None or e.output_stride in (8, 16, 32), "eval.output_stride", "must be 8, 16 or 32 (or null)"
    )
    positive_or_none("eval.max_images")
    positive_or_none("eval.pad_to")
    x = cfg.export
    need(x.input_size >= 32, "export.input_size", "must be >= 32")
    need(x.check_images >= 1, "export.check_images", "must be >= 1: every export is checked")
    need(x.calibration_images >= 1, "export.calibration_images", "must be >= 1")
    positive_or_none("export.eval_images")
    need(x.min_agreement is None or 0 <= x.min_agreement <= 1, "export.min_agreement", "must be in [0, 1] (or null)")
    p = cfg.predict
    need(p.max_size > 0, "predict.max_size", "must be > 0")
    need(0 <= p.alpha <= 1, "predict.alpha", "must be in [0, 1]")
    positive_or_none("predict.threads")
    need(p.batch_size >= 1, "predict.batch_size", "must be >= 1")
    device = str(p.device)
    need(
        device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit()),
        "predict.device",
        "must be auto, cpu, cuda or cuda:N",
    )
    need(
        p.providers is None or (len(p.providers) > 0 and all(bool(x) for x in p.providers)),
        "predict.providers",
        "must be a non-empty list of ONNX Runtime execution providers (or null)",
    )
    need(p.tile_size >= 32, "predict.tile_size", "must be >= 32")
    need(0 <= p.tile_overlap < 1, "predict.tile_overlap", "must be in [0, 1)")
    positive_or_none("predict.max_frames")
    b = cfg.benchmark
    need(b.threads > 0, "benchmark.threads", "must be > 0")
    need(b.warmup >= 0, "benchmark.warmup", "must be >= 0")
    need(b.runs > 0, "benchmark.runs", "must be > 0")
    need(bool(b.official.models_dir), "benchmark.official.models_dir", "must name a folder")
    need(all(bool(r) for r in b.official.voc_root), "benchmark.official.voc_root", "must hold no empty path")
    need(all(bool(x) for x in b.official.extra_images), "benchmark.official.extra_images", "must hold no empty path")
    need(cfg.flops.input_size > 0, "flops.input_size", "must be > 0")
    return problems


def check_config(cfg: Any) -> None:
    """Raise ConfigError listing every value out of range (each as `key=value must ...`)."""
    problems = _value_problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems))


def freeze_bn(train_cfg: Any, model_cfg: Any) -> bool:
    """Whether training keeps batch norm in inference mode: `train.freeze_bn`, or when it is null,
    `model.folded_batch_norm` (identity statistics from a folded source must not meet real batches
    of 2 or 16 images: they would be replaced by the batch's, losing the imported accuracy)."""
    value = train_cfg.freeze_bn
    return bool(model_cfg.get("folded_batch_norm", False)) if value is None else bool(value)


def check_train_config(cfg: Any, world_size: int) -> None:
    """`check_config` plus what training needs of the run: the batch split between processes, the
    model's classes against the dataset's, and image pooling at one image per process."""
    problems = _value_problems(cfg)
    t, m = cfg.train, cfg.model
    if t.batch_size > 0 and t.batch_size % world_size:
        problems.append(f"train.batch_size={t.batch_size} must divide evenly between {world_size} processes")
    if m.num_classes != cfg.dataset.num_classes:
        problems.append(
            f"model.num_classes={m.num_classes} differs from dataset.num_classes={cfg.dataset.num_classes} "
            "(the labels the dataset holds): leave model.num_classes unset, it follows the dataset"
        )
    if t.qat and not (t.init_from or t.resume):
        problems.append(
            "train.qat=true fine-tunes a trained float model: give it with train.init_from=CKPT (or continue a QAT run "
            "with train.resume)"
        )
    if t.qat and t.compile:
        problems.append("train.qat=true runs an exported graph: set train.compile=false")
    per_process = t.batch_size // max(world_size, 1)
    if per_process == 1 and OmegaConf.select(m, "head._target_") in IMAGE_POOLING_HEADS and not freeze_bn(t, m):
        problems.append(
            f"train.batch_size={t.batch_size} gives {'each process' if world_size > 1 else 'the model'} one image a "
            "step, but the head's image-pooling branch normalises over the batch (one value per channel): use "
            "train.batch_size >= 2 per process, or train.freeze_bn=true (batch norm statistics frozen, as DeepLab "
            "fine-tunes at small batch), or head=lraspp"
        )
    if problems:
        raise ConfigError("; ".join(problems))
