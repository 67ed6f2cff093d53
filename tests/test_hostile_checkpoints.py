"""A checkpoint is data: no file from outside runs code, through any tool that takes one.

The hostile files below are what an attacker would send: a valid checkpoint whose stored config
names a callable (nested anywhere, or as the model part itself) that would create a marker file if
it were ever called, an interpolation, and a pickle that imports a global.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import assert_one_line_error, run_tool, snapshot
from conftest import compose_config, tiny_train_args
from omegaconf import OmegaConf
from PIL import Image

from seg.engine.checkpoint import CheckpointError, load_segmenter, save_checkpoint, stored_config
from seg.errors import UnsafeFileError
from seg.models.segmenter import build_segmenter

CALL = {"_target_": "builtins.open", "_args_": None}  # _args_ filled with [marker, "w"] per test


def _config(root: Path) -> dict:
    cfg = compose_config(*tiny_train_args(root))
    return yaml.safe_load(OmegaConf.to_yaml(cfg, resolve=True))


def _write(path: Path, config: dict, weights: dict) -> Path:
    save_checkpoint(
        path,
        {
            "model": weights,
            "config": yaml.safe_dump(config),
            "iteration": 2,
            "optimizer": {"state": {}, "param_groups": []},
        },
    )
    return path


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> tuple[dict, dict, Path]:
    """(plain config, weights, synthetic dataset root) of a real checkpoint of ours."""
    root = tmp_path_factory.mktemp("synthetic")
    config = _config(root)
    torch.manual_seed(0)
    weights = build_segmenter(compose_config(*tiny_train_args(root)).model).state_dict()
    return config, weights, root


def _hostile(config: dict, marker: Path, where: str) -> dict:
    """`config` with a call to open(marker, "w") placed at `where`."""
    bad = yaml.safe_load(yaml.safe_dump(config))
    call = {**CALL, "_args_": [str(marker), "w"]}
    if where == "nested in the backbone":
        bad["model"]["backbone"]["weights"] = call
    elif where == "as the backbone":
        bad["model"]["backbone"]["_target_"] = "builtins.open"
        bad["model"]["backbone"]["_args_"] = [str(marker), "w"]
    elif where == "as the head":
        bad["model"]["head"] = {"_target_": "pathlib.Path.write_text", "_args_": [str(marker), "pwned"]}
    elif where == "deep in a list":
        bad["dataset"]["class_names"][3] = call
    elif where == "in another section":
        bad["train"]["resume"] = call
    elif where == "as an interpolation":
        bad["dataset"]["root"] = "${oc.env:HOME}"
    return bad


@pytest.mark.parametrize(
    "where",
    [
        "nested in the backbone",
        "as the backbone",
        "as the head",
        "deep in a list",
        "in another section",
        "as an interpolation",
    ],
)
def test_stored_configs_that_name_code_are_refused(good, tmp_path, where):
    config, weights, _ = good
    marker = tmp_path / "marker"
    path = _write(tmp_path / "evil.pt", _hostile(config, marker, where), weights)
    with pytest.raises(UnsafeFileError) as err:
        load_segmenter(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert not marker.exists()


def test_a_stored_config_is_checked_against_the_schema(good, tmp_path):
    config, weights, _ = good
    bad = yaml.safe_load(yaml.safe_dump(config))
    bad["model"]["backbone"]["depth_multiplier"] = "lots"
    with pytest.raises(CheckpointError, match="evil.pt: its stored config does not fit"):
        load_segmenter(_write(tmp_path / "evil.pt", bad, weights))
    bad = yaml.safe_load(yaml.safe_dump(config))
    bad["model"]["backbone"]["exec_this"] = 1
    with pytest.raises(CheckpointError, match="exec_this"):
        load_segmenter(_write(tmp_path / "evil.pt", bad, weights))


def test_a_good_checkpoint_still_loads_and_keeps_its_other_sections(good, tmp_path):
    config, weights, _ = good
    path = _write(tmp_path / "good.pt", config, weights)
    model, stored = load_segmenter(path)
    assert stored.train.max_iters == 4 and stored.model.head._target_.endswith("LRASPPHead")
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert stored_config({"config": yaml.safe_dump(config)}, path).dataset.num_classes == 21


def test_models_are_built_only_by_this_packages_builders():
    cfg = compose_config()
    cfg.model.backbone._target_ = "os.system"
    with pytest.raises(UnsafeFileError, match="model.backbone._target_='os.system' is not one of this package's"):
        build_segmenter(cfg.model)


def test_a_pickle_that_imports_a_global_is_unsafe_not_corrupt(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "x": Payload()}, path)
    with pytest.raises(UnsafeFileError, match=r"refusing to load .*evil.pt: it holds a pickled (posix|os)\.system"):
        load_segmenter(path)
    torch.save({"model": {}, "x": random.Random()}, path)
    with pytest.raises(UnsafeFileError, match="random.Random"):
        load_segmenter(path)


# ---------------------------------------------------------------------------------------------
# Every tool that takes a checkpoint, as users run them
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evil(good, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(hostile checkpoint, the marker it would create, its dataset root)."""
    config, weights, root = good
    folder = tmp_path_factory.mktemp("evil")
    marker = folder / "marker"
    return _write(folder / "evil.pt", _hostile(config, marker, "nested in the backbone"), weights), marker, root


def _image(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


def _tool_args(tool: str, ckpt: Path, root: Path, tmp_path: Path) -> list[str]:
    run = f"hydra.run.dir={tmp_path / 'run'}"
    if tool == "eval":
        return [f"checkpoint={ckpt}", run]
    if tool == "export":
        return [f"checkpoint={ckpt}", f"export.path={tmp_path / 'out.onnx'}", run]
    if tool == "predict":
        return [f"checkpoint={ckpt}", f"input={_image(tmp_path / 'in')}", f"output={tmp_path / 'out'}", run]
    if tool == "benchmark":
        return ["latency", f"benchmark.latency.checkpoints=[{ckpt}]", run]
    if tool in ("train.init_from", "train.resume"):
        return [*tiny_train_args(root), f"{tool}={ckpt}", run]
    raise AssertionError(tool)


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["eval", "export", "predict", "benchmark", "train.init_from", "train.resume"])
def test_every_tool_refuses_a_hostile_checkpoint(evil, tmp_path, tool):
    ckpt, marker, root = evil
    before = snapshot(ckpt.parent)
    out = run_tool(tool.split(".")[0], *_tool_args(tool, ckpt, root, tmp_path))
    line = assert_one_line_error(out, str(ckpt), "model.backbone.weights._", "would name code")
    assert line.startswith("error: refusing")
    assert not marker.exists()
    assert snapshot(ckpt.parent) == before
