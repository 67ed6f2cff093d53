"""Quantization-aware training (`train.qat=true`): the segmenter with fake quantization, as PT2E
(torchao) makes it, and its int8 form for export.

The quantizer is ExecuTorch's XNNPACKQuantizer in its QAT configuration: int8 weights, per output
channel and symmetric; int8 activations, per tensor and asymmetric; the scheme of the ExecuTorch
int8 export and of TF Lite's. Every convolution's output is quantized (a quantizer made for x86
kernels, which leaves a convolution that feeds an addition in float, cannot be lowered to XNNPACK).
The ONNX export moves the activations to uint8 (`shift_activations`: the same values), ONNX
Runtime's fast form on x86. Every layer is int8. Batch norm is folded into the convolution's
weights in the forward pass (PT2E's QAT conv-bn pattern), so the weights are fake-quantized as the
export folds them, and `convert` folds it for good.

The encoder and head are exported once with dynamic batch, height and width (training crops and
whole validation images run through the same graph); the final resize to the image size stays
outside it, in float, as in `Segmenter.forward`.

State: the graph keeps the segmenter's parameter and buffer names, so a QAT checkpoint's "model"
entry is a plain segmenter's state (evaluation and fp32 export read it as any other), and its "qat"
entry holds the fake quantizers' learned ranges.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from seg.errors import SegError
from seg.models.segmenter import Segmenter

MISSING = 'train.qat=true needs the executorch and torchao packages: pip install -e ".[executorch]"'
MAX_SIDE = 8192  # the largest image side the graph accepts
MIN_SIDE = 32


class QatError(SegError, RuntimeError):
    """A segmenter cannot be prepared for quantization-aware training, or a QAT state does not fit."""


@contextlib.contextmanager
def quiet_import() -> Iterator[None]:
    """Around imports of torchao (also inside executorch's): at import it registers an Enum with torch's
    pytree, which logs a deprecation warning."""
    logger = logging.getLogger("torch.utils._pytree")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _pt2e() -> Any:
    try:
        with quiet_import():
            import torchao.quantization.pt2e as pt2e
            import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
    except ImportError as exc:
        raise QatError(MISSING) from exc
    return pt2e


class _Encoder(nn.Module):
    """Backbone and head, logits at the output stride: the part that is quantized. Attribute names
    are the segmenter's, so the state_dict keys are too."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = model.backbone, model.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _strip_shape_arithmetic(graph_module: torch.fx.GraphModule) -> None:
    """Shape arithmetic (SymInt nodes of dynamic height and width) carries the metadata of the layer
    that needed it; the quantizer's pattern matching would take it as part of that layer (a conv-bn
    with several outputs) and refuse. It belongs to no layer."""
    for node in graph_module.graph.nodes:
        if isinstance(node.meta.get("val"), (torch.SymInt, torch.SymFloat, torch.SymBool)):
            for key in ("source_fn_stack", "torch_fn", "nn_module_stack"):
                node.meta.pop(key, None)


def _without_dropout(model: nn.Module) -> nn.Module:
    """`model` with its dropout layers removed (in place). torchao's train / eval switch of an exported
    graph rewrites every dropout it finds to p=0.5, whatever its rate (0.1 in ASPP, 0 in LR-ASPP);
    fine-tuning goes without."""
    for name, child in model.named_children():
        if isinstance(child, nn.modules.dropout._DropoutNd):
            setattr(model, name, nn.Identity())
        else:
            _without_dropout(child)
    return model


def quantizer() -> Any:
    """The quantizer of QAT, and so of every int8 export of a QAT checkpoint."""
    try:
        with quiet_import():
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer,
                get_symmetric_quantization_config,
            )
    except ImportError as exc:
        raise QatError(MISSING) from exc
    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=True))


