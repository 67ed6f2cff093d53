"""The web app (`export.format=web`): the folder the export writes, the server's headers, and the page
itself in a real headless Chromium (Debian's, driven by Playwright): its mask against ONNX Runtime in
Python on the same model and image, images of other sizes, a file that is not an image, the webcam
(Chromium's fake camera fed from a video made here), and a logits model.

The browser tests skip, saying why, without Playwright, Chromium or onnxruntime-web's files
(`npm ci --prefix seg/web`); .ci/run installs all three. The real-model tests need the official
DeepLab file and VOC image of ../shared/fixtures/official."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import ENV, run_tool, tool_command
from conftest import OFFICIAL_FIXTURES, REPO, compose_config, randomize_batchnorm
from omegaconf import OmegaConf
from PIL import Image

from seg.engine.checkpoint import save_checkpoint
from seg.export import ExportError, run_export
from seg.export.common import read_metadata
from seg.export.pipeline import export_float_modules, export_output, export_quantize
from seg.export.runtime import load_exported
from seg.export.web import ORT_DIST_ENV, ORT_FILES, ORT_FOLDER, ort_web_dist
from seg.images import read_image
from seg.models import build_segmenter
from seg.serve import ISOLATION_HEADERS, serving

OFFICIAL = OFFICIAL_FIXTURES
QUANT = OFFICIAL / "models" / "deeplabv3_mnv2_dm05_pascal_quant.tflite"
VOC_IMAGE = OFFICIAL / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2007_000033.jpg"
AGREEMENT = 0.999  # of pixels, page against ONNX Runtime in Python


def _ort_web_missing() -> str | None:
    try:
        ort_web_dist()
    except ExportError as exc:
        return str(exc)
    return None


def _browser_missing() -> str | None:
    from seg.bench.web import browser_missing

    return browser_missing()


needs_ort_web = pytest.mark.skipif(_ort_web_missing() is not None, reason=str(_ort_web_missing()))
needs_browser = pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))
needs_official = pytest.mark.skipif(not (QUANT.is_file() and VOC_IMAGE.is_file()), reason=f"{OFFICIAL} is absent")


# ---------------------------------------------------------------------------------------------
# Config: the format's defaults and what is refused (no browser, no npm files needed)
# ---------------------------------------------------------------------------------------------


def test_web_defaults_int8_labels_every_layer_and_none_means_fp32():
    web = compose_config("export.format=web").export
    assert export_quantize(web) == "int8" and export_output(web) == "labels" and export_float_modules(web) == []
    fp32 = compose_config("export.format=web", "export.quantize=none", "export.output=logits").export
    assert export_quantize(fp32) is None and export_output(fp32) == "logits"
    custom = compose_config("export.format=web", "export.float_modules=[backbone.stem]").export
    assert export_float_modules(custom) == ["backbone.stem"]  # another value than the default holds
    onnx = compose_config().export  # the other formats keep their defaults
    assert export_quantize(onnx) is None and export_output(onnx) == "logits"
    assert export_float_modules(onnx) == ["backbone.stem", "backbone.blocks.0"]
    assert export_quantize(compose_config("export.quantize=none").export) is None
    assert export_quantize(compose_config("export.quantize=int8").export) == "int8"
    with pytest.raises(Exception, match="quantize"):
        compose_config("export.quantize=fp16")


def tiny_checkpoint(tmp_path: Path, *overrides: str) -> tuple[Path, list[str]]:
    """A random mnv3_small + LR-ASPP checkpoint with a tiny built-in dataset; returns it and the
    dataset overrides that go with it. Its low-level classifier is scaled up, so that its classes
    follow the image's content (random weights otherwise give one class everywhere)."""
    data = [f"dataset.root={tmp_path / 'synthetic'}", "dataset.synthetic.num_train=4",
            "dataset.synthetic.num_val=2", "dataset.synthetic.image_size=48"]  # fmt: skip
    cfg = compose_config(*data, "backbone=mnv3_small", "head=lraspp", *overrides)
    torch.manual_seed(0)
    model = build_segmenter(cfg.model).eval()
    randomize_batchnorm(model, seed=1)
    with torch.no_grad():
        model.head.low_classifier.weight.mul_(30)
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": OmegaConf.to_yaml(cfg, resolve=True)})
    return path, data


