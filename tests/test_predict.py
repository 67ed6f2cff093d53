"""Predict: odd image kinds, folders with non-images, checkpoints and exported models, the CLI."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image
from test_export import checkpoint, config

from seg.export import run_export
from seg.predict import ImageReadError, PredictError, read_image, run_predict


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    path, model, _ = checkpoint(tmp, "mnv3_small", "lraspp")
    return tmp, path, model


def odd_images(folder):
    """One file of each kind predict must handle, and two that are not images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb[..., 0]).save(folder / "gray.png")
    rgba = np.dstack([rgb, np.full((40, 60), 255, np.uint8)])
    rgba[:, :30, 3] = 0  # left half fully transparent
    Image.fromarray(rgba).save(folder / "rgba.png")
    cv2.imwrite(str(folder / "gray16.png"), np.full((30, 50), 32896, np.uint16))  # 16-bit grayscale
    cv2.imwrite(str(folder / "rgb16.png"), rgb[..., ::-1].astype(np.uint16) * 257)  # 16-bit RGB (cv2: BGR)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(folder / "rotated.jpg", exif=exif.tobytes())
    yy, xx = np.mgrid[0:1600, 0:2400]
    large = np.dstack([xx * 255 // 2400, yy * 255 // 1600, np.full_like(xx, 128)]).astype(np.uint8)
    Image.fromarray(large).save(folder / "large.jpg", quality=80)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return folder


def test_read_image_handles_odd_kinds(tmp_path):
    folder = odd_images(tmp_path / "in")
    gray = read_image(folder / "gray.png")
    assert gray.shape == (40, 60, 3) and gray.dtype == np.uint8
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    rgba = read_image(folder / "rgba.png")
    assert rgba.shape == (40, 60, 3) and (rgba[:, :30] == 255).all()  # transparent over white
    gray16 = read_image(folder / "gray16.png")
    assert gray16.shape == (30, 50, 3) and (gray16 == 128).all()  # 32896 / 65535 * 255, not clipped
    rgb16 = read_image(folder / "rgb16.png")
    expected = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    assert np.array_equal(rgb16, expected)
    rotated = read_image(folder / "rotated.jpg")
    assert rotated.shape == (60, 40, 3)  # EXIF orientation applied: stored 60x40, shown 40x60
    for name in ("notes.txt", "broken.jpg"):
        with pytest.raises(ImageReadError, match=name):
            read_image(folder / name)


def test_predict_folder_with_checkpoint(ckpt, tmp_path):
    tmp, path, _ = ckpt
    folder = odd_images(tmp_path / "in")
    cfg = config(tmp, f"checkpoint={path}", f"predict.input={folder}", f"predict.output={tmp_path / 'out'}",
                 "predict.max_size=128")  # fmt: skip
    lines: list[str] = []
    counts = run_predict(cfg, log=lines.append)
    assert counts == {"images": 6, "skipped": 2}
    skipped = [line for line in lines if line.startswith("skipped")]
    assert len(skipped) == 2 and any("notes.txt" in s for s in skipped) and any("broken.jpg" in s for s in skipped)
    out = tmp_path / "out"
    sizes = {"gray": (60, 40), "rgba": (60, 40), "gray16": (50, 30), "rgb16": (60, 40), "rotated": (40, 60),
             "large": (2400, 1600)}  # fmt: skip
    for stem, size in sizes.items():
        mask = Image.open(out / f"{stem}.png")
        assert mask.mode == "P" and mask.size == size
        assert Image.open(out / f"{stem}_overlay.jpg").size == size


def test_fast_path_predicts_what_the_model_predicts(ckpt, tmp_path):
    tmp, path, model = ckpt
    image = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    cfg = config(tmp, f"checkpoint={path}", f"predict.input={tmp_path / 'a.png'}", f"predict.output={tmp_path / 'out'}")
    run_predict(cfg, log=lambda _: None)
    from seg.data.transforms import normalize

    with torch.no_grad():
        expected = model(normalize(torch.from_numpy(image).permute(2, 0, 1)[None], "imagenet")).argmax(1)[0]
    got = np.array(Image.open(tmp_path / "out" / "a.png"))
    assert (got == expected.numpy()).mean() >= 0.999


@pytest.mark.slow
def test_predict_with_an_exported_onnx_model(ckpt, tmp_path):
    tmp, path, _ = ckpt
    export_cfg = config(tmp, f"checkpoint={path}", "export.input_size=65", f"export.path={tmp_path / 'm.onnx'}")
    run_export(export_cfg)
    folder = odd_images(tmp_path / "in")
    (folder / "large.jpg").unlink()  # covered with the checkpoint; keeps this test short
    cfg = config(tmp, f"predict.model={tmp_path / 'm.onnx'}", f"predict.input={folder}",
                 f"predict.output={tmp_path / 'out'}")  # fmt: skip
    lines: list[str] = []
    assert run_predict(cfg, log=lines.append) == {"images": 5, "skipped": 2}
    assert Image.open(tmp_path / "out" / "rotated.png").size == (40, 60)


@pytest.mark.slow
def test_predict_cli(ckpt, tmp_path):
    tmp, path, _ = ckpt
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / "a.jpg")
    (folder / "b.txt").write_text("x")
    run = [sys.executable, str(REPO / "tools" / "predict.py"), f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run([*run, f"checkpoint={path}", f"input={folder}", f"output={tmp_path / 'out'}"],
                          capture_output=True, text=True, cwd=tmp)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "a.png").is_file() and (tmp_path / "out" / "a_overlay.jpg").is_file()
    assert sum("b.txt" in line for line in done.stdout.splitlines()) == 1


def test_predict_refuses_a_missing_input_or_two_models(ckpt, tmp_path):
    tmp, path, _ = ckpt
    cfg = config(tmp, f"checkpoint={path}", f"predict.input={tmp_path / 'nope'}", f"predict.output={tmp_path / 'o'}")
    with pytest.raises(PredictError, match="input not found"):
        run_predict(cfg, log=lambda _: None)
    cfg = config(tmp, f"checkpoint={path}", f"predict.model={tmp_path / 'm.onnx'}", f"predict.input={tmp_path}",
                 f"predict.output={tmp_path / 'o'}")  # fmt: skip
    with pytest.raises(PredictError, match="exactly one"):
        run_predict(cfg, log=lambda _: None)


def test_exif_orientation_and_the_direct_jpeg_path_read_what_pil_shows(tmp_path, monkeypatch):
    from PIL import ImageOps

    import seg.images as predict  # the one image reader predict uses

    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        for name, pixels in (("rgb", rgb), ("gray", rgb[..., 0])):
            path = tmp_path / f"{name}{orientation}.jpg"
            Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=90)
            with Image.open(path) as img:
                expected = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
            for direct in (False, True):  # through PIL, or decoded by OpenCV (a large JPEG)
                monkeypatch.setattr(predict, "_DIRECT_JPEG_PIXELS", 0 if direct else 1 << 40)
                got = read_image(path)
                assert got.flags.c_contiguous and np.array_equal(got, expected), (name, orientation, direct)
    # A truncated JPEG is refused on the direct path too (OpenCV alone would fill it with gray).
    whole = (tmp_path / "rgb1.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) * 2 // 3])
    monkeypatch.setattr(predict, "_DIRECT_JPEG_PIXELS", 0)
    with pytest.raises(ImageReadError, match="cut.jpg"):
        read_image(tmp_path / "cut.jpg")


def test_images_convert_the_same_in_strips(tmp_path, monkeypatch):
    import seg.images as predict  # the one image reader predict uses

    folder = odd_images(tmp_path / "in")
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (30, 40, 4), dtype=np.uint8)).convert("CMYK").save(folder / "cmyk.jpg")
    pal = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).convert("P")
    pal.info["transparency"] = 3
    pal.save(folder / "pal.png", transparency=3)
    Image.fromarray(rng.integers(0, 256, (30, 40, 2), dtype=np.uint8), "LA").save(folder / "la.png")
    names = ["gray.png", "rgba.png", "gray16.png", "rgb16.png", "rotated.jpg", "cmyk.jpg", "pal.png", "la.png"]
    whole = {name: read_image(folder / name) for name in names}
    monkeypatch.setattr(predict, "_STRIP_PIXELS", 50)  # one row (or one pixel) a strip
    for name in names:
        assert np.array_equal(read_image(folder / name), whole[name]), name


