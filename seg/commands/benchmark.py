"""Benchmarks; the first word names the task (data, train, eval, latency, tradeoff, official, web, compression:
seg/bench/).

    seg-benchmark data                      # training loader images/s for 0, 1, 2 workers
    seg-benchmark data benchmark.workers=[0,4] train.crop_size=321 dataset=voc_aug
    seg-benchmark train benchmark.runs=5 benchmark.warmup=1   # training step images/s per model
    seg-benchmark train benchmark.train.contention=[none,busy,training]  # the default run beside others
    seg-benchmark eval                      # single-scale vs multi-scale + flip evaluation speed
    seg-benchmark tradeoff                  # encoders: latency vs multiply-adds, plot + table
    seg-benchmark latency                   # our models and peers: eager / fast / ONNX Runtime fp32, int8
    seg-benchmark latency benchmark.latency.checkpoints=[outputs/.../checkpoints/best.pt]
    # LiteRT: our TF Lite exports, and official .tflite files raced by their conversions (same order)
    seg-benchmark latency benchmark.latency.modes=[tfl_fp32,tfl_int8] benchmark.latency.models=[] \
        benchmark.latency.checkpoints=[coral.pt] benchmark.latency.tflite_peers=[coral_quant.tflite]
    seg-benchmark official                  # official DeepLab .tflite vs our conversion, PyTorch + ONNX
    seg-benchmark web                       # the web page's time per frame in Chromium vs ONNX Runtime
    # fp32 / int8 PTQ / int8 QAT exports of float checkpoints and their QAT fine-tunes: mIoU, size, latency
    seg-benchmark compression benchmark.compression.float_checkpoints=[a.pt] benchmark.compression.qat_checkpoints=[q]

From a checkout: `python tools/benchmark.py ...`, the same. Prints a markdown table and, last, one
JSON line, also written to `benchmark.output` (default: <run dir>/benchmark_<task>.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from seg.bench import run_task
from seg.cli import launch, one_line_errors
from seg.commands import CONFIG_NAME, CONFIG_PATH
from seg.config import check_config, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
@one_line_errors
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    result = run_task(cfg)
    line = json.dumps(result)
    default = Path(HydraConfig.get().runtime.output_dir) / f"benchmark_{cfg.benchmark.task}.json"
    out = Path(cfg.benchmark.output or default)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(line + "\n")
    print(line)


def run() -> None:
    """`seg-benchmark`."""
    # `seg-benchmark data ...` -> `seg-benchmark benchmark.task=data ...` before Hydra reads argv.
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-") and "=" not in sys.argv[1]:
        sys.argv[1] = f"benchmark.task={sys.argv[1]}"
    launch(main)


if __name__ == "__main__":
    run()