def test_web_export_refuses_dynamic_and_names_the_npm_command(tmp_path, monkeypatch):
    ckpt, data = tiny_checkpoint(tmp_path)
    with pytest.raises(ExportError, match="export.dynamic=true is not supported for export.format=web"):
        run_export(compose_config(*data, f"checkpoint={ckpt}", "export.format=web", "export.dynamic=true"))
    with pytest.raises(ExportError, match="export.format=onnx, web, executorch or tflite"):
        run_export(compose_config(*data, f"checkpoint={ckpt}", "export.format=torchscript", "export.quantize=int8"))
    monkeypatch.setenv(ORT_DIST_ENV, str(tmp_path / "no-dist"))
    with pytest.raises(ExportError, match=r"npm ci --prefix .*seg/web") as caught:
        run_export(compose_config(*data, f"checkpoint={ckpt}", "export.format=web"))
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "tiny-web-int8").exists()


def test_web_export_leaves_other_folders_alone(tmp_path):
    ckpt, data = tiny_checkpoint(tmp_path)
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"not really")
    if _ort_web_missing():  # the destination is checked after onnxruntime-web's files
        pytest.skip(str(_ort_web_missing()))
    with pytest.raises(Exception, match="does not hold a web export"):
        run_export(compose_config(*data, f"checkpoint={ckpt}", "export.format=web", f"export.path={mine}",
                                  "export.overwrite=true"))  # fmt: skip
    with pytest.raises(Exception, match="already exists"):
        run_export(compose_config(*data, f"checkpoint={ckpt}", "export.format=web", f"export.path={mine}"))
    assert (mine / "holiday.jpg").read_bytes() == b"not really"


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


def test_serve_prints_the_url_and_sends_the_isolation_headers(tmp_path):
    app = tmp_path / "app"
    (app / ORT_FOLDER).mkdir(parents=True)
    (app / "index.html").write_text("<!doctype html><title>t</title>")
    (app / ORT_FOLDER / "x.mjs").write_text("export {}")
    (app / ORT_FOLDER / "x.wasm").write_bytes(b"\0asm\1\0\0\0")
    proc = subprocess.Popen(tool_command("serve", str(app), "--port", "0"), cwd=REPO, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        line = proc.stdout.readline()
        found = re.search(r"http://localhost:(\d+)/", line)
        assert found, line + proc.stderr.read() if proc.poll() is not None else line
        base = f"http://127.0.0.1:{found.group(1)}/"
        for path, kind in (("", "text/html"), ("ort/x.mjs", "text/javascript"), ("ort/x.wasm", "application/wasm")):
            with urllib.request.urlopen(base + path, timeout=10) as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith(kind), (path, response.headers["Content-Type"])
                for key, value in ISOLATION_HEADERS.items():
                    assert response.headers[key] == value
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    out = run_tool("serve", str(tmp_path / "absent"))
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith("error: "), out.stderr


# ---------------------------------------------------------------------------------------------
# The page in Chromium, on the official model (converted) and a real VOC image
# ---------------------------------------------------------------------------------------------


def fake_video(path: Path, image: np.ndarray, frames: int = 8, size: tuple[int, int] = (320, 240)) -> Path:
    """A small Y4M video (what Chromium's fake camera reads): `image` resized to `size`, panned a
    few pixels a frame."""
    width, height = size
    base = np.asarray(Image.fromarray(image).resize((width + 2 * frames, height), Image.BILINEAR), dtype=np.float32)
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode())
        for k in range(frames):
            rgb = base[:, 2 * k : 2 * k + width]
            r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
            y = 0.299 * r + 0.587 * g + 0.114 * b
            u = (b - y) * 0.564 + 128
            v = (r - y) * 0.713 + 128
            f.write(b"FRAME\n")
            f.write(np.clip(y, 0, 255).round().astype(np.uint8).tobytes())
            for plane in (u, v):
                half = plane.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))
                f.write(np.clip(half, 0, 255).round().astype(np.uint8).tobytes())
    return path


