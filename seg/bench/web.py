"""`tools/benchmark.py web`: the web app's time per frame in headless Chromium (ONNX Runtime Web,
WebAssembly) next to ONNX Runtime in Python on the same model file, image and number of threads.

Models: the default run's model (mnv2_dm05 + lraspp, the built-in dataset's), the default on real
data (mnv2_dm05 + deeplabv3plus) and mnv2_dm05 + aspp_lite (the rest of the `model` config as
composed), random-initialised with batch-norm statistics re-estimated on real images
(time does not depend on the weights), plus `checkpoint=PATH` when given; each exported by
`export.format=web` at `export.input_size` (513), fp32 and int8: the folder users get, calibrated on
the configured dataset's train images.

Both sides time the same two things on the same image (a real VOC image from
`benchmark.official.voc_root` when there, else a val image of the dataset):
- model: one run of the session on the prepared input (letterboxed uint8 RGB in, labels out);
- frame: image in, mask out: letterbox, run, crop and resize (the page's `segment()`, and
  `ExportedPredictor.__call__` in Python); the page's drawing is not included.
The page runs with `?backend=wasm&threads=benchmark.threads` (cross-origin isolated: the threaded
WebAssembly build), Python with `intra_op_num_threads` the same. Timing alternates between the two in
rounds, so a change in the machine's load hits both alike; medians over `benchmark.runs`. The target:
WebAssembly int8 within 2x of native ONNX Runtime int8.

The browser helpers here (`chromium`, `open_app`, `segment_file`, `labels_of`) serve the tests too.
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from seg.errors import ConfigError, SegError

# Headless Chromium as root, in a closed network: no sandbox (root), no GPU, and none of the
# background traffic (updates, sync, QUIC probes) that would otherwise flood the network.
CHROMIUM_FLAGS = (
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
)
CHROMIUM_ENV = "SEG_CHROMIUM"  # a browser other than the first chromium on PATH
INSTALL_HINT = (
    'pip install -e ".[web]" (Playwright for Python) and Debian\'s chromium '
    "(apt-get install -y --no-install-recommends chromium), then npm ci --prefix seg/web"
)
# The models of the table, on mnv2_dm05: the default run's head, the default on real data, the small head.
HEADS = ("lraspp", "deeplabv3plus", "aspp_lite")


class BrowserMissing(SegError):
    """No Playwright for Python or no Chromium here."""


def find_chromium() -> Optional[str]:
    """$SEG_CHROMIUM, else chromium (Debian), chromium-browser or google-chrome on PATH; None if none."""
    configured = os.environ.get(CHROMIUM_ENV)
    if configured:
        return configured if Path(configured).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def browser_missing() -> Optional[str]:
    """Why a headless Chromium cannot be driven here, or None when it can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"Playwright for Python is not installed: {INSTALL_HINT}"
    if find_chromium() is None:
        return f"no Chromium found (chromium on PATH, or ${CHROMIUM_ENV}): {INSTALL_HINT}"
    return None


# WebGPU on the CPU (SwiftShader's Vulkan), for testing the page's WebGPU path on a machine with no GPU.
SOFTWARE_WEBGPU_FLAGS = (
    "--enable-unsafe-webgpu",
    "--enable-unsafe-swiftshader",
    "--use-webgpu-adapter=swiftshader",
    "--enable-features=Vulkan",
    "--use-vulkan=swiftshader",
    "--use-angle=swiftshader",
)


_ACTIVE: list[Any] = []  # the Playwright in use: its sync API allows one at a time in a process


