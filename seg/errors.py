"""The one base class of everything a user can get wrong: a bad value, a missing, damaged or unsafe
file, a full disk. The tools print such an error as one line (`error: ...`, see `seg/cli.py`) and
exit 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re

# How torch's DataLoader re-raises an exception of a worker in the main process: the original
# traceback folded into the message ("Caught X in DataLoader worker process 0.\nOriginal Traceback
# (most recent call last): ... \nmodule.X: message").
_WORKER_WRAPPED = re.compile(r"^Caught (\w+) (in DataLoader worker process \d+)\.\nOriginal Traceback", re.S)


class SegError(Exception):
    """A problem the user can fix; its message names the file or config key and what to do."""

    exit_code = 1  # the tools' exit status for it

    def __init__(self, message: str = "") -> None:
        # An error raised in a DataLoader worker arrives with the worker's traceback as its message:
        # keep the original one line (and say where it happened); the traceback stays in `details`.
        self.details = ""
        found = _WORKER_WRAPPED.match(message) if isinstance(message, str) else None
        if found:
            self.details = message
            name, where = found.groups()
            tail = message.rsplit(f"{name}: ", 1)
            message = f"{tail[1].strip() if len(tail) == 2 else message.splitlines()[-1]} ({where})"
        super().__init__(message)


class ConfigError(SegError, ValueError):
    """A config value out of range or inconsistent with another; the message names the key."""


class DiskFullError(SegError, OSError):
    """No space left on the device while writing a file; the message names the file."""


class UnsafeFileError(SegError):
    """A file from outside that would run code or build something other than this package's models."""
