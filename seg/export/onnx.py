"""ONNX export through torch's dynamo exporter (which needs the `onnxscript` package), and the
ONNX Runtime session that runs the result."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from seg.export.common import ExportError, quiet_logging

# Bilinear Resize coordinate modes equal to align_corners=False.
HALF_PIXEL_MODES = (b"half_pixel", b"pytorch_half_pixel")


def export_onnx(
    module: nn.Module,
    path: str | os.PathLike,
    sample: torch.Tensor,
    dynamic: bool = False,
    opset: Optional[int] = None,
    metadata: Optional[dict[str, Any]] = None,
    resize_matmul: bool = True,
) -> Path:
    """Export `module` (an ExportWrapper, batch norm already folded) to one self-contained .onnx
    file. `dynamic` makes height and width dynamic (H, W axes of NCHW or NHWC input).

    Two equivalent rewrites follow the exporter's own optimisation: mean over H, W becomes
    GlobalAveragePool, and (static size, `resize_matmul`, logits of up to MATMUL_MAX_ROWS rows)
    the final logits resize becomes two MatMuls with constant bilinear weights."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = getattr(module, "labels", False)
    input_axes = (1, 2) if getattr(module, "include_preprocessing", False) else (2, 3)  # NHWC / NCHW
    output_axes = (1, 2) if labels else (2, 3)  # NHW / NCHW
    dynamic_shapes = None
    if dynamic:
        dynamic_shapes = ({input_axes[0]: torch.export.Dim.DYNAMIC, input_axes[1]: torch.export.Dim.DYNAMIC},)
    output_name = "labels" if labels else "logits"
    # The exporter narrates every step on stdout; keep the tool's output to what it reports.
    chatter = io.StringIO()
    try:
        with (
            contextlib.redirect_stdout(chatter),
            quiet_logging("onnxscript", "onnx_ir", "torch.onnx", "torch.export"),
            torch.no_grad(),
        ):
            program = torch.onnx.export(
                module.eval(),
                (sample,),
                dynamo=True,
                opset_version=opset,
                input_names=["image"],
                output_names=[output_name],
                dynamic_shapes=dynamic_shapes,
                optimize=True,  # folds constants (and any batch norm left) into the convs
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; one line says which step failed
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    proto = program.model_proto
    if dynamic:
        _name_dynamic_axes(proto, input_axes, output_axes)
    global_pools(proto)
    matmul = resize_matmul and not dynamic and resize_as_matmul(proto) > 0
    _drop_unused_initializers(proto)
    if metadata is not None:  # what the export did; the exporting pipeline embeds the final metadata once
        metadata["opset"] = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        metadata["final_resize"] = "matmul" if matmul else "resize"
    import onnx

    # One file, weights inside: what apps bundle (our models are far below protobuf's 2 GB).
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return path


def _name_dynamic_axes(proto: Any, input_axes: tuple[int, int], output_axes: tuple[int, int]) -> None:
    """Give the exporter's symbolic dims (s0, s53, ...) readable names: height, width."""
    for values, axes in ((proto.graph.input, input_axes), (proto.graph.output, output_axes)):
        for value in values:
            dims = value.type.tensor_type.shape.dim
            for axis, label in zip(axes, ("height", "width")):
                if dims[axis].dim_param:
                    dims[axis].dim_param = label


def drop_node_notes(proto: Any) -> None:
    """Remove the exporter's notes on each node (module scopes, source lines): only the export's own
    passes read them (`seg/export/quantize.py`), and they are up to a third of a small int8 file."""
    for node in proto.graph.node:
        del node.metadata_props[:]


def set_onnx_metadata(proto: Any, metadata: dict[str, Any]) -> None:
    """Store the metadata in the model itself (metadata_props), so the .onnx file alone says what
    it expects: the whole JSON under "seg", plus the main fields as their own keys."""
    del proto.metadata_props[:]
    entries = {
        "seg": json.dumps(metadata),
        "class_names": json.dumps(metadata["class_names"]),
        "palette": json.dumps(metadata["palette"]),
        "input_size": json.dumps([metadata["input"]["height"], metadata["input"]["width"]]),
        "normalization": json.dumps(metadata["normalization"]),
        "output": metadata["output"]["kind"],
        "checkpoint_sha256": metadata["checkpoint"]["sha256"],
    }
    for key, value in entries.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value


def check_providers(providers: list[str], key: str = "predict.providers") -> list[str]:
    """`providers` as a list, when every one is available in the installed ONNX Runtime; else
    ExportError in one line naming the missing ones and those available."""
    import onnxruntime as ort

    providers = [str(p) for p in providers]
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        gpu = any(p.startswith(("CUDA", "Tensorrt", "TensorRT")) for p in missing)
        hint = "; GPU providers need the onnxruntime-gpu package in place of onnxruntime" if gpu else ""
        raise ExportError(
            f"{key}={providers}: {', '.join(missing)} not available in onnxruntime {ort.__version__} "
            f"(available: {', '.join(available)}){hint}"
        )
    return providers


def onnx_session(
    path: str | os.PathLike, threads: Optional[int] = None, spinning: bool = True, providers: Optional[list[str]] = None
) -> Any:
    """An ONNX Runtime session, on the CPU unless `providers` (execution providers in order of
    preference, checked with `check_providers`) says otherwise; `threads` sets the intra-op pool
    (None: ONNX Runtime's default).

    `spinning=False` makes the pool's threads sleep as soon as a run ends instead of spinning for
    more work: needed when several sessions take turns on the same cores (benchmarks), where one
    session's spinning threads would otherwise slow the next one's run about 2x (measured).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    providers = check_providers(providers) if providers else ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:
        raise ExportError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0]}") from exc


class OnnxRunner:
    """Runs an .onnx file: `runner(x)` with the model's input array, returns its first output."""

    def __init__(
        self,
        path: str | os.PathLike,
        threads: Optional[int] = None,
        spinning: bool = True,
        providers: Optional[list[str]] = None,
    ) -> None:
        self.path = Path(path)
        self.session = onnx_session(path, threads, spinning, providers)
        self.input_name = self.session.get_inputs()[0].name
        # A named (or unnamed) first dimension: the model takes a batch of any size.
        shape = self.session.get_inputs()[0].shape
        self.batch_dynamic = bool(shape) and not isinstance(shape[0], int)
        self.providers = list(self.session.get_providers())  # those ONNX Runtime really uses

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


def _constants(graph: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _static_shapes(proto: Any) -> dict[str, list[int]]:
    """Every tensor's shape, where shape inference finds it fully static."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = v.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[v.name] = [d.dim_value for d in dims]
    return shapes


def global_pools(proto: Any) -> int:
    """ReduceMean over height and width with keepdims (image pooling, squeeze-excitation, the
    LR-ASPP gate) -> GlobalAveragePool: same values, and ONNX Runtime keeps it in its blocked
    NCHWc layout instead of reordering the tensor around a generic reduction. Returns the count."""
    from onnx import helper

    graph = proto.graph
    consts = _constants(graph)
    ranks = {name: len(shape) for name, shape in _static_shapes(proto).items()}
    changed = 0
    for node in graph.node:
        if node.op_type != "ReduceMean" or ranks.get(node.input[0]) != 4:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axes = attrs.get("axes", consts.get(node.input[1]) if len(node.input) > 1 else None)
        if attrs.get("keepdims", 1) != 1 or axes is None or sorted(int(a) % 4 for a in np.ravel(axes)) != [2, 3]:
            continue
        node.op_type = "GlobalAveragePool"
        del node.attribute[:]
        del node.input[1:]
        changed += 1
    return changed


def _drop_unused_initializers(proto: Any) -> None:
    used = {name for node in proto.graph.node for name in node.input}
    used |= {o.name for o in proto.graph.output}
    keep = [i for i in proto.graph.initializer if i.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)


def _bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in] weights of a 1-D bilinear resize, align_corners=False (half pixel)."""
    src = np.clip((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0, None)
    lo = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    hi = np.minimum(lo + 1, size_in - 1)
    frac = src - lo
    m = np.zeros((size_out, size_in), dtype=np.float64)
    np.add.at(m, (np.arange(size_out), lo), 1 - frac)
    np.add.at(m, (np.arange(size_out), hi), frac)
    return m.astype(np.float32)


FINAL_RESIZE = "final_resize/"  # name prefix of the nodes that replace the final logits Resize
# Source rows up to which the final resize runs as MatMuls. Its row pass costs `rows` multiply-adds
# per output value; ONNX Runtime's Resize kernel costs the same at any source size. Measured at
# 513x513 output, 21 channels, 2 threads: MatMuls 2.8 / 4.9 / 10.0 ms from 33 / 65 / 129 rows,
# the Resize kernel 4.1-4.2 ms.
MATMUL_MAX_ROWS = 48


def resize_as_matmul(proto: Any) -> int:
    """The final logits resize (the Resize whose output has the input's size) from up to
    MATMUL_MAX_ROWS source rows as two MatMuls with constant bilinear weights: the same values
    (align_corners=False), faster than ONNX Runtime's Resize kernel there. Columns first, on the
    small tensor ([1, C, h, w] @ [w, W]); then rows ([H, h] @ [1, C, h, W]), which writes the
    output. Nodes are named `final_resize/N/...`. Static shapes only. Returns the number of
    Resize nodes replaced."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    shapes = _static_shapes(proto)
    image = shapes.get(graph.input[0].name)
    if image is None:
        return 0
    nhwc = graph.input[0].type.tensor_type.elem_type == 2  # uint8 RGB input (preprocessing inside)
    height, width = (image[1], image[2]) if nhwc else (image[2], image[3])
    changed = 0
    for node in list(graph.node):
        if node.op_type != "Resize":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        src, dst = shapes.get(node.input[0]), shapes.get(node.output[0])
        if (attrs.get("mode", b"nearest") != b"linear"
                or attrs.get("coordinate_transformation_mode", b"half_pixel") not in HALF_PIXEL_MODES
                or attrs.get("antialias", 0) or src is None or dst is None or len(src) != 4
                or dst[2:] != [height, width] or dst[:2] != src[:2] or min(src[2:]) < 2
                or src[2] > MATMUL_MAX_ROWS):  # fmt: skip
            continue
        name = f"{FINAL_RESIZE}{changed}"
        cols, rows = f"{name}/cols", f"{name}/rows"
        graph.initializer.extend([
            numpy_helper.from_array(np.ascontiguousarray(_bilinear_matrix(src[3], dst[3]).T), cols),  # [w, W]
            numpy_helper.from_array(_bilinear_matrix(src[2], dst[2]), rows),  # [H, h]
        ])  # fmt: skip
        first = helper.make_node("MatMul", [node.input[0], cols], [f"{name}/cols_out"], name=f"{name}/cols_matmul")
        second = helper.make_node("MatMul", [rows, f"{name}/cols_out"], [node.output[0]], name=f"{name}/rows_matmul")
        position = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(position, second)
        graph.node.insert(position, first)
        changed += 1
    return changed