@pytest.fixture(scope="module")
def official_app(tmp_path_factory) -> Path:
    """The official quantized DeepLab (mnv2 dm0.5, VOC) converted, then exported with the export
    command as users run it: `tools/export.py checkpoint=... export.format=web` (int8 by default)."""
    if not (QUANT.is_file() and VOC_IMAGE.is_file()):
        pytest.skip(f"{OFFICIAL} is absent")
    if _ort_web_missing():
        pytest.skip(str(_ort_web_missing()))
    from seg.models.official import convert_source

    folder = tmp_path_factory.mktemp("official_web")
    checkpoint = folder / "coral.pt"
    save_checkpoint(checkpoint, convert_source(QUANT))
    dataset = ["dataset=voc", f"dataset.root={OFFICIAL}", "dataset.train_split=trainval", "dataset.val_split=trainval",
               "dataset.num_workers=0"]  # fmt: skip
    out = run_tool("export", f"checkpoint={checkpoint}", "export.format=web", *dataset,
                   f"hydra.run.dir={folder / 'run'}", timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    app = folder / "coral-web-int8"
    assert f"open it with: python tools/serve.py {app}" in out.stdout, out.stdout[-2000:]
    return app


@pytest.fixture(scope="module")
def pw():
    """Playwright for the module (its sync API allows one at a time)."""
    why = _browser_missing()
    if why:
        pytest.skip(why)
    from seg.bench.web import playwright

    with playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(pw, tmp_path_factory):
    """One headless Chromium for the module, its fake camera playing a small video (of the VOC
    image when it is there)."""
    from seg.bench.web import launch_chromium

    picture = read_image(VOC_IMAGE) if VOC_IMAGE.is_file() else np.full((240, 320, 3), 128, np.uint8)
    video = fake_video(tmp_path_factory.mktemp("camera") / "camera.y4m", picture)
    flags = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
             f"--use-file-for-fake-video-capture={video}")  # fmt: skip
    b = launch_chromium(pw, flags)
    yield b
    b.close()


@pytest.fixture(scope="module")
def page(official_app, browser):
    """The official app's page, loaded from the local server (cross-origin isolated)."""
    from seg.bench.web import open_app

    with serving(official_app) as url:
        page, info = open_app(browser, url)
        page.info = info
        yield page
        page.close()


def python_labels(app: Path, image: np.ndarray) -> np.ndarray:
    """ONNX Runtime in Python on the same model file: what tools/predict.py model=... computes."""
    return load_exported(app / "model.onnx", threads=1)(image)


@pytest.mark.slow
@needs_official
@needs_ort_web
def test_web_export_writes_a_self_contained_folder(official_app):
    names = {p.relative_to(official_app).as_posix() for p in official_app.rglob("*") if p.is_file()}
    assert {"index.html", "app.js", "style.css", "model.onnx", "model.onnx.json"} <= names
    assert {f"{ORT_FOLDER}/{name}" for name in ORT_FILES} <= names
    meta = json.loads((official_app / "model.onnx.json").read_text())
    assert meta == read_metadata(official_app / "model.onnx")  # the same inside the model
    assert meta["format"] == "web" and meta["quantize"] == "int8" and meta["float_modules"] == []
    assert meta["input"] == {"name": "image", "layout": "NHWC", "dtype": "uint8", "channels": "RGB",
                             "height": 513, "width": 513}  # fmt: skip
    assert meta["output"]["kind"] == "labels" and meta["class_names"][1] == "aeroplane"
    assert meta["runtime"]["onnxruntime-web"] == json.loads((REPO / "seg/web/package.json").read_text())[
        "dependencies"]["onnxruntime-web"]  # fmt: skip
    html = (official_app / "index.html").read_text() + (official_app / "app.js").read_text()
    assert not re.search(r"(src|href)=\"https?://", html) and "cdn" not in html.lower()  # nothing from the internet


