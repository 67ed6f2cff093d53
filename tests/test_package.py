"""The installable package: the wheel holds seg/ and the configs (conf/ as seg/conf/), its console
commands import, `--help` lists each config group's choices without the schemas, and the version.

The wheel is built here from a copy of the sources with the environment's setuptools (the dev
extra); .ci/run installs one into a fresh environment and runs the commands (wheel_smoke)."""

from __future__ import annotations

import configparser
import importlib
import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from cli_helpers import ENV, run_tool
from conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]
COMMANDS = {
    "seg-train": "train",
    "seg-eval": "eval",
    "seg-export": "export",
    "seg-predict": "predict",
    "seg-convert": "convert_tf",
    "seg-flops": "flops",
    "seg-benchmark": "benchmark",
    "seg-prepare-voc": "prepare_voc",
    "seg-prepare-coco": "prepare_coco",
    "seg-serve": "serve",
}
CONF_FILES = sorted(p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml"))


def conf_choices() -> dict[str, list[str]]:
    """Each config group of conf/ (a folder with yaml files, hydra/ aside) and its options."""
    groups: dict[str, list[str]] = {}
    for f in CONF_FILES:
        group, _, name = f.rpartition("/")
        if group and not group.startswith("hydra"):
            groups.setdefault(group, []).append(name.removesuffix(".yaml"))
    return {g: sorted(o) for g, o in groups.items()}


def assert_help_lists_the_choices(text: str) -> None:
    assert "_schema" not in text, text
    for group, options in conf_choices().items():
        assert f"\n{group}: {', '.join(options)}\n" in text, (group, text[:3000])


def test_every_command_has_its_module_and_tools_script():
    assert {name: f"seg.commands.{module}:run" for name, module in COMMANDS.items()} == SCRIPTS
    for module in COMMANDS.values():
        script = (REPO / "tools" / f"{module}.py").read_text()
        assert f"from seg.commands.{module} import main, run" in script, module
        assert (REPO / "seg" / "commands" / f"{module}.py").is_file()


def test_every_subpackage_is_listed_for_the_wheel():
    """A mapped package (conf/ as seg.conf) rules out packages.find, so the list is by hand."""
    packages = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "seg").rglob("__init__.py")}
    assert found | {"seg.conf"} == packages
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"seg.conf": "conf"}


def test_version():
    import seg

    try:
        installed = importlib.metadata.version("seg")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    # The literal used when seg is not installed follows pyproject.toml's.
    literal = re.search(r'__version__ = "([^"]+)"', (REPO / "seg" / "__init__.py").read_text())
    assert literal and literal.group(1) == PYPROJECT["project"]["version"]
    assert seg.__version__ == (installed or literal.group(1))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built with the environment's setuptools from a copy of what the build reads
    (no build/ or egg-info in the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("seg", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp), str(src)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (built,) = tmp.glob("seg-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_holds_the_package_and_the_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "seg/conf/config.yaml" in names
    assert {f"seg/conf/{f}" for f in CONF_FILES} <= names
    assert "seg/conf/__init__.py" in names
    assert "seg/conf/hydra/help/seg.yaml" in names
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "seg").rglob("*.py") if "__pycache__" not in p.parts}
    assert sources <= names, sorted(sources - names)
    assert not [n for n in names if n.startswith(("tests/", "tools/", "conf/", "data/"))], sorted(names)

    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(zipfile.ZipFile(wheel).read(entry_points).decode())
    assert dict(parser["console_scripts"]) == SCRIPTS
    version = [n for n in names if n.endswith(".dist-info/METADATA")][0]
    assert f"\nVersion: {PYPROJECT['project']['version']}\n" in zipfile.ZipFile(wheel).read(version).decode()


@pytest.mark.slow
def test_the_wheel_commands_import_and_compose_from_the_wheel(wheel, tmp_path):
    """Unpacked and first on sys.path, in a folder away from the checkout: every console script's
    target imports from the wheel's files, the configs compose from pkg://seg.conf, and seg-train's
    help lists the choices."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    check = f"""
import importlib, sys
import seg
assert seg.__file__.startswith({str(site)!r}), seg.__file__
for target in {sorted(SCRIPTS.values())!r}:
    module, _, func = target.partition(":")
    assert callable(getattr(importlib.import_module(module), func)), target
from seg.commands import CONFIG_PATH
assert CONFIG_PATH == "pkg://seg.conf", CONFIG_PATH
from hydra import compose, initialize_config_module
with initialize_config_module("seg.conf", version_base="1.3"):
    cfg = compose("config", overrides=["experiment=mobilenetv2_coco_voc_trainaug"])
print("composed", cfg.model.backbone.depth_multiplier)
sys.argv = ["seg-train", "--help"]
from seg.commands.train import run
run()
"""
    env = {**ENV, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "composed 1.0" in out.stdout
    assert out.stdout.split("composed 1.0\n", 1)[1].startswith("Train a segmenter")
    assert_help_lists_the_choices(out.stdout)


@pytest.mark.slow
def test_help_lists_each_group_without_schemas():
    out = run_tool("train", "--help")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("Train a segmenter"), out.stdout[:500]
    assert "python tools/train.py" in out.stdout  # the usage of the script run
    assert_help_lists_the_choices(out.stdout)
    assert "== Config ==" in out.stdout and "seg/config.py" in out.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("seg-train") is None, reason="seg-train is not installed (pip install -e .)")
def test_console_command_help(tmp_path):
    """The installed seg-train (the editable install here), run away from the checkout."""
    out = subprocess.run(["seg-train", "--help"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("Train a segmenter"), out.stdout[:500]
    assert "seg-train experiment=" in out.stdout  # seg.commands.train's usage
    assert_help_lists_the_choices(out.stdout)
    assert not list(tmp_path.iterdir())  # --help writes nothing


def test_config_path_is_the_package():
    from seg.commands import CONFIG_PATH

    if importlib.util.find_spec("seg.conf") is None:
        pytest.skip("seg is not installed from this checkout (pip install -e .)")
    assert CONFIG_PATH == "pkg://seg.conf"
    assert Path(importlib.import_module("seg.conf").__file__).parent.resolve() == (REPO / "conf").resolve()
