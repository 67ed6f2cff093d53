"""The console commands, one module each, installed by `pip install .` ([project.scripts] in pyproject.toml):

    seg-train        seg.commands.train        (tools/train.py)
    seg-eval         seg.commands.eval         (tools/eval.py)
    seg-export       seg.commands.export       (tools/export.py)
    seg-predict      seg.commands.predict      (tools/predict.py)
    seg-convert      seg.commands.convert_tf   (tools/convert_tf.py)
    seg-flops        seg.commands.flops        (tools/flops.py)
    seg-benchmark    seg.commands.benchmark    (tools/benchmark.py)
    seg-prepare-voc  seg.commands.prepare_voc  (tools/prepare_voc.py)
    seg-prepare-coco seg.commands.prepare_coco (tools/prepare_coco.py)
    seg-serve        seg.commands.serve        (tools/serve.py)

Each module has `main` (Hydra's, or argparse's for the two dataset preparers) and `run()`, the entry
point; `tools/<name>.py` runs the same `run()` from a checkout, and `python -m seg.commands.<name>` too.

The configs: `conf/` at the top of the repository is the package `seg.conf` (pyproject.toml maps it),
so a wheel holds them as seg/conf/ and an editable install finds the checkout's conf/; Hydra reads
them as `pkg://seg.conf` in both. `--help` lists each config group's choices without the schemas
that seg/config.py registers beside them (conf/hydra/help/seg.yaml and the resolvers below).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

CONFIG_NAME = "config"
SCHEMA_SUFFIX = "_schema"  # seg/config.py's ConfigStore nodes (config_schema, head/lraspp_schema, ...)


def _packaged_conf() -> Optional[Path]:
    """The folder of the package `seg.conf` (the wheel's seg/conf/, or the checkout's conf/ through
    an editable install), or None when it is not importable."""
    try:
        spec = importlib.util.find_spec("seg.conf")
    except ImportError:
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "config.yaml").is_file():
            return Path(location)
    return None


def config_dir() -> Path:
    """The Hydra config folder: `seg.conf`'s, else the checkout's conf/ beside seg/ (seg imported
    from a checkout it was not installed from, or installed before conf/ became a package)."""
    return _packaged_conf() or Path(__file__).resolve().parents[2] / "conf"


def config_path() -> str:
    """Hydra's `config_path` for every command: the package `seg.conf` once installed (wheel or
    editable), else the folder `config_dir` finds."""
    return "pkg://seg.conf" if _packaged_conf() is not None else str(config_dir())


CONFIG_PATH = config_path()


def config_groups() -> str:
    """Hydra's `$APP_CONFIG_GROUPS` without the schemas: `group: option, option` per line, for
    the groups and options of every config source (conf/, and anything on hydra.searchpath)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType

    if not GlobalHydra.instance().is_initialized():
        return "(the config groups are listed by a command's --help)"
    loader = GlobalHydra.instance().config_loader()
    lines: list[str] = []

    def walk(parent: str) -> None:
        for group in sorted(loader.list_groups(parent)):
            name = f"{parent}/{group}" if parent else group
            if name == "hydra":
                continue
            options = loader.get_group_options(name, ObjectType.CONFIG)
            options = sorted(o for o in options if not o.endswith(SCHEMA_SUFFIX))
            if options:
                lines.append(f"{name}: {', '.join(options)}")
            walk(name)

    walk("")
    return _literal("\n".join(lines))


def usage(job_name: str) -> str:
    """The usage of the command being run: the docstring of the script run (tools/<name>.py), else
    of seg.commands.<job name> (a console command's script has none)."""
    doc = getattr(sys.modules.get("__main__"), "__doc__", None)
    if not doc:
        try:
            doc = importlib.import_module(f"seg.commands.{job_name}").__doc__
        except ImportError:
            doc = None
    return _literal((doc or job_name).strip())


def _literal(text: str) -> str:
    # Hydra fills its help template with string.Template: a `$` of ours must not be read as a field.
    return text.replace("$", "$$")


for _name, _resolver in (("seg_config_groups", config_groups), ("seg_usage", usage)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)
