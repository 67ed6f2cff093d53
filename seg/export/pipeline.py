"""`tools/export.py`: checkpoint -> exported file + metadata, checked against PyTorch before it is
reported done."""

from __future__ import annotations

import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig

from seg.config import ExportConfig
from seg.data import DatasetError, build_dataset
from seg.engine.checkpoint import load_checkpoint, segmenter_from_state
from seg.export.check import compare, format_check, miou, torch_runner
from seg.export.common import ExportError, ExportWrapper, build_metadata, metadata_path, write_metadata
from seg.export.runtime import ExportedPredictor
from seg.fastpath import fold_batchnorm
from seg.files import FileClashError, refuse_overwrite, require_writable, same_or_inside, write_atomically

DEFAULT_FLOAT_MODULES = list(ExportConfig().float_modules)
FP32_AGREEMENT = 0.999  # argmax agreement an fp32 export must reach against PyTorch
INT8_AGREEMENT = 0.98  # ... and an int8 export against the fp32 one


def _plain(v: Any) -> Any:
    # Config choices as the strings they are (None stays None), for metadata and file names.
    return None if v is None else str(v)


def export_quantize(e: Any) -> Optional[str]:
    """`export.quantize` as the export runs it: "int8", or None for float32 (`none`); null is the
    format's default, int8 for web and float32 for the others."""
    value = _plain(e.quantize)
    if value is None:
        return "int8" if _plain(e.format) == "web" else None
    return None if value == "none" else value


def export_output(e: Any) -> str:
    """`export.output` as the export runs it; null is the format's default, labels for web."""
    value = _plain(e.output)
    if value is None:
        return "labels" if _plain(e.format) == "web" else "logits"
    return value


def export_float_modules(e: Any) -> list[str]:
    """`export.float_modules` as the int8 export runs it. For web its default (the stem and first
    block in float: a speed choice for ONNX Runtime's x86 kernels) becomes [], every layer int8: float
    layers round differently in WebAssembly and on x86, int8 rounding then amplifies it, and the page
    would agree with ONNX Runtime in Python on ~99.8% of the pixels instead of all. For executorch and
    tflite too: the choice was ONNX Runtime's, and XNNPACK runs every layer int8. Any other value holds."""
    modules = [str(m) for m in e.float_modules]
    if _plain(e.format) in ("web", "executorch", "tflite") and modules == DEFAULT_FLOAT_MODULES:
        return []
    return modules


def export_preprocessing(e: Any) -> bool:
    """Whether the normalisation is inside the model: `export.include_preprocessing`, always for
    web (the page feeds the image's bytes)."""
    return bool(e.include_preprocessing) or _plain(e.format) == "web"


def default_path(checkpoint: Path, cfg: DictConfig) -> Path:
    """Beside the checkpoint, named after it and the options: best.onnx, best-rgb8-labels.int8.onnx, ..."""
    e = cfg.export
    if _plain(e.format) == "web":
        from seg.export.web import default_web_path

        return default_web_path(checkpoint, export_quantize(e) == "int8")
    name = checkpoint.stem
    name += "-dynamic" if e.dynamic else ""
    name += "-rgb8" if e.include_preprocessing else ""
    name += "-labels" if export_output(e) == "labels" else ""
    name += ".int8" if export_quantize(e) == "int8" else ""
    suffix = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "tflite": ".tflite", "executorch": ".pte"}
    return checkpoint.with_name(name + suffix[_plain(e.format)])


