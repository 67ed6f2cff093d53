"""int8 ONNX models by ONNX Runtime static quantization: QDQ format, per-channel int8 weights,
uint8 activations whose ranges are calibrated on real images.

Beyond the quantizer's defaults, three things stay float, each measured with ONNX Runtime on
x86 (README, "Export for apps"):
- The final logits resize (two MatMuls, see `seg.export.onnx.resize_as_matmul`). Its first
  MatMul (columns, on the small logits) takes int8 inputs and outputs float, which ONNX Runtime
  runs as one integer matmul (MatMulIntegerToFloat); the rest is float, so the full-size logits
  are never requantized or converted.
- `float_modules` (module paths, e.g. `backbone.stem`). The stem and first block run at half the
  input resolution with few channels, where ONNX Runtime's int8 kernels are slower than its
  float ones.
- The top-level forward's own operations (normalisation, a final Resize op, argmax).
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from seg.export.common import ExportError, quiet_logging
from seg.export.onnx import FINAL_RESIZE


def _reader(input_name: str, inputs: Sequence[np.ndarray]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """Feeds the calibration inputs one at a time (each already in the model's input format);
        `set_range` lets the calibrator take them a few at a time."""

        def __init__(self) -> None:
            self.set_range(0, len(inputs))

        def __len__(self) -> int:
            return len(inputs)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._items: Iterator[np.ndarray] = iter(inputs[start_index:end_index])

        def get_next(self) -> Optional[dict[str, np.ndarray]]:
            item = next(self._items, None)
            return None if item is None else {input_name: item}

        def rewind(self) -> None:
            self.set_range(0, len(inputs))

    return Reader()


def _module_paths(node: Any) -> Optional[list[str]]:
    """The module paths the exporter recorded for `node`, without the export wrapper's `model.`
    prefix (so `backbone.stem`, as in the state_dict); [] for the operations of the top-level
    forward (normalisation, a final Resize, argmax); None where nothing was recorded (nodes
    added by our rewrites)."""
    scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
    if scopes is None:
        return None
    names = ast.literal_eval(scopes)[1:-1]  # a list's repr: the root scope, the modules, the op
    return [n[len("model.") :] if n.startswith("model.") else n for n in names if n not in ("", "model")]


def float_nodes(proto: Any, modules: Sequence[str]) -> list[str]:
    """Names of the nodes that int8 quantization leaves in float: those exported from `modules`
    (or from modules inside them) and the top-level forward's own operations. Raises ExportError
    naming a module that matches no node."""
    paths = {node.name: _module_paths(node) for node in proto.graph.node}
    out = [name for name, p in paths.items() if p == []]
    for module in modules:
        found = [name for name, p in paths.items() if p and any(m == module or m.startswith(module + ".") for m in p)]
        if not found:
            top = sorted({".".join(p[-1].split(".")[:2]) for p in paths.values() if p})
            raise ExportError(
                f"export.float_modules: no layer of the model is in {module!r} "
                f"(module paths start with: {', '.join(top)})"
            )
        out += found
    return list(dict.fromkeys(out))


def carry_over(proto: Any, names: Sequence[str]) -> list[str]:
    """`names` of the exported graph, mapped onto its pre-processed form `proto`: the nodes kept
    under their names, plus the unnamed nodes the pre-processing made (named here, in place)
    whose inputs all come from those nodes or constants."""
    constants = {i.name for i in proto.graph.initializer} | {i.name for i in proto.graph.input}
    keep, producers = set(names), {}
    out = []
    for index, node in enumerate(proto.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_preprocessed_{index}"
            sources = [producers.get(i) for i in node.input if i and i not in constants]
            if sources and all(s in keep for s in sources):
                keep.add(node.name)
        if node.name in keep:
            out.append(node.name)
        for o in node.output:
            producers[o] = node.name
    return out


def _stride(count: int, most: int = 4) -> int:
    """The largest chunk size up to `most` that divides `count` (ONNX Runtime requires it)."""
    return next(d for d in range(min(most, count), 0, -1) if count % d == 0)


def quantize_int8(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration_inputs: Sequence[np.ndarray],
    float_modules: Sequence[str] = (),
) -> Path:
    """Quantize the float model at `fp32_path` to `out_path`, calibrating activation ranges on
    `calibration_inputs` (arrays shaped like the model's input, batch 1). `float_modules`: module
    paths (`backbone.stem`) whose layers stay in float."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration_inputs:
        raise ExportError("int8 quantization needs at least one calibration image (export.calibration_images)")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    exported = onnx.load(str(fp32_path))
    input_name = exported.graph.input[0].name
    # Found in the exported model: the pre-processing below drops the exporter's metadata where it
    # rewrites the graph (HardSwish -> HardSigmoid, Mul). A bad module name fails here, first.
    floats = float_nodes(exported, float_modules)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        try:
            # The quantizer logs a recommendation per node (root logger) and prints progress.
            with quiet_logging(""), contextlib.redirect_stdout(io.StringIO()):
                # Shape inference + graph clean-up first, as ONNX Runtime recommends before quantizing.
                quant_pre_process(str(fp32_path), str(pre))
                proto = onnx.load(str(pre))
                excluded = carry_over(proto, floats)
                excluded += [
                    n.name
                    for n in proto.graph.node  # the final resize but its column MatMul
                    if n.name.startswith(FINAL_RESIZE) and not n.name.endswith("/cols_matmul")
                ]
                onnx.save(proto, str(pre))
                quantize_static(
                    str(pre),
                    str(out_path),
                    _reader(input_name, calibration_inputs),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    nodes_to_exclude=excluded,
                    # Ranges computed and merged a few images at a time: every activation of every
                    # image at once would not fit in memory.
                    extra_options={
                        "CalibTensorRangeSymmetric": False,
                        "WeightSymmetric": True,
                        "CalibStridedMinMax": _stride(len(calibration_inputs)),
                        # Our segmenters' only MatMuls are the final resize: float out.
                        "OpTypesToExcludeOutputQuantization": ["MatMul"],
                    },
                )
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"int8 quantization failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    model = onnx.load(str(out_path))
    onnx.save_model(model, str(out_path), save_as_external_data=False)  # one file, weights inside
    return out_path
