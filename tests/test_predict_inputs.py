"""Predict as users run it: glob patterns, videos, a webcam (faked), batches, tiles at full
resolution, bad files in a folder, execution providers and the new config keys."""

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
from torch import nn

import seg.predict as predict
from seg.config import ConfigError, check_config
from seg.export import ExportError
from seg.export.runtime import TorchPredictor, sliding_window_labels, tile_starts
from seg.predict import PredictError, build_predictor, run_predict

REAL_CAPTURE = cv2.VideoCapture  # the tests that fake a webcam replace cv2.VideoCapture


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict_inputs")
    path, model, _ = checkpoint(tmp, "mnv3_small", "lraspp")
    return tmp, path, model


def run(tmp, *overrides, lines=None):
    """run_predict on config(tmp, overrides), its lines in `lines`; no progress bar, and the model
    eager (the fast path freezes its graph, seconds on a busy CPU; test_batches_give_the_same_masks
    runs it too)."""
    lines = [] if lines is None else lines
    return run_predict(config(tmp, "predict.progress=false", "predict.fast=false", *overrides), log=lines.append)


def images(folder, *names, size=(40, 60), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / name)
    return folder


def mask(path):
    img = Image.open(path)
    assert img.mode == "P"
    return np.asarray(img)


def make_video(path, frames=8, size=(64, 48), fps=10.0):
    """A short mp4v video of moving colour bars, written with cv2.VideoWriter."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    xx = np.arange(size[0])[None, :].repeat(size[1], 0)
    for i in range(frames):
        frame = np.dstack([(xx * 4 + i * 16) % 256, (xx * 2 + i * 8) % 256, np.full_like(xx, 40 * i % 256)])
        writer.write(frame.astype(np.uint8))
    writer.release()
    return path


def video_info(path):
    capture = REAL_CAPTURE(str(path))
    assert capture.isOpened(), path
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    info = (len(frames), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            capture.get(cv2.CAP_PROP_FPS))  # fmt: skip
    capture.release()
    return info, frames


def test_glob_pattern(ckpt, tmp_path):
    tmp, path, _ = ckpt
    root = images(tmp_path / "photos", "a.jpg", "sub/b.jpg", "sub/deep/c.jpg", "d.png", ".hidden/e.jpg")
    out = root / "masks"  # inside the pattern's folder: allowed, no input lies in it
    counts = run(tmp, f"checkpoint={path}", f"predict.input={root}/**/*.jpg", f"predict.output={out}")
    assert counts == {"images": 3, "skipped": 0}
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["a.png", "a_overlay.jpg", "sub/b.png", "sub/b_overlay.jpg", "sub/deep/c.png",
                       "sub/deep/c_overlay.jpg"]  # fmt: skip
    # A second run would read its own overlays (masks/**/*.jpg): refused before anything is written.
    with pytest.raises(predict.FileClashError, match="inside the output folder"):
        run(tmp, f"checkpoint={path}", f"predict.input={root}/**/*.jpg", f"predict.output={out}")
    with pytest.raises(PredictError, match="no file matches"):
        run(tmp, f"checkpoint={path}", f"predict.input={root}/**/*.gif", f"predict.output={tmp_path / 'o'}")


def test_video_file(ckpt, tmp_path):
    tmp, path, _ = ckpt
    (tmp_path / "in").mkdir()
    video = make_video(tmp_path / "in" / "clip.mp4")
    out = tmp_path / "out"
    lines = []
    counts = run(tmp, f"checkpoint={path}", f"predict.input={video}", f"predict.output={out}",
                 "predict.save_frames=true", lines=lines)  # fmt: skip
    assert counts == {"images": 8, "skipped": 0, "videos": 1, "frames": 8}
    (count, width, height, fps), frames = video_info(out / "clip_overlay.mp4")
    assert (count, width, height) == (8, 64, 48) and fps == pytest.approx(10.0)
    masks = sorted((out / "clip").iterdir())
    assert [p.name for p in masks] == [f"frame_{i:06d}.png" for i in range(8)]
    # Each frame's mask is the model's prediction on that frame as the video decodes it.
    predictor, _ = build_predictor(config(tmp, f"checkpoint={path}", "predict.fast=false"))
    _, source = video_info(video)
    for frame, file in zip(source, masks):
        assert np.array_equal(mask(file), predictor(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
    assert "frames/s" in lines[-1] and "8 frame(s) of 1 video(s)" in lines[-1]
    # Everything exists now: a second run is refused before it writes, and max_frames stops early.
    with pytest.raises(predict.FileClashError, match="clip_overlay.mp4 already exists"):
        run(tmp, f"checkpoint={path}", f"predict.input={video}", f"predict.output={out}")
    counts = run(tmp, f"checkpoint={path}", f"predict.input={video}", f"predict.output={tmp_path / 'three'}",
                 "predict.max_frames=3")  # fmt: skip
    assert counts["frames"] == 3 and video_info(tmp_path / "three" / "clip_overlay.mp4")[0][0] == 3
    assert not (tmp_path / "three" / "clip").exists()  # no frame masks without save_frames


def test_videos_are_told_by_their_content(ckpt, tmp_path):
    tmp, path, _ = ckpt
    folder = images(tmp_path / "in", "a.jpg")
    make_video(tmp_path / "clip.mp4", frames=3)
    (folder / "renamed.dat").write_bytes((tmp_path / "clip.mp4").read_bytes())  # a video, whatever its name
    (folder / "fake.mp4").write_text("not a video")  # a video's name, not its content
    (folder / "cut.avi").write_bytes(b"RIFF\x00\x00\x00\x00AVI LIST")  # a video's first bytes, nothing more
    (folder / "notes.txt").write_text("text that FFmpeg would read as a video\n" * 200)
    lines = []
    counts = run(tmp, f"checkpoint={path}", f"predict.input={folder}", f"predict.output={tmp_path / 'out'}",
                 lines=lines)  # fmt: skip
    assert counts == {"images": 4, "skipped": 3, "videos": 1, "frames": 3}
    assert video_info(tmp_path / "out" / "renamed_overlay.mp4")[0][0] == 3
    skipped = [line for line in lines if line.startswith("skipped")]
    assert len(skipped) == 3
    for name in ("fake.mp4", "cut.avi", "notes.txt"):
        assert sum(name in line for line in skipped) == 1, (name, skipped)
    assert any("fake.mp4: not a video" in line for line in skipped)


class FakeCamera:
    """cv2.VideoCapture for a webcam index: 48x64 BGR frames until `frames` (then the stream ends),
    raising KeyboardInterrupt at read number `interrupt_at` (Ctrl-C)."""

    frames, interrupt_at, reads = 1000, None, 0

    def __init__(self, source, *args):
        assert isinstance(source, int), source
        type(self).reads = 0

    def isOpened(self):  # noqa: N802  (OpenCV's name)
        return True

    def read(self):
        type(self).reads += 1
        n = type(self).reads
        if self.interrupt_at is not None and n >= self.interrupt_at:
            raise KeyboardInterrupt
        if n > self.frames:
            return False, None
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:, : (n * 8) % 64] = (200, 30, 90)
        return True, frame

    def get(self, prop):
        return 15.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self):
        pass


@pytest.fixture
def webcam(monkeypatch):
    """A fake webcam 0 and no display."""
    monkeypatch.setattr(cv2, "VideoCapture", FakeCamera)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(FakeCamera, "frames", 1000)
    monkeypatch.setattr(FakeCamera, "interrupt_at", None)
    return FakeCamera


def test_webcam_without_a_display_writes_frames(ckpt, tmp_path, webcam):
    tmp, path, _ = ckpt
    out = tmp_path / "out"
    lines = []
    counts = run(tmp, f"checkpoint={path}", "predict.input=0", f"predict.output={out}", "predict.max_frames=5",
                 "predict.save_frames=true", "predict.batch_size=2", lines=lines)  # fmt: skip
    assert counts == {"images": 5, "skipped": 0, "frames": 5}
    assert webcam.reads == 5  # max_frames honoured: no frame read beyond it
    (count, width, height, fps), _ = video_info(out / "webcam0_overlay.mp4")
    assert (count, width, height) == (5, 64, 48) and fps == pytest.approx(15.0)
    assert sorted(p.name for p in (out / "webcam0").iterdir()) == [f"frame_{i:06d}.png" for i in range(5)]
    assert any("no display" in line for line in lines) and "frames/s" in lines[-1]


def test_webcam_stopped_by_ctrl_c_keeps_what_was_recorded(ckpt, tmp_path, webcam):
    tmp, path, _ = ckpt
    webcam.interrupt_at = 5  # Ctrl-C while reading the fifth frame; no max_frames
    out = tmp_path / "out"
    lines = []
    counts = run(tmp, f"checkpoint={path}", "predict.input=0", f"predict.output={out}", lines=lines)
    assert counts == {"images": 4, "skipped": 0, "frames": 4}
    assert video_info(out / "webcam0_overlay.mp4")[0][0] == 4
    assert any("Ctrl-C" in line for line in lines)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left


def test_webcam_with_a_display_shows_a_window_until_q(ckpt, tmp_path, webcam, monkeypatch):
    tmp, path, _ = ckpt
    shown, keys = [], iter([-1, -1, ord("q")])
    monkeypatch.setattr(cv2, "namedWindow", lambda *a: None)
    monkeypatch.setattr(cv2, "imshow", lambda name, frame: shown.append(frame.shape))
    monkeypatch.setattr(cv2, "waitKey", lambda delay: next(keys))
    monkeypatch.setattr(cv2, "getWindowProperty", lambda *a: 1.0)
    monkeypatch.setattr(cv2, "destroyAllWindows", lambda: None)
    counts = run(tmp, f"checkpoint={path}", "predict.input=0", "predict.display=true")  # no output needed
    assert counts["frames"] == 3 and shown == [(48, 64, 3)] * 3
    assert not predict.has_display()  # this machine: opencv-python-headless, DISPLAY unset


@pytest.mark.parametrize("fast", [False, pytest.param(True, marks=pytest.mark.slow)])  # slow: freezing the graph
def test_batches_give_the_same_masks(ckpt, tmp_path, fast):
    tmp, path, _ = ckpt
    folder = images(tmp_path / "in", "a.png", "b.png", "c.png", seed=1)
    images(folder, "d.png", size=(30, 50), seed=2)
    images(folder, "e.png", size=(100, 150), seed=3)  # over max_size: scaled, logits resized in strips
    images(folder, "f.png", size=(102, 153), seed=4)  # the same model input size as e.png
    images(folder, "g.png", size=(70, 20), seed=5)
    make_video(folder / "clip.mp4", frames=7)
    masks = {}
    for batch in (1, 3):
        out = tmp_path / f"out{batch}"
        counts = run(tmp, f"checkpoint={path}", f"predict.input={folder}", f"predict.output={out}",
                     "predict.max_size=64", f"predict.batch_size={batch}", "predict.save_frames=true",
                     f"predict.fast={str(fast).lower()}")  # fmt: skip
        assert counts == {"images": 14, "skipped": 0, "videos": 1, "frames": 7}
        masks[batch] = {p.relative_to(out): mask(p) for p in sorted(out.rglob("*.png"))}
    assert masks[1].keys() == masks[3].keys() and len(masks[1]) == 14
    for name, labels in masks[1].items():
        assert np.array_equal(labels, masks[3][name]), name


class LocalModel(nn.Module):
    """A segmenter with no global pooling (5x5 convs): what a pixel gets depends on its 9x9
    neighbourhood only. Classes follow the colours (the last conv's weights are centred)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 16, 5, padding=2), nn.ReLU(), nn.Conv2d(16, 16, 5, padding=2),
                                 nn.ReLU(), nn.Conv2d(16, 5, 1))  # fmt: skip
        with torch.no_grad():
            last = self.net[-1]
            last.weight -= last.weight.mean(0, keepdim=True)
            last.bias.zero_()

    def normalize(self, x):
        return x.float() / 127.5 - 1

    def forward(self, x):
        return self.net(x)


