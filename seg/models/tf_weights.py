"""Load the official TensorFlow DeepLab MobileNetV2 checkpoints (TF DeepLab model zoo) into our
segmenter: MobileNetV2 (depth multiplier 1.0 or 0.5) + the image-level head (`aspp_lite`).

Two sources, both from the release archives:
- a frozen `GraphDef` (`frozen_inference_graph.pb`), whose weights are `Const` nodes; read with the
  protobuf classes that ship with `tensorboard`, so TensorFlow is not needed;
- a checkpoint prefix (`model.ckpt-NNNN`), read with TensorFlow (`pip install ".[tf]"`).

Tensors are matched by their official names (read from the file) and transposed from TensorFlow's
layouts (conv kernels HWIO, depthwise kernels HWC1) to PyTorch's. Anything unmatched, unused or of
the wrong shape is an error that lists every such tensor.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from seg.models.segmenter import build_segmenter
from seg.models.weights import WeightsError

# Variable scopes of the model's weights in the official graphs (everything else in a file, such
# as optimizer slots, the global step or preprocessing constants, is not a weight of the model).
MODEL_SCOPES = ("MobilenetV2/", "image_pooling/", "aspp", "concat_projection/", "logits/", "decoder/")
# Batch-norm epsilons of TF DeepLab (checkpoints don't store them; frozen graphs do).
TF_BACKBONE_BN_EPS = 1e-3  # slim's batch_norm default, used by MobileNetV2's training scope
TF_HEAD_BN_EPS = 1e-5  # DeepLab's ASPP / decoder batch_norm_params


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    paths = [Path(path)] if Path(path).is_file() else sorted(Path(path).parent.glob(Path(path).name + ".*"))
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def read_frozen_graph(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Float `Const` tensors of a frozen GraphDef by name, and batch-norm epsilons by BN scope."""
    from tensorboard.compat.proto import graph_pb2
    from tensorboard.util import tensor_util

    graph = graph_pb2.GraphDef()
    try:
        graph.ParseFromString(Path(path).read_bytes())
    except Exception as exc:
        raise WeightsError(f"{path} is not a TensorFlow GraphDef ({exc})") from exc
    tensors: dict[str, np.ndarray] = {}
    epsilons: dict[str, float] = {}
    for node in graph.node:
        if node.op == "Const" and node.attr["dtype"].type == 1:  # DT_FLOAT
            tensors[node.name] = tensor_util.make_ndarray(node.attr["value"].tensor)
        elif node.op.startswith("FusedBatchNorm"):
            epsilons[node.name.rsplit("/", 1)[0]] = node.attr["epsilon"].f
    return tensors, epsilons


def read_tf_checkpoint(prefix: str | Path) -> dict[str, np.ndarray]:
    """Float variables of a TensorFlow checkpoint (`model.ckpt-NNNN` prefix) by name."""
    import torchvision  # noqa: F401  (torch's triton crashes when loaded after TensorFlow)

    try:
        import tensorflow as tf
    except ImportError as exc:
        raise WeightsError(
            f"reading the checkpoint {prefix} needs TensorFlow: pip install '.[tf]' "
            "(or convert the release's frozen_inference_graph.pb, which needs no TensorFlow)"
        ) from exc
    try:
        reader = tf.train.load_checkpoint(str(prefix))
    except Exception as exc:
        raise WeightsError(f"cannot read the TensorFlow checkpoint {prefix} ({exc})") from exc
    dtypes = reader.get_variable_to_dtype_map()
    return {name: reader.get_tensor(name) for name, dtype in dtypes.items() if dtype == tf.float32}


