"""Benchmark tasks behind `tools/benchmark.py TASK`; each takes the composed config and returns a dict.

- data: loader throughput (images/s: decode + training augmentation at `train.crop_size`) for each
  worker count in `benchmark.workers`, on the configured dataset (the built-in one by default).
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from seg.data import build_dataset
from seg.data.transforms import build_train_transform


def _loader_rate(dataset, batch_size: int, workers: int, warmup: int, runs: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)
    batches = (b for _ in itertools.count() for b in loader)  # cycle over epochs if the set is small
    for _ in range(warmup):  # includes starting the workers
        next(batches)
    start = time.perf_counter()
    images = sum(len(next(batches)[0]) for _ in range(runs))
    rate = images / (time.perf_counter() - start)
    del batches
    return rate


def benchmark_data(cfg) -> dict[str, Any]:
    """Images/s through DataLoader(train transform) for each `benchmark.workers` count."""
    torch.set_num_threads(cfg.benchmark.threads)
    t = cfg.train
    transform = build_train_transform(
        t.crop_size, t.scale_min, t.scale_max, t.scale_step, t.flip, cfg.dataset.ignore_index
    )
    dataset = build_dataset(cfg.dataset, "train", transform)
    batch = min(t.batch_size, len(dataset))
    rows = []
    for workers in cfg.benchmark.workers:
        rate = _loader_rate(dataset, batch, workers, cfg.benchmark.warmup, cfg.benchmark.runs)
        rows.append({"workers": int(workers), "images_per_s": round(rate, 1)})
    name = getattr(cfg.dataset.name, "value", cfg.dataset.name)
    print(f"\nloader throughput: dataset={name} ({len(dataset)} train images), crop {t.crop_size}, "
          f"batch {batch}, {cfg.benchmark.runs} batches timed\n")
    print("| workers | images/s | ms/image |\n|---:|---:|---:|")
    for r in rows:
        print(f"| {r['workers']} | {r['images_per_s']:.1f} | {1000 / r['images_per_s']:.2f} |")
    return {"task": "data", "dataset": name, "crop_size": t.crop_size, "batch_size": batch,
            "threads": cfg.benchmark.threads, "results": rows}


TASKS: dict[str, Callable[[Any], dict[str, Any]]] = {"data": benchmark_data}


def run_task(cfg) -> dict[str, Any]:
    """Run `cfg.benchmark.task`; an unknown name raises ValueError listing the tasks."""
    task = cfg.benchmark.task
    if task not in TASKS:
        raise ValueError(f"unknown benchmark task {task!r}; tasks: {', '.join(sorted(TASKS))}")
    return TASKS[task](cfg)


def benchmark_latency(cfg) -> dict[str, Any]:
    """Batch-1 CPU latency of our models and their peers: eager, fast path, ONNX Runtime fp32/int8
    (seg/export/latency.py; options under `benchmark.latency`)."""
    from seg.export.latency import run_latency

    return run_latency(cfg)


TASKS["latency"] = benchmark_latency


def benchmark_eval(cfg) -> dict[str, Any]:
    """Seconds per image of single-scale evaluation and of `eval.scales` + `eval.flip` (default:
    DeepLab's 0.5:0.25:1.75 with flip), against the ratio of their multiply-adds.

    Uses `checkpoint=` when given, else a randomly initialised `model` (timing does not depend on
    the weights), on the first `benchmark.runs` val images of the configured dataset.
    """
    from seg.data.transforms import build_eval_transform
    from seg.engine.checkpoint import load_segmenter
    from seg.engine.evaluator import evaluate
    from seg.flops import count_evaluation
    from seg.models import build_segmenter

    torch.set_num_threads(cfg.benchmark.threads)
    if cfg.checkpoint:
        model, stored = load_segmenter(cfg.checkpoint)
        model_cfg = stored.model
    else:
        model, model_cfg = build_segmenter(cfg.model).eval(), cfg.model
    model.set_output_stride(cfg.eval.output_stride or model_cfg.output_stride)
    dataset = build_dataset(cfg.dataset, "val", build_eval_transform())
    multi = list(cfg.eval.scales) if len(cfg.eval.scales) > 1 or cfg.eval.flip else [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    flip = bool(cfg.eval.flip) or multi != list(cfg.eval.scales)
    settings = {"single_scale": ([1.0], False), "multi_scale_flip": (multi, flip)}
    height, width = dataset[0][0].shape[-2:]
    rows = {}
    for name, (scales, use_flip) in settings.items():
        kwargs = dict(normalization=model_cfg.normalization, num_classes=model_cfg.num_classes, scales=scales,
                      flip=use_flip, progress=False)
        evaluate(model, dataset, max_images=cfg.benchmark.warmup, **kwargs)  # warm-up
        metrics = evaluate(model, dataset, max_images=cfg.benchmark.runs, **kwargs)
        madds = count_evaluation(model, max(height, width), scales, use_flip)["madds"]
        rows[name] = {"scales": scales, "flip": use_flip, "seconds_per_image": metrics["seconds_per_image"],
                      "madds": madds}
    time_ratio = rows["multi_scale_flip"]["seconds_per_image"] / rows["single_scale"]["seconds_per_image"]
    madds_ratio = rows["multi_scale_flip"]["madds"] / rows["single_scale"]["madds"]
    print(f"\nevaluation speed: {len(dataset)} val images of {height}x{width}, {cfg.benchmark.runs} timed, "
          f"{cfg.benchmark.threads} threads, output stride {model.output_stride}\n")
    print("| setting | scales | flip | s/image | multiply-adds |\n|---|---|---|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {','.join(f'{s:g}' for s in r['scales'])} | {r['flip']} | "
              f"{r['seconds_per_image']:.4f} | {r['madds'] / 1e9:.2f}B |")
    print(f"\ntime ratio {time_ratio:.2f} vs multiply-add ratio {madds_ratio:.2f} "
          f"({100 * (time_ratio / madds_ratio - 1):+.1f}%)")
    return {"task": "eval", "image_size": [int(height), int(width)], "threads": cfg.benchmark.threads,
            "output_stride": model.output_stride, "results": rows, "time_ratio": time_ratio,
            "madds_ratio": madds_ratio}


TASKS["eval"] = benchmark_eval


def benchmark_train(cfg) -> dict[str, Any]:
    """Training images/s (forward, loss, backward, SGD step; no data loading: see `data`) at crop
    `flops.input_size` (513) and batch `train.batch_size`, for the configured model and the
    published configs (the `mobilenetv2*_trainaug` experiments): the median of `benchmark.runs` steps
    after `benchmark.warmup` (on a CPU, e.g. `benchmark.runs=5 benchmark.warmup=1`).
    On CUDA the steps use the trainer's settings: `train.amp`, `train.channels_last`.
    """
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from seg.engine.trainer import time_train_steps

    torch.set_num_threads(cfg.benchmark.threads)
    published = ["mobilenetv2_coco_voc_trainaug", "mobilenetv2_dm05_coco_voc_trainaug"]
    if GlobalHydra.instance().is_initialized():
        experiments = {e: compose("config", overrides=[f"experiment={e}"]) for e in published}
    else:
        conf = str(Path(__file__).resolve().parents[1] / "conf")
        with initialize_config_dir(config_dir=conf, version_base="1.3"):
            experiments = {e: compose("config", overrides=[f"experiment={e}"]) for e in published}
    models = {"configured": cfg.model, **{e: c.model for e, c in experiments.items()}}
    crop, batch = int(cfg.flops.input_size), int(cfg.train.batch_size)
    rows = []
    for name, model_cfg in models.items():
        rate, device = time_train_steps(model_cfg, cfg.train, crop, batch, cfg.benchmark.warmup, cfg.benchmark.runs)
        backbone = model_cfg.backbone._target_.rsplit(".", 1)[-1]
        rows.append({"config": name, "backbone": f"{backbone} x{model_cfg.backbone.depth_multiplier:g}",
                     "head": model_cfg.head._target_.rsplit(".", 1)[-1], "images_per_s": round(rate, 2)})
    print(f"\ntraining throughput: crop {crop}, batch {batch}, {cfg.benchmark.runs} steps timed, device {device}, "
          f"{cfg.benchmark.threads} threads\n")
    print("| config | backbone | head | images/s |\n|---|---|---|---:|")
    for r in rows:
        print(f"| {r['config']} | {r['backbone']} | {r['head']} | {r['images_per_s']:.2f} |")
    return {"task": "train", "crop_size": crop, "batch_size": batch, "device": device,
            "threads": cfg.benchmark.threads, "results": rows}


TASKS["train"] = benchmark_train