class QatSegmenter(nn.Module):
    """A segmenter under quantization-aware training: the fake-quantized encoder graph, the final
    float resize, and the segmenter's own normalisation. `train()` / `eval()` switch the graph's batch
    norm and fake-quantizer observers (a graph ignores the module flags): batch statistics and range
    updates in training, running statistics and fixed ranges in evaluation. `frozen_bn` keeps batch
    norm on its running statistics in training too (`train.freeze_bn`)."""

    def __init__(self, model: nn.Module, crop_size: int, frozen_bn: bool = False) -> None:
        super().__init__()
        pt2e = _pt2e()
        from torch.export import Dim

        self.name = f"{model.name} (QAT)"
        self.output_stride = model.output_stride
        self.align_corners = model.align_corners
        self.frozen_bn = frozen_bn
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone())
        self.register_buffer("pixel_std", model.pixel_std.detach().clone())
        encoder = _Encoder(_without_dropout(copy.deepcopy(model))).train()  # `model` keeps its mode and weights
        sample = torch.zeros(2, 3, crop_size, crop_size, device=model.pixel_mean.device)
        side = {"min": MIN_SIDE, "max": MAX_SIDE}
        shapes = {"x": {0: Dim("batch", min=1, max=1024), 2: Dim("height", **side), 3: Dim("width", **side)}}
        try:
            graph = torch.export.export(encoder, (sample,), dynamic_shapes=shapes).module()
            _strip_shape_arithmetic(graph)
            self.graph = pt2e.quantize_pt2e.prepare_qat_pt2e(graph, quantizer())
        except Exception as exc:
            raise QatError(
                f"train.qat: cannot prepare {model.name} for quantization-aware training: {type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            ) from exc
        self._graph_training: Optional[bool] = None
        self.train(True)

    @property
    def backbone(self) -> nn.Module:
        return self.graph.backbone  # the optimizer's parameter groups tell the backbone apart

    def train(self, mode: bool = True) -> "QatSegmenter":
        # Not nn.Module.train: an exported graph refuses it (its flags switch nothing).
        self.training = mode
        pt2e = _pt2e()
        graph_training = mode and not self.frozen_bn
        if graph_training != self._graph_training:
            move = pt2e.move_exported_model_to_train if graph_training else pt2e.move_exported_model_to_eval
            move(self.graph)
            self._graph_training = graph_training
        self.graph.apply(pt2e.enable_observer if mode else pt2e.disable_observer)
        return self

    normalize = Segmenter.normalize  # from its own pixel_mean / pixel_std buffers, as the segmenter

    def forward(self, x: torch.Tensor, output_size: Optional[tuple[int, int]] = None) -> torch.Tensor:
        if not (MIN_SIDE <= min(x.shape[-2:]) and max(x.shape[-2:]) <= MAX_SIDE):
            raise QatError(
                f"a QAT model takes images of {MIN_SIDE} to {MAX_SIDE} pixels a side, got {tuple(x.shape[-2:])}"
            )
        logits = self.graph(x)
        size = x.shape[-2:] if output_size is None else output_size
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)

    def quantizer_counts(self) -> tuple[int, int]:
        """(weight quantizers, activation quantizers): per channel and per tensor."""
        quantizers = [m for n, m in self.graph.named_children() if self._is_quantizer_key(n)]
        weights = sum(1 for m in quantizers if m.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine))
        return weights, len(quantizers) - weights

    # The checkpoint's two entries -----------------------------------------------------------

    @staticmethod
    def _is_quantizer_key(key: str) -> bool:
        return key.startswith("activation_post_process_")

    def float_state_dict(self) -> dict[str, torch.Tensor]:
        """The segmenter's state: what a plain segmenter of the same config loads."""
        state = {k: v for k, v in self.graph.state_dict().items() if not self._is_quantizer_key(k)}
        state["pixel_mean"], state["pixel_std"] = self.pixel_mean, self.pixel_std
        return state

    def quantizer_state_dict(self) -> dict[str, torch.Tensor]:
        """The fake quantizers' learned ranges (scale, zero point, observed min / max)."""
        return {k: v for k, v in self.graph.state_dict().items() if self._is_quantizer_key(k)}

    def load_quantizer_state_dict(self, state: dict[str, torch.Tensor], source: str) -> None:
        own = self.quantizer_state_dict()
        if set(state) != set(own):
            raise QatError(
                f"{source}: its quantization-aware training state does not fit this model "
                f"({len(state)} quantizer tensors, this model has {len(own)}): was it trained with another "
                "torch / torchao version?"
            )
        # Tensor by tensor, resized to the learned shapes (per-channel ranges): the quantizers' own
        # state-dict loading resets the observers' eps.
        with torch.no_grad():
            for key, value in state.items():
                own_tensor = self.graph.get_buffer(key)
                own_tensor.resize_(value.shape).copy_(value)


def convert(model: QatSegmenter) -> nn.Module:
    """The int8 form of a QAT segmenter (its own copy): weights quantized with their learned scales,
    batch norm folded, quantize / dequantize pairs at the learned activation ranges. A module with the
    segmenter's forward, normalisation buffers and attributes, for export."""
    pt2e = _pt2e()
    model = copy.deepcopy(model).eval()
    converted = QuantizedSegmenter(model)
    converted.graph = pt2e.quantize_pt2e.convert_pt2e(model.graph)
    return converted


def shift_activations(converted: "QuantizedSegmenter", dtype: torch.dtype) -> "QuantizedSegmenter":
    """The same model with its activations on the `dtype` grid (torch.uint8 or torch.int8), in place:
    every per-tensor quantize / dequantize pair moves its zero point and range by 128, which changes
    no value. ONNX Runtime runs uint8 activations fastest on x86; XNNPACK takes int8."""
    ops = torch.ops.quantized_decomposed
    targets = {ops.quantize_per_tensor.default, ops.dequantize_per_tensor.default}
    for node in converted.graph.graph.nodes:
        if node.op == "call_function" and node.target in targets and node.args[5] != dtype:
            x, scale, zero_point, low, high, _ = node.args
            shift = 128 if dtype == torch.uint8 else -128
            node.args = (x, scale, zero_point + shift, low + shift, high + shift, dtype)
    converted.graph.recompile()
    return converted


class QuantizedSegmenter(nn.Module):
    """A converted QAT segmenter: the int8 encoder graph and the final float resize."""

    def __init__(self, model: QatSegmenter) -> None:
        super().__init__()
        self.name = model.name
        self.output_stride = model.output_stride
        self.align_corners = model.align_corners
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone())
        self.register_buffer("pixel_std", model.pixel_std.detach().clone())
        self.graph: nn.Module = model.graph

    def train(self, mode: bool = True) -> "QuantizedSegmenter":
        self.training = mode  # the graph is in evaluation form for good
        return self

    def forward(self, x: torch.Tensor, output_size: Optional[tuple[int, int]] = None) -> torch.Tensor:
        logits = self.graph(x)
        size = x.shape[-2:] if output_size is None else output_size
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)


def qat_from_state(state: dict, model: nn.Module, stored: Any, path: Any) -> Optional[QatSegmenter]:
    """The QAT segmenter of a checkpoint written by `train.qat=true` (None for any other checkpoint):
    its `state` as read by `load_checkpoint`, `model` and `stored` as `segmenter_from_state` made them,
    plus the learned ranges. `path` names the checkpoint in errors."""
    ranges = state.get("qat")
    if not isinstance(ranges, dict):
        return None
    crop_size = int(stored.get("train", {}).get("crop_size", 513))
    qat = QatSegmenter(model, crop_size)
    qat.load_quantizer_state_dict(ranges, str(path))
    return qat.eval()
