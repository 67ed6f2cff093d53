"""Nothing a user already has is overwritten or lost: run directories, checkpoints, exports."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import ENV, REPO, assert_one_line_error, mounted_tmpfs, run_tool, snapshot, tool_command
from conftest import compose_config, tiny_train_args
from omegaconf import OmegaConf

from seg.engine.checkpoint import save_checkpoint
from seg.files import FileClashError, RunLock, refuse_overwrite, same_or_inside
from seg.models.segmenter import build_segmenter


@pytest.fixture(scope="module")
def checkpoint(synth_root, tmp_path_factory) -> Path:
    cfg = compose_config(*tiny_train_args(synth_root))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(
        path, {"model": build_segmenter(cfg.model).state_dict(), "config": OmegaConf.to_yaml(cfg, resolve=True)}
    )
    return path


# ---------------------------------------------------------------------------------------------
# Run directories
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_training_into_a_run_directory_in_use_is_refused_naming_the_first(synth_root, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(
        tool_command(
            "train",
            *tiny_train_args(synth_root, "train.max_iters=100000", "train.checkpoint_every=0"),
            f"hydra.run.dir={run}",
        ),
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run / ".hydra" / "config.yaml").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended early"
        config_before = (run / ".hydra" / "config.yaml").read_text()
        out = run_tool("train", *tiny_train_args(synth_root, "train.max_iters=3"), f"hydra.run.dir={run}")
        assert_one_line_error(
            out, f"run directory {run} is in use by process {first.pid}", "tools/train.py", "hydra.run.dir"
        )
        assert (run / ".hydra" / "config.yaml").read_text() == config_before  # the first run's config kept
    finally:
        first.kill()
        first.wait()
    # A killed holder leaves no stale lock: the directory can be resumed at once.
    RunLock(run).acquire().release()


@pytest.mark.slow
def test_a_fresh_run_never_replaces_a_finished_one(synth_root, tmp_path):
    run = tmp_path / "run"
    out = run_tool("train", *tiny_train_args(synth_root, "train.max_iters=2"), f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr[-3000:]
    before = snapshot(run / "checkpoints", run / "metrics.json", run / ".hydra")
    out = run_tool("train", *tiny_train_args(synth_root, "train.max_iters=2", "train.lr=0.5"), f"hydra.run.dir={run}")
    assert_one_line_error(out, f"run directory {run} already holds a run", "train.resume=auto", "hydra.run.dir")
    assert snapshot(run / "checkpoints", run / "metrics.json", run / ".hydra") == before


@pytest.mark.slow
def test_leftover_temporaries_of_a_killed_write_are_removed_at_the_next_start(synth_root, tmp_path):
    run = tmp_path / "run"
    out = run_tool("train", *tiny_train_args(synth_root, "train.max_iters=2"), f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr[-3000:]
    # What a process killed inside save_checkpoint leaves: a partial temporary beside last.pt.
    leftover = run / "checkpoints" / ".last.pt.k1ll3d.tmp"
    leftover.write_bytes((run / "checkpoints" / "last.pt").read_bytes()[:1000])
    out = run_tool(
        "train", *tiny_train_args(synth_root, "train.max_iters=4", "train.resume=auto"), f"hydra.run.dir={run}"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert not leftover.exists()
    assert f"removed {leftover}" in (run / "train.log").read_text()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


def test_an_unwritable_run_directory_is_one_line(synth_root, tmp_path):
    # A file where the run directory's parent should be: no permission tricks needed (tests run as root).
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    out = run_tool("train", *tiny_train_args(synth_root, "train.max_iters=1"), f"hydra.run.dir={blocker / 'run'}")
    assert_one_line_error(out, str(blocker))
    assert blocker.read_text() == "a file, not a folder"


def test_run_lock_names_its_holder(tmp_path):
    lock = RunLock(tmp_path).acquire()
    try:
        assert "process" in lock.holder() and str(lock.path.parent) == str(tmp_path)
    finally:
        lock.release()
    RunLock(tmp_path).acquire().release()  # free again once released


def test_same_or_inside_and_refuse_overwrite(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert same_or_inside(tmp_path / "a" / "b", tmp_path / "a") and same_or_inside(tmp_path / "a", tmp_path / "a")
    assert not same_or_inside(tmp_path / "a", tmp_path / "a" / "b")
    existing = tmp_path / "a" / "x.onnx"
    existing.write_text("mine")
    with pytest.raises(FileClashError, match=r"x.onnx already exists.*export.overwrite=true"):
        refuse_overwrite(existing, "export.path", overwrite=False)
    refuse_overwrite(existing, "export.path", overwrite=True)
    refuse_overwrite(tmp_path / "new.onnx", "export.path", overwrite=False)


# ---------------------------------------------------------------------------------------------
# Export and convert
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_export_never_writes_over_its_checkpoint(checkpoint, tmp_path):
    before = snapshot(checkpoint)
    for extra in ([], ["export.overwrite=true"]):
        out = run_tool(
            "export",
            f"checkpoint={checkpoint}",
            f"export.path={checkpoint}",
            *extra,
            f"hydra.run.dir={tmp_path / 'run'}",
        )
        assert_one_line_error(out, f"export.path={checkpoint}", "would write over the checkpoint")
        assert snapshot(checkpoint) == before


@pytest.mark.slow
def test_export_keeps_an_existing_file_unless_told(checkpoint, tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the user's own file")
    args = [
        f"checkpoint={checkpoint}",
        f"export.path={target}",
        "export.input_size=64",
        "export.check_images=1",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    out = run_tool("export", *args)
    assert_one_line_error(out, str(target), "already exists", "export.overwrite=true")
    assert target.read_bytes() == b"the user's own file"
    out = run_tool("export", *args, "export.overwrite=true")
    assert out.returncode == 0, out.stderr[-3000:]
    assert target.read_bytes()[:4] != b"the " and (tmp_path / "model.onnx.json").is_file()
    assert not list(tmp_path.glob(".*.tmp*"))


def test_a_failed_export_leaves_the_destination_untouched(checkpoint, synth_root, tmp_path, monkeypatch):
    import seg.export.pipeline as pipeline
    from seg.export import ExportError, run_export

    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous export")
    # The check against PyTorch fails after the file was built: nothing may reach export.path.
    monkeypatch.setattr(pipeline, "compare", lambda *a, **k: {"images": 1, "agreement": 0.5, "max_abs_diff": 1.0})
    cfg = compose_config(
        *tiny_train_args(synth_root),
        f"checkpoint={checkpoint}",
        f"export.path={target}",
        "export.input_size=64",
        "export.check_images=1",
        "export.overwrite=true",
    )
    with pytest.raises(ExportError, match=f"argmax agreement 50.000% .*nothing was written to {target}"):
        run_export(cfg)
    assert target.read_bytes() == b"previous export" and not (tmp_path / "model.onnx.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_convert_keeps_an_existing_output(tmp_path):
    existing = tmp_path / "model.pt"
    existing.write_bytes(b"keep me")
    out = run_tool(
        "convert_tf",
        f"source={tmp_path / 'frozen_inference_graph.pb'}",
        f"output={existing}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert_one_line_error(out, str(existing), "convert.overwrite=true")
    assert existing.read_bytes() == b"keep me"


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder on a read-only filesystem (a tmpfs mounted read-only): unwritable even for root."""
    yield from mounted_tmpfs(tmp_path / "ro", "ro,size=1m", "a read-only filesystem")


@pytest.mark.slow
def test_read_only_run_and_output_directories_are_one_line(synth_root, checkpoint, read_only_dir, tmp_path):
    out = run_tool("train", *tiny_train_args(synth_root, "train.max_iters=1"), f"hydra.run.dir={read_only_dir / 'run'}")
    assert_one_line_error(out, f"hydra.run.dir={read_only_dir / 'run'}", "Read-only file system")
    image = tmp_path / "in" / "photo.png"
    image.parent.mkdir()
    from PIL import Image

    Image.new("RGB", (40, 30), (120, 30, 200)).save(image)
    out = run_tool(
        "predict",
        f"checkpoint={checkpoint}",
        f"input={image}",
        f"output={read_only_dir / 'masks'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert_one_line_error(out, str(read_only_dir / "masks"))
    out = run_tool(
        "export",
        f"checkpoint={checkpoint}",
        f"export.path={read_only_dir / 'model.onnx'}",
        "export.input_size=64",
        "export.check_images=1",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert_one_line_error(out, str(read_only_dir / "model.onnx"))
