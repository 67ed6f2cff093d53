"""TFLite (LiteRT) export through the optional `litert-torch` package (`pip install ".[tflite]"`),
a runner on the LiteRT interpreter (`ai-edge-litert`), and the metadata of a TF Lite segmentation
file that this project did not write (the official DeepLab files), read from the file itself."""

from __future__ import annotations

import copy
import os
import types
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seg.data.classes import VOC_CLASSES, voc_palette
from seg.export.common import ExportError, quiet_logging
from seg.models.tflite_weights import TFLITE_FLOAT_PIXEL_MEAN, TFLITE_FLOAT_PIXEL_STD

MISSING = (
    'export.format=tflite needs the optional litert-torch package: pip install ".[tflite]" '
    "(see README, Export for apps)"
)


def _pool_by_resize(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # Same values as mean + expand (bilinear from 1x1 is a constant), written as TF DeepLab does:
    # the LiteRT converter turns expand-then-concat into a BROADCAST_TO with a wrong shape.
    pooled = self.conv(x.mean(dim=(2, 3), keepdim=True))
    return F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _litert() -> Any:
    try:
        import litert_torch
    except ImportError as exc:
        raise ExportError(MISSING) from exc
    return litert_torch


# Float input of a TF Lite export whose model normalises per channel: (pixel - 127.5) / 127.5, the
# input of TF DeepLab and of MediaPipe's own models. TF Lite metadata holds one mean and std for all
# channels as far as MediaPipe's ImageSegmenter goes ("Per-channel image normalization is not available").
UNIFORM_NORMALIZATION = (127.5, 127.5)


def uniform_input_normalization(model: nn.Module) -> Optional[tuple[float, float]]:
    """The (mean, std) a TF Lite export's float input takes instead of the model's own per-channel
    values (restored inside, `ExportWrapper(input_normalization=...)`); None when the model's are
    already one value for all channels."""
    mean, std = model.pixel_mean.flatten(), model.pixel_std.flatten()
    if bool((mean == mean[0]).all()) and bool((std == std[0]).all()):
        return None
    return UNIFORM_NORMALIZATION


def _pool_modules_by_resize(module: nn.Module) -> nn.Module:
    from seg.models.aspp import ImagePooling

    module = copy.deepcopy(module).eval()
    for m in module.modules():
        if isinstance(m, ImagePooling):
            m.forward = types.MethodType(_pool_by_resize, m)
    return module


def _restore_source_functions(graph: torch.fx.GraphModule) -> None:
    """litert-torch's quantizer finds additions, multiplications and concatenations by the Python
    function that made each node (`source_fn_stack`), which `torch.export` no longer records: without
    it every residual addition stays float between a dequantize and a quantize. Restored from the ATen
    op, one partition per node. (Global means stay as the quantizer leaves them: marked too, the
    squeeze-and-excitation means of MobileNetV3 made its int8 file slower still, 39 -> 59 ms at 513.)"""
    import operator

    aten = torch.ops.aten
    functions = {
        aten.add.Tensor: operator.add,
        aten.mul.Tensor: operator.mul,
        aten.cat.default: torch.cat,
    }
    for node in graph.graph.nodes:
        if node.op == "call_function" and node.target in functions and not node.meta.get("source_fn_stack"):
            node.meta["source_fn_stack"] = [(node.name, functions[node.target])]


def quantizer(float_modules: Sequence[str] = ()) -> Any:
    """litert-torch's PT2E quantizer as TF Lite's int8 kernels want it: int8 weights per output
    channel, symmetric; int8 activations per tensor, asymmetric; `float_modules` (paths in the
    module given to `export_tflite`) stay float."""
    _litert()
    from litert_torch.quantize import pt2e_quantizer as pt2e

    q = pt2e.PT2EQuantizer().set_global(pt2e.get_symmetric_quantization_config(is_per_channel=True))
    for name in float_modules:
        q.set_module_name(name, None)
    return q


def export_tflite(
    module: nn.Module,
    path: str | os.PathLike,
    sample: torch.Tensor,
    calibration: Optional[Sequence[np.ndarray]] = None,
    float_modules: Sequence[str] = (),
) -> Path:
    """Convert `module` for LiteRT at the static size of `sample`: float32, or with `calibration`
    (inputs like `sample`) full-integer int8 through PT2E (prepare, calibrate, convert), the int8
    graph handed to the converter with its quantizer."""
    litert_torch = _litert()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = _pool_modules_by_resize(module)
    try:
        with quiet_logging("", "absl", "jax", "litert_torch"), torch.no_grad():
            if calibration is None:
                edge = litert_torch.convert(module, (sample,))
            else:
                from litert_torch.quantize.quant_config import QuantConfig

                from seg.engine.qat import _pt2e

                pt2e, q = _pt2e().quantize_pt2e, quantizer(float_modules)
                graph = torch.export.export(module, (sample,)).module()
                _restore_source_functions(graph)
                prepared = pt2e.prepare_pt2e(graph, q)
                for x in calibration:
                    prepared(torch.from_numpy(np.ascontiguousarray(x)))
                converted = pt2e.convert_pt2e(prepared, fold_quantize=False)
                edge = litert_torch.convert(converted, (sample,), quant_config=QuantConfig(pt2e_quantizer=q))
            edge.export(str(path))
    except ExportError:
        raise
    except Exception as exc:
        what = "TFLite conversion" if calibration is None else "TFLite int8 quantization"
        raise ExportError(f"{what} failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    return path


class TFLiteRunner:
    """Runs a .tflite file on the LiteRT interpreter: numpy in, numpy out."""

    def __init__(self, path: str | os.PathLike, threads: Optional[int] = None) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise ExportError(f'running {path} needs the ai-edge-litert package: pip install ".[tflite]"') from exc
        self.path = Path(path)
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"{path}: cannot load as a TF Lite model ({reason})") from exc
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = self.quantize_input(x)
        if tuple(x.shape) != tuple(self.input["shape"]):
            self.interpreter.resize_tensor_input(self.input["index"], list(x.shape))
            self.interpreter.allocate_tensors()
        self.interpreter.set_tensor(self.input["index"], np.ascontiguousarray(x))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])  # a copy already

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """Float data for an integer input with quantization parameters (a full-integer model whose
        float input the converter folded into its first op): quantized as the model says."""
        dtype = np.dtype(self.input["dtype"])
        scale, zero_point = self.input.get("quantization", (0.0, 0))
        if x.dtype.kind != "f" or dtype.kind not in "iu" or not scale:
            return x
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def _describe(details: list[dict[str, Any]]) -> str:
    """'[1, 257, 257, 3] float32' for each tensor, comma-separated ('none' for no tensor)."""
    parts = []
    for d in details:
        shape = [int(v) for v in d.get("shape_signature", d["shape"])]
        parts.append(f"{shape} {np.dtype(d['dtype']).name}")
    return ", ".join(parts) or "none"