@contextlib.contextmanager
def playwright() -> Iterator[Any]:
    """Playwright's sync API for the duration (the one already started, if any); BrowserMissing
    when Playwright or Chromium is not installed."""
    if _ACTIVE:
        yield _ACTIVE[-1]
        return
    why = browser_missing()
    if why:
        raise BrowserMissing(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        _ACTIVE.append(p)
        try:
            yield p
        finally:
            _ACTIVE.pop()


def launch_chromium(p: Any, extra_args: tuple[str, ...] = (), software_webgpu: bool = False) -> Any:
    """A headless Chromium (Playwright's Browser) started from the installed executable, with a fresh
    profile; `extra_args` e.g. the fake camera's flags; `software_webgpu`: WebGPU on SwiftShader."""
    flags = [f for f in CHROMIUM_FLAGS if not (software_webgpu and f == "--disable-gpu")]
    flags += SOFTWARE_WEBGPU_FLAGS if software_webgpu else ()
    return p.chromium.launch(executable_path=find_chromium(), headless=True, args=[*flags, *extra_args],
                             timeout=120_000)  # fmt: skip


@contextlib.contextmanager
def chromium(extra_args: tuple[str, ...] = (), software_webgpu: bool = False) -> Iterator[Any]:
    """`launch_chromium` under its own Playwright, closed afterwards."""
    with playwright() as p:
        browser = launch_chromium(p, extra_args, software_webgpu)
        try:
            yield browser
        finally:
            browser.close()


def open_app(browser: Any, url: str, timeout_s: float = 120) -> tuple[Any, dict[str, Any]]:
    """A new page at `url` (a web export's index.html, options in its query), once its model is
    loaded: (page, its `seg.info()`). SegError with the page's message when it could not load."""
    page = browser.new_page()
    page.set_default_timeout(timeout_s * 1000)
    page.goto(url)
    page.wait_for_function("window.seg && window.seg.ready")
    info = page.evaluate("window.seg.ready")
    if not info.get("ready"):
        raise SegError(f"the web app at {url} did not load: {'; '.join(info.get('errors') or ['no message'])}")
    return page, info


def segment_file(page: Any, path: str | os.PathLike, timeout_s: float = 120) -> dict[str, Any]:
    """Give the page an image file as a user choosing it does; wait until it is segmented (or an
    error shows) and return `seg.result()`; SegError with the page's message on an error."""
    before = page.evaluate("[window.seg.state.images, window.seg.state.errors.length]")
    page.set_input_files("#file", str(path))
    page.wait_for_function(
        f"window.seg.state.images > {before[0]} || window.seg.state.errors.length > {before[1]}",
        timeout=timeout_s * 1000,
    )
    errors = page.evaluate("window.seg.state.errors")
    if len(errors) > before[1]:
        raise SegError(f"the web app could not segment {path}: {errors[-1]}")
    return page.evaluate("window.seg.result()")


def labels_of(result: dict[str, Any]) -> np.ndarray:
    """The class mask of a `seg.result()` as uint8 [height, width]."""
    data = np.frombuffer(base64.b64decode(result["labels"]), dtype=np.uint8)
    return data.reshape(int(result["height"]), int(result["width"]))


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


# mnv2_dm05 as conf/backbone/mnv2_dm05.yaml sets it (block widths not rounded, as DeepLab's dm0.5).
MNV2_DM05 = {"_target_": "seg.models.mobilenet_v2.mobilenet_v2", "depth_multiplier": 0.5, "channel_rounding": "deeplab"}


def _model_config(cfg: Any, head: str) -> dict[str, Any]:
    """The composed `model` config as plain data with mnv2_dm05 and `head`; never pretrained weights."""
    from seg.config import HEAD_SCHEMAS

    model = OmegaConf.to_container(cfg.model, resolve=True)
    model["backbone"].update(MNV2_DM05)
    model["head"] = OmegaConf.to_container(OmegaConf.structured(HEAD_SCHEMAS[head]()))
    model["backbone"]["pretrained"] = None
    model["backbone"]["weights"] = None
    return model


def _random_checkpoint(cfg: Any, head: str, path: Path, images: np.ndarray) -> str:
    """A checkpoint of a random-initialised model (batch-norm statistics of `images`, normalised NCHW
    float); returns the model's name."""
    from seg.bench.latency import recalibrate_batchnorm
    from seg.engine.checkpoint import save_checkpoint
    from seg.models import build_segmenter

    data = OmegaConf.to_container(cfg, resolve=True)
    data["model"] = _model_config(cfg, head)
    model_cfg = OmegaConf.create(data["model"])
    torch.manual_seed(0)
    model = build_segmenter(model_cfg, start_weights=False).eval()
    recalibrate_batchnorm(model, model.normalize(torch.from_numpy(images)).numpy())
    save_checkpoint(path, {"model": model.state_dict(), "config": OmegaConf.to_yaml(OmegaConf.create(data))})
    from seg.models.segmenter import part_names

    backbone, head_name = part_names(model_cfg)
    return f"{backbone} x{model_cfg.backbone.depth_multiplier:g} + {head_name}"


def _export(cfg: Any, checkpoint: Path, folder: Path, quantize: str) -> dict[str, Any]:
    """`export.format=web` of `checkpoint` into `folder`: checked on one image, calibrated on
    `benchmark.web`'s few; no agreement gate (random weights have no margin between classes)."""
    from seg.export.pipeline import run_export

    export = OmegaConf.merge(
        cfg,
        {
            "checkpoint": str(checkpoint),
            "export": {
                "format": "web",
                "quantize": quantize,
                "path": str(folder),
                "overwrite": True,
                "dynamic": False,
                "check_images": 1,
                "eval_images": 1,
                "calibration_images": CALIBRATION_IMAGES,
                "min_agreement": 0.0,
            },
        },
    )
    return run_export(export, keep_dataset=True)


CALIBRATION_IMAGES = 8
ROUNDS = 4  # timing alternates between the page and Python this many times


def _image(cfg: Any, workdir: Path) -> Path:
    """A real VOC image (the first JPEG under benchmark.official.voc_root), else a val image of the
    dataset written as PNG."""
    for root in cfg.benchmark.official.voc_root:
        found = sorted((Path(root) / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))
        if found:
            return found[0]
    from PIL import Image

    from seg.data import build_dataset

    image, _ = build_dataset(cfg.dataset, "val")[0]
    path = workdir / "image.png"
    Image.fromarray(image).save(path)
    return path


def _calibration_images(cfg: Any, size: int) -> np.ndarray:
    """Train images of the dataset, resized to size x size, uint8 NCHW (batch-norm statistics)."""
    from seg.data import build_dataset
    from seg.export.runtime import resize_image

    dataset = build_dataset(cfg.dataset, "train")
    idx = np.linspace(0, len(dataset) - 1, min(CALIBRATION_IMAGES, len(dataset))).round().astype(int)
    out = [resize_image(dataset[int(i)][0], size, size).transpose(2, 0, 1) for i in idx]
    return np.ascontiguousarray(np.stack(out)).astype(np.float32)


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def benchmark_web(cfg: Any) -> dict[str, Any]:
    """The page's median time per frame in headless Chromium against ONNX Runtime in Python (see
    the module docstring); prints the table and returns the JSON dict."""
    import onnxruntime

    from seg.export.common import read_metadata
    from seg.export.onnx import OnnxRunner
    from seg.export.runtime import ExportedPredictor
    from seg.export.web import ort_web_dist, ort_web_version
    from seg.images import read_image
    from seg.serve import serving

    b = cfg.benchmark
    why = browser_missing()
    if why:
        raise BrowserMissing(f"benchmark web needs a browser: {why}")
    dist = ort_web_dist()  # fails first, in one line, without onnxruntime-web's files
    if int(cfg.export.input_size) < 32:
        raise ConfigError("export.input_size must be at least 32")
    threads = int(b.threads)
    torch.set_num_threads(threads)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="seg-bench-web-") as tmp:
        workdir = Path(tmp)
        image_path = _image(cfg, workdir)
        image = read_image(image_path)
        size = int(cfg.export.input_size)
        calibration = _calibration_images(cfg, size)
        entries: list[tuple[str, Path]] = []
        for head in HEADS:
            checkpoint = workdir / f"model{len(entries)}.pt"
            name = _random_checkpoint(cfg, head, checkpoint, calibration)
            entries.append((name, checkpoint))
        if cfg.checkpoint:
            from seg.engine.checkpoint import load_segmenter

            model, _ = load_segmenter(cfg.checkpoint)
            entries.append((f"trained: {model.name}", Path(cfg.checkpoint)))
        prepared = []
        for i, (name, checkpoint) in enumerate(entries):
            for quantize in ("none", "int8"):
                folder = workdir / "apps" / f"{i}-{quantize}"
                print(f"exporting {name} ({'fp32' if quantize == 'none' else 'int8'}) ...", flush=True)
                report = _export(cfg, checkpoint, folder, quantize)
                row = {
                    "model": name,
                    "precision": "int8" if quantize == "int8" else "fp32",
                    "input_size": size,
                    "model_mb": report["size_mb"],
                    "folder_mb": report["folder_mb"],
                }
                prepared.append((row, folder))
        times: dict[tuple[int, str], list[float]] = {}
        with serving(workdir / "apps", app=False) as url, chromium() as browser:
            pages, natives = [], []
            for row, folder in prepared:
                query = f"backend=wasm&threads={threads}&spinning=0"
                page, info = open_app(browser, f"{url}{folder.name}/index.html?{query}")
                row["page_backend"] = info["backendText"]
                segment_file(page, image_path)
                pages.append(page)
                # Neither side's threads spin once a run ends: each would slow the other's next run.
                runner = OnnxRunner(folder / "model.onnx", threads, spinning=False)
                predictor = ExportedPredictor(runner, read_metadata(folder / "model.onnx"))
                x, _ = predictor.prepare(image)
                natives.append((predictor, x))
            print(f"timing {len(prepared)} models, page and Python in turns, {b.runs} runs ...", flush=True)
            per_round = max(1, math.ceil(int(b.runs) / ROUNDS))
            for r in range(ROUNDS):
                warmup = int(b.warmup) if r == 0 else 1
                for k, (page, (predictor, x)) in enumerate(zip(pages, natives)):
                    out = page.evaluate(f"window.seg.benchmark({per_round}, {warmup})")
                    times.setdefault((k, "page_model"), []).extend(out["model_ms"])
                    times.setdefault((k, "page_frame"), []).extend(out["frame_ms"])
                    for i in range(warmup + per_round):
                        start = time.perf_counter()
                        predictor.runner(x)
                        middle = time.perf_counter()
                        predictor(image)
                        end = time.perf_counter()
                        if i >= warmup:
                            times.setdefault((k, "python_model"), []).append(1000 * (middle - start))
                            times.setdefault((k, "python_frame"), []).append(1000 * (end - middle))
            chromium_version = browser.version
        for k, (row, _) in enumerate(prepared):
            for key in ("python_model", "python_frame", "page_model", "page_frame"):
                row[f"{key}_ms"] = _median(times[(k, key)])
            row["page_vs_python"] = row["page_model_ms"] / row["python_model_ms"]
            rows.append(row)
    result = {
        "task": "web",
        "threads": threads,
        "runs": per_round * ROUNDS,
        "warmup": int(b.warmup),
        "image": str(image_path),
        "image_size": list(image.shape[:2]),
        "chromium": chromium_version,
        "onnxruntime_web": ort_web_version(dist),
        "onnxruntime": onnxruntime.__version__,
        "results": rows,
    }
    result["targets"] = [
        {
            "target": f"{row['model']} int8: WebAssembly within 2x of native ONNX Runtime int8 (model run)",
            "value": row["page_vs_python"],
            "goal": 2.0,
            "met": row["page_vs_python"] <= 2.0,
            "detail": f"{row['page_model_ms']:.1f} ms vs {row['python_model_ms']:.1f} ms",
        }
        for row in rows
        if row["precision"] == "int8"
    ]
    print()
    print(format_table(result))
    return result


