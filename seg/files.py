"""Writing files without losing what a user already has.

- `refuse_overwrite`: a tool never writes over a file it was not told to replace.
- `same_or_inside`: the clash checks between inputs and outputs (predict, export).
- `RunLock`: one process at a time in a run directory (training), with the holder named.
- `write_atomically`: a file is either the old one or the whole new one, never half written.
- `remove_stale_temporaries`: leftovers of a write that was killed half way.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from seg.errors import SegError

PathLike = str | os.PathLike


class FileClashError(SegError):
    """A write would replace or mix with a file the user already has."""


def refuse_overwrite(path: PathLike, key: str, overwrite: bool, what: str = "file") -> None:
    """Raise FileClashError when `path` exists and `overwrite` is false (the message names the key
    that allows it)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileClashError(
            f"{path} already exists: refusing to overwrite this {what}; choose another {key}, or set "
            f"{overwrite_key(key)}=true to replace it"
        )


def overwrite_key(key: str) -> str:
    """`export.path` -> `export.overwrite`, `output` -> `overwrite`."""
    section = key.rsplit(".", 1)[0] + "." if "." in key else ""
    return f"{section}overwrite"


def same_or_inside(path: PathLike, folder: PathLike) -> bool:
    """Whether `path` is `folder` or lies inside it (links resolved)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def make_folder(folder: PathLike) -> None:
    """`mkdir -p`, with one line when a file stands where a folder should be."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FileClashError(f"cannot create the folder {folder}: a file is in the way") from None


def write_atomically(path: PathLike, write: Callable[[Path], None]) -> None:
    """`write(tmp)` a temporary file beside `path`, then rename it to `path`: a run interrupted
    half way leaves the previous file (or none), never half a file. An OSError names `path`, the
    file the user asked for, not the temporary."""
    path = Path(path)
    make_folder(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, SegError) and exc.filename in (None, str(tmp)):
            raise type(exc)(exc.errno, exc.strerror, str(path)) from None
        raise


def write_text_atomically(path: PathLike, text: str) -> None:
    """`write_atomically` for a text file."""
    write_atomically(path, lambda tmp: tmp.write_text(text))


class UnwritableError(SegError):
    """A folder the user named cannot be written to (permissions, read-only filesystem, a file in
    the way)."""


def require_writable(path: PathLike, key: str) -> None:
    """Fail early, naming `key`, when the folder that would receive `path` (its nearest existing
    ancestor) is not a folder or cannot be written: found before any work, not after it."""
    path = Path(path)
    ancestor = next((p for p in path.parents if p.exists()), Path("."))
    if not ancestor.is_dir():
        raise UnwritableError(f"{key}={path}: {ancestor} is a file, not a folder; choose another {key}")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as exc:
        raise UnwritableError(
            f"{key}={path}: cannot write in {ancestor} ({exc.strerror}); choose a writable location"
        ) from None


def remove_stale_temporaries(folder: PathLike, pattern: str = ".*.tmp") -> list[Path]:
    """Delete the temporary files (`pattern`) that a write killed before its rename left in
    `folder`. Call it only while holding the folder's RunLock: then no other process writes there.
    Returns what was removed."""
    folder = Path(folder)
    removed = []
    for tmp in sorted(folder.glob(pattern)) if folder.is_dir() else []:
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


class RunLock:
    """An exclusive lock on a run directory, held for the life of the process that took it.

    The lock is a POSIX record lock on `<dir>/.lock`: released by the kernel when the process dies
    (a killed run never leaves a stale lock) and, unlike `flock`, not inherited by forked children
    such as DataLoader workers, which may outlive a killed parent for a moment. The file holds the
    holder's pid, host and command line, which a refused second process prints.
    """

    NAME = ".lock"

    def __init__(self, directory: PathLike) -> None:
        self.path = Path(directory) / self.NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise FileClashError(
                f"run directory {self.path.parent} is in use by {self.holder()}: choose another "
                "hydra.run.dir, or wait until that run ends"
            ) from None
        os.ftruncate(fd, 0)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.write(fd, json.dumps(info).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def holder(self) -> str:
        """The process that holds the lock, as its lock file describes it."""
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return "another process"
        if not info:
            return "another process"
        return f"process {info.get('pid')} on {info.get('host')} (since {info.get('since')}: {info.get('command', '')})"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
