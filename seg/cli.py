"""What every tool shares at the edge: the one place that turns a user's mistake into `error: ...`
and exit status 1, and short override names.

    @hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)  # seg.commands
    @one_line_errors
    def main(cfg: DictConfig) -> None: ...

    def run() -> None:  # a console command's entry point (pyproject.toml's [project.scripts])
        launch(main)
"""

from __future__ import annotations

import errno
import functools
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, TypeVar

from seg.errors import SegError
from seg.files import UnwritableError, require_writable

F = TypeVar("F", bound=Callable[..., Any])

# OSErrors that are the machine's state, not a bug: said in one line naming the file.
_ENVIRONMENT_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
}


def fail(message: str, exit_code: int = 1) -> NoReturn:
    """Print `error: message` on stderr and exit with `exit_code`."""
    sys.stdout.flush()
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(exit_code)


def environment_error(exc: OSError) -> str | None:
    """One line for a permission / read-only / full-disk error naming its file; None for others."""
    what = _ENVIRONMENT_ERRNOS.get(exc.errno or -1)
    if what is None:
        return None
    where = exc.filename if exc.filename is not None else "(file not named by the system)"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{what} writing {where} (free some space; files written before are intact)"
    return f"{where}: {what} (check its permissions, or choose another location)"


def one_line_errors(main: F) -> F:
    """Run a tool's main: SegError and environment OSErrors become `error: ...` and exit 1."""

    @functools.wraps(main)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except SegError as exc:
            if exc.details:
                logging.getLogger("seg").debug("%s", exc.details)
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 128 + signal.SIGINT)
        except OSError as exc:
            message = environment_error(exc)
            if message is None:
                raise
            fail(message)

    return run  # type: ignore[return-value]


def command_line_keys() -> set[str]:
    """The config keys set on the command line (`key=value`, `+key=...`, `~key`), under Hydra; none
    through the Python API."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    return {o.lstrip("+~").split("=", 1)[0] for o in HydraConfig.get().overrides.task}


def dataset_on_command_line() -> bool:
    """Whether the user gave `dataset...` overrides: then they choose the images, over the dataset
    stored in a checkpoint."""
    return any(key.startswith("dataset") for key in command_line_keys())


def check_run_dir(argv: list[str] | None = None) -> None:
    """Fail in one line, before Hydra starts, when the run directory (`hydra.run.dir`, default under
    `outputs/`) cannot be created: Hydra would report it with a traceback."""
    argv = sys.argv[1:] if argv is None else argv
    given = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")]
    run_dir = given[-1] if given else "outputs"
    literal = Path(run_dir.split("${", 1)[0] or ".")  # up to the first interpolation
    try:
        require_writable(literal / "file", "hydra.run.dir")
    except UnwritableError as exc:
        fail(str(exc).replace(f"hydra.run.dir={literal / 'file'}", f"hydra.run.dir={run_dir}"))


def launch(main: Callable[[], Any], aliases: dict[str, str] | None = None) -> None:
    """A tool's entry point: short override names, the run directory checked, then Hydra's main."""
    if aliases:
        alias_overrides(aliases)
    check_run_dir()
    main()


def alias_overrides(aliases: dict[str, str], argv: list[str] | None = None) -> None:
    """Rewrite short override names to their config keys before Hydra reads the command line,
    e.g. `source=PATH` -> `convert.source=PATH` for `{"source": "convert.source"}`."""
    argv = sys.argv if argv is None else argv
    for i, arg in enumerate(argv[1:], start=1):
        key, sep, value = arg.partition("=")
        if sep and key in aliases:
            argv[i] = f"{aliases[key]}={value}"
