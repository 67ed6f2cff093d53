"""Running the tools as users do (a subprocess per command) and checking what a user sees."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from conftest import CONF_DIR, REPO

# One thread per process: tiny tensors, and immune to other jobs on a shared machine.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_tool(tool: str, *args: str, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python tools/<tool>.py ARGS` from the repository root."""
    cmd = [sys.executable, str(REPO / "tools" / f"{tool}.py"), *args]
    return subprocess.run(cmd, cwd=REPO, env=env or ENV, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(out: subprocess.CompletedProcess, *needles: str, exit_code: int = 1) -> str:
    """Exit status `exit_code`, no traceback anywhere, and stderr ending in one `error: ...` line that
    holds every needle. Returns that line."""
    assert out.returncode == exit_code, (out.returncode, out.stdout[-2000:], out.stderr[-3000:])
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout, out.stderr[-3000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), out.stderr[-3000:]
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def snapshot(*roots: Path) -> dict[str, str]:
    """SHA-256 of every file under these folders (or of these files): compare before and after."""
    digests = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            digests[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return digests


def compose_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def tiny_train_args(root: Path, *overrides: str) -> list[str]:
    """A few iterations of the default model on a 16-image built-in dataset of 48x48 images."""
    return [
        "head=lraspp", f"dataset.root={root}", "dataset.synthetic.num_train=16", "dataset.synthetic.num_val=4",
        "dataset.synthetic.image_size=48", "dataset.num_workers=0", "train.max_iters=4", "train.batch_size=4",
        "train.crop_size=32", "train.lr=0.01", "train.warmup_iters=0", "train.eval_every=0",
        "train.checkpoint_every=2", "train.log_every=1", "train.progress=false", "train.vis_images=1", *overrides,
    ]
