"""Small command-line conveniences shared by the tools."""

from __future__ import annotations

import sys


def alias_overrides(aliases: dict[str, str], argv: list[str] | None = None) -> None:
    """Rewrite short override names to their config keys before Hydra reads the command line,
    e.g. `source=PATH` -> `convert.source=PATH` for `{"source": "convert.source"}`."""
    argv = sys.argv if argv is None else argv
    for i, arg in enumerate(argv[1:], start=1):
        key, sep, value = arg.partition("=")
        if sep and key in aliases:
            argv[i] = f"{aliases[key]}={value}"
