"""Predict: odd image kinds, folders with non-images, checkpoints and exported models, the CLI."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from seg.export import run_export
from seg.predict import ImageReadError, PredictError, read_image, run_predict

from conftest import REPO
from test_export import checkpoint, config


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