def read_tf_weights(source: str | Path) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Weights of a frozen graph (`.pb`) or of a checkpoint prefix, with the BN epsilons known."""
    source = Path(source)
    if source.is_file() and source.suffix == ".pb":
        return read_frozen_graph(source)
    if source.with_name(source.name + ".index").is_file():
        return read_tf_checkpoint(source), {}
    raise WeightsError(
        f"source={source}: expected a frozen graph (frozen_inference_graph.pb) or a checkpoint prefix "
        "(model.ckpt-NNNN, with model.ckpt-NNNN.index beside it)"
    )


def _conv(w: np.ndarray) -> np.ndarray:
    return w.transpose(3, 2, 0, 1)  # HWIO -> OIHW


def _depthwise(w: np.ndarray) -> np.ndarray:
    h, k, c, m = w.shape  # HW C multiplier -> (C*M)1HW
    return w.transpose(2, 3, 0, 1).reshape(c * m, 1, h, k)


def _same(w: np.ndarray) -> np.ndarray:
    return w


Mapping = dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]


def _conv_bn(ours: str, scope: str, weights: str = "weights", kernel=_conv) -> Mapping:
    return {
        f"{ours}.conv.weight": (f"{scope}/{weights}", kernel),
        f"{ours}.bn.weight": (f"{scope}/BatchNorm/gamma", _same),
        f"{ours}.bn.bias": (f"{scope}/BatchNorm/beta", _same),
        f"{ours}.bn.running_mean": (f"{scope}/BatchNorm/moving_mean", _same),
        f"{ours}.bn.running_var": (f"{scope}/BatchNorm/moving_variance", _same),
    }


def deeplab_key_map(model: nn.Module) -> Mapping:
    """Our state_dict key -> (official TF name, layout transform), for MobileNetV2 + aspp_lite."""
    backbone, head = model.backbone, model.head
    if type(backbone).__name__ != "MobileNetV2" or type(head).__name__ != "AsppLiteHead":
        raise WeightsError(
            "the TF DeepLab MobileNetV2 checkpoints are MobileNetV2 + the image-level head: use "
            "experiment=mobilenetv2_coco_voc_trainaug (or another mobilenetv2_* experiment)"
        )
    mapping = _conv_bn("backbone.stem", "MobilenetV2/Conv")
    for i, block in enumerate(backbone.blocks):
        scope = "MobilenetV2/expanded_conv" + (f"_{i}" if i else "")
        ours = f"backbone.blocks.{i}"
        if block.expand is not None:
            mapping.update(_conv_bn(f"{ours}.expand", f"{scope}/expand"))
        mapping.update(_conv_bn(f"{ours}.depthwise", f"{scope}/depthwise", "depthwise_weights", _depthwise))
        mapping.update(_conv_bn(f"{ours}.project", f"{scope}/project"))
    mapping.update(_conv_bn("head.aspp.image_pooling.conv", "image_pooling"))
    mapping.update(_conv_bn("head.aspp.conv1x1", "aspp0"))
    mapping.update(_conv_bn("head.aspp.project", "concat_projection"))
    mapping["head.classifier.weight"] = ("logits/semantic/weights", _conv)
    mapping["head.classifier.bias"] = ("logits/semantic/biases", _same)
    return mapping


def load_deeplab_weights(model: nn.Module, tensors: dict[str, np.ndarray], source: str) -> dict[str, str]:
    """Copy official TF DeepLab tensors into `model`; returns the mapping used (ours -> TF name).

    Batch-norm `gamma` may be absent (a BN without scale): it is then 1.
    """
    mapping = deeplab_key_map(model)
    ours = model.state_dict()
    missing, mismatched, new_state = [], [], {}
    for key, (name, transform) in mapping.items():
        if name not in tensors:
            if name.endswith("/BatchNorm/gamma"):
                new_state[key] = torch.ones_like(ours[key])
                continue
            missing.append(f"{name} (for {key})")
            continue
        value = torch.from_numpy(np.ascontiguousarray(transform(tensors[name]))).float()
        if value.shape != ours[key].shape:
            mismatched.append(f"{name} {tuple(tensors[name].shape)} -> {key} {tuple(ours[key].shape)}")
            continue
        new_state[key] = value
    used = {name for name, _ in mapping.values()}
    unused = sorted(n for n in tensors if n.startswith(MODEL_SCOPES) and n not in used)
    if missing or mismatched or unused:
        lines = [f"{source} does not match the model (depth multiplier {model.backbone.depth_multiplier}):"]
        lines += [f"  missing in the file: {m}" for m in missing]
        lines += [f"  shape mismatch: {m}" for m in mismatched]
        lines += [f"  unused tensor in the file: {u}" for u in unused]
        if mismatched:
            stem = tensors.get("MobilenetV2/Conv/weights")
            if stem is not None:
                lines.append(
                    f"  the file's first conv has {stem.shape[-1]} channels (32 x depth multiplier): "
                    "choose the experiment with that multiplier"
                )
        raise WeightsError("\n".join(lines))
    for key, value in ours.items():  # BN counters have no TF counterpart
        new_state.setdefault(key, value)
    model.load_state_dict(new_state, strict=True)
    return {key: name for key, (name, _) in mapping.items()}


def check_bn_epsilons(epsilons: dict[str, float]) -> float:
    """The backbone's batch-norm epsilon as a frozen graph records it (TF's default when the source
    records none); the head's must be DeepLab's 1e-5, which our heads use."""
    backbone = {eps for scope, eps in epsilons.items() if scope.startswith("MobilenetV2/")}
    if len(backbone) > 1:
        raise WeightsError(f"the graph's MobileNetV2 batch norms use several epsilons: {sorted(backbone)}")
    for scope, eps in epsilons.items():
        if scope.startswith(MODEL_SCOPES[1:]) and not np.isclose(eps, TF_HEAD_BN_EPS, rtol=1e-3):
            raise WeightsError(f"{scope}: batch-norm epsilon {eps}, expected {TF_HEAD_BN_EPS} as in TF DeepLab")
    return backbone.pop() if backbone else TF_BACKBONE_BN_EPS


def convert_deeplab(source: str | Path, cfg: DictConfig) -> dict:
    """A checkpoint of this project (model weights + config) from an official TF DeepLab release.

    `cfg` is the composed config of the matching experiment; the numerics of TF DeepLab are set in
    the stored model config: TF "SAME" padding, its batch-norm epsilon, bilinear resizing with
    align_corners=True, and x/127.5 - 1 input normalisation.
    """
    tensors, epsilons = read_tf_weights(source)
    logits = tensors.get("logits/semantic/weights")
    if logits is None:
        raise WeightsError(f"{source}: no logits/semantic/weights tensor: not a DeepLab segmentation release")
    cfg = cfg.copy()
    cfg.model.backbone.bn_eps = check_bn_epsilons(epsilons)
    cfg.model.backbone.tf_same_padding = True
    cfg.model.backbone.pretrained = None
    cfg.model.backbone.weights = None
    cfg.model.align_corners = True
    cfg.model.normalization = "deeplab"
    if logits.shape[-1] != cfg.dataset.num_classes:
        raise WeightsError(
            f"{source} predicts {logits.shape[-1]} classes; the config has dataset.num_classes="
            f"{cfg.dataset.num_classes}"
        )
    model = build_segmenter(cfg.model)
    mapping = load_deeplab_weights(model, tensors, str(source))
    return {
        "model": model.state_dict(),
        "config": OmegaConf.to_yaml(cfg, resolve=True),
        "iteration": 0,
        "metrics": {},
        "provenance": {"source": str(source), "sha256": sha256(source), "mapping": mapping},
    }
