"""Predict never writes over what the user has: inputs, existing outputs, half-written files; model
files given in the wrong slot get one line; memory stays bounded for a large photo. The refusals run
`tools/predict.py` as the user would and check its one-line error and that no file changed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image
from test_export import checkpoint, config

import seg.predict as predict
from seg.export.runtime import sniff_model_file
from seg.predict import run_predict

PREDICT = str(REPO / "tools" / "predict.py")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """One tiny checkpoint (a random model, as training would save it) for the whole module."""
    tmp = tmp_path_factory.mktemp("predict_safety")
    path, _, _ = checkpoint(tmp, "mnv3_small", "lraspp")
    return tmp, path


def images(folder, *names, size=(20, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(names))
    for name in names:
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / name)
    return folder


def snapshot(*folders):
    """sha256 of every file (hidden ones too) under `folders`, by path."""
    found = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def predict_cli(tmp_path, *args):
    run_dir = tmp_path / "hydra_run"  # Hydra's own files, away from inputs and outputs
    return subprocess.run([sys.executable, PREDICT, f"hydra.run.dir={run_dir}", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)  # fmt: skip


def assert_one_line_error(done, *named):
    """Exit 1, `error: ...` as stderr's last line naming each of `named`, and no traceback."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error:"), done.stderr
    for text in named:
        assert str(text) in last, (text, last)
    return last


@pytest.mark.slow
def test_output_folder_is_the_input_folder(ckpt, tmp_path):
    _, path = ckpt
    folder = images(tmp_path / "in", "a.jpg", "b.png")
    before = snapshot(folder)
    last = assert_one_line_error(predict_cli(tmp_path, f"checkpoint={path}", f"input={folder}", f"output={folder}"),
                                 folder, "is the input folder")  # fmt: skip
    assert "output=" in last
    assert snapshot(folder) == before


@pytest.mark.slow
def test_output_folder_inside_the_input_folder(ckpt, tmp_path):
    _, path = ckpt
    folder = images(tmp_path / "in", "a.jpg")
    out = folder / "masks"
    before = snapshot(folder)
    done = predict_cli(tmp_path, f"checkpoint={path}", f"input={folder}", f"output={out}")
    assert_one_line_error(done, out, folder, "inside the input folder")
    assert not out.exists() and snapshot(folder) == before


@pytest.mark.slow
def test_output_folder_that_holds_the_input_folder(ckpt, tmp_path):
    _, path = ckpt
    out = tmp_path / "out"
    folder = images(out / "photos", "a.jpg", "b.jpg")
    (out / "notes.txt").write_text("the user's own file")
    before = snapshot(out)
    done = predict_cli(tmp_path, f"checkpoint={path}", f"input={folder}", f"output={out}")
    assert_one_line_error(done, folder / "a.jpg", out, "inside the output folder")
    assert snapshot(out) == before


def test_single_input_file_inside_the_output_folder(ckpt, tmp_path):
    _, path = ckpt
    out = images(tmp_path / "out", "a.jpg")
    before = snapshot(out)
    done = predict_cli(tmp_path, f"checkpoint={path}", f"input={out / 'a.jpg'}", f"output={out}")
    assert_one_line_error(done, out / "a.jpg", out)
    assert snapshot(out) == before


