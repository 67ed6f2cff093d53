"""Official DeepLab MobileNetV2 weights in: one entry point for every form Google released them in.

`convert_source(path)` returns a checkpoint of this project (weights, config, provenance) from
- a TF Lite file (`.tflite`: TF Lite's float GPU model, Coral's quantized models), read by
  `tflite_weights.py`;
- a model-zoo release archive (`deeplabv3_mnv2_pascal_train_aug_2018_01_29.tar.gz`), read in place:
  its frozen graph from memory, or its checkpoint extracted to a temporary folder;
- the archive's `frozen_inference_graph.pb` or a `model.ckpt-NNNN` prefix (`tf_weights.py`).

The architecture is read from the file: depth multiplier from the first conv's width, number of
classes from the logits, output stride from the strides (TF Lite, frozen graphs; a checkpoint holds
no strides: 16, the training output stride of every release). The stored config records the
numerics the weights were trained with (normalisation, align_corners, TF "SAME" padding, batch-norm
epsilon), so evaluation, export, prediction and `train.init_from` take them as they are.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from seg.config import AsppLiteConfig, Config, DatasetName
from seg.data.classes import VOC_CLASSES
from seg.files import file_sha256
from seg.models.segmenter import build_segmenter
from seg.models.weights import WeightsError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
DEFAULT_OUTPUT_STRIDE = 16  # DeepLab's training output stride, for sources that record none


def release_config(
    depth_multiplier: float,
    num_classes: int,
    output_stride: int,
    *,
    align_corners: bool = True,
    pixel_mean: Optional[float] = None,
    pixel_std: Optional[float] = None,
    folded_batch_norm: bool = False,
    backbone_bn_eps: float = 1e-3,
) -> Any:
    """The whole config of a converted release: MobileNetV2 (DeepLab's channel rounding, TF "SAME"
    padding) + the image-level head, PASCAL VOC's classes, TF DeepLab's numerics."""
    if output_stride not in (8, 16, 32):
        raise WeightsError(f"output stride {output_stride}: must be 8, 16 or 32")
    cfg = OmegaConf.structured(Config)
    cfg.model.head = OmegaConf.structured(AsppLiteConfig)
    b = cfg.model.backbone
    b.depth_multiplier = float(depth_multiplier)
    b.bn_eps = float(backbone_bn_eps)
    b.tf_same_padding = True
    cfg.model.output_stride = int(output_stride)
    cfg.model.align_corners = bool(align_corners)
    cfg.model.normalization = "deeplab"  # x / 127.5 - 1, TF DeepLab's own pre-processing
    if pixel_mean is not None:
        cfg.model.pixel_mean = [float(pixel_mean)] * 3
        cfg.model.pixel_std = [float(pixel_std)] * 3
    cfg.model.folded_batch_norm = bool(folded_batch_norm)
    cfg.dataset.name = DatasetName.voc
    cfg.dataset.root = "data/voc"
    cfg.dataset.num_classes = int(num_classes)
    cfg.dataset.class_names = (
        list(VOC_CLASSES) if num_classes == len(VOC_CLASSES) else [f"class_{i}" for i in range(num_classes)]
    )
    cfg.model.num_classes = int(num_classes)
    return cfg


def _state(model: Any, cfg: Any, provenance: dict) -> dict:
    return {
        "model": model.state_dict(),
        "config": OmegaConf.to_yaml(cfg, resolve=True),
        "iteration": 0,
        "metrics": {},
        "provenance": provenance,
    }


def convert_tflite(path: str | Path, output_stride: Optional[int] = None) -> dict:
    """A checkpoint from a TF Lite DeepLab MobileNetV2 file (float or quantized)."""
    from seg.models.tflite_weights import BACKBONE_BN_EPS, load_tflite_weights, read_tflite_deeplab

    found = read_tflite_deeplab(path)
    cfg = release_config(
        found.depth_multiplier,
        found.num_classes,
        found.output_stride,
        align_corners=found.align_corners,
        pixel_mean=found.pixel_mean,
        pixel_std=found.pixel_std,
        folded_batch_norm=True,
        backbone_bn_eps=BACKBONE_BN_EPS,
    )
    model = build_segmenter(cfg.model)
    mapping = load_tflite_weights(model, found)
    if output_stride is not None and output_stride != found.output_stride:
        cfg.model.output_stride = int(output_stride)  # the weights are the same at any output stride
    provenance = {
        "source": str(path),
        "sha256": file_sha256(path),
        "format": "tflite",
        "quantized": found.quantized,
        "input_size": [found.input_height, found.input_width],
        "input_dtype": found.input_dtype,
        "output": found.output,
        "file_output_stride": found.output_stride,
        "mapping": mapping,
    }
    return _state(model, cfg, provenance)


def _frozen_graph_output_stride(graph_bytes: bytes) -> Optional[int]:
    """The product of the strides of the convs in a frozen graph, or None."""
    from tensorboard.compat.proto import graph_pb2

    graph = graph_pb2.GraphDef()
    graph.ParseFromString(graph_bytes)
    stride = 1
    for node in graph.node:
        if node.op in ("Conv2D", "DepthwiseConv2dNative"):  # the head's are all stride 1
            strides = list(node.attr["strides"].list.i)
            stride *= strides[1] if len(strides) == 4 else 1
    return stride if stride in (8, 16, 32) else None


def convert_tf(
    source: str | Path, output_stride: Optional[int] = None, *, sha256: Optional[str] = None, name: str = ""
) -> dict:
    """A checkpoint from a frozen graph (`.pb`) or a checkpoint prefix, its architecture read from it."""
    from seg.models.tf_weights import (
        TF_BACKBONE_BN_EPS,
        check_bn_epsilons,
        load_deeplab_weights,
        read_tf_weights,
    )
    from seg.models.tf_weights import sha256 as tf_sha256

    source = Path(source)
    tensors, epsilons = read_tf_weights(source)
    stem, logits = tensors.get("MobilenetV2/Conv/weights"), tensors.get("logits/semantic/weights")
    if stem is None or logits is None:
        raise WeightsError(
            f"{name or source}: no MobilenetV2/Conv/weights or logits/semantic/weights tensor: not a DeepLab "
            "MobileNetV2 segmentation release"
        )
    file_stride = _frozen_graph_output_stride(source.read_bytes()) if source.suffix == ".pb" else None
    cfg = release_config(
        stem.shape[-1] / 32,
        logits.shape[-1],
        output_stride or file_stride or DEFAULT_OUTPUT_STRIDE,
        backbone_bn_eps=check_bn_epsilons(epsilons) if epsilons else TF_BACKBONE_BN_EPS,
    )
    model = build_segmenter(cfg.model)
    mapping = load_deeplab_weights(model, tensors, str(name or source))
    provenance = {
        "source": str(name or source),
        "sha256": sha256 or tf_sha256(source),  # a checkpoint prefix: its files together
        "format": "frozen_graph" if source.suffix == ".pb" else "tf_checkpoint",
        "mapping": mapping,
    }
    return _state(model, cfg, provenance)


def _archive_members(archive: tarfile.TarFile, path: Path) -> tuple[Optional[tarfile.TarInfo], list[tarfile.TarInfo]]:
    """The archive's frozen graph and its checkpoint files (of the newest step)."""
    files = [m for m in archive.getmembers() if m.isfile()]
    graphs = [m for m in files if Path(m.name).name == "frozen_inference_graph.pb"]
    indexes = sorted((m for m in files if ".ckpt" in m.name and m.name.endswith(".index")), key=lambda m: m.name)
    if not graphs and not indexes:
        listed = ", ".join(m.name for m in files[:8]) + (" ..." if len(files) > 8 else "")
        raise WeightsError(
            f"{path}: no frozen_inference_graph.pb or model.ckpt-NNNN.index in the archive "
            f"(it holds: {listed or 'nothing'})"
        )
    ckpt: list[tarfile.TarInfo] = []
    if indexes:
        prefix = indexes[-1].name[: -len(".index")]
        ckpt = [m for m in files if m.name.startswith(prefix + ".")]
    return (graphs[0] if graphs else None), ckpt