def blocks(height, width, seed=0):
    """Blocks of colour with noise: regions of several classes for LocalModel."""
    rng = np.random.default_rng(seed)
    coarse = np.kron(rng.integers(0, 256, (height // 20 + 1, width // 20 + 1, 3)), np.ones((20, 20, 1)))
    noisy = coarse[:height, :width] + rng.integers(-25, 25, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def test_sliding_window_blends_tiles_exactly():
    """With per-pixel probabilities, the tiled labels are the per-pixel labels, for odd sizes,
    overlaps and batches; tiles never exceed the tile size and cover every pixel."""
    rng = np.random.default_rng(0)
    seen = []

    def per_pixel(tiles):
        seen.append(tiles[0].shape[:2])
        assert len({t.shape for t in tiles}) == 1
        x = torch.from_numpy(np.stack(tiles)).long()
        return torch.nn.functional.one_hot(x[..., 0] % 7, 7).permute(0, 3, 1, 2).float() + 0.1

    for shape in [(300, 410), (37, 513), (700, 50), (64, 64), (65, 130)]:
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        for tile, overlap, batch in ((64, 0.25, 1), (33, 0.5, 4), (50, 0.0, 2), (64, 0.9, 3)):
            seen.clear()
            got = sliding_window_labels(image, per_pixel, tile, overlap, batch)
            assert got.dtype == np.uint8 and np.array_equal(got, image[..., 0] % 7), (shape, tile, overlap)
            assert all(h <= tile and w <= tile for h, w in seen)
    assert tile_starts(100, 40, 0.25) == [0, 30, 60] and tile_starts(30, 40, 0.5) == [0]


def test_tiles_agree_with_the_full_resolution_prediction():
    """A model without global pooling: tiled at full resolution it predicts what it predicts on
    the whole image, except near tile borders where the Gaussian blending does not reach (measured
    99.93-100% of pixels at overlap 0.25-0.5; 98.0% with no overlap, where every tile border
    shows)."""
    torch.set_num_threads(1)
    model = LocalModel().eval()
    image = blocks(300, 400)
    full = TorchPredictor(model, max_size=4096)(image)
    assert np.bincount(full.ravel(), minlength=5).max() < 0.8 * full.size  # several classes
    calls = []
    forward = model.forward
    model.forward = lambda x: calls.append(tuple(x.shape)) or forward(x)
    for tile, overlap in ((64, 0.5), (100, 0.25), (129, 0.0)):
        calls.clear()
        tiled = TorchPredictor(model, tile_size=tile, tile_overlap=overlap, batch_size=3)(image)
        assert (tiled == full).mean() >= (0.97 if overlap == 0 else 0.999), (tile, overlap)
        assert all(n <= 3 and h <= tile and w <= tile for n, _, h, w in calls)  # never the whole image


def test_tiles_with_the_checkpoint(ckpt, tmp_path):
    """The checkpoint's LR-ASPP has global pooling (its gate; MobileNetV3's squeeze-excitation
    too): a tile sees less context than the whole image, so tiled and untiled masks may differ
    (a briefly trained LR-ASPP agreed on 84-90% of pixels); this random one predicts one class."""
    tmp, path, _ = ckpt
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(blocks(150, 230, seed=1)).save(folder / "big.png")
    Image.fromarray(blocks(40, 60, seed=2)).save(folder / "small.png")  # fits in a tile: one forward
    outs = {}
    for name, extra in (("full", ["predict.max_size=4096"]), ("tiled", ["predict.tile=true", "predict.tile_size=64"])):
        outs[name] = tmp_path / name
        counts = run(tmp, f"checkpoint={path}", f"predict.input={folder}", f"predict.output={outs[name]}", *extra)
        assert counts == {"images": 2, "skipped": 0}
    for stem, size in (("big", (150, 230)), ("small", (40, 60))):
        full, tiled = mask(outs["full"] / f"{stem}.png"), mask(outs["tiled"] / f"{stem}.png")
        assert tiled.shape == full.shape == size
        assert (tiled == full).mean() >= 0.95, stem
    assert np.array_equal(mask(outs["full"] / "small.png"), mask(outs["tiled"] / "small.png"))


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS as Linux reports it")
def test_tiles_hold_one_band_of_probabilities():
    """A 4000x3000 image in 513 tiles, 21 classes: full-size probabilities would be 1 GB; the
    sliding window holds one band (21 x 513 x 4000 floats, 172 MB) and a tile."""
    script = """
import resource, numpy as np, torch
from seg.export.runtime import sliding_window_labels
image = np.zeros((3000, 4000, 3), np.uint8)
image[..., 0] = (np.arange(4000) // 100 % 21)[None, :]
def probs(tiles):
    x = torch.from_numpy(np.stack(tiles)[..., 0]).long()
    return torch.nn.functional.one_hot(x, 21).permute(0, 3, 1, 2).float()
probs([image[:513, :513]])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
labels = sliding_window_labels(image, probs, 513, 0.25)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert np.array_equal(labels, image[..., 0])
print((after - before) * 1024)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": ""})  # fmt: skip
    assert done.returncode == 0, done.stderr
    grown = int(done.stdout.split()[-1])
    full = 21 * 3000 * 4000 * 4
    assert grown < 0.3 * full, f"peak grew {grown / 2**20:.0f} MiB; full-size probabilities: {full / 2**20:.0f} MiB"


def test_a_bad_file_in_a_folder_is_skipped(ckpt, tmp_path):
    tmp, path, _ = ckpt
    folder = images(tmp_path / "in", "a.jpg", "sub/b.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    lines = []
    counts = run(tmp, f"checkpoint={path}", f"predict.input={folder}", f"predict.output={out}", lines=lines)
    assert counts == {"images": 2, "skipped": 3}
    skipped = [line for line in lines if line.startswith("skipped")]
    for name in ("broken.jpg", "empty.png", "notes.txt"):
        assert sum(name in line for line in skipped) == 1, (name, skipped)
    assert (out / "a.png").is_file() and (out / "sub" / "b_overlay.jpg").is_file()
    assert lines[-1].startswith(f"2 image(s) written to {out}") and "images/s" in lines[-1]
    assert lines[-1].endswith("3 skipped")


def test_providers_are_checked_in_one_line(ckpt, tmp_path):
    tmp, path, _ = ckpt
    folder = images(tmp_path / "in", "a.jpg")
    args = [f"predict.input={folder}", f"predict.output={tmp_path / 'out'}"]
    missing = r"NoSuchExecutionProvider not available in onnxruntime .*CPUExecutionProvider"
    with pytest.raises(ExportError, match=missing):
        run(tmp, f"predict.model={tmp_path / 'm.onnx'}", "predict.providers=[NoSuchExecutionProvider]", *args)
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ExportError, match="onnxruntime-gpu"):
            run(tmp, f"predict.model={tmp_path / 'm.onnx'}", "predict.providers=[CUDAExecutionProvider]", *args)
    with pytest.raises(PredictError, match="apply to an .onnx model"):
        run(tmp, f"checkpoint={path}", "predict.providers=[CPUExecutionProvider]", *args)
    assert not (tmp_path / "out").exists()


def test_device_cuda_without_a_gpu_is_one_line(ckpt, tmp_path):
    tmp, path, _ = ckpt
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    folder = images(tmp_path / "in", "a.jpg")
    with pytest.raises(PredictError, match="predict.device=cuda: no CUDA device"):
        run(tmp, f"checkpoint={path}", f"predict.input={folder}", f"predict.output={tmp_path / 'o'}",
            "predict.device=cuda")  # fmt: skip


def test_predict_keys_are_validated(tmp_path):
    bad = ["predict.batch_size=0", "predict.tile_overlap=1.0", "predict.tile_size=16", "predict.device=gpu",
           "predict.max_frames=0", "predict.providers=[]"]  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        check_config(config(tmp_path, *bad))
    for key in ("predict.batch_size=0", "predict.tile_overlap=1.0", "predict.tile_size=16", "predict.device=gpu",
                "predict.max_frames=0", "predict.providers=[]"):  # fmt: skip
        assert key in str(caught.value), key
    check_config(config(tmp_path, "predict.tile_overlap=0", "predict.device=cuda:1", "predict.batch_size=8"))


def rng_weights(count):
    return np.random.default_rng(7).standard_normal(count).astype(np.float32).tolist()


@pytest.mark.slow
def test_an_exported_onnx_model_tiles_at_its_input_size_and_batches_when_it_can(ckpt, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from seg.export import run_export
    from seg.export.runtime import load_exported

    tmp, path, _ = ckpt
    model = tmp_path / "m.onnx"
    run_export(config(tmp, f"checkpoint={path}", "export.input_size=65", f"export.path={model}"))
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(blocks(100, 150, seed=3)).save(folder / "big.png")
    out = tmp_path / "out"
    lines = []
    counts = run(tmp, f"predict.model={model}", f"predict.input={folder}", f"predict.output={out}",
                 "predict.tile=true", "predict.providers=[CPUExecutionProvider]", lines=lines)  # fmt: skip
    assert counts == {"images": 1, "skipped": 0}
    assert "65x65 tiles" in lines[0] and "CPUExecutionProvider" in lines[0]
    # The same tiles through the checkpoint: the same masks, up to the export's float rounding.
    run(tmp, f"checkpoint={path}", f"predict.input={folder}", f"predict.output={tmp_path / 'ckpt'}",
        "predict.tile=true", "predict.tile_size=65")  # fmt: skip
    assert (mask(out / "big.png") == mask(tmp_path / "ckpt" / "big.png")).mean() >= 0.99
    # A model whose batch dimension is dynamic (a 1x1 conv, with the export's metadata): several
    # images a run, the same masks as one at a time. Our exports have batch 1.
    weight = helper.make_tensor("w", TensorProto.FLOAT, [21, 3, 1, 1], rng_weights(21 * 3))
    graph = helper.make_graph([helper.make_node("Conv", ["image", "w"], ["logits"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 65, 65])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 21, 65, 65])],
                              [weight])  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "batch.onnx"))
    (tmp_path / "batch.onnx.json").write_bytes((tmp_path / "m.onnx.json").read_bytes())
    predictor = load_exported(tmp_path / "batch.onnx")
    assert predictor.batchable and not load_exported(model).batchable
    rng = np.random.default_rng(6)
    batch = [rng.integers(0, 256, (40 + 7 * i, 60, 3), dtype=np.uint8) for i in range(3)]
    for one, together in zip([predictor(image) for image in batch], predictor.predict_batch(batch)):
        assert np.array_equal(one, together)


@pytest.mark.slow
def test_new_inputs_from_the_command_line(ckpt, tmp_path):
    """The tool as users run it: a glob and a video in one folder's worth of runs, exit 0; an
    unavailable provider is one error line."""
    tmp, path, _ = ckpt
    folder = images(tmp_path / "in", "a.jpg", "b.jpg")
    make_video(folder / "clip.mp4", frames=4)
    cli = [sys.executable, str(REPO / "tools" / "predict.py"), f"hydra.run.dir={tmp_path / 'run'}"]
    args = [f"checkpoint={path}", f"input={folder}/*.mp4", f"output={tmp_path / 'out'}", "predict.save_frames=true"]
    done = subprocess.run([*cli, *args], capture_output=True, text=True, cwd=tmp, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "clip_overlay.mp4").is_file() and len(list((tmp_path / "out" / "clip").iterdir())) == 4
    assert "frames/s" in done.stdout.splitlines()[-1]
    done = subprocess.run([*cli, f"model={tmp_path / 'm.onnx'}", f"input={folder}", f"output={tmp_path / 'o'}",
                           "predict.providers=[NoSuchExecutionProvider]"], capture_output=True, text=True, cwd=tmp,
                          timeout=300)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: predict.providers=") and "NoSuchExecutionProvider" in last
