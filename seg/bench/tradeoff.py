"""`tools/benchmark.py tradeoff`: CPU latency of the encoders in classification form against their
multiply-adds (options under `benchmark.tradeoff`)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import OmegaConf

from seg.bench.timing import eager_call, ort_fp32_session, ort_version, output_dir, time_in_turns
from seg.config import BackboneConfig
from seg.errors import ConfigError
from seg.flops import count_multiply_adds, count_parameters
from seg.models.classifier import build_classifier

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
        entries.append(
            {
                "family": family,
                "label": label,
                "target": target.format(variant),
                "depth_multiplier": float(multiplier),
                "channel_rounding": rounding,
                "input_size": int(size),
            }
        )

    for alpha in t.mnv1_multipliers:
        for size in t.mnv1_sizes:
            add("MobileNetV1", f"{float(alpha)}-{size}", alpha, size)  # the paper's "1.0 MobileNet-224"
    for m in t.mnv2_multipliers:
        add("MobileNetV2", f"{float(m)}", m, t.input_size)
    for variant in t.mnv3:
        if variant not in ("large", "small"):
            raise ConfigError(f"benchmark.tradeoff.mnv3: expected 'large' and/or 'small', got {variant!r}")
        add("MobileNetV3", variant.capitalize(), 1.0, t.input_size, variant)
    for m in t.mnasnet_b1_multipliers:
        add("MnasNet-B1", f"{float(m)}", m, t.input_size)
    return entries


def _prepare_classifier(entry: dict[str, Any], modes: list[str], threads: int, workdir: Path) -> tuple[dict, dict]:
    """Build one classification-form encoder: its row (multiply-adds, params) and one zero-argument
    call per mode, to be timed."""
    cfg = OmegaConf.structured(
        BackboneConfig(
            _target_=entry["target"],
            depth_multiplier=entry["depth_multiplier"],
            channel_rounding=entry["channel_rounding"],
        )
    )
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
                ax.plot(
                    xs,
                    ys,
                    marker="o",
                    markersize=4,
                    linewidth=1.2,
                    color=f"C{colour}",
                    label=family if i == 0 else None,
                )
                for r, xv, yv in zip(members, xs, ys):
                    ax.annotate(
                        r["label"], (xv, yv), textcoords="offset points", xytext=(3, 3), fontsize=6, color=f"C{colour}"
                    )
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
    fig.suptitle(
        f"Encoders in classification form: CPU latency ({result['threads']} threads, "
        f"{result['runs']} runs) against multiply-adds",
        fontsize=10,
    )
    fig.savefig(path, dpi=130)


def format_tradeoff_table(result: dict[str, Any]) -> str:
    modes = [m for m in TRADEOFF_MODES if any(m in r for r in result["results"])]
    lines = [
        f"batch 1, {result['threads']} threads, {result['warmup']} warm-up + {result['runs']} timed runs in turns; "
        "ms as median / p90",
        "",
        "| family | model | input | MAdds (M) | params (M) | "
        + " | ".join(f"{TRADEOFF_MODES[m]} ms" for m in modes)
        + " |",
        "|---|---|---|---:|---:|" + "---:|" * len(modes),
    ]
    for r in result["results"]:
        cells = " | ".join(f"{r[m]['median_ms']:.2f} / {r[m]['p90_ms']:.2f}" for m in modes)
        lines.append(
            f"| {r['family']} | {r['label']} | {r['input_size']} | {r['multiply_adds'] / 1e6:.1f} | "
            f"{r['params'] / 1e6:.2f} | {cells} |"
        )
    return "\n".join(lines)


def benchmark_tradeoff(cfg) -> dict[str, Any]:
    """Batch-1 CPU latency (PyTorch eager and ONNX Runtime fp32) of the encoders in classification
    form over MobileNetV1's width x resolution grid and the multipliers of MobileNetV2, MobileNetV3
    and MnasNet-B1, against their multiply-adds: `tradeoff.png` (one curve per family),
    `tradeoff.json` and `tradeoff.md` in `benchmark.tradeoff.output_dir` (default: the run directory).
    Timed in turns (one call of every entry per round), so a shared machine's load hits all alike.
    """
    b, t = cfg.benchmark, cfg.benchmark.tradeoff
    unknown = set(t.modes) - set(TRADEOFF_MODES)
    if unknown or not t.modes:
        raise ConfigError(f"benchmark.tradeoff.modes must be some of {', '.join(TRADEOFF_MODES)}, got {list(t.modes)}")
    out_dir = output_dir(t.output_dir, "benchmark.tradeoff.output_dir")
    torch.set_num_threads(b.threads)
    entries = _tradeoff_entries(t)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = []
        for entry in entries:
            print(f"preparing {entry['family']} {entry['label']} ...", flush=True)
            prepared.append(_prepare_classifier(entry, list(t.modes), b.threads, Path(tmp)))
        print(f"timing {len(prepared)} models x {len(t.modes)} modes, {b.runs} rounds ...", flush=True)
        time_in_turns(prepared, b.warmup, b.runs)
    result = {
        "task": "tradeoff",
        "threads": b.threads,
        "warmup": b.warmup,
        "runs": b.runs,
        "torch": torch.__version__,
        "onnxruntime": ort_version(),
        "results": [row for row, _ in prepared],
    }
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