def _samples(dataset_cfg: Any, split: str, count: Optional[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first `count` raw (image, mask) pairs of a split, spread evenly over it."""
    dataset = build_dataset(dataset_cfg, split)
    n = len(dataset) if count is None else min(count, len(dataset))
    if n <= 0:
        return []
    indices = np.linspace(0, len(dataset) - 1, n).round().astype(int)
    return [dataset[int(i)] for i in indices]


def _validate(cfg: DictConfig) -> None:
    e = cfg.export
    fmt, quantize = _plain(e.format), export_quantize(e)
    if quantize and fmt not in ("onnx", "web", "executorch", "tflite"):
        raise ExportError(
            f"export.quantize={quantize} is for export.format=onnx, web, executorch or tflite (got format {fmt})"
        )
    if fmt in ("tflite", "web", "executorch") and e.dynamic:
        why = "the page letterboxes images into the static input" if fmt == "web" else "static size only"
        raise ExportError(f"export.dynamic=true is not supported for export.format={fmt} ({why})")
    if e.input_size < 32:
        raise ExportError(f"export.input_size must be at least 32, got {e.input_size}")
    if e.check_images < 1:
        raise ExportError("export.check_images must be at least 1: every export is checked")


def _check_destination(path: Path, checkpoint: Path, overwrite: bool) -> None:
    """Never the checkpoint itself; no existing file unless `export.overwrite=true`."""
    for target in (path, metadata_path(path)):
        if same_or_inside(target, checkpoint):
            raise FileClashError(
                f"export.path={path} would write over the checkpoint being exported ({checkpoint}): choose another "
                "export.path"
            )
        refuse_overwrite(target, "export.path", overwrite, what="file (export.path and its metadata JSON)")
    require_writable(path, "export.path")


def _embed_metadata(built: Path, fmt: str, metadata: dict[str, Any]) -> None:
    """The final metadata (check results included) inside the file, where the format has room:
    ONNX metadata_props (the exporter's notes on each node dropped), TorchScript's `seg.json` extra file.
    TF Lite metadata for apps (MediaPipe's ImageSegmenter reads it). ExecuTorch keeps it beside only."""
    if fmt == "onnx":
        import onnx

        from seg.export.onnx import drop_node_notes, set_onnx_metadata

        proto = onnx.load(str(built))
        drop_node_notes(proto)
        set_onnx_metadata(proto, metadata)
        onnx.save_model(proto, str(built), save_as_external_data=False)
    elif fmt == "torchscript":
        from seg.export.torchscript import set_torchscript_metadata

        set_torchscript_metadata(built, metadata)
    elif fmt == "tflite":
        from seg.export.tflite_metadata import embed_tflite_metadata

        embed_tflite_metadata(built, metadata)


def _move_into_place(built: Path, path: Path) -> None:
    """Copy a finished, checked file from the work folder to its destination, atomically: the
    destination is either the old file or the whole new one."""
    write_atomically(path, partial(shutil.copyfile, built))


def run_export(cfg: DictConfig, keep_dataset: bool = False) -> dict[str, Any]:
    """Export `cfg.checkpoint` as `cfg.export` says; returns the report (also written as metadata).

    Real images for the checks and the int8 calibration come from the checkpoint's dataset, or
    from `cfg.dataset` when `keep_dataset` (the user gave dataset overrides).
    """
    if not cfg.checkpoint:
        raise ExportError("checkpoint=PATH is required: the checkpoint to export")
    _validate(cfg)
    e = cfg.export
    fmt, quantize, output = _plain(e.format), export_quantize(e), export_output(e)
    labels, preprocessing = output == "labels", export_preprocessing(e)
    checkpoint = Path(cfg.checkpoint)
    path = Path(e.path) if e.path else default_path(checkpoint, cfg)
    ort_web = None
    if fmt == "web":  # before any work: the page's files and ONNX Runtime Web's are there
        from seg.export.web import check_web_destination, check_web_sources, ort_web_dist

        check_web_sources()
        ort_web = ort_web_dist()
        check_web_destination(path, checkpoint, bool(e.overwrite))
    else:
        _check_destination(path, checkpoint, bool(e.overwrite))
    state = load_checkpoint(checkpoint)  # read once: the model, and a QAT run's learned ranges
    if fmt == "tflite" and quantize and isinstance(state.get("qat"), dict):
        raise ExportError(
            f"{checkpoint} holds the ranges of quantization-aware training (train.qat), which export.format=tflite "
            "does not take yet: export it as onnx or executorch, or export its float weights from a checkpoint of "
            "the run before train.qat"
        )
    model, stored = segmenter_from_state(state, checkpoint)
    dataset_cfg = cfg.dataset if keep_dataset else stored.dataset
    normalization = "custom" if stored.model.get("pixel_mean") is not None else _plain(stored.model.normalization)

    metadata = build_metadata(
        fmt=fmt,
        class_names=list(stored.dataset.class_names),
        model=model,
        normalization=normalization,
        input_size=None if e.dynamic else int(e.input_size),
        include_preprocessing=preprocessing,
        output=output,
        checkpoint=checkpoint,
        model_cfg=stored.model,
        quantize=quantize,
        opset=e.opset,
        channels_last=fmt == "tflite",
    )
    input_normalization = None
    if fmt == "tflite" and not preprocessing:
        from seg.export.tflite import uniform_input_normalization

        input_normalization = uniform_input_normalization(model)
        if input_normalization:
            m, s = input_normalization
            metadata["normalization"].update(
                name=f"(pixel - {m:g}) / {s:g}; the model's own ({normalization}) inside", mean=[m] * 3, std=[s] * 3
            )
    # TF Lite's layout is NHWC at both ends; the checks run PyTorch the same way.
    nhwc = fmt == "tflite"
    class_axis = -1 if nhwc else 1
    reference = ExportWrapper(model, preprocessing, labels, input_normalization, nhwc)
    exportable = ExportWrapper(fold_batchnorm(model), preprocessing, labels, input_normalization, nhwc).eval()

    # Real inputs, prepared exactly as predict prepares them (letterboxed for a static size).
    prepare = ExportedPredictor(lambda x: x, metadata).prepare
    try:
        check_samples = _samples(dataset_cfg, "val", e.check_images)
    except DatasetError as exc:
        raise DatasetError(f"{exc} (the export check needs real images: give dataset=... overrides)") from exc
    if not check_samples:
        raise DatasetError("the val split is empty: the export check needs real images")
    prepared = [prepare(image) for image, _ in check_samples]
    if e.dynamic:  # and one more size, odd on both sides, to exercise the dynamic axes
        image = check_samples[0][0]
        odd = ExportedPredictor(lambda x: x, metadata, max_size=max(33, max(image.shape[:2]) * 3 // 4) | 1)
        prepared.append(odd.prepare(image))
    inputs = [x for x, _ in prepared]
    valid = [hw for _, hw in prepared]  # agreement on the image part of letterboxed inputs
    sample = torch.from_numpy(inputs[0])

    report: dict[str, Any] = {"path": str(path), "format": fmt, "quantize": quantize}
    # Built and checked in a work folder; only a file that passed its checks reaches export.path.
    with tempfile.TemporaryDirectory(prefix="seg-export-") as tmp:
        built = Path(tmp) / ("model.onnx" if fmt == "web" else path.name)
        if fmt in ("onnx", "web"):
            from seg.export.onnx import OnnxRunner, export_onnx

            fp32_path = Path(tmp) / "fp32.onnx" if quantize else built
            export_onnx(exportable, fp32_path, sample, e.dynamic, e.opset, metadata, e.resize_matmul)
            runner = OnnxRunner(fp32_path)
        elif fmt == "executorch":
            from seg.export.executorch import ExecuTorchRunner, export_executorch

            fp32_path = Path(tmp) / "fp32.pte" if quantize else built
            export_executorch(exportable, fp32_path, sample)
            runner = ExecuTorchRunner(fp32_path)
        elif fmt == "torchscript":
            from seg.export.torchscript import TorchScriptRunner, export_torchscript

            export_torchscript(exportable, built, sample)  # metadata embedded once, below
            runner = TorchScriptRunner(built)
        else:
            from seg.export.tflite import TFLiteRunner, export_tflite

            fp32_path = Path(tmp) / "fp32.tflite" if quantize else built
            export_tflite(exportable, fp32_path, sample)
            runner = TFLiteRunner(fp32_path)
        check = compare(torch_runner(reference), runner, inputs, labels, valid, class_axis)
        report["check"] = check
        print(format_check(f"check {fmt} fp32 vs PyTorch", check))
        _gate(check, FP32_AGREEMENT if e.min_agreement is None else e.min_agreement, path, "vs PyTorch")

        if quantize:
            report.update(
                _quantize(
                    state,
                    checkpoint,
                    model,
                    exportable,
                    cfg,
                    dataset_cfg,
                    stored,
                    metadata,
                    fp32_path,
                    built,
                    runner,
                    reference,
                    inputs,
                    valid,
                    prepare,
                    destination=path,
                    class_axis=class_axis,
                )
            )
        metadata["check"] = report.get("int8_check", report["check"])
        metadata["check"]["images"] = len(inputs)
        if fmt == "web":
            from seg.export.web import ort_web_version, write_web_app

            metadata["runtime"] = {"onnxruntime-web": ort_web_version(ort_web)}
            _embed_metadata(built, "onnx", metadata)
            write_web_app(path, built, metadata, ort_web)
        else:
            _embed_metadata(built, fmt, metadata)  # the file alone says the same as the JSON beside it
            _move_into_place(built, path)
    if fmt == "web":
        from seg.export.web import MODEL_NAME, folder_size_mb

        size_mb = (path / MODEL_NAME).stat().st_size / 2**20
        report["folder_mb"] = folder_size_mb(path)
    else:
        write_metadata(path, metadata)
        size_mb = path.stat().st_size / 2**20
    size_text = "dynamic" if e.dynamic else f"{e.input_size}x{e.input_size}"
    print(
        f"exported {checkpoint} -> {path} ({fmt}{', int8' if quantize else ''}, {size_text}, "
        f"{'uint8 RGB NHWC' if preprocessing else 'float NCHW'} in, {output} out, {size_mb:.1f} MB)"
    )
    if fmt == "web":
        print(f"web app: {path}/index.html; open it with: python tools/serve.py {path}")
    else:
        print(f"metadata: {path}.json")
    report["size_mb"] = size_mb
    return report


def _gate(check: dict[str, Any], threshold: float, path: Path, against: str) -> None:
    """Refuse an export that does not reproduce its reference: nothing is written to `path`."""
    if "error" in check or check["agreement"] < threshold:
        reason = check.get("error") or f"argmax agreement {100 * check['agreement']:.3f}% < {100 * threshold:.1f}%"
        raise ExportError(f"exported model does not match {against}: {reason}; nothing was written to {path}")


def _quantize(
    state,
    checkpoint,
    model,
    exportable,
    cfg,
    dataset_cfg,
    stored,
    metadata,
    fp32_path,
    path,
    fp32_runner,
    reference,
    inputs,
    valid,
    prepare,
    destination: Path,
    class_axis: int = 1,
) -> dict:
    from seg.engine.qat import convert as convert_qat
    from seg.engine.qat import qat_from_state, shift_activations
    from seg.export.onnx import OnnxRunner, export_onnx
    from seg.export.quantize import quantize_int8

    e = cfg.export
    fmt = _plain(e.format)  # onnx, web (an ONNX model too), executorch or tflite
    labels = export_output(e) == "labels"
    sample = torch.from_numpy(inputs[0])
    qat = qat_from_state(state, model, stored, checkpoint)
    if qat is not None:
        # Quantization-aware training learned the ranges, for every layer: no calibration.
        metadata["float_modules"], metadata["int8_ranges"] = [], "quantization-aware training"
        calibration = []
        converted = convert_qat(qat)
        if fmt != "executorch":
            shift_activations(converted, torch.uint8)  # the same values; ONNX Runtime's fast form on x86
        int8_module = ExportWrapper(converted, export_preprocessing(e), labels).eval()
        if fmt == "executorch":
            from seg.export.executorch import export_executorch

            export_executorch(int8_module, path, sample)
        else:
            export_onnx(int8_module, path, sample, e.dynamic, e.opset, {}, e.resize_matmul)
        print("int8: the ranges learned in quantization-aware training (train.qat), every layer int8")
    else:
        try:
            calibration = _samples(dataset_cfg, "train", e.calibration_images)
        except DatasetError as exc:
            raise DatasetError(f"{exc} (int8 calibration needs the dataset's train images)") from exc
        float_modules = export_float_modules(e)
        metadata["float_modules"], metadata["int8_ranges"] = float_modules, "calibration"
        calibration_inputs = [prepare(image)[0] for image, _ in calibration]
        if fmt == "executorch":
            from seg.export.executorch import export_executorch, quantize_for_xnnpack

            quantized = quantize_for_xnnpack(exportable, sample, calibration_inputs, float_modules)
            export_executorch(quantized, path, sample)
        elif fmt == "tflite":
            from seg.export.tflite import export_tflite

            export_tflite(exportable, path, sample, calibration_inputs, [f"model.{m}" for m in float_modules])
        else:
            quantize_int8(fp32_path, path, calibration_inputs, float_modules)
    if fmt == "executorch":
        from seg.export.executorch import ExecuTorchRunner

        int8 = ExecuTorchRunner(path)
    elif fmt == "tflite":
        from seg.export.tflite import TFLiteRunner

        int8 = TFLiteRunner(path)
    else:
        int8 = OnnxRunner(path)
    vs_torch = compare(torch_runner(reference), int8, inputs, labels, valid, class_axis)
    vs_fp32 = compare(fp32_runner, int8, inputs, labels, valid, class_axis)
    print(format_check(f"check {fmt} int8 vs PyTorch", vs_torch))
    print(format_check(f"check {fmt} int8 vs fp32", vs_fp32))
    out: dict[str, Any] = {
        "calibration_images": len(calibration),
        "int8_check": {**vs_torch, "agreement_vs_fp32": vs_fp32["agreement"]},
    }
    gate, against = vs_fp32, "the fp32 export"
    if qat is not None:
        # What QAT trained is the fake-quantized model, not its float weights alone: the int8 file must
        # reproduce that one; its agreement with the float weights is for information.
        vs_qat = compare(torch_runner(ExportWrapper(qat, export_preprocessing(e), labels)), int8, inputs, labels, valid)
        print(format_check(f"check {fmt} int8 vs PyTorch QAT", vs_qat))
        out["int8_check"]["agreement_vs_qat"] = vs_qat["agreement"]
        gate, against = vs_qat, "the QAT model in PyTorch"
    # mIoU of both on labelled val images, when the split is there.
    try:
        samples = _samples(dataset_cfg, "val", e.eval_images)
    except DatasetError:
        samples = []
    if samples:
        num_classes, ignore = int(stored.model.num_classes), int(dataset_cfg.ignore_index)
        out["miou_fp32"] = miou(ExportedPredictor(fp32_runner, metadata), samples, num_classes, ignore)
        out["miou_int8"] = miou(ExportedPredictor(int8, metadata), samples, num_classes, ignore)
        out["miou_images"] = len(samples)
        print(
            f"mIoU on {len(samples)} val images: fp32 {100 * out['miou_fp32']:.2f}%, int8 {100 * out['miou_int8']:.2f}%"
        )
    else:
        print("mIoU: no val split available, skipped")
    _gate(gate, INT8_AGREEMENT if e.min_agreement is None else e.min_agreement, destination, against)
    return out
