"""`tools/benchmark.py data`: loader throughput (images/s: decode + training augmentation at
`train.crop_size`) for each worker count in `benchmark.workers`, on the configured dataset (the
built-in one by default), through the loader training uses: seeded samples and augmentation,
TrainBatchSampler's order, the trainer's worker set-up."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from seg.bench.timing import timed_runs
from seg.data import build_dataset
from seg.data.transforms import build_train_transform
from seg.engine.sampling import SeededTransform
from seg.engine.trainer import pick_device, train_loader


def _loader_rate(loader: DataLoader, batch_size: int, warmup: int, runs: int) -> float:
    """Images/s over `runs` batches after `warmup` (the first includes starting the workers)."""
    batches = iter(loader)
    try:
        seconds = timed_runs(lambda: next(batches), warmup, runs)
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
    return runs * batch_size / sum(seconds)


def benchmark_data(cfg) -> dict[str, Any]:
    """Images/s through the training loader for each `benchmark.workers` count."""
    torch.set_num_threads(cfg.benchmark.threads)
    t = cfg.train
    transform = SeededTransform(
        build_train_transform(
            t.crop_size, t.scale_min, t.scale_max, t.scale_step, t.flip, cfg.dataset.ignore_index, jitter=t.jitter
        )
    )
    dataset = build_dataset(cfg.dataset, "train", transform)
    batch = min(t.batch_size, len(dataset))
    pin_memory = pick_device(t.device).type == "cuda"
    rows = []
    for workers in cfg.benchmark.workers:
        loader = train_loader(dataset, batch, int(t.seed), int(workers), pin_memory)
        rate = _loader_rate(loader, batch, cfg.benchmark.warmup, cfg.benchmark.runs)
        rows.append({"workers": int(workers), "images_per_s": round(rate, 1)})
    name = cfg.dataset.name
    print(
        f"\nloader throughput: dataset={name} ({len(dataset)} train images), crop {t.crop_size}, "
        f"batch {batch}, {cfg.benchmark.runs} batches timed\n"
    )
    print("| workers | images/s | ms/image |\n|---:|---:|---:|")
    for r in rows:
        print(f"| {r['workers']} | {r['images_per_s']:.1f} | {1000 / r['images_per_s']:.2f} |")
    return {
        "task": "data",
        "dataset": name,
        "crop_size": t.crop_size,
        "batch_size": batch,
        "threads": cfg.benchmark.threads,
        "results": rows,
    }