@pytest.mark.slow
@needs_browser
@needs_official
@needs_ort_web
def test_page_mask_agrees_with_onnxruntime_in_python(page, official_app, tmp_path):
    from seg.bench.web import labels_of, segment_file

    assert page.info["backend"] == "wasm" and page.info["crossOriginIsolated"], page.info
    assert "WebAssembly (SIMD, " in page.locator("#backend").inner_text()
    result = segment_file(page, VOC_IMAGE)
    labels = labels_of(result)
    image = read_image(VOC_IMAGE)
    assert labels.shape == image.shape[:2]
    expected = python_labels(official_app, image)
    agreement = float((labels == expected).mean())
    print(f"page vs ONNX Runtime in Python: {100 * agreement:.3f}% of {labels.size} pixels agree")
    assert agreement >= AGREEMENT
    assert {0, 1} <= set(np.unique(labels).tolist())  # background and the aeroplane
    # What a person sees: the time, the legend of the classes present, a pixel's class on a click.
    assert re.match(r"[\d.]+ ms \(model [\d.]+ ms\)", page.locator("#time").inner_text())
    legend = page.locator("#legend").inner_text()
    assert "aeroplane" in legend and "background" in legend
    ys, xs = np.nonzero(labels == 1)
    y, x = int(np.median(ys)), int(np.median(xs))
    box = page.locator("#view").bounding_box()
    page.mouse.click(box["x"] + (x + 0.5) * box["width"] / labels.shape[1],
                     box["y"] + (y + 0.5) * box["height"] / labels.shape[0])  # fmt: skip
    assert page.locator("#picked").inner_text().endswith(": aeroplane")
    page.locator("#opacity").fill("80")
    assert page.locator("#opacity-value").inner_text() == "80%"
    shot = tmp_path / "web_page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


@pytest.mark.slow
@needs_browser
@needs_official
@needs_ort_web
def test_page_handles_images_of_any_size_as_predict_does(page, official_app, tmp_path):
    """Larger than the input (scaled down by area averaging), tall, and a PNG with transparency."""
    from seg.bench.web import labels_of, segment_file

    image = read_image(VOC_IMAGE)
    large = np.asarray(Image.fromarray(image).resize((1001, 733), Image.BICUBIC))
    tall = np.ascontiguousarray(np.concatenate([image, image[::-1]], axis=0)[:, 100:400])  # 732x300
    rgba = np.dstack([image, np.where(np.arange(image.shape[1]) < 60, 0, 255).astype(np.uint8)[None].repeat(366, 0)])
    cases = {"large.png": large, "tall.png": tall, "alpha.png": rgba}
    for name, pixels in cases.items():
        path = tmp_path / name
        Image.fromarray(pixels).save(path)
        labels = labels_of(segment_file(page, path))
        expected = python_labels(official_app, read_image(path))
        agreement = float((labels == expected).mean())
        print(f"{name} {pixels.shape[1]}x{pixels.shape[0]}: {100 * agreement:.3f}% agree")
        assert labels.shape == expected.shape and agreement >= AGREEMENT, (name, agreement)


@pytest.mark.slow
@needs_browser
@needs_official
@needs_ort_web
def test_a_file_that_is_not_an_image_shows_an_error(page, tmp_path):
    notes = tmp_path / "notes.jpg"
    notes.write_text("this is not a picture\n")
    errors = page.evaluate("window.seg.state.errors.length")
    page.set_input_files("#file", str(notes))
    page.wait_for_function(f"window.seg.state.errors.length > {errors}")
    box = page.locator("#error")
    assert box.is_visible()
    assert "notes.jpg" in box.inner_text() and "not an image" in box.inner_text()
    # The next image clears it.
    from seg.bench.web import segment_file

    segment_file(page, VOC_IMAGE)
    assert not box.is_visible()


@pytest.mark.slow
@needs_browser
@needs_official
@needs_ort_web
def test_webcam_frames_are_segmented_and_timed(page):
    frames, errors = page.evaluate("[window.seg.state.frames, window.seg.state.errors.length]")
    page.locator("#webcam").click()
    page.wait_for_function(f"window.seg.state.frames >= {frames + 3} || window.seg.state.errors.length > {errors}",
                           timeout=120_000)  # fmt: skip
    assert page.evaluate("window.seg.state.errors").__len__() == errors, page.evaluate("window.seg.state.errors")
    result = page.evaluate("window.seg.result()")
    assert result["source"] == "webcam" and (result["width"], result["height"]) == (320, 240)
    assert "frames/s" in page.locator("#time").inner_text()
    page.locator("#webcam").click()  # stop
    page.wait_for_function("window.seg.state.webcam === null")
    assert page.locator("#webcam").inner_text() == "Start webcam"