def test_upsample_through_the_model_size_in_strips():
    import torch.nn.functional as F

    import seg.export.runtime as runtime
    from seg.export.runtime import upsample_argmax

    torch.manual_seed(0)
    cases = [(5, 13, 17, (40, 52), 101, 77, 5 * 77 * 7), (21, 9, 11, (64, 88), 301, 413, 1 << 14),
             (3, 6, 7, (30, 35), 97, 1000, 500)]  # the last: one row over the budget, in pieces  # fmt: skip
    original = runtime._STRIP_ELEMENTS
    try:
        for c, h, w, mid, height, width, strip in cases:
            for align_corners in (False, True):
                low = torch.randn(c, h, w)
                at_mid = F.interpolate(low[None], size=mid, mode="bilinear", align_corners=align_corners)
                full = F.interpolate(at_mid, size=(height, width), mode="bilinear", align_corners=False)
                expected = full[0].argmax(0).numpy()
                runtime._STRIP_ELEMENTS = strip
                got = upsample_argmax(low, height, width, via=(*mid, align_corners))
                assert got.dtype == np.uint8 and (got == expected).mean() > 0.999
                assert (upsample_argmax(at_mid[0], height, width) == expected).mean() > 0.999
    finally:
        runtime._STRIP_ELEMENTS = original


