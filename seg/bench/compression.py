"""`tools/benchmark.py compression`: what int8 costs in accuracy and gains in size and speed, for
float checkpoints and their quantization-aware fine-tunes (`train.qat=true`).

For each pair `benchmark.compression.float_checkpoints[i]` / `qat_checkpoints[i]`, three files of
`benchmark.compression.format` (onnx: ONNX Runtime; executorch: XNNPACK) made by `tools/export.py` at
`export.input_size`: fp32; int8 by post-training quantization (PTQ,
calibrated on the dataset's train images); int8 with the ranges QAT learned. Every layer is int8 in
both (`export.float_modules=[]`, as a QAT model is). Each file's mIoU comes from its runtime over the
val split (`export.eval_images`, null: all of it); latency is batch 1, `benchmark.threads` threads,
the files timed in turns.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from seg.bench.timing import ort_version, time_in_turns
from seg.errors import ConfigError
from seg.models.segmenter import model_name

KINDS = ("fp32", "ptq_int8", "qat_int8")


FORMATS = {"onnx": ".onnx", "executorch": ".pte"}


def _export(cfg: DictConfig, checkpoint: str, path: Path, quantize: str) -> dict[str, Any]:
    from seg.export import run_export

    e = cfg.export
    export_cfg = OmegaConf.merge(
        cfg,
        {
            "checkpoint": checkpoint,
            "export": {
                "format": str(cfg.benchmark.compression.format),
                "quantize": quantize,
                "float_modules": [],
                "path": str(path),
                "input_size": int(e.input_size),
                "eval_images": e.eval_images,
                "calibration_images": int(e.calibration_images),
                "min_agreement": e.min_agreement,
                "overwrite": True,
            },
        },
    )
    return run_export(export_cfg)


def _runner(path: Path, threads: int) -> Any:
    """A runner that does not spin-wait between calls (the files take turns)."""
    if path.suffix == ".pte":
        from seg.export.executorch import ExecuTorchRunner

        return ExecuTorchRunner(path, threads)
    from seg.export.onnx import OnnxRunner

    return OnnxRunner(path, threads, spinning=False)


def _pair(cfg: DictConfig, float_ckpt: str, qat_ckpt: str, workdir: Path) -> tuple[dict, dict[str, Any]]:
    """The row of one pair (mIoU, size) and the runtime's calls to time, by kind."""
    from seg.engine.checkpoint import load_checkpoint, stored_config

    state = load_checkpoint(qat_ckpt)
    if not isinstance(state.get("qat"), dict):
        raise ConfigError(f"benchmark.compression.qat_checkpoints: {qat_ckpt} was not trained with train.qat=true")
    stored = stored_config(state, qat_ckpt)
    suffix = FORMATS[str(cfg.benchmark.compression.format)]
    paths = {kind: workdir / f"{Path(float_ckpt).parent.parent.name}-{kind}{suffix}" for kind in KINDS}
    _export(cfg, float_ckpt, paths["fp32"], "none")
    ptq = _export(cfg, float_ckpt, paths["ptq_int8"], "int8")
    qat = _export(cfg, qat_ckpt, paths["qat_int8"], "int8")
    row: dict[str, Any] = {
        "model": model_name(stored.model),
        "float_checkpoint": float_ckpt,
        "qat_checkpoint": qat_ckpt,
        "qat_iterations": int(state.get("iteration", 0)),
        "val_images": ptq.get("miou_images"),
        "miou": {"fp32": ptq.get("miou_fp32"), "ptq_int8": ptq.get("miou_int8"), "qat_int8": qat.get("miou_int8")},
        "size_mb": {kind: paths[kind].stat().st_size / 2**20 for kind in KINDS},
        "multiply_adds": 0,  # time_in_turns' GFLOP/s column: not reported here
    }
    size = int(cfg.export.input_size)
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    threads = int(cfg.benchmark.threads)
    calls = {}
    for kind in KINDS:
        runner = _runner(paths[kind], threads)
        calls[kind] = lambda runner=runner: runner(x)
    return row, calls


def benchmark_compression(cfg: DictConfig) -> dict[str, Any]:
    c = cfg.benchmark.compression
    if c.format not in FORMATS:
        raise ConfigError(f"benchmark.compression.format={c.format}: expected one of {', '.join(FORMATS)}")
    floats, qats = list(c.float_checkpoints), list(c.qat_checkpoints)
    if not floats or len(floats) != len(qats):
        raise ConfigError(
            "benchmark.compression.float_checkpoints and qat_checkpoints: give one QAT checkpoint (train.qat=true) "
            f"per float checkpoint, in the same order (got {len(floats)} and {len(qats)})"
        )
    with tempfile.TemporaryDirectory(prefix="seg-compression-") as tmp:
        prepared = [_pair(cfg, f, q, Path(tmp)) for f, q in zip(floats, qats)]
        time_in_turns(prepared, int(cfg.benchmark.warmup), int(cfg.benchmark.runs))
    rows = []
    for row, _ in prepared:
        row["latency_ms"] = {kind: row.pop(kind)["median_ms"] for kind in KINDS}
        row.pop("multiply_adds")
        rows.append(row)
    result = {
        "task": "compression",
        "format": str(c.format),
        "input_size": int(cfg.export.input_size),
        "threads": int(cfg.benchmark.threads),
        "onnxruntime": ort_version(),
        "rows": rows,
    }
    print(format_table(result))
    return result


def format_table(result: dict[str, Any]) -> str:
    runtime = f"ONNX Runtime {result['onnxruntime']}" if result["format"] == "onnx" else "ExecuTorch (XNNPACK)"
    lines = [
        f"int8 on {runtime}, {result['input_size']}x{result['input_size']}, "
        f"{result['threads']} threads, every layer int8",
        "",
        "| model | | mIoU (val) | size (MB) | latency (ms) |",
        "|---|---|---|---|---|",
    ]
    names = {"fp32": "fp32", "ptq_int8": "int8 PTQ", "qat_int8": "int8 QAT"}
    for row in result["rows"]:
        for kind in KINDS:
            m = row["miou"][kind]
            delta = "" if kind == "fp32" or m is None else f" ({100 * (m - row['miou']['fp32']):+.2f})"
            lines.append(
                f"| {row['model'] if kind == 'fp32' else ''} | {names[kind]} | "
                f"{'n/a' if m is None else f'{100 * m:.2f}'}{delta} | {row['size_mb'][kind]:.2f} | "
                f"{row['latency_ms'][kind]:.2f} |"
            )
    return "\n".join(lines)
