"""Faults during training: a signal (SIGINT, SIGTERM), a full disk. The run stops in one line,
keeps its last good checkpoint and says how to continue."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from cli_helpers import ENV, REPO, assert_one_line_error, mounted_tmpfs, run_tool, tool_command
from conftest import tiny_train_args

from seg.engine.checkpoint import load_checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_step_saves_and_prints_the_resume_command(synth_root, tmp_path, signum):
    run = tmp_path / "run"
    args = tiny_train_args(synth_root, "train.max_iters=100000", "train.checkpoint_every=0", "dataset.num_workers=2")
    proc = subprocess.Popen(
        tool_command("train", *args, f"hydra.run.dir={run}"),
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        log = run / "train.log"
        while (
            proc.poll() is None
            and time.monotonic() < deadline
            and "iteration 3/" not in (log.read_text() if log.exists() else "")
        ):
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended early"
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    name = signal.Signals(signum).name
    line = assert_one_line_error(
        out,
        f"stopped by {name} after iteration",
        str(run / "checkpoints" / "last.pt"),
        "resume with: python",
        f"hydra.run.dir={run}",
        "train.resume=auto",
        exit_code=128 + signum,
    )
    stopped_at = int(line.split("after iteration ")[1].split(":")[0])
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["iteration"] == stopped_at >= 3
    assert not (run / "metrics.json").exists()

    # The printed command continues the run (with fewer iterations to go, for the test's sake).
    command = line.split("resume with: ")[1].split()
    resumed = [a if not a.startswith("train.max_iters=") else f"train.max_iters={stopped_at + 1}" for a in command[2:]]
    out = run_tool("train", *resumed)
    assert out.returncode == 0, out.stderr[-3000:]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == stopped_at + 1
    assert (
        f"resumed from {run / 'checkpoints' / 'last.pt'} at iteration {stopped_at}" in (run / "train.log").read_text()
    )


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MB filesystem: room for one checkpoint of the tiny model (about 4 MB), not for two."""
    yield from mounted_tmpfs(tmp_path / "disk", "size=6m", "a small filesystem")


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(synth_root, small_disk):
    run = small_disk / "run"
    # last.pt at iteration 2 fits; at iteration 4 last.pt (and best.pt) no longer do.
    out = run_tool(
        "train", *tiny_train_args(synth_root, "train.max_iters=4", "train.checkpoint_every=2"), f"hydra.run.dir={run}"
    )
    assert_one_line_error(out, "no space left on device writing", str(run / "checkpoints"), "is intact")
    assert load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == 2
    assert not list((run / "checkpoints").glob(".*.tmp"))
