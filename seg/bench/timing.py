"""What the benchmark tasks share to time things: warm-up then timed calls, timing in turns,
medians and p90s, and the calls they time (eager PyTorch, a non-spinning ONNX Runtime session)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from seg.fastpath import fold_batchnorm


def timed_runs(fn: Callable[[], Any], warmup: int, runs: int, sync: Optional[Callable[[], Any]] = None) -> list[float]:
    """Seconds of each of `runs` calls of `fn`, after `warmup` untimed ones; `sync()` (e.g. waiting
    for the GPU) ends every call, inside its time."""
    seconds = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    return seconds


def ms_stats(times_ms: list[float]) -> dict[str, float]:
    """Median and p90 of times in milliseconds, and how many."""
    return {
        "median_ms": statistics.median(times_ms),
        "p90_ms": float(np.percentile(times_ms, 90)),
        "runs": len(times_ms),
    }


def time_call(fn: Callable[[], Any], warmup: int, runs: int) -> dict[str, float]:
    """Median and p90 wall time of `fn` in milliseconds, after `warmup` untimed calls."""
    return ms_stats([1000 * s for s in timed_runs(fn, warmup, runs)])


def time_in_turns(prepared: list[tuple[dict, dict]], warmup: int, runs: int) -> None:
    """Time every (row, mode) call of `prepared` (rows, each with its calls by mode) in turns, one
    call each per round, so that a change in the machine's load during the run hits every entry
    alike; fills each row's per-mode statistics (and GFLOP/s = 2 x row["multiply_adds"] / median)."""
    for _, calls in prepared:
        for call in calls.values():
            for _ in range(warmup):
                call()
    times: dict[tuple[int, str], list[float]] = {}
    for _ in range(runs):
        for i, (_, calls) in enumerate(prepared):
            for mode, call in calls.items():
                start = time.perf_counter()
                call()
                times.setdefault((i, mode), []).append(1000 * (time.perf_counter() - start))
    for i, (row, calls) in enumerate(prepared):
        for mode in calls:
            stats = ms_stats(times[(i, mode)])
            row[mode] = {**stats, "gflops": 2 * row["multiply_adds"] / stats["median_ms"] / 1e6}


def eager_call(model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    """`model(x)` as PyTorch's default eager inference runs it (no autograd)."""

    def call() -> Any:
        with torch.no_grad():
            return model(x)

    return call


def ort_fp32_session(model: nn.Module, x: torch.Tensor, workdir: Path, threads: int) -> tuple[Path, Any]:
    """`model`, batch norm folded, exported to a new file in `workdir`, and an ONNX Runtime session
    on it that does not spin-wait: the benchmarks' sessions take turns."""
    from seg.export.onnx import OnnxRunner, export_onnx

    path = export_onnx(fold_batchnorm(model), workdir / f"{len(list(workdir.iterdir()))}.onnx", x)
    return path, OnnxRunner(path, threads, spinning=False)


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def output_dir(configured: Optional[str], key: str) -> Path:
    """Where a task writes its files: `configured`, else the run directory of tools/benchmark.py."""
    if configured is None:
        from hydra.core.hydra_config import HydraConfig

        from seg.errors import ConfigError

        if not HydraConfig.initialized():
            raise ConfigError(f"{key} is needed outside tools/benchmark.py")
        configured = HydraConfig.get().runtime.output_dir
    out = Path(configured)
    out.mkdir(parents=True, exist_ok=True)
    return out