def test_existing_outputs_are_refused_before_any_write(ckpt, tmp_path):
    _, path = ckpt
    folder = images(tmp_path / "in", "a.jpg", "b.jpg", "c.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "b_overlay.jpg").write_bytes(b"an overlay the user keeps")
    (out / "c.png").write_bytes(b"a mask the user keeps")
    before = snapshot(folder, out)
    done = predict_cli(tmp_path, f"checkpoint={path}", f"input={folder}", f"output={out}")
    # a.png, a_overlay.jpg, b.png come first and do not exist: still nothing is written
    assert_one_line_error(done, out / "b_overlay.jpg", "2 of the 6", "predict.overwrite=true")
    assert snapshot(folder, out) == before


def test_overwrite_never_writes_through_a_link_to_an_input(ckpt, tmp_path):
    _, path = ckpt
    folder = images(tmp_path / "in" / "sub", "a.png").parent
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(folder / "sub")  # out/sub/a.png would be in/sub/a.png itself
    before = snapshot(folder)
    done = predict_cli(tmp_path, f"checkpoint={path}", f"input={folder}", f"output={out}", "predict.overwrite=true")
    assert_one_line_error(done, out / "sub" / "a.png", "input")
    assert snapshot(folder) == before


@pytest.mark.slow
def test_training_checkpoint_given_as_model(ckpt, tmp_path):
    _, path = ckpt
    folder = images(tmp_path / "in", "a.jpg")
    done = predict_cli(tmp_path, f"model={path}", f"input={folder}", f"output={tmp_path / 'out'}")
    assert_one_line_error(done, path, "training checkpoint", f"checkpoint={path}")
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit's deprecation notices
def test_exported_model_given_as_checkpoint(ckpt, tmp_path):
    _, path = ckpt
    traced = torch.jit.trace(torch.nn.Conv2d(3, 2, 1).eval(), torch.zeros(1, 3, 8, 8))
    model = tmp_path / "model.pt"
    torch.jit.save(traced, str(model))
    folder = images(tmp_path / "in", "a.jpg")
    done = predict_cli(tmp_path, f"checkpoint={model}", f"input={folder}", f"output={tmp_path / 'out'}")
    assert_one_line_error(done, model, "exported model (TorchScript)", f"model={model}")
    assert not (tmp_path / "out").exists()


def test_unwritable_output_folder(ckpt, tmp_path):
    _, path = ckpt
    folder = images(tmp_path / "in", "a.jpg")
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o500)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as root: chmod does not stop writes")
        done = predict_cli(tmp_path, f"checkpoint={path}", f"input={folder}", f"output={out}")
        assert_one_line_error(done, out, "permission denied")
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o700)


