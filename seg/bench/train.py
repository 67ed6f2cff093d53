"""`tools/benchmark.py train`: training images/s of one process per model (the trainer's own step
on random data), or, with `benchmark.train.contention`, of the default run (`tools/train.py`, data
loading included) beside other processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from seg.api import compose as compose_config
from seg.bench.timing import timed_runs
from seg.data import build_dataset
from seg.engine.trainer import make_run, pick_device, train_step
from seg.errors import ConfigError
from seg.models.segmenter import part_names


def time_train_steps(
    model_cfg: DictConfig, train_cfg: DictConfig, crop_size: int, batch_size: int, warmup: int, runs: int
) -> tuple[float, str]:
    """Training images/s of one process on random data: `train_step` without data loading, timed
    over `runs` steps after `warmup`. Returns (images/s, device)."""
    device = pick_device(train_cfg.device)
    torch.backends.cudnn.benchmark = True
    cfg = OmegaConf.create(
        {
            "model": OmegaConf.to_container(model_cfg, resolve=True),
            "train": OmegaConf.to_container(train_cfg, resolve=True),
        }
    )
    cfg.train.aux_loss_weight = 0.0
    run = make_run(cfg, device)
    run.net.train()
    if train_cfg.compile:
        run.train_net = torch.compile(run.net)
    images = torch.randint(0, 256, (batch_size, 3, crop_size, crop_size), dtype=torch.uint8)
    masks = torch.randint(0, int(model_cfg.num_classes), (batch_size, crop_size, crop_size))
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    seconds = timed_runs(lambda: train_step(run, images, masks), warmup, runs, sync)
    # The median step: robust to the odd slow step on a shared machine.
    return batch_size / float(np.median(seconds)), str(device)


CONTENTION = ("none", "busy", "training")
_LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\].* - iteration (\d+)/\d+: loss")


def _training_rate(log_file: Path, batch_size: int, start: float, end: float) -> Optional[float]:
    """Images/s of a training run between two wall-clock times, from its log's iteration lines."""
    points = []
    for line in log_file.read_text().splitlines() if log_file.exists() else []:
        found = _LOG_LINE.match(line)
        if found:
            stamp = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if start <= stamp <= end:
                points.append((stamp, int(found.group(2))))
    if len(points) < 2:
        return None
    (t0, i0), (t1, i1) = points[0], points[-1]
    return (i1 - i0) * batch_size / (t1 - t0)


def _run_condition(condition: str, b, folder: Path, batch_size: int) -> list[Optional[float]]:
    """Start the trainings (one, or two side by side) and, for `busy`, a busy process beside them;
    stop them after `b.seconds`; return each training's images/s after the warm-up."""
    count = 2 if condition == "training" else 1
    others = [subprocess.Popen([sys.executable, "-c", "while True: pass"])] if condition == "busy" else []
    runs, procs = [folder / f"{condition}-{i}" for i in range(count)], []
    start = time.time()
    try:
        for run in runs:
            args = [
                "train.max_iters=10000000",
                "train.eval_every=0",
                "train.checkpoint_every=0",
                "train.log_every=10",
                "train.progress=false",
                *b.args,
                f"hydra.run.dir={run}",
            ]
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "seg.commands.train", *args],  # seg-train, checkout or wheel
                    cwd=Path.cwd(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(b.seconds)
        end = time.time()
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)  # the trainer saves and exits
        for p in others:
            p.kill()
        for p in procs:
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
    return [_training_rate(run / "train.log", batch_size, start + b.warmup_seconds, end) for run in runs]


