"""Benchmarks; the first word names the task (data, train, eval, latency, tradeoff, official: seg/bench/).

    python tools/benchmark.py data                      # training loader images/s for 0, 1, 2 workers
    python tools/benchmark.py data benchmark.workers=[0,4] train.crop_size=321 dataset=voc_aug
    python tools/benchmark.py train benchmark.runs=5 benchmark.warmup=1   # training step images/s per model
    python tools/benchmark.py train benchmark.train.contention=[none,busy,training]  # the default run beside others
    python tools/benchmark.py eval                      # single-scale vs multi-scale + flip evaluation speed
    python tools/benchmark.py tradeoff                  # encoders: latency vs multiply-adds, plot + table
    python tools/benchmark.py latency                   # our models and peers: eager / fast / ONNX Runtime fp32, int8
    python tools/benchmark.py latency benchmark.latency.checkpoints=[outputs/.../checkpoints/best.pt]
    python tools/benchmark.py official                  # official DeepLab .tflite vs our conversion, PyTorch + ONNX

Prints a markdown table and, last, one JSON line, also written to `benchmark.output` (default:
<run dir>/benchmark_<task>.json).
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
from seg.config import check_config, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
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


if __name__ == "__main__":
    # `benchmark.py data ...` -> `benchmark.py benchmark.task=data ...` before Hydra reads argv.
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-") and "=" not in sys.argv[1]:
        sys.argv[1] = f"benchmark.task={sys.argv[1]}"
    launch(main)