def convert_archive(path: str | Path, output_stride: Optional[int] = None) -> dict:
    """A checkpoint from a model-zoo release archive, without unpacking it by hand: the frozen graph
    is read from memory (no TensorFlow needed); without one, the checkpoint files are extracted to a
    temporary folder (names checked, nothing written outside it)."""
    path = Path(path)
    digest = file_sha256(path)
    try:
        archive = tarfile.open(path)
    except (tarfile.TarError, OSError) as exc:
        raise WeightsError(f"{path}: not a readable tar archive ({exc})") from exc
    with archive, tempfile.TemporaryDirectory(prefix="seg-release-") as tmp:
        graph, ckpt = _archive_members(archive, path)
        if graph is not None:
            target = Path(tmp) / "frozen_inference_graph.pb"
            target.write_bytes(archive.extractfile(graph).read())
            member = graph.name
        else:
            for m in ckpt:
                (Path(tmp) / Path(m.name).name).write_bytes(archive.extractfile(m).read())
            member = ckpt[0].name.rsplit(".", 1)[0]
            target = Path(tmp) / Path(member).name
        state = convert_tf(target, output_stride, sha256=digest, name=f"{path}:{member}")
    state["provenance"].update(
        source=str(path), archive_member=member, format=f"archive/{state['provenance']['format']}"
    )
    return state


def convert_source(source: str | Path, output_stride: Optional[int] = None) -> dict:
    """A checkpoint of this project from any official DeepLab MobileNetV2 file (see the module doc)."""
    from seg.export.runtime import sniff_model_file  # told by its bytes, nothing loaded

    source = Path(source)
    name = source.name.lower()
    if source.is_file() and (name.endswith(".tflite") or sniff_model_file(source) == "tflite"):
        return convert_tflite(source, output_stride)
    if source.is_file() and (name.endswith(ARCHIVE_SUFFIXES) or tarfile.is_tarfile(source)):
        return convert_archive(source, output_stride)
    if (source.is_file() and name.endswith(".pb")) or source.with_name(source.name + ".index").is_file():
        return convert_tf(source, output_stride)
    if not source.exists() and not source.with_name(source.name + ".index").exists():
        raise WeightsError(f"source={source}: no such file")
    raise WeightsError(
        f"source={source}: not an official DeepLab file: expected a .tflite file, a release archive (.tar.gz), "
        "a frozen_inference_graph.pb or a model.ckpt-NNNN prefix"
    )
