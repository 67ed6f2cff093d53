"""tools/train.py as users run it: Hydra errors, end-to-end runs, SIGKILL + resume, torchrun."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import ENV, REPO, run_tool, tool_command
from conftest import compose_config, tiny_train_args
from data_samples import write_voc_tree

from seg.engine.checkpoint import load_checkpoint
from seg.models.segmenter import build_segmenter


def weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


@pytest.mark.slow
def test_unknown_key_fails_at_once_naming_it():
    out = run_tool("train", "train.lrr=0.1")
    assert out.returncode != 0
    assert "train.lrr" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_missing_checkpoint_is_one_line_naming_the_path(tmp_path):
    missing = tmp_path / "coco" / "best.pt"
    out = run_tool("train", f"train.init_from={missing}", f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 1
    assert out.stderr.strip() == f"error: train.init_from: checkpoint not found: {missing}"


@pytest.mark.slow
def test_default_dataset_run_end_to_end(synth_root, tmp_path):
    run = tmp_path / "run"
    out = run_tool("train", *tiny_train_args(synth_root, "train.eval_every=2"), f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"run directory: {run}" in out.stdout and "val mIoU: " in out.stdout
    resolved = (run / ".hydra" / "config.yaml").read_text()
    assert "num_classes: 21" in resolved and "${" not in resolved
    log = (run / "train.log").read_text()
    assert "iteration 4/4: loss" in log and "val mIoU" in log
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.pt").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["iterations"] == 4 and len(metrics["per_class_iou"]) == 21


@pytest.mark.slow
def test_voc_aug_run_end_to_end(synth_root, tmp_path):
    voc = write_voc_tree(tmp_path / "voc", 8, 3, num_classes=21)
    run = tmp_path / "run"
    out = run_tool(
        "train",
        *tiny_train_args(synth_root, "dataset=voc_aug", f"dataset.root={voc}", "backbone=mnv2_dm05"),
        f"hydra.run.dir={run}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["iterations"] == 4 and metrics["num_val_images"] == 3
    assert "data: voc_aug, 8 train / 3 val images" in (run / "train.log").read_text()


@pytest.mark.slow
def test_sigkill_then_resume_ends_with_the_same_weights(synth_root, tmp_path):
    args = tiny_train_args(
        synth_root,
        "train.max_iters=16",
        "train.checkpoint_every=2",
        "train.crop_size=48",
        "train.deterministic=true",
        "model.head.dropout=0.3",
    )
    straight = tmp_path / "straight"
    out = run_tool("train", *args, f"hydra.run.dir={straight}")
    assert out.returncode == 0, out.stderr[-3000:]

    # Interrupted and resumed with 2 loader workers: the data order and augmentation must not care.
    killed = tmp_path / "killed"
    cmd = tool_command("train", *args, "dataset.num_workers=2", f"hydra.run.dir={killed}")
    last = killed / "checkpoints" / "last.pt"
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    reached = load_checkpoint(last)["iteration"]
    assert 0 < reached < 16, "the run was not killed mid-way"

    out = run_tool("train", *args, "dataset.num_workers=2", "train.resume=auto", f"hydra.run.dir={killed}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from {last} at iteration {reached}" in (killed / "train.log").read_text()
    a, b = weights(straight / "checkpoints" / "last.pt"), weights(last)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(synth_root, tmp_path):
    # Batch norm in inference mode (freeze_bn) and no dropout (lraspp): then a step on the global
    # batch is the same computation whether one process or two do it. (torch's SyncBatchNorm, which
    # would make trained batch norm match too, runs on GPUs only.)
    args = tiny_train_args(
        synth_root, "train.batch_size=4", "train.max_iters=4", "train.lr=0.05", "train.freeze_bn=true"
    )
    one, two = tmp_path / "one", tmp_path / "two"
    out = run_tool("train", *args, f"hydra.run.dir={one}")
    assert out.returncode == 0, out.stderr[-3000:]
    out = run_tool(
        "train",
        *args,
        f"hydra.run.dir={two}",
        launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 processes" in (two / "train.log").read_text()

    cfg = compose_config(*args)
    torch.manual_seed(cfg.train.seed)  # the trainer's initialisation
    init = build_segmenter(cfg.model).state_dict()
    a, b = weights(one / "checkpoints" / "last.pt"), weights(two / "checkpoints" / "last.pt")
    moved = max((a[k].float() - init[k].float()).abs().max().item() for k in a)
    apart = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert moved > 1e-2
    assert apart < 1e-4 * max(1.0, moved), (apart, moved)
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert m2["world_size"] == 2 and m2["num_val_images"] == m1["num_val_images"] == 4
