"""Running the tools as users do (a subprocess per command) and checking what a user sees."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest
from conftest import REPO

# One thread per process: tiny tensors, and immune to other jobs on a shared machine.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def tool_command(tool: str, *args: str, launcher: tuple[str, ...] = ()) -> list[str]:
    """`python [LAUNCHER] tools/<tool>.py ARGS`, e.g. launcher=("-m", "torch.distributed.run", ...)."""
    return [sys.executable, *launcher, str(REPO / "tools" / f"{tool}.py"), *args]


def run_tool(
    tool: str, *args: str, timeout: int = 300, env: dict | None = None, launcher: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """`python tools/<tool>.py ARGS` from the repository root."""
    cmd = tool_command(tool, *args, launcher=launcher)
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


def mounted_tmpfs(mount: Path, options: str, what: str) -> Iterator[Path]:
    """For a fixture to `yield from`: a tmpfs mounted at `mount` (made here) with these mount
    options, unmounted afterwards; skips the test, naming `what`, where mounting is not allowed."""
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount {what} here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def exit_status(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """What an argparse tool's `main(argv)` exits with: its return value, or the code of the
    SystemExit that `seg.cli.one_line_errors` raises after printing `error: ...`."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
