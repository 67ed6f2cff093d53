"""Bad config values and mismatched resumes: one line naming the key, before anything heavy runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, run_tool
from conftest import compose_config, tiny_train_args

from seg.config import check_config, check_train_config
from seg.engine.checkpoint import CheckpointError, load_checkpoint
from seg.engine.trainer import train
from seg.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.crop_size=0", "train.crop_size=0 must be > 0"),
        ("train.scale_min=2.0", "train.scale_min=2.0 must be <= train.scale_max"),
        ("eval.scales=[]", "eval.scales=[] must be a non-empty list"),
        ("eval.scales=[1.0,-0.5]", "eval.scales=[1.0, -0.5] must be a non-empty list of values > 0"),
        ("train.lr=0", "train.lr=0.0 must be > 0"),
        ("dataset.num_workers=-1", "dataset.num_workers=-1 must be >= 0"),
        ("model.output_stride=12", "model.output_stride=12 must be 8, 16 or 32"),
        ("train.batch_size=0", "train.batch_size=0 must be > 0"),
        ("eval.max_images=0", "eval.max_images=0 must be > 0"),
        ("predict.alpha=2", "predict.alpha=2.0 must be in [0, 1]"),
        ("export.input_size=8", "export.input_size=8 must be >= 32"),
    ],
)
def test_each_value_out_of_range_is_named(override, key):
    with pytest.raises(ConfigError) as err:
        check_config(compose_config(override))
    assert key in str(err.value) and "\n" not in str(err.value)


def test_training_checks_the_model_against_the_data_and_the_batch():
    with pytest.raises(ConfigError, match="model.num_classes=5 differs from dataset.num_classes=21"):
        check_train_config(compose_config("model.num_classes=5"), world_size=1)
    with pytest.raises(ConfigError, match="train.batch_size=6 must divide evenly between 4 processes"):
        check_train_config(compose_config("train.batch_size=6"), world_size=4)
    for head in ("aspp_lite", "deeplabv3", "deeplabv3plus"):
        with pytest.raises(ConfigError, match="image-pooling branch .*train.freeze_bn=true"):
            check_train_config(compose_config(f"head={head}", "train.batch_size=1"), world_size=1)
        with pytest.raises(ConfigError, match="each process one image"):
            check_train_config(compose_config(f"head={head}", "train.batch_size=2"), world_size=2)
        check_train_config(compose_config(f"head={head}", "train.batch_size=1", "train.freeze_bn=true"), world_size=1)
    check_train_config(compose_config("head=lraspp", "train.batch_size=1"), world_size=1)  # no pooled batch norm


def test_batch_of_one_trains_with_frozen_batch_norm(synth_root, tmp_path):
    cfg = compose_config(
        *tiny_train_args(
            synth_root, "head=aspp_lite", "train.batch_size=1", "train.freeze_bn=true", "train.max_iters=2"
        )
    )
    assert train(cfg, tmp_path / "run")["iterations"] == 2


@pytest.mark.slow
def test_the_tools_print_bad_values_in_one_line(synth_root, tmp_path):
    out = run_tool(
        "train",
        *tiny_train_args(synth_root, "train.crop_size=0", "train.scale_min=3"),
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert_one_line_error(out, "train.crop_size=0 must be > 0", "train.scale_min=3.0 must be <= train.scale_max")
    out = run_tool(
        "train",
        *tiny_train_args(synth_root, "head=deeplabv3plus", "train.batch_size=1"),
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert_one_line_error(out, "train.batch_size=1", "train.freeze_bn=true")
    out = run_tool("eval", "checkpoint=whatever.pt", "eval.scales=[]", f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(out, "eval.scales=[]")


# ---------------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(synth_root, tmp_path_factory) -> Path:
    """last.pt of a 4-iteration run of the default model."""
    run = tmp_path_factory.mktemp("finished")
    train(compose_config(*tiny_train_args(synth_root)), run)
    return run / "checkpoints" / "last.pt"


def test_resuming_another_architecture_names_the_differences(synth_root, finished, tmp_path):
    cfg = compose_config(*tiny_train_args(synth_root, "backbone=mnv2", "head=aspp_lite", f"train.resume={finished}"))
    with pytest.raises(CheckpointError) as err:
        train(cfg, tmp_path / "run")
    message = str(err.value)
    assert f"train.resume: {finished} was trained as another model" in message
    assert "model.backbone.depth_multiplier: 0.5 -> 1.0" in message and "model.head._target_" in message
    assert "train.init_from" in message and "\n" not in message


def test_resuming_past_max_iters_is_refused(synth_root, finished, tmp_path):
    cfg = compose_config(*tiny_train_args(synth_root, "train.max_iters=3", f"train.resume={finished}"))
    with pytest.raises(
        CheckpointError, match=f"{finished} is at iteration 4, past train.max_iters=3: set train.max_iters >= 4"
    ):
        train(cfg, tmp_path / "run")
    # The same max_iters is fine (nothing left to do but the final evaluation).
    cfg = compose_config(*tiny_train_args(synth_root, f"train.resume={finished}"))
    assert train(cfg, tmp_path / "run2")["iterations"] == 4


def test_resuming_from_a_weights_only_checkpoint_points_to_init_from(synth_root, finished, tmp_path):
    from seg.engine.checkpoint import save_checkpoint

    state = load_checkpoint(finished)
    weights_only = tmp_path / "converted.pt"
    save_checkpoint(weights_only, {"model": state["model"], "config": state["config"]})
    cfg = compose_config(*tiny_train_args(synth_root, f"train.resume={weights_only}"))
    with pytest.raises(CheckpointError, match="holds no training state .*train.init_from"):
        train(cfg, tmp_path / "run")
