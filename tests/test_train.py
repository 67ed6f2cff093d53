"""Training engine, in process: a whole run, checkpoints, schedule, fine-tuning, failures (its steps
one by one: test_trainer_steps.py)."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from conftest import compose_config, tiny_train_args
from data_samples import write_voc_tree
from omegaconf import OmegaConf

from seg.config import freeze_bn
from seg.data import DatasetError
from seg.engine import trainer
from seg.engine.checkpoint import CheckpointError, load_checkpoint, load_segmenter
from seg.engine.trainer import TrainingError, train
from seg.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# A run: files, checkpoint round trip, schedule
# ---------------------------------------------------------------------------------------------


def test_run_writes_checkpoints_metrics_and_events(synth_root, tmp_path):
    run = tmp_path / "run"
    cfg = compose_config(*tiny_train_args(synth_root, "train.backbone_lr_mult=0.1", "train.eval_every=2"))
    metrics = train(cfg, run)

    assert 0.0 <= metrics["miou"] <= 1.0 and metrics["iterations"] == 4
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["iterations"] == 4 and set(saved["per_class_iou"]) == set(cfg.dataset.class_names)
    assert saved["wall_time_s"] > 0 and "miou" in saved

    # Checkpoint: plain containers only (weights_only load), the resolved config, the full state.
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["iteration"] == 4 and state["data"] == {"epoch": 1, "batch": 0, "batches_per_epoch": 4}
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "config", "metrics"} <= set(state)
    assert "num_classes: 21" in state["config"] and "${" not in state["config"]
    model, stored = load_segmenter(run / "checkpoints" / "last.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, state["model"][k])
    assert stored.train.max_iters == 4
    assert (run / "checkpoints" / "best.pt").is_file()

    # Backbone parameters at lr * 0.1; weight decay on conv weights only.
    groups = state["optimizer"]["param_groups"]
    assert sorted({g["initial_lr"] for g in groups}) == pytest.approx([0.001, 0.01])
    assert sorted({g["weight_decay"] for g in groups}) == pytest.approx([0.0, 4e-5])

    # TensorBoard: poly schedule per iteration, loss, val mIoU, per-class IoU, image grid.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "train/images_per_s", "val/miou", "val/iou/aeroplane"} <= set(tags["scalars"])
    assert "val/input_gt_prediction" in tags["images"]
    lrs = {e.step: e.value for e in events.Scalars("train/lr")}
    for step in (1, 2, 3):  # the lr of the next iteration, for the head's groups
        assert lrs[step] == pytest.approx(0.01 * (1 - step / 4) ** 0.9, rel=1e-5)
    assert [e.step for e in events.Scalars("val/miou")] == [2, 4]


def test_non_finite_loss_stops_naming_the_iteration_and_keeps_the_last_checkpoint(synth_root, tmp_path):
    run = tmp_path / "run"
    cfg = compose_config(*tiny_train_args(synth_root, "train.lr=1e6", "train.max_iters=10", "train.checkpoint_every=1"))
    with pytest.raises(TrainingError, match=r"at iteration (\d+)") as err:
        train(cfg, run)
    stopped_at = int(err.value.args[0].split("at iteration ")[1].split(":")[0])
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["iteration"] < stopped_at
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (run / "metrics.json").exists()


def test_fine_tuning_with_another_class_count_reinitialises_only_the_classifiers(synth_root, tmp_path, caplog):
    source = tmp_path / "source"
    train(compose_config(*tiny_train_args(synth_root, "train.max_iters=2")), source)
    ckpt = source / "checkpoints" / "last.pt"

    voc = write_voc_tree(tmp_path / "voc3", 8, 2, num_classes=3)
    cfg = compose_config(
        *tiny_train_args(
            synth_root,
            "dataset=voc_aug",
            f"dataset.root={voc}",
            "dataset.num_classes=3",
            "dataset.class_names=[background,square,block]",
            "train.max_iters=1",
            f"train.init_from={ckpt}",
        )
    )
    seen = {}
    real_load = trainer._load_init

    def spy(model, path, model_cfg):
        real_load(model, path, model_cfg)
        seen.update({k: v.clone() for k, v in model.state_dict().items()})

    trainer_load = pytest.MonkeyPatch()
    trainer_load.setattr(trainer, "_load_init", spy)
    try:
        with caplog.at_level(logging.INFO, logger="seg.engine.trainer"):
            train(cfg, tmp_path / "finetune")
    finally:
        trainer_load.undo()
    lines = [r.getMessage() for r in caplog.records if "re-initialised" in r.getMessage()]
    assert len(lines) == 1 and "21 classes, this model 3" in lines[0] and "head.high_classifier.weight" in lines[0]
    source_weights = load_checkpoint(ckpt)["model"]
    for k, v in seen.items():
        if "classifier" in k:
            assert v.shape[0] == 3
        else:
            assert torch.equal(v, source_weights[k]), k


def test_init_from_an_unrelated_model_is_an_error(synth_root, tmp_path):
    source = tmp_path / "source"
    train(compose_config(*tiny_train_args(synth_root, "train.max_iters=1", "head=aspp_lite")), source)
    cfg = compose_config(*tiny_train_args(synth_root, f"train.init_from={source / 'checkpoints' / 'last.pt'}"))
    with pytest.raises(CheckpointError, match="does not fit the model"):
        train(cfg, tmp_path / "run")


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["train.resume", "train.init_from"])
def test_missing_checkpoint_names_the_path(synth_root, tmp_path, key):
    missing = tmp_path / "nowhere" / "last.pt"
    with pytest.raises(CheckpointError, match=f"{key}: checkpoint not found: {missing}"):
        train(compose_config(*tiny_train_args(synth_root, f"{key}={missing}")), tmp_path / "run")


def test_resume_auto_without_a_checkpoint_starts_fresh(synth_root, tmp_path):
    cfg = compose_config(*tiny_train_args(synth_root, "train.resume=auto", "train.max_iters=1"))
    metrics = train(cfg, tmp_path / "run")
    assert metrics["iterations"] == 1


def test_missing_dataset_fails_before_any_model_is_built(synth_root, tmp_path, monkeypatch):
    def no_model(*_args, **_kwargs):
        raise AssertionError("the model was built before the dataset was checked")

    monkeypatch.setattr(trainer, "build_segmenter", no_model)
    cfg = compose_config(*tiny_train_args(synth_root, "dataset=voc_aug", f"dataset.root={tmp_path / 'no_voc'}"))
    with pytest.raises(DatasetError, match="no_voc"):
        train(cfg, tmp_path / "run")


def test_bad_settings_are_one_clear_error(synth_root, tmp_path):
    cfg = compose_config(*tiny_train_args(synth_root, "train.warmup_iters=10", "train.class_weights=[1.0,2.0]"))
    with pytest.raises(
        ConfigError, match=r"train.warmup_iters=10 .*train.class_weights=\[1.0, 2.0\] has 2 values for 21"
    ):
        train(cfg, tmp_path / "run")


def test_class_weights_and_label_smoothing_and_aux_loss_train(synth_root, tmp_path):
    weights = "[" + ",".join(["0.5"] + ["1.0"] * 20) + "]"
    cfg = compose_config(
        *tiny_train_args(
            synth_root,
            f"train.class_weights={weights}",
            "train.label_smoothing=0.1",
            "train.aux_loss_weight=0.4",
            "train.max_iters=2",
            "train.warmup_iters=1",
        )
    )
    metrics = train(cfg, tmp_path / "run")
    assert math.isfinite(metrics["miou"])
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["aux_head"] is not None


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        ["experiment=mobilenetv2_coco_voc_trainaug"],
        ["experiment=mobilenetv2_dm05_coco_voc_trainaug"],
        ["dataset=voc_aug", "backbone=mnv2_dm05"],
    ],
)
def test_the_published_recipe_is_what_voc_runs_get(overrides):
    cfg = compose_config(*overrides)
    t = cfg.train
    assert (t.max_iters, t.batch_size, t.crop_size, t.lr, t.momentum, t.weight_decay, t.poly_power) == (
        30000,
        16,
        513,
        0.007,
        0.9,
        4e-5,
        0.9,
    )
    assert (t.scale_min, t.scale_max, t.scale_step, t.flip, freeze_bn(t, cfg.model)) == (0.5, 2.0, 0.25, True, False)
    assert (t.aux_loss_weight, t.label_smoothing, t.class_weights) == (0.0, 0.0, None)
    assert cfg.model.output_stride == 16 and cfg.dataset.name.value == "voc_aug"


def test_the_default_run_uses_the_built_in_dataset_settings():
    cfg = compose_config()
    assert cfg.dataset.name.value == "synthetic"
    assert cfg.train.crop_size <= cfg.dataset.synthetic.image_size and cfg.train.max_iters < 30000


def test_init_from_adopts_the_checkpoints_numerics_or_warns_when_the_user_set_others(
    synth_root, tmp_path, caplog, monkeypatch
):
    source = tmp_path / "source"
    train(compose_config(*tiny_train_args(synth_root, "train.max_iters=1", "model.normalization=deeplab")), source)
    args = tiny_train_args(synth_root, "train.max_iters=1", f"train.init_from={source / 'checkpoints' / 'last.pt'}")
    with caplog.at_level(logging.INFO, logger="seg.engine.trainer"):
        train(compose_config(*args), tmp_path / "adopted")
    assert OmegaConf.load(tmp_path / "adopted" / ".hydra" / "config.yaml").model.normalization == "deeplab"
    assert not any(r.levelno >= logging.WARNING and "init_from" in r.getMessage() for r in caplog.records)

    # model.normalization given on the command line: kept, with a warning.
    monkeypatch.setattr("seg.engine.trainer.command_line_keys", lambda: {"model.normalization"})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="seg.engine.trainer"):
        train(compose_config(*args), tmp_path / "run")
    assert OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml").model.normalization == "imagenet"
    assert any("model.normalization=deeplab" in r.getMessage() for r in caplog.records)
