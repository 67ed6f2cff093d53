"""Read the published TF Lite DeepLab MobileNetV2 files into our segmenter: MobileNetV2 + the
image-level head (`aspp_lite`), the architecture TF DeepLab's model zoo and its TF Lite / Coral
releases use.

The file is parsed with the TF Lite flatbuffer schema that ships with `ai-edge-litert`; nothing in
it runs. The model is read from the graph's structure, not typed by the user:

- the backbone is every conv up to the tensor the image pooling averages: the stem (3 input
  channels), then per inverted-residual block [expand 1x1] -> depthwise -> project 1x1;
- the depth multiplier is the stem's width / 32, the output stride the product of the convs'
  strides, and the dilations must be those our MobileNetV2 places at that output stride;
- the head is a 1x1 conv on the backbone output (`aspp0`), a 1x1 conv on its average
  (`image_pooling`), their concatenation projected by a 1x1 conv, then the 1x1 logits conv;
- the number of classes is the logits conv's width; the input size and, for uint8 inputs, the
  normalisation come from the input tensor; align_corners from the bilinear resizes.

Weights are OHWI (depthwise 1HWC) with batch norm folded into a bias. Quantized files (uint8 or int8,
per-tensor or per-channel, int32 biases) are dequantised as scale x (q - zero point). Each folded
bias goes into the batch norm after the conv, whose statistics are set to the identity, so the
result is a normal, trainable checkpoint of ours (`model.folded_batch_norm` records that its batch
norms carry no statistics of real data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from seg.models.weights import WeightsError

# Pre-processing of the float TF Lite DeepLab files: (pixel - 128) / 128 per RGB channel, as the app
# that ships deeplabv3_257_mv_gpu.tflite feeds it (IMAGE_MEAN = IMAGE_STD = 128 in dailystudio/ml's
# DeeplabGPU.java; tensorflow/examples' image_segmentation app uses 127.5, DeepLab's own 2/255 * x - 1:
# within 0.02 points of pixel accuracy on two VOC images). Float inputs do not record it; uint8 inputs
# do through their quantization (scale 1/128, zero point 128 in the Coral files). Conversion and
# running an official file as it is (seg/export/tflite.py) both use these.
TFLITE_FLOAT_PIXEL_MEAN = 128.0
TFLITE_FLOAT_PIXEL_STD = 128.0
STEM_CHANNELS = 32  # MobileNetV2's first conv at depth multiplier 1.0
# TF DeepLab's batch-norm epsilons (recorded for fine-tuning; the folded statistics make them moot).
BACKBONE_BN_EPS = 1e-3
HEAD_BN_EPS = 1e-5

_NUMPY_TYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8}


@dataclass
class Conv:
    """One CONV_2D / DEPTHWISE_CONV_2D of the file, dequantised."""

    name: str  # the weight tensor's name (its first part when the converter fused several)
    depthwise: bool
    weight: np.ndarray  # PyTorch layout: OIHW, depthwise (C, 1, H, W)
    bias: np.ndarray
    stride: int
    dilation: int
    activation: str  # NONE, RELU, RELU6
    input: int  # tensor indices
    output: int

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    def describe(self) -> str:
        kind = "depthwise" if self.depthwise else "conv"
        k = self.weight.shape[-1]
        return f"{kind} {k}x{k} -> {self.out_channels} ({self.name})"


@dataclass
class TfliteDeepLab:
    """What a TF Lite DeepLab file holds, read from its graph."""

    path: Path
    input_height: int
    input_width: int
    input_dtype: str  # float32 | uint8 | int8
    pixel_mean: float  # 0..255 units: (pixel - mean) / std is what the first conv sees
    pixel_std: float
    output: str  # "logits" or "labels" (an ARG_MAX inside the file)
    align_corners: bool
    depth_multiplier: float
    output_stride: int
    num_classes: int
    quantized: bool
    backbone: list[Conv] = field(default_factory=list)
    image_pooling: Optional[Conv] = None
    aspp0: Optional[Conv] = None
    projection: Optional[Conv] = None
    logits: Optional[Conv] = None


class _Graph:
    """The first subgraph of a TF Lite model, with op names, options and dequantised constants."""

    def __init__(self, path: Path) -> None:
        from ai_edge_litert import schema_py_generated as schema

        data = path.read_bytes()
        if data[4:8] != b"TFL3":
            raise WeightsError(f"{path} is not a TF Lite model (no TFL3 identifier)")
        try:
            self.model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
        except Exception as exc:
            raise WeightsError(f"{path}: cannot parse the TF Lite file ({type(exc).__name__}: {exc})") from exc
        if not self.model.subgraphs:
            raise WeightsError(f"{path}: the TF Lite file has no subgraph")
        self.path, self.data = path, data
        self.graph = self.model.subgraphs[0]
        names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        self.ops = []
        for op in self.graph.operators:
            code = self.model.operatorCodes[op.opcodeIndex]
            builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
            name = names.get(builtin, f"CUSTOM:{(code.customCode or b'').decode(errors='replace')}")
            self.ops.append((name, [int(i) for i in op.inputs], [int(i) for i in op.outputs], op.builtinOptions))
        self.producer = {out: i for i, (_, _, outs, _) in enumerate(self.ops) for out in outs}
        self.consumers: dict[int, list[int]] = {}
        for i, (_, ins, _, _) in enumerate(self.ops):
            for t in ins:
                self.consumers.setdefault(t, []).append(i)

    def tensor_name(self, index: int) -> str:
        return self.graph.tensors[index].name.decode(errors="replace")

    def shape(self, index: int) -> list[int]:
        shape = self.graph.tensors[index].shape
        return [] if shape is None else [int(s) for s in shape]

    def dtype(self, index: int) -> str:
        return np.dtype(_NUMPY_TYPES.get(self.graph.tensors[index].type, np.void)).name

    def constant(self, index: int) -> np.ndarray:
        """A constant tensor as float32, dequantised; a DEQUANTIZE op before it (float16 or int8
        weights of a float model) is followed back to its constant."""
        if index in self.producer:
            name, ins, _, _ = self.ops[self.producer[index]]
            if name != "DEQUANTIZE":
                raise WeightsError(f"{self.path}: {self.tensor_name(index)} is computed by {name}, not a weight")
            return self.constant(ins[0])
        tensor = self.graph.tensors[index]
        buffer = self.model.buffers[tensor.buffer]
        raw = buffer.data
        if (raw is None or len(raw) == 0) and getattr(buffer, "offset", 0) > 1:
            raw = np.frombuffer(self.data, np.uint8, int(buffer.size), int(buffer.offset))
        if raw is None or len(raw) == 0:
            raise WeightsError(f"{self.path}: weight tensor {self.tensor_name(index)} has no data")
        dtype = _NUMPY_TYPES.get(tensor.type)
        if dtype is None:
            raise WeightsError(
                f"{self.path}: weight tensor {self.tensor_name(index)} of unsupported type {tensor.type}"
            )
        values = np.frombuffer(np.asarray(raw, np.uint8).tobytes(), dtype).reshape(self.shape(index))
        q = tensor.quantization
        if dtype in (np.float32, np.float16) or q is None or q.scale is None or len(q.scale) == 0:
            return values.astype(np.float32)
        scale = np.asarray(q.scale, np.float64)
        zero = np.asarray(q.zeroPoint if q.zeroPoint is not None else [0], np.float64)
        if scale.size > 1:  # per channel, along the recorded dimension
            view = [1] * values.ndim
            view[int(q.quantizedDimension)] = -1
            scale, zero = scale.reshape(view), zero.reshape(view)
        return (scale * (values.astype(np.float64) - zero)).astype(np.float32)

    def conv(self, index: int) -> Conv:
        name, ins, outs, options = self.ops[index]
        depthwise = name == "DEPTHWISE_CONV_2D"
        weight = self.constant(ins[1])
        # OHWI -> OIHW; depthwise 1HWC -> C1HW
        weight = weight.transpose(3, 0, 1, 2) if depthwise else weight.transpose(0, 3, 1, 2)
        out_channels = weight.shape[0]
        bias = self.constant(ins[2]) if len(ins) > 2 and ins[2] >= 0 else np.zeros(out_channels, np.float32)
        if options.strideH != options.strideW or options.dilationHFactor != options.dilationWFactor:
            raise WeightsError(f"{self.path}: {self.tensor_name(ins[1])}: non-square strides or dilations")
        activation = {0: "NONE", 1: "RELU", 3: "RELU6"}.get(options.fusedActivationFunction, "OTHER")
        return Conv(
            self.tensor_name(ins[1]).split(";")[0],
            depthwise,
            np.ascontiguousarray(weight),
            bias,
            int(options.strideH),
            int(options.dilationHFactor),
            activation,
            ins[0],
            outs[0],
        )

    def op_counts(self) -> str:
        counts: dict[str, int] = {}
        for name, *_ in self.ops:
            counts[name] = counts.get(name, 0) + 1
        return ", ".join(f"{n} x{c}" for n, c in sorted(counts.items(), key=lambda kv: -kv[1]))


def _not_deeplab(graph: _Graph, why: str) -> WeightsError:
    return WeightsError(
        f"{graph.path} is not a DeepLab MobileNetV2 (image-level head) TF Lite model: {why} "
        f"(found {len(graph.ops)} ops: {graph.op_counts()})"
    )


def _one_conv_consumer(graph: _Graph, tensor: int, exclude: set[int] = frozenset()) -> list[int]:
    return [
        i
        for i in graph.consumers.get(tensor, [])
        if graph.ops[i][0] in ("CONV_2D", "DEPTHWISE_CONV_2D") and i not in exclude
    ]


def read_tflite_deeplab(path: str | Path) -> TfliteDeepLab:
    """The architecture and dequantised weights of a TF Lite DeepLab MobileNetV2 file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"source={path}: no such file")
    graph = _Graph(path)
    if len(graph.graph.inputs) != 1 or len(graph.graph.outputs) != 1:
        raise _not_deeplab(graph, f"{len(graph.graph.inputs)} inputs and {len(graph.graph.outputs)} outputs")
    image, result = int(graph.graph.inputs[0]), int(graph.graph.outputs[0])
    shape = graph.shape(image)
    if len(shape) != 4 or shape[3] != 3:
        raise _not_deeplab(graph, f"input {graph.tensor_name(image)} of shape {shape}, not [1, H, W, 3]")

    pools = [i for i, op in enumerate(graph.ops) if op[0] in ("AVERAGE_POOL_2D", "MEAN")]
    if len(pools) != 1:
        raise _not_deeplab(graph, f"{len(pools)} average pools where the image-level head has one")
    features = graph.ops[pools[0]][1][0]  # the backbone's output
    if features not in graph.producer:
        raise _not_deeplab(graph, "the average pool reads the input")
    last = graph.producer[features]
    backbone = [
        graph.conv(i) for i, op in enumerate(graph.ops[: last + 1]) if op[0] in ("CONV_2D", "DEPTHWISE_CONV_2D")
    ]
    if not backbone:
        raise _not_deeplab(graph, "no conv before the average pool")
    if backbone[0].input != image:
        first = graph.ops[graph.producer[backbone[0].input]][0] if backbone[0].input in graph.producer else "?"
        raise _not_deeplab(graph, f"the first conv reads {first}, not the input image (pre-processing inside?)")

    # Head: pooled -> 1x1 conv; features -> 1x1 conv; concat -> 1x1 projection -> 1x1 logits.
    pooled = _one_conv_consumer(graph, graph.ops[pools[0]][2][0])
    direct = _one_conv_consumer(graph, features)
    if len(pooled) != 1 or len(direct) != 1:
        raise _not_deeplab(
            graph,
            f"{len(direct)} conv branches on the backbone output and {len(pooled)} on its pool, where the "
            "image-level head has one each (full ASPP and decoder heads are not read from TF Lite files)",
        )
    image_pooling, aspp0 = graph.conv(pooled[0]), graph.conv(direct[0])
    concats = [i for i in graph.consumers.get(aspp0.output, []) if graph.ops[i][0] == "CONCATENATION"]
    if len(concats) != 1:
        raise _not_deeplab(graph, "the 1x1 branch is not concatenated with the image pooling")
    projection_ops = _one_conv_consumer(graph, graph.ops[concats[0]][2][0])
    if len(projection_ops) != 1:
        raise _not_deeplab(graph, "no single 1x1 projection after the concatenation")
    projection = graph.conv(projection_ops[0])
    logits_ops = _one_conv_consumer(graph, projection.output)
    if len(logits_ops) != 1:
        raise _not_deeplab(graph, "no single logits conv after the projection (a decoder?)")
    logits = graph.conv(logits_ops[0])
    later = [
        op[0]
        for op in graph.ops[logits_ops[0] + 1 :]
        if op[0] not in ("RESIZE_BILINEAR", "ARG_MAX", "QUANTIZE", "DEQUANTIZE")
    ]
    if later:
        raise _not_deeplab(graph, f"ops after the logits: {', '.join(later)}")

    resizes = [graph.ops[i][3] for i, op in enumerate(graph.ops) if op[0] == "RESIZE_BILINEAR"]
    modes = {(bool(o.alignCorners), bool(o.halfPixelCenters)) for o in resizes}
    if len(modes) > 1 or (False, False) in modes:
        raise _not_deeplab(graph, f"bilinear resizes with (align_corners, half_pixel_centers) {sorted(modes)}")
    align_corners = modes == {(True, False)} or not modes

    input_dtype = graph.dtype(image)
    if input_dtype == "float32":
        mean, std = TFLITE_FLOAT_PIXEL_MEAN, TFLITE_FLOAT_PIXEL_STD
    else:
        q = graph.graph.tensors[image].quantization
        if q is None or q.scale is None or len(q.scale) != 1:
            raise _not_deeplab(graph, f"a {input_dtype} input without its quantization")
        zero = float(q.zeroPoint[0]) if q.zeroPoint is not None else 0.0
        if input_dtype == "int8":  # the bytes are pixel - 128
            zero += 128.0
        mean, std = zero, 1.0 / float(q.scale[0])
    output_shape = graph.shape(result)
    output = "labels" if graph.ops[graph.producer[result]][0] == "ARG_MAX" else "logits"
    strides = math.prod(c.stride for c in backbone)
    if strides not in (8, 16, 32):
        raise _not_deeplab(graph, f"the backbone's strides multiply to {strides}, not 8, 16 or 32")
    if output == "logits" and output_shape[-1] != logits.out_channels:
        raise _not_deeplab(graph, f"output of shape {output_shape} for {logits.out_channels} logits")
    return TfliteDeepLab(
        path=path,
        input_height=shape[1],
        input_width=shape[2],
        input_dtype=input_dtype,
        pixel_mean=mean,
        pixel_std=std,
        output=output,
        align_corners=align_corners,
        depth_multiplier=backbone[0].out_channels / STEM_CHANNELS,
        output_stride=strides,
        num_classes=logits.out_channels,
        quantized=input_dtype != "float32",
        backbone=backbone,
        image_pooling=image_pooling,
        aspp0=aspp0,
        projection=projection,
        logits=logits,
    )