def test_a_refused_write_names_the_file_asked_for(ckpt, tmp_path, monkeypatch):
    """What an unwritable folder looks like when chmod cannot make one (root): the error names the
    output file, not the temporary one beside it, and nothing is left behind."""
    import errno

    from seg.cli import environment_error

    tmp, path = ckpt
    folder = images(tmp_path / "in", "a.jpg")
    out = tmp_path / "out"

    def refused(labels, file):
        raise PermissionError(errno.EACCES, "Permission denied", str(file))

    monkeypatch.setattr(predict, "save_palette_png", refused)
    cfg = config(tmp, f"checkpoint={path}", f"predict.input={folder}", f"predict.output={out}")
    with pytest.raises(PermissionError) as caught:
        run_predict(cfg, log=lambda _: None)
    assert caught.value.filename == str(out / "a.png")
    assert environment_error(caught.value).startswith(f"{out / 'a.png'}: permission denied")
    assert list(out.iterdir()) == []


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_model_files_are_told_apart_by_their_bytes(ckpt, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    _, path = ckpt
    assert sniff_model_file(path) == "checkpoint"
    legacy = tmp_path / "legacy.pth"
    torch.save({"model": {}, "config": ""}, legacy, _use_new_zipfile_serialization=False)
    assert sniff_model_file(legacy) == "checkpoint"
    traced = torch.jit.trace(torch.nn.Conv2d(3, 2, 1).eval(), torch.zeros(1, 3, 8, 8))
    torch.jit.save(traced, str(tmp_path / "m.pt"))
    assert sniff_model_file(tmp_path / "m.pt") == "torchscript"
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])  # fmt: skip
    onnx.save(helper.make_model(graph, producer_name="test"), str(tmp_path / "m.bin"))
    assert sniff_model_file(tmp_path / "m.bin") == "onnx"  # by its bytes, whatever its name
    (tmp_path / "m.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(24))
    assert sniff_model_file(tmp_path / "m.tflite") == "tflite"
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("folder/readme.txt", "not a model")
    assert sniff_model_file(tmp_path / "other.zip") is None
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a model")
    assert sniff_model_file(tmp_path / "photo.jpg") is None


def test_overwrite_replaces_outputs_and_only_outputs(ckpt, tmp_path):
    tmp, path = ckpt
    folder = images(tmp_path / "in", "a.jpg", "b.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"old mask")
    (out / "keep.txt").write_text("not predict's")
    inputs = snapshot(folder)
    args = [f"checkpoint={path}", f"predict.input={folder}", f"predict.output={out}"]
    with pytest.raises(predict.FileClashError, match="predict.overwrite=true"):
        run_predict(config(tmp, *args), log=lambda _: None)
    assert run_predict(config(tmp, *args, "predict.overwrite=true"), log=lambda _: None)["images"] == 2
    assert Image.open(out / "a.png").mode == "P" and (out / "keep.txt").read_text() == "not predict's"
    assert snapshot(folder) == inputs
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_overlay.jpg", "b.png", "b_overlay.jpg", "keep.txt"]


def test_an_interrupted_write_leaves_no_half_file(ckpt, tmp_path, monkeypatch):
    tmp, path = ckpt
    folder = images(tmp_path / "in", "a.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_overlay.jpg").write_bytes(b"the previous overlay")

    def killed_half_way(image, labels, file, *args, **kwargs):
        with open(file, "wb") as f:
            f.write(b"\xff\xd8 half a jpeg")
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "save_overlay_jpeg", killed_half_way)
    cfg = config(tmp, f"checkpoint={path}", f"predict.input={folder}", f"predict.output={out}",
                 "predict.overwrite=true")  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        run_predict(cfg, log=lambda _: None)
    assert (out / "a_overlay.jpg").read_bytes() == b"the previous overlay"  # untouched, not half new
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_overlay.jpg"]  # no temporary left


def peak_rss_of_predict(tmp_path, image, *args):
    """Peak RSS in bytes of `tools/predict.py` on `image`, measured by a wrapper process whose only
    child is predict (RUSAGE_CHILDREN of the test process would include every earlier child)."""
    wrapper = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)")  # fmt: skip
    out = tmp_path / f"out_{image.stem}"
    done = subprocess.run([sys.executable, "-c", wrapper, sys.executable, PREDICT, f"hydra.run.dir={tmp_path / 'run'}",
                           f"input={image}", f"output={out}", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (out / f"{image.stem}.png").is_file() and (out / f"{image.stem}_overlay.jpg").is_file()
    return int(done.stdout.strip().splitlines()[-1]) * (1 if sys.platform == "darwin" else 1024)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS as Linux reports it")
def test_memory_of_a_large_photo_is_bounded(ckpt, tmp_path):
    _, path = ckpt
    side = 5000
    ramp = (np.arange(side) * 255 // side).astype(np.uint8)
    photo = np.empty((side, side, 3), np.uint8)
    photo[..., 0], photo[..., 1] = ramp, ramp[:, None]
    photo[..., 2] = np.where((np.arange(side)[:, None] // 53 + np.arange(side) // 37) % 2 == 1, 200, 0)
    Image.fromarray(photo).save(tmp_path / "large.jpg", quality=80)
    del photo
    images(tmp_path, "small.jpg", size=(512, 512))
    # The model sees at most max_size a side: both runs feed it the same 512x512 input, so the small
    # run's peak is everything that does not grow with the image (interpreter, torch, the model).
    args = [f"checkpoint={path}", "predict.max_size=512"]
    base = peak_rss_of_predict(tmp_path, tmp_path / "small.jpg", *args)
    large = peak_rss_of_predict(tmp_path, tmp_path / "large.jpg", *args)
    # What a pixel may cost: the uint8 image (3 bytes) and its uint8 labels (1), plus PIL's decoded
    # image while reading (4: PIL keeps RGB in 4 bytes a pixel) = 8 bytes; strips, buffers and the
    # allocator stay below 4 more. 12 bytes a pixel is also one float32 copy of the image: the
    # overlay used to hold several at once (image, colours, blend; 12 bytes a pixel each), about
    # 35 bytes a pixel above the small run in all (5000x5000: 1707 MiB against a bound of ~1100).
    bound = base + 12 * side * side
    mib = 2**20
    assert large < bound, f"peak {large / mib:.0f} MiB, bound {bound / mib:.0f} MiB (small image: {base / mib:.0f} MiB)"