# ---------------------------------------------------------------------------------------------
# A logits model (the page's bilinear resize and argmax), fp32, exported in-process
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logits_app(tmp_path_factory) -> Path:
    """A tiny random model exported in-process: fp32, logits out, 65x65 input."""
    if _ort_web_missing():
        pytest.skip(str(_ort_web_missing()))
    tmp = tmp_path_factory.mktemp("logits_web")
    ckpt, data = tiny_checkpoint(tmp)
    options = ["export.format=web", "export.quantize=none", "export.output=logits", "export.input_size=65"]
    report = run_export(compose_config(*data, f"checkpoint={ckpt}", *options, f"export.path={tmp / 'app'}"))
    assert report["quantize"] is None and read_metadata(tmp / "app" / "model.onnx")["output"]["kind"] == "logits"
    return tmp / "app"


@pytest.fixture(scope="module")
def blocks(tmp_path_factory) -> Path:
    """A 200x150 image of coloured blocks: larger than the 65x65 input, so scaled down and back up."""
    rng = np.random.default_rng(0)
    image = np.asarray(Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((200, 150)))
    path = tmp_path_factory.mktemp("blocks") / "blocks.png"
    Image.fromarray(image).save(path)
    return path


@pytest.mark.slow
@needs_browser
@needs_ort_web
def test_page_with_a_logits_model_agrees_with_python(browser, logits_app, blocks):
    """The page's bilinear resize of the logits and argmax, against upsample_argmax in Python."""
    from seg.bench.web import labels_of, open_app, segment_file

    with serving(logits_app) as url:
        page, info = open_app(browser, url + "?threads=1")
        assert info["backend"] == "wasm" and info["threads"] == 1
        labels = labels_of(segment_file(page, blocks))
        page.close()
    expected = python_labels(logits_app, read_image(blocks))
    assert labels.shape == (150, 200)
    assert float((labels == expected).mean()) >= AGREEMENT
    assert len(np.unique(expected)) > 1  # the comparison means something


@pytest.mark.slow
@needs_browser
@needs_ort_web
def test_page_runs_on_webgpu_when_the_browser_has_it(pw, logits_app, blocks):
    """WebGPU on SwiftShader (Chromium's Vulkan on the CPU): the page picks it by itself."""
    from seg.bench.web import labels_of, launch_chromium, open_app, segment_file

    gpu_browser = launch_chromium(pw, software_webgpu=True)
    try:
        with serving(logits_app) as url:
            page = gpu_browser.new_page()
            page.goto(url + "?backend=wasm")
            if not page.evaluate("(async () => Boolean(navigator.gpu && await navigator.gpu.requestAdapter()))()"):
                pytest.skip("this Chromium offers no WebGPU adapter, even on SwiftShader")
            page.close()
            page, info = open_app(gpu_browser, url)
            assert info["backend"] == "webgpu" and page.locator("#backend").inner_text() == "WebGPU", info
            labels = labels_of(segment_file(page, blocks))
    finally:
        gpu_browser.close()
    expected = python_labels(logits_app, read_image(blocks))
    assert float((labels == expected).mean()) >= AGREEMENT


@pytest.mark.slow
@needs_browser
@needs_ort_web
def test_benchmark_web_times_the_page_and_python(tmp_path, capsys):
    from seg.bench import run_task

    cfg = compose_config("benchmark.task=web", "benchmark.runs=2", "benchmark.warmup=1", "export.input_size=65",
                         f"dataset.root={tmp_path / 'synthetic'}", "dataset.synthetic.num_train=4",
                         "dataset.synthetic.num_val=2", "dataset.synthetic.image_size=48",
                         f"benchmark.official.voc_root=[{tmp_path / 'none'}]")  # fmt: skip
    result = run_task(cfg)
    rows = result["results"]
    heads = ("LRASPPHead", "DeepLabV3PlusHead", "AsppLiteHead")
    assert [(r["model"].split(" + ")[1], r["precision"]) for r in rows] == [
        (head, precision) for head in heads for precision in ("fp32", "int8")
    ]
    for r in rows:
        assert r["page_model_ms"] > 0 and r["python_model_ms"] > 0 and r["page_frame_ms"] >= r["page_model_ms"] * 0.5
        assert r["page_backend"].startswith("WebAssembly (SIMD, 2 threads")
    assert len(result["targets"]) == len(heads) and "| page / Python |" in capsys.readouterr().out