def _backbone_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Our backbone's ConvBNAct layers in execution order, with their state_dict prefixes."""
    layers = [("backbone.stem", model.backbone.stem)]
    for i, block in enumerate(model.backbone.blocks):
        if block.expand is not None:
            layers.append((f"backbone.blocks.{i}.expand", block.expand))
        layers += [(f"backbone.blocks.{i}.depthwise", block.depthwise), (f"backbone.blocks.{i}.project", block.project)]
    return layers


def load_tflite_weights(model: nn.Module, found: TfliteDeepLab) -> dict[str, str]:
    """Copy the file's convs into `model` (MobileNetV2 + AsppLiteHead); each folded bias into the
    batch norm after its conv, whose statistics become the identity. Returns ours -> file name."""
    head = model.head
    ours = _backbone_layers(model) + [
        ("head.aspp.image_pooling.conv", head.aspp.image_pooling.conv),
        ("head.aspp.conv1x1", head.aspp.conv1x1),
        ("head.aspp.project", head.aspp.project),
    ]
    theirs = [*found.backbone, found.image_pooling, found.aspp0, found.projection]
    if len(ours) != len(theirs):
        raise WeightsError(
            f"{found.path}: {len(found.backbone)} backbone convs, where MobileNetV2 at depth multiplier "
            f"{found.depth_multiplier:g} has {len(ours) - 3}"
        )
    state = model.state_dict()
    mapping, problems = {}, []
    for (prefix, layer), conv in zip(ours, theirs):
        expected = tuple(state[f"{prefix}.conv.weight"].shape)
        stride, dilation = layer.conv.stride[0], layer.conv.dilation[0]
        if conv.weight.shape != expected or (conv.stride, conv.dilation) != (stride, dilation):
            problems.append(
                f"{conv.describe()}: weight {conv.weight.shape} stride {conv.stride} dilation {conv.dilation}, "
                f"ours {prefix} {expected} stride {stride} dilation {dilation}"
            )
            continue
        act = getattr(layer, "act", None)
        want = "NONE" if act is None else "RELU6" if isinstance(act, nn.ReLU6) else "RELU"
        if conv.activation != want:
            problems.append(f"{conv.describe()}: activation {conv.activation}, ours {prefix} {want}")
            continue
        bn = layer.bn
        state[f"{prefix}.conv.weight"] = torch.from_numpy(conv.weight)
        state[f"{prefix}.bn.weight"] = torch.ones(bn.num_features)
        state[f"{prefix}.bn.bias"] = torch.from_numpy(conv.bias)
        state[f"{prefix}.bn.running_mean"] = torch.zeros(bn.num_features)
        state[f"{prefix}.bn.running_var"] = torch.full((bn.num_features,), 1.0 - bn.eps)  # sqrt(var + eps) = 1
        mapping[prefix] = conv.name
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise WeightsError(
            f"{found.path} does not match MobileNetV2 + the image-level head: {'; '.join(problems[:3])}{more}"
        )
    state["head.classifier.weight"] = torch.from_numpy(found.logits.weight)
    state["head.classifier.bias"] = torch.from_numpy(found.logits.bias)
    mapping["head.classifier"] = found.logits.name
    model.load_state_dict(state, strict=True)
    return mapping