def test_a_large_image_predicts_what_the_model_predicts_at_its_size(ckpt):
    import torch.nn.functional as F

    from seg.data.transforms import normalize
    from seg.export.runtime import TorchPredictor, resize_image
    from seg.fastpath import fast_model

    _, _, model = ckpt
    image = np.random.default_rng(4).integers(0, 256, (150, 230, 3), dtype=np.uint8)
    scaled = resize_image(image, 65, 100)  # max_size 100
    with torch.no_grad():
        logits = model(normalize(torch.from_numpy(scaled).permute(2, 0, 1)[None], "imagenet"))
    expected = F.interpolate(logits, size=(150, 230), mode="bilinear", align_corners=False)[0].argmax(0).numpy()
    for net in (model, fast_model(model)):
        got = TorchPredictor(net, max_size=100)(image)
        assert got.shape == (150, 230) and (got == expected).mean() >= 0.999


def test_overlay_and_palette_png_in_strips(tmp_path, monkeypatch):
    import seg.viz as viz

    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
    labels = rng.integers(0, 21, (23, 31)).astype(np.uint8)
    labels[3] = 255
    whole = viz.overlay(image, labels, 0.4)
    viz.save_palette_png(labels, tmp_path / "whole.png")
    monkeypatch.setattr(viz, "_STRIP_PIXELS", 40)  # one row a strip, one IDAT chunk each
    assert np.array_equal(viz.overlay(image, labels, 0.4), whole)
    in_place = image.copy()
    viz.overlay(in_place, labels, 0.4, out=in_place[..., ::-1])  # BGR, in the image's own memory
    assert np.array_equal(in_place[..., ::-1], whole)
    viz.save_palette_png(labels, tmp_path / "strips.png")
    for name in ("whole.png", "strips.png"):
        mask = Image.open(tmp_path / name)
        assert mask.mode == "P" and np.array_equal(np.asarray(mask), labels)
    kept = image.copy()
    viz.save_overlay_jpeg(image, labels, tmp_path / "o.jpg", 0.4, quality=90)
    assert np.array_equal(image, kept)  # the image is left as it was (without reuse_image)
    Image.fromarray(whole).save(tmp_path / "pil.jpg", quality=90)  # the JPEG predict used to write
    written, pil = (np.asarray(Image.open(tmp_path / name)).astype(int) for name in ("o.jpg", "pil.jpg"))
    assert np.abs(written - pil).mean() < 1
