"""The tasks of `tools/benchmark.py TASK`, one module each; every task takes the composed config,
prints a markdown table and returns a JSON-able dict. timing.py holds what they share to time things.

- data (data.py): images/s of the training loader for each `benchmark.workers` count.
- train (train.py): training images/s per model (the trainer's step on random data), or of the
  default run beside other processes (`benchmark.train.contention`).
- eval (eval.py): single-scale against multi-scale + flip evaluation, time against multiply-adds.
- latency (latency.py): batch-1 CPU latency of our models and peers, eager / fast path / ONNX
  Runtime fp32 and int8, against the CPU's peak (`benchmark.latency`).
- tradeoff (tradeoff.py): the encoders' latency against their multiply-adds (`benchmark.tradeoff`).
- official (official.py): the official DeepLab TF Lite files on LiteRT against our conversion on
  PyTorch and its ONNX export: pixel accuracy, mIoU, agreement on real VOC images (`benchmark.official`).
- compression (compression.py): fp32 / int8 PTQ / int8 QAT exports of float checkpoints and their
  quantization-aware fine-tunes: mIoU, size, ONNX Runtime latency (`benchmark.compression`).
- web (web.py): the web app's time per frame in headless Chromium (ONNX Runtime Web, WebAssembly) next to
  ONNX Runtime in Python on the same model file and threads (`benchmark.threads`, `export.input_size`).
"""

from __future__ import annotations

from typing import Any, Callable

from seg.bench.compression import benchmark_compression
from seg.bench.data import benchmark_data
from seg.bench.eval import benchmark_eval
from seg.bench.latency import benchmark_latency
from seg.bench.official import benchmark_official
from seg.bench.tradeoff import benchmark_tradeoff
from seg.bench.train import benchmark_train
from seg.errors import ConfigError


def benchmark_web(cfg) -> dict[str, Any]:
    # Imported when run: `python -m seg.bench.web screenshot ...` then finds the module unloaded.
    from seg.bench.web import benchmark_web as run

    return run(cfg)


TASKS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "data": benchmark_data,
    "train": benchmark_train,
    "eval": benchmark_eval,
    "latency": benchmark_latency,
    "tradeoff": benchmark_tradeoff,
    "official": benchmark_official,
    "web": benchmark_web,
    "compression": benchmark_compression,
}


def run_task(cfg) -> dict[str, Any]:
    """Run `cfg.benchmark.task`; an unknown name is a ConfigError listing the tasks."""
    task = cfg.benchmark.task
    if task not in TASKS:
        raise ConfigError(f"unknown benchmark task {task!r} (benchmark.task); tasks: {', '.join(sorted(TASKS))}")
    return TASKS[task](cfg)