def benchmark_train_contention(cfg) -> dict[str, Any]:
    """The default run's images/s alone, beside a busy process, and two side by side, in turns."""
    b = cfg.benchmark.train
    unknown = [c for c in b.contention if c not in CONTENTION]
    if unknown:
        raise ConfigError(f"benchmark.train.contention: unknown {unknown}; choose from {list(CONTENTION)}")
    batch_size = int(cfg.train.batch_size)
    # The dataset is generated once before timing (the trainings share its cache).
    build_dataset(cfg.dataset, "train")
    rates: dict[str, list[float]] = {c: [] for c in b.contention}
    with tempfile.TemporaryDirectory(prefix="seg-contention-") as tmp:
        for round_ in range(b.rounds):
            for condition in b.contention:
                got = _run_condition(condition, b, Path(tmp) / f"round{round_}", batch_size)
                if any(r is None for r in got):
                    raise ConfigError(
                        f"benchmark.train: the {condition} run logged too few iterations in "
                        f"{b.seconds} s; raise benchmark.train.seconds"
                    )
                rates[condition] += got
                print(f"round {round_ + 1}, {condition}: " + ", ".join(f"{r:.1f}" for r in got) + " images/s")
    median = {c: float(np.median(v)) for c, v in rates.items() if v}
    idle = median.get("none")
    rows = [
        {
            "contention": c,
            "images_per_s": round(median[c], 1),
            "runs": [round(r, 1) for r in rates[c]],
            "of_idle": None if not idle else round(median[c] / idle, 3),
        }
        for c in b.contention
    ]
    print(
        f"\ntraining beside other processes: the default run, batch {batch_size}, {os.cpu_count()} cores, "
        f"{b.seconds:g} s each ({b.warmup_seconds:g} s warm-up), {b.rounds} round(s), overrides {list(b.args)}\n"
    )
    print("| beside it | images/s (median) | each run | of idle |\n|---|---:|---|---:|")
    names = {"none": "nothing", "busy": "one busy process", "training": "a second training"}
    for r in rows:
        share = "" if r["of_idle"] is None else f"{100 * r['of_idle']:.0f}%"
        print(f"| {names[r['contention']]} | {r['images_per_s']:.1f} | {', '.join(map(str, r['runs']))} | {share} |")
    return {
        "task": "train",
        "contention": rows,
        "batch_size": batch_size,
        "seconds": b.seconds,
        "rounds": b.rounds,
        "args": list(b.args),
    }


def benchmark_train(cfg) -> dict[str, Any]:
    """Training images/s (forward, loss, backward, SGD step; no data loading: see `data`) at crop
    `flops.input_size` (513) and batch `train.batch_size`, for the configured model and the
    published configs (the `mobilenetv2*_trainaug` experiments): the median of `benchmark.runs` steps
    after `benchmark.warmup` (on a CPU, e.g. `benchmark.runs=5 benchmark.warmup=1`).
    On CUDA the steps use the trainer's settings: `train.amp`, `train.channels_last`.
    """
    if cfg.benchmark.train.contention:
        return benchmark_train_contention(cfg)
    torch.set_num_threads(cfg.benchmark.threads)
    published = ["mobilenetv2_coco_voc_trainaug", "mobilenetv2_dm05_coco_voc_trainaug"]
    experiments = {e: compose_config([f"experiment={e}"]) for e in published}
    models = {"configured": cfg.model, **{e: c.model for e, c in experiments.items()}}
    for model_cfg in models.values():  # speed only: no ImageNet weights to fetch
        model_cfg.backbone.pretrained = model_cfg.backbone.weights = None
    crop, batch = int(cfg.flops.input_size), int(cfg.train.batch_size)
    rows = []
    for name, model_cfg in models.items():
        rate, device = time_train_steps(model_cfg, cfg.train, crop, batch, cfg.benchmark.warmup, cfg.benchmark.runs)
        backbone, head = part_names(model_cfg)
        rows.append(
            {
                "config": name,
                "backbone": f"{backbone} x{model_cfg.backbone.depth_multiplier:g}",
                "head": head,
                "images_per_s": round(rate, 2),
            }
        )
    print(
        f"\ntraining throughput: crop {crop}, batch {batch}, {cfg.benchmark.runs} steps timed, device {device}, "
        f"{cfg.benchmark.threads} threads\n"
    )
    print("| config | backbone | head | images/s |\n|---|---|---|---:|")
    for r in rows:
        print(f"| {r['config']} | {r['backbone']} | {r['head']} | {r['images_per_s']:.2f} |")
    return {
        "task": "train",
        "crop_size": crop,
        "batch_size": batch,
        "device": device,
        "threads": cfg.benchmark.threads,
        "results": rows,
    }
