"""`tools/benchmark.py eval`: the speed of single-scale against multi-scale + flip evaluation."""

from __future__ import annotations

from typing import Any

import torch

from seg.data import build_dataset
from seg.data.transforms import build_eval_transform
from seg.engine.checkpoint import load_segmenter
from seg.engine.evaluator import evaluate
from seg.flops import count_evaluation
from seg.models import build_segmenter


def benchmark_eval(cfg) -> dict[str, Any]:
    """Seconds per image of single-scale evaluation and of `eval.scales` + `eval.flip` (default:
    DeepLab's 0.5:0.25:1.75 with flip), against the ratio of their multiply-adds.

    Uses `checkpoint=` when given, else a randomly initialised `model` (timing does not depend on
    the weights), on the first `benchmark.runs` val images of the configured dataset.
    """
    torch.set_num_threads(cfg.benchmark.threads)
    if cfg.checkpoint:
        model, stored = load_segmenter(cfg.checkpoint)
        model_cfg = stored.model
    else:
        model, model_cfg = build_segmenter(cfg.model, start_weights=False).eval(), cfg.model  # speed only
    model.set_output_stride(cfg.eval.output_stride or model_cfg.output_stride)
    dataset = build_dataset(cfg.dataset, "val", build_eval_transform())
    multi = list(cfg.eval.scales) if len(cfg.eval.scales) > 1 or cfg.eval.flip else [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    flip = bool(cfg.eval.flip) or multi != list(cfg.eval.scales)
    settings = {"single_scale": ([1.0], False), "multi_scale_flip": (multi, flip)}
    height, width = dataset[0][0].shape[-2:]
    rows = {}
    for name, (scales, use_flip) in settings.items():
        kwargs = dict(num_classes=model_cfg.num_classes, scales=scales, flip=use_flip, progress=False)
        evaluate(model, dataset, max_images=cfg.benchmark.warmup, **kwargs)  # warm-up
        metrics = evaluate(model, dataset, max_images=cfg.benchmark.runs, **kwargs)
        madds = count_evaluation(model, max(height, width), scales, use_flip)["madds"]
        rows[name] = {
            "scales": scales,
            "flip": use_flip,
            "seconds_per_image": metrics["seconds_per_image"],
            "madds": madds,
        }
    time_ratio = rows["multi_scale_flip"]["seconds_per_image"] / rows["single_scale"]["seconds_per_image"]
    madds_ratio = rows["multi_scale_flip"]["madds"] / rows["single_scale"]["madds"]
    print(
        f"\nevaluation speed: {len(dataset)} val images of {height}x{width}, {cfg.benchmark.runs} timed, "
        f"{cfg.benchmark.threads} threads, output stride {model.output_stride}\n"
    )
    print("| setting | scales | flip | s/image | multiply-adds |\n|---|---|---|---:|---:|")
    for name, r in rows.items():
        print(
            f"| {name} | {','.join(f'{s:g}' for s in r['scales'])} | {r['flip']} | "
            f"{r['seconds_per_image']:.4f} | {r['madds'] / 1e9:.2f}B |"
        )
    print(
        f"\ntime ratio {time_ratio:.2f} vs multiply-add ratio {madds_ratio:.2f} "
        f"({100 * (time_ratio / madds_ratio - 1):+.1f}%)"
    )
    return {
        "task": "eval",
        "image_size": [int(height), int(width)],
        "threads": cfg.benchmark.threads,
        "output_stride": model.output_stride,
        "results": rows,
        "time_ratio": time_ratio,
        "madds_ratio": madds_ratio,
    }