def format_table(result: dict[str, Any]) -> str:
    """The markdown table of `benchmark_web`'s result, then its targets."""
    lines = [
        f"Web app (headless Chromium {result['chromium']}, onnxruntime-web {result['onnxruntime_web']}, "
        f"WebAssembly) vs ONNX Runtime {result['onnxruntime']} in Python, {result['threads']} threads, "
        f"{result['runs']} runs, image {result['image_size'][1]}x{result['image_size'][0]}; medians in ms",
        "",
        "| model | precision | input | model file | page: model run | Python: model run | page / Python "
        "| page: frame | Python: frame |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        size = r["input_size"]
        lines.append(
            f"| {r['model']} | {r['precision']} | {size}x{size} | {r['model_mb']:.1f} MB | {r['page_model_ms']:.1f} "
            f"| {r['python_model_ms']:.1f} | {r['page_vs_python']:.2f}x | {r['page_frame_ms']:.1f} "
            f"| {r['python_frame_ms']:.1f} |"
        )
    lines.append("")
    for t in result["targets"]:
        lines.append(f"- {t['target']}: {t['value']:.2f}x (goal <= {t['goal']:g}x) {'met' if t['met'] else 'NOT met'}"
                     f" ({t['detail']})")  # fmt: skip
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The README's screenshot
# ---------------------------------------------------------------------------------------------


def screenshot(app: Path, image: Path, out: Path, threads: int = 2, width: int = 1200) -> dict[str, Any]:
    """The page of the web export `app` on `image`, a pixel of its largest non-background class
    clicked, saved as a PNG at `out`; returns the page's result (without the mask)."""
    from seg.serve import serving

    with serving(app) as url, chromium() as browser:
        page, _ = open_app(browser, f"{url}?threads={threads}")
        page.set_viewport_size({"width": width, "height": 560})
        for _ in range(3):  # the time shown: the last of three
            result = segment_file(page, image)
        labels = labels_of(result)
        counts = np.bincount(labels.ravel(), minlength=2)
        counts[0] = 0
        if counts.any():
            ys, xs = np.nonzero(labels == counts.argmax())
            y, x = int(np.median(ys)), int(np.median(xs))
            box = page.locator("#view").bounding_box()
            page.mouse.click(box["x"] + (x + 0.5) * box["width"] / labels.shape[1],
                             box["y"] + (y + 0.5) * box["height"] / labels.shape[0])  # fmt: skip
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
    return {k: v for k, v in result.items() if k != "labels"}


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m seg.bench.web screenshot APP IMAGE OUT`: the README's figure of the page."""
    import argparse

    from seg.cli import one_line_errors

    ap = argparse.ArgumentParser(description=main.__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    shot = sub.add_parser("screenshot", help="the page of a web export on an image, as a PNG")
    shot.add_argument("app", type=Path, help="the folder export.format=web wrote")
    shot.add_argument("image", type=Path, help="the image to segment")
    shot.add_argument("out", type=Path, help="the PNG to write (e.g. tools/figures/web_page.png)")
    shot.add_argument("--threads", type=int, default=2, help="WebAssembly threads (default 2)")
    args = ap.parse_args(argv)

    @one_line_errors
    def run() -> int:
        result = screenshot(args.app, args.image, args.out, args.threads)
        timing = result["timing"]
        print(f"wrote {args.out}: {result['width']}x{result['height']}, {timing['total']:.1f} ms a frame "
              f"(model {timing['model']:.1f} ms)")  # fmt: skip
        return 0

    return run()


if __name__ == "__main__":
    raise SystemExit(main())
