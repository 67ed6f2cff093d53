"""Training engine, in process: data order, checkpoints, schedule, fine-tuning, failures."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from conftest import CONF_DIR
from seg.config import register_configs
from seg.data import DatasetError
from seg.data.base import write_mask
from seg.data.transforms import build_train_transform
from seg.engine import trainer
from seg.engine.checkpoint import CheckpointError, load_checkpoint, load_segmenter
from seg.engine.sampling import SeededTransform, TrainBatchSampler
from seg.engine.trainer import TrainingError, train
from seg.errors import ConfigError

register_configs()


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors: one thread is fastest, and immune to other jobs on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


def tiny(root: Path, *overrides: str) -> list[str]:
    """A few iterations of a small model on a 16-image built-in dataset of 48x48 images."""
    return [
        "head=lraspp", f"dataset.root={root}", "dataset.synthetic.num_train=16", "dataset.synthetic.num_val=4",
        "dataset.synthetic.image_size=48", "dataset.num_workers=0", "train.max_iters=4", "train.batch_size=4",
        "train.crop_size=32", "train.lr=0.01", "train.warmup_iters=0", "train.eval_every=0",
        "train.checkpoint_every=2", "train.log_every=1", "train.progress=false", "train.vis_images=1", *overrides,
    ]


def make_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def write_voc_tree(root: Path, n_train: int, n_val: int, num_classes: int, split: str = "train_aug") -> Path:
    """VOC layout with 40x40 images: a rectangle of class 1 + i % (num_classes - 1) on background."""
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    rng = np.random.default_rng(0)
    names = {split: [f"t{i}" for i in range(n_train)], "val": [f"v{i}" for i in range(n_val)]}
    for i, name in enumerate(names[split] + names["val"]):
        mask = np.zeros((40, 40), np.uint8)
        y, x = rng.integers(0, 20, 2)
        mask[y:y + 16, x:x + 16] = 1 + i % (num_classes - 1)
        image = rng.integers(0, 60, (40, 40, 3), dtype=np.uint8)
        image[mask > 0] += 150
        Image.fromarray(image).save(voc / "JPEGImages" / f"{name}.jpg")
        write_mask(voc / "SegmentationClass" / f"{name}.png", mask)
    for s, ids in names.items():
        (voc / "ImageSets" / "Segmentation" / f"{s}.txt").write_text("".join(n + "\n" for n in ids))
    return root


# ---------------------------------------------------------------------------------------------
# Data order
# ---------------------------------------------------------------------------------------------


def test_ranks_split_each_global_batch_like_one_process():
    one = iter(TrainBatchSampler(50, 8, seed=3))
    ranks = [iter(TrainBatchSampler(50, 8, seed=3, rank=r, world_size=2)) for r in range(2)]
    for _ in range(20):  # crosses epoch boundaries (6 batches per epoch)
        batch = next(one)
        assert len(batch) == 8
        assert next(ranks[0]) + next(ranks[1]) == batch


def test_sampler_starts_mid_epoch_where_an_uninterrupted_one_would_be():
    full = iter(TrainBatchSampler(50, 8, seed=3))
    batches = [next(full) for _ in range(15)]
    sampler = TrainBatchSampler(50, 8, seed=3)
    resumed = iter(TrainBatchSampler(50, 8, seed=3, start_epoch=1, start_batch=3))
    assert sampler.position(9) == (1, 3)
    assert [next(resumed) for _ in range(6)] == batches[9:]
    # every epoch is a permutation: no sample twice within an epoch
    first_epoch = [i for b in batches[:6] for i, _ in b]
    assert len(set(first_epoch)) == 48


def test_augmentation_depends_only_on_the_sample_seed():
    transform = SeededTransform(build_train_transform(24, 0.5, 2.0, 0.25, True, 255))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    mask = rng.integers(0, 21, (40, 30), dtype=np.uint8)
    outs = []
    for seed in (7, 8, 7):
        transform.seed = seed
        outs.append(transform(image, mask))
    assert torch.equal(outs[0][0], outs[2][0]) and torch.equal(outs[0][1], outs[2][1])
    assert not torch.equal(outs[0][0], outs[1][0])
    assert outs[0][0].shape == (3, 24, 24) and outs[0][1].dtype == torch.int64


def test_sampler_rejects_a_split_smaller_than_the_batch():
    with pytest.raises(ValueError, match="fewer than train.batch_size=8"):
        TrainBatchSampler(5, 8, seed=0)


# ---------------------------------------------------------------------------------------------
# A run: files, checkpoint round trip, schedule
# ---------------------------------------------------------------------------------------------


def test_run_writes_checkpoints_metrics_and_events(synth_root, tmp_path):
    run = tmp_path / "run"
    cfg = make_cfg(tiny(synth_root, "train.backbone_lr_mult=0.1", "train.eval_every=2"))
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
    cfg = make_cfg(tiny(synth_root, "train.lr=1e6", "train.max_iters=10", "train.checkpoint_every=1"))
    with pytest.raises(TrainingError, match=r"at iteration (\d+)") as err:
        train(cfg, run)
    stopped_at = int(err.value.args[0].split("at iteration ")[1].split(":")[0])
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["iteration"] < stopped_at
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (run / "metrics.json").exists()


def test_fine_tuning_with_another_class_count_reinitialises_only_the_classifiers(synth_root, tmp_path, caplog):
    source = tmp_path / "source"
    train(make_cfg(tiny(synth_root, "train.max_iters=2")), source)
    ckpt = source / "checkpoints" / "last.pt"

    voc = write_voc_tree(tmp_path / "voc3", 8, 2, num_classes=3)
    cfg = make_cfg(tiny(synth_root, "dataset=voc_aug", f"dataset.root={voc}", "dataset.num_classes=3",
                        "dataset.class_names=[background,square,block]", "train.max_iters=1",
                        f"train.init_from={ckpt}"))
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
    train(make_cfg(tiny(synth_root, "train.max_iters=1", "head=aspp_lite")), source)
    cfg = make_cfg(tiny(synth_root, f"train.init_from={source / 'checkpoints' / 'last.pt'}"))
    with pytest.raises(CheckpointError, match="does not fit the model"):
        train(cfg, tmp_path / "run")


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["train.resume", "train.init_from"])
def test_missing_checkpoint_names_the_path(synth_root, tmp_path, key):
    missing = tmp_path / "nowhere" / "last.pt"
    with pytest.raises(CheckpointError, match=f"{key}: checkpoint not found: {missing}"):
        train(make_cfg(tiny(synth_root, f"{key}={missing}")), tmp_path / "run")


def test_resume_auto_without_a_checkpoint_starts_fresh(synth_root, tmp_path):
    metrics = train(make_cfg(tiny(synth_root, "train.resume=auto", "train.max_iters=1")), tmp_path / "run")
    assert metrics["iterations"] == 1


def test_missing_dataset_fails_before_any_model_is_built(synth_root, tmp_path, monkeypatch):
    def no_model(*_args, **_kwargs):
        raise AssertionError("the model was built before the dataset was checked")

    monkeypatch.setattr(trainer, "build_segmenter", no_model)
    cfg = make_cfg(tiny(synth_root, "dataset=voc_aug", f"dataset.root={tmp_path / 'no_voc'}"))
    with pytest.raises(DatasetError, match="no_voc"):
        train(cfg, tmp_path / "run")


def test_bad_settings_are_one_clear_error(synth_root, tmp_path):
    cfg = make_cfg(tiny(synth_root, "train.warmup_iters=10", "train.class_weights=[1.0,2.0]"))
    with pytest.raises(ConfigError, match=r"train.warmup_iters=10 .*train.class_weights=\[1.0, 2.0\] has 2 values for 21"):
        train(cfg, tmp_path / "run")


def test_class_weights_and_label_smoothing_and_aux_loss_train(synth_root, tmp_path):
    weights = "[" + ",".join(["0.5"] + ["1.0"] * 20) + "]"
    cfg = make_cfg(tiny(synth_root, f"train.class_weights={weights}", "train.label_smoothing=0.1",
                        "train.aux_loss_weight=0.4", "train.max_iters=2", "train.warmup_iters=1"))
    metrics = train(cfg, tmp_path / "run")
    assert math.isfinite(metrics["miou"])
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["aux_head"] is not None


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [["experiment=mobilenetv2_coco_voc_trainaug"],
                                       ["experiment=mobilenetv2_dm05_coco_voc_trainaug"],
                                       ["dataset=voc_aug", "backbone=mnv2_dm05"]])
def test_the_published_recipe_is_what_voc_runs_get(overrides):
    cfg = make_cfg(overrides)
    t = cfg.train
    assert (t.max_iters, t.batch_size, t.crop_size, t.lr, t.momentum, t.weight_decay, t.poly_power) == (
        30000, 16, 513, 0.007, 0.9, 4e-5, 0.9)
    assert (t.scale_min, t.scale_max, t.scale_step, t.flip, t.freeze_bn) == (0.5, 2.0, 0.25, True, False)
    assert (t.aux_loss_weight, t.label_smoothing, t.class_weights) == (0.0, 0.0, None)
    assert cfg.model.output_stride == 16 and cfg.dataset.name.value == "voc_aug"


def test_the_default_run_uses_the_built_in_dataset_settings():
    cfg = make_cfg([])
    assert cfg.dataset.name.value == "synthetic"
    assert cfg.train.crop_size <= cfg.dataset.synthetic.image_size and cfg.train.max_iters < 30000


def test_benchmark_train_task_reports_images_per_second(synth_root, capsys):
    from seg.bench import run_task

    cfg = make_cfg(tiny(synth_root, "benchmark.task=train", "flops.input_size=65", "train.batch_size=2",
                        "benchmark.warmup=0", "benchmark.runs=1", "benchmark.threads=1"))
    result = run_task(cfg)
    assert [r["config"] for r in result["results"]] == [
        "configured", "mobilenetv2_coco_voc_trainaug", "mobilenetv2_dm05_coco_voc_trainaug"]
    assert all(r["images_per_s"] > 0 for r in result["results"]) and result["crop_size"] == 65
    assert "| config | backbone | head | images/s |" in capsys.readouterr().out


def test_init_from_warns_when_the_checkpoint_computed_differently(synth_root, tmp_path, caplog):
    source = tmp_path / "source"
    train(make_cfg(tiny(synth_root, "train.max_iters=1", "model.normalization=deeplab")), source)
    cfg = make_cfg(tiny(synth_root, "train.max_iters=1", f"train.init_from={source / 'checkpoints' / 'last.pt'}"))
    with caplog.at_level(logging.WARNING, logger="seg.engine.trainer"):
        train(cfg, tmp_path / "run")
    assert any("model.normalization=deeplab" in r.getMessage() for r in caplog.records)
