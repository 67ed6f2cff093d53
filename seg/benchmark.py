"""Benchmark tasks behind `tools/benchmark.py TASK`; each takes the composed config and returns a dict.

- data: loader throughput (images/s: decode + training augmentation at `train.crop_size`) for each
  worker count in `benchmark.workers`, on the configured dataset (the built-in one by default).
- tradeoff: CPU latency of the encoders in classification form against their multiply-adds
  (options under `benchmark.tradeoff`).
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

import torch
from torch.utils.data import DataLoader

from seg.data import build_dataset
from seg.data.transforms import build_train_transform
from seg.errors import ConfigError


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
    train_py = Path(__file__).resolve().parents[1] / "tools" / "train.py"
    count = 2 if condition == "training" else 1
    others = [subprocess.Popen([sys.executable, "-c", "while True: pass"])] if condition == "busy" else []
    runs, procs = [folder / f"{condition}-{i}" for i in range(count)], []
    start = time.time()
    try:
        for run in runs:
            args = ["train.max_iters=10000000", "train.eval_every=0", "train.checkpoint_every=0", "train.log_every=10",
                    "train.progress=false", *b.args, f"hydra.run.dir={run}"]
            procs.append(subprocess.Popen([sys.executable, str(train_py), *args], cwd=Path.cwd(),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
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
                    raise ConfigError(f"benchmark.train: the {condition} run logged too few iterations in "
                                      f"{b.seconds} s; raise benchmark.train.seconds")
                rates[condition] += got
                print(f"round {round_ + 1}, {condition}: " + ", ".join(f"{r:.1f}" for r in got) + " images/s")
    median = {c: float(np.median(v)) for c, v in rates.items() if v}
    idle = median.get("none")
    rows = [{"contention": c, "images_per_s": round(median[c], 1), "runs": [round(r, 1) for r in rates[c]],
             "of_idle": None if not idle else round(median[c] / idle, 3)} for c in b.contention]
    print(f"\ntraining beside other processes: the default run, batch {batch_size}, {os.cpu_count()} cores, "
          f"{b.seconds:g} s each ({b.warmup_seconds:g} s warm-up), {b.rounds} round(s), overrides {list(b.args)}\n")
    print("| beside it | images/s (median) | each run | of idle |\n|---|---:|---|---:|")
    names = {"none": "nothing", "busy": "one busy process", "training": "a second training"}
    for r in rows:
        share = "" if r["of_idle"] is None else f"{100 * r['of_idle']:.0f}%"
        print(f"| {names[r['contention']]} | {r['images_per_s']:.1f} | {', '.join(map(str, r['runs']))} | {share} |")
    return {"task": "train", "contention": rows, "batch_size": batch_size, "seconds": b.seconds,
            "rounds": b.rounds, "args": list(b.args)}


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

    if cfg.benchmark.train.contention:
        return benchmark_train_contention(cfg)
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


# The families of `tradeoff`: builder and channel rounding of the papers' ImageNet networks
# (MobileNetV1: int(c * alpha); MobileNetV2: every width a multiple of 8, as its paper and
# torchvision, not DeepLab's unrounded dm != 1 variant).
TRADEOFF_FAMILIES = {
    "MobileNetV1": ("seg.models.mobilenet_v1.mobilenet_v1", "deeplab"),
    "MobileNetV2": ("seg.models.mobilenet_v2.mobilenet_v2", "torchvision"),
    "MobileNetV3": ("seg.models.mobilenet_v3.mobilenet_v3_{}", "deeplab"),
    "MnasNet-B1": ("seg.models.mnasnet.mnasnet_b1", "deeplab"),
}
TRADEOFF_MODES = {"eager": "PyTorch eager", "ort_fp32": "ONNX Runtime fp32"}


def _tradeoff_entries(t) -> list[dict[str, Any]]:
    """(family, label, builder, multiplier, input size) of every point of the grid."""
    entries = []

    def add(family: str, label: str, multiplier: float, size: int, variant: str = "") -> None:
        target, rounding = TRADEOFF_FAMILIES[family]
        entries.append({"family": family, "label": label, "target": target.format(variant),
                        "depth_multiplier": float(multiplier), "channel_rounding": rounding, "input_size": int(size)})

    for alpha in t.mnv1_multipliers:
        for size in t.mnv1_sizes:
            add("MobileNetV1", f"{float(alpha)}-{size}", alpha, size)  # the paper's "1.0 MobileNet-224"
    for m in t.mnv2_multipliers:
        add("MobileNetV2", f"{float(m)}", m, t.input_size)
    for variant in t.mnv3:
        if variant not in ("large", "small"):
            raise ValueError(f"benchmark.tradeoff.mnv3: expected 'large' and/or 'small', got {variant!r}")
        add("MobileNetV3", variant.capitalize(), 1.0, t.input_size, variant)
    for m in t.mnasnet_b1_multipliers:
        add("MnasNet-B1", f"{float(m)}", m, t.input_size)
    return entries


def _prepare_classifier(entry: dict[str, Any], modes: list[str], threads: int, workdir: Path) -> tuple[dict, dict]:
    """Build one classification-form encoder: its row (multiply-adds, params) and one zero-argument
    call per mode, to be timed."""
    from omegaconf import OmegaConf

    from seg.config import BackboneConfig
    from seg.export.latency import eager_call, ort_fp32_session
    from seg.flops import count_multiply_adds, count_parameters
    from seg.models.classifier import build_classifier

    cfg = OmegaConf.structured(BackboneConfig(_target_=entry["target"], depth_multiplier=entry["depth_multiplier"],
                                              channel_rounding=entry["channel_rounding"]))
    torch.manual_seed(0)
    model = build_classifier(cfg).eval()
    size = entry["input_size"]
    row = {**entry, "multiply_adds": count_multiply_adds(model, size, size), "params": count_parameters(model)}
    x = torch.randn(1, 3, size, size)
    calls: dict[str, Callable[[], Any]] = {}
    if "eager" in modes:
        calls["eager"] = eager_call(model, x)
    if "ort_fp32" in modes:
        _, runner = ort_fp32_session(model, x, workdir, threads)
        xn = x.numpy()
        calls["ort_fp32"] = lambda: runner(xn)
    return row, calls


def _tradeoff_plot(result: dict[str, Any], path: Path) -> None:
    """One panel per mode: latency against multiply-adds (log-log), one colour per family, every
    point labelled (MobileNetV1: alpha-resolution; the others: multiplier or variant). MobileNetV1's
    grid is drawn as one line per width through its resolutions (a single line through all 16
    points in multiply-add order would zigzag between widths)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    modes = [m for m in TRADEOFF_MODES if any(m in r for r in result["results"])]
    fig = Figure(figsize=(6.5 * len(modes), 5.5), layout="constrained")
    axes = fig.subplots(1, len(modes), squeeze=False)[0]
    for ax, mode in zip(axes, modes):
        for colour, family in enumerate(TRADEOFF_FAMILIES):
            rows = [r for r in result["results"] if r["family"] == family]
            series: dict[float | None, list] = {}
            for r in rows:
                series.setdefault(r["depth_multiplier"] if family == "MobileNetV1" else None, []).append(r)
            for i, members in enumerate(series.values()):
                members.sort(key=lambda r: r["multiply_adds"])
                xs = [r["multiply_adds"] / 1e6 for r in members]
                ys = [r[mode]["median_ms"] for r in members]
                ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.2, color=f"C{colour}",
                        label=family if i == 0 else None)
                for r, xv, yv in zip(members, xs, ys):
                    ax.annotate(r["label"], (xv, yv), textcoords="offset points", xytext=(3, 3), fontsize=6,
                                color=f"C{colour}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # ticks at 1-2-5 x 10^n, written as plain numbers
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("multiply-adds (millions)")
        ax.set_ylabel("latency, batch 1 (ms, median)")
        ax.set_title(TRADEOFF_MODES[mode])
        ax.grid(True, which="both", linewidth=0.3, alpha=0.5)
        ax.legend(fontsize=8)
    fig.suptitle(f"Encoders in classification form: CPU latency ({result['threads']} threads, "
                 f"{result['runs']} runs) against multiply-adds", fontsize=10)
    fig.savefig(path, dpi=130)


def format_tradeoff_table(result: dict[str, Any]) -> str:
    modes = [m for m in TRADEOFF_MODES if any(m in r for r in result["results"])]
    lines = [
        f"batch 1, {result['threads']} threads, {result['warmup']} warm-up + {result['runs']} timed runs in turns; "
        "ms as median / p90",
        "",
        "| family | model | input | MAdds (M) | params (M) | "
        + " | ".join(f"{TRADEOFF_MODES[m]} ms" for m in modes) + " |",
        "|---|---|---|---:|---:|" + "---:|" * len(modes),
    ]
    for r in result["results"]:
        cells = " | ".join(f"{r[m]['median_ms']:.2f} / {r[m]['p90_ms']:.2f}" for m in modes)
        lines.append(f"| {r['family']} | {r['label']} | {r['input_size']} | {r['multiply_adds'] / 1e6:.1f} | "
                     f"{r['params'] / 1e6:.2f} | {cells} |")
    return "\n".join(lines)


def benchmark_tradeoff(cfg) -> dict[str, Any]:
    """Batch-1 CPU latency (PyTorch eager and ONNX Runtime fp32) of the encoders in classification
    form over MobileNetV1's width x resolution grid and the multipliers of MobileNetV2, MobileNetV3
    and MnasNet-B1, against their multiply-adds: `tradeoff.png` (one curve per family),
    `tradeoff.json` and `tradeoff.md` in `benchmark.tradeoff.output_dir` (default: the run directory).
    Timed in turns (one call of every entry per round), so a shared machine's load hits all alike.
    """
    import json
    import tempfile

    from seg.export.latency import _ort_version, _time_round_robin

    b, t = cfg.benchmark, cfg.benchmark.tradeoff
    unknown = set(t.modes) - set(TRADEOFF_MODES)
    if unknown or not t.modes:
        raise ValueError(f"benchmark.tradeoff.modes must be some of {', '.join(TRADEOFF_MODES)}, got {list(t.modes)}")
    out_dir = t.output_dir
    if out_dir is None:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            raise ValueError("benchmark.tradeoff.output_dir is needed outside tools/benchmark.py")
        out_dir = HydraConfig.get().runtime.output_dir
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(b.threads)
    entries = _tradeoff_entries(t)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = []
        for entry in entries:
            print(f"preparing {entry['family']} {entry['label']} ...", flush=True)
            prepared.append(_prepare_classifier(entry, list(t.modes), b.threads, Path(tmp)))
        print(f"timing {len(prepared)} models x {len(t.modes)} modes, {b.runs} rounds ...", flush=True)
        _time_round_robin(prepared, b.warmup, b.runs)
    result = {"task": "tradeoff", "threads": b.threads, "warmup": b.warmup, "runs": b.runs,
              "torch": torch.__version__, "onnxruntime": _ort_version(), "results": [row for row, _ in prepared]}
    paths = {"plot": out_dir / "tradeoff.png", "json": out_dir / "tradeoff.json", "table": out_dir / "tradeoff.md"}
    result["files"] = {k: str(v) for k, v in paths.items()}
    table = format_tradeoff_table(result)
    _tradeoff_plot(result, paths["plot"])
    paths["table"].write_text(table + "\n")
    paths["json"].write_text(json.dumps(result, indent=1) + "\n")
    print()
    print(table)
    print(f"\nwrote {paths['plot']}, {paths['json']}, {paths['table']}")
    return result


TASKS["tradeoff"] = benchmark_tradeoff