def official_tflite_metadata(path: str | os.PathLike, interpreter: Any = None) -> dict[str, Any]:
    """The metadata ExportedPredictor consumes, for a .tflite file with none of ours beside it (the
    official DeepLab files), read from the file's input and output details: one RGB image input
    [1, H, W, 3] (float32, normalised as TF Lite's DeepLab does: (pixel - 128) / 128; or uint8 with
    quantization scale s and zero point z, fed the raw bytes), and one output: float logits
    [1, H, W, C] (NHWC) or integer class ids [1, H, W]. Anything else: ExportError, in one line
    saying what was found. `interpreter`: one already loaded for the file (else one is made)."""
    if interpreter is None:
        interpreter = TFLiteRunner(path).interpreter
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()

    def refuse(why: str) -> ExportError:
        return ExportError(
            f"{path}: not an image segmentation model that predict can run: found input {_describe(inputs)}, "
            f"output {_describe(outputs)} ({why}); expected one input [1, H, W, 3] float32 or uint8 and one "
            "output, [1, H, W, classes] logits or [1, H, W] integer class ids"
        )

    if len(inputs) != 1 or len(outputs) != 1:
        raise refuse(f"{len(inputs)} input(s) and {len(outputs)} output(s)")
    inp, out = inputs[0], outputs[0]
    in_shape = [int(v) for v in inp.get("shape_signature", inp["shape"])]
    out_shape = [int(v) for v in out.get("shape_signature", out["shape"])]
    in_dtype, out_dtype = np.dtype(inp["dtype"]), np.dtype(out["dtype"])
    if len(in_shape) != 4 or in_shape[0] not in (1, -1) or in_shape[3] != 3:
        raise refuse("the input is not one RGB image, NHWC")
    if in_dtype not in (np.float32, np.uint8):
        raise refuse(f"input type {in_dtype.name}")
    height, width = in_shape[1], in_shape[2]
    static = height > 0 and width > 0
    if height == 0 or width == 0 or static != (height > 0 or width > 0):
        raise refuse("input size neither static nor fully dynamic")
    if len(out_shape) == 4 and out_shape[0] in (1, -1) and out_shape[3] > 1 and out_dtype.kind in "fiu":
        kind, num_classes, layout = "logits", out_shape[3], "NHWC"
    elif len(out_shape) == 3 and out_shape[0] in (1, -1) and out_dtype.kind in "iu":
        kind, num_classes, layout = "labels", len(VOC_CLASSES), "NHW"
    else:
        raise refuse("the output is neither logits [1, H, W, classes] nor class ids [1, H, W]")
    if static and out_shape[1:3] != [height, width]:
        raise refuse("the output's size is not the input's")

    if in_dtype == np.uint8:
        # The raw bytes go in: the model's first op dequantizes them, (q - z) * s. The mean and std
        # recorded are the ones that dequantization amounts to (the letterbox pads with the mean).
        scale, zero_point = inp.get("quantization", (0.0, 0))
        if not scale:
            raise refuse("uint8 input without quantization parameters")
        mean, std, included = float(zero_point), 1.0 / float(scale), True
        norm_name = f"quantized input (scale {float(scale):g}, zero point {int(zero_point)})"
    else:
        mean, std, included = TFLITE_FLOAT_PIXEL_MEAN, TFLITE_FLOAT_PIXEL_STD, False
        norm_name = "TF Lite DeepLab: (pixel - 128) / 128"
    names = list(VOC_CLASSES) if num_classes == len(VOC_CLASSES) else [f"class_{i}" for i in range(num_classes)]
    return {
        "format": "tflite",
        "official": True,  # no metadata of ours: read from the file itself
        "quantize": None,
        "opset": None,
        "num_classes": num_classes,
        "class_names": names,
        "palette": voc_palette(max(num_classes, 1)).tolist(),
        "input": {
            "name": inp["name"],
            "layout": "NHWC",
            "dtype": in_dtype.name,
            "channels": "RGB",
            "height": height if static else None,
            "width": width if static else None,
        },
        "normalization": {"name": norm_name, "mean": [mean] * 3, "std": [std] * 3, "included": included},
        "output": {"name": out["name"], "kind": kind, "layout": layout, "dtype": out_dtype.name},
        "resize": "bilinear, align_corners=False",
    }
