"""The trainer's named steps (seg/engine/trainer.py), each on its own, on the 16-image built-in
dataset of `tiny_train_args`: set_up, restore, train_step, evaluate_and_log, save, finish, and
make_run / train_loader, which the benchmarks share. Whole runs: test_train.py."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_helpers import ENV, REPO
from conftest import compose_config, tiny_train_args
from omegaconf import OmegaConf

from seg.data import DatasetError
from seg.data.transforms import normalize
from seg.engine import trainer
from seg.engine.checkpoint import load_checkpoint
from seg.engine.trainer import (
    Run,
    TrainingError,
    batches,
    evaluate_and_log,
    finish,
    make_run,
    restore,
    save,
    set_up,
    train_loader,
    train_step,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# A second process trying to lock a run directory: prints what it is told, or nothing if it gets the lock.
_TRY_LOCK = """import sys
from seg.files import FileClashError, RunLock
try:
    RunLock(sys.argv[1]).acquire()
except FileClashError as e:
    print(e)
"""


def lock_refusal(run_dir: Path) -> str:
    """What another process that tries to lock `run_dir` is told ("" when it gets the lock)."""
    out = subprocess.run(
        [sys.executable, "-c", _TRY_LOCK, str(run_dir)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


@pytest.fixture
def runs() -> Iterator[Callable[..., Run]]:
    """`set_up(cfg, run_dir)` for the test; every run it made is closed afterwards (lock, writer)."""
    made: list[Run] = []

    def start(cfg, run_dir: Path) -> Run:
        made.append(set_up(cfg, run_dir))
        return made[-1]

    yield start
    for run in made:
        run.close()


def started(runs, synth_root: Path, run_dir: Path) -> tuple[Run, Iterator]:
    """A tiny run set up and restored, as the loop starts it, with its training batches."""
    run = runs(compose_config(*tiny_train_args(synth_root)), run_dir)
    restore(run)
    run.net.train()
    return run, batches(run)


def cloned(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Equal nested states: tensors to the bit, everything else with ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    else:
        assert a == b, where


def global_rng() -> tuple:
    """Python's, numpy's and torch's global generator states."""
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


class Recorder:
    """Stands in for the run's SummaryWriter: the tags written, by step."""

    def __init__(self) -> None:
        self.scalars: dict[str, dict[int, float]] = {}
        self.images: dict[str, dict[int, np.ndarray]] = {}

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.setdefault(tag, {})[step] = value

    def add_image(self, tag: str, image: np.ndarray, step: int, dataformats: str = "CHW") -> None:
        self.images.setdefault(tag, {})[step] = image

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# set_up
# ---------------------------------------------------------------------------------------------


def test_set_up_locks_the_run_directory_and_writes_the_resolved_config(synth_root, tmp_path, runs):
    cfg = compose_config(*tiny_train_args(synth_root))
    run_dir = tmp_path / "run"
    run = runs(cfg, run_dir)

    written = (run_dir / ".hydra" / "config.yaml").read_text()
    assert written == OmegaConf.to_yaml(cfg, resolve=True) and "${" not in written
    assert (len(run.train_set), len(run.val_set)) == (16, 4) and run.device == torch.device("cpu")
    assert run.main and run.world_size == 1 and run.iteration == 0
    assert run.resume_path is None and run.init_path is None and run.writer is None  # restore's work

    assert f"run directory {run_dir} is in use by process {os.getpid()}" in lock_refusal(run_dir)
    run.close()
    assert lock_refusal(run_dir) == ""


def test_set_up_fails_on_a_missing_dataset_before_building_a_model(synth_root, tmp_path, monkeypatch):
    def no_model(*_args, **_kwargs):
        raise AssertionError("the model was built before the dataset was checked")

    monkeypatch.setattr(trainer, "build_segmenter", no_model)
    run_dir = tmp_path / "run"
    cfg = compose_config(*tiny_train_args(synth_root, "dataset=voc_aug", f"dataset.root={tmp_path / 'no_voc'}"))
    with pytest.raises(DatasetError, match="no_voc"):
        set_up(cfg, run_dir)
    assert lock_refusal(run_dir) == ""  # the failed set-up let go of the run directory


# ---------------------------------------------------------------------------------------------
# make_run and train_loader: what the benchmarks share with training
# ---------------------------------------------------------------------------------------------


def test_make_run_needs_no_data_and_no_run_directory(tmp_path):
    cfg = compose_config(*tiny_train_args(tmp_path / "never_built"))
    run = make_run(cfg, torch.device("cpu"))
    assert run.train_set == () and run.val_set == () and run.lock is None and run.writer is None
    assert run.train_net is run.net and run.net.model is run.model and run.net.aux is None
    assert {g["lr"] for g in run.optimizer.param_groups} == {0.01}
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    masks = torch.randint(0, 21, (2, 32, 32))
    assert math.isfinite(train_step(run, images, masks)) and run.iteration == 1
    assert not (tmp_path / "never_built").exists()


def test_train_loader_batches_depend_only_on_the_seed_and_start(synth_root, tmp_path, runs):
    data = runs(compose_config(*tiny_train_args(synth_root)), tmp_path / "run").train_set

    def first(count: int, seed: int = 0, start: tuple[int, int] = (0, 0)) -> list:
        loader = iter(train_loader(data, 4, seed, workers=0, start=start))
        return [next(loader) for _ in range(count)]

    rng_before = global_rng()
    three = first(3)
    assert_same(global_rng(), rng_before)  # its own generators: resuming never depends on the global ones
    images, masks = three[0]
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8
    assert masks.shape == (4, 32, 32) and masks.dtype == torch.int64
    assert_same(first(3), three)
    assert_same(first(2, start=(0, 1)), three[1:])
    assert not torch.equal(first(1, seed=1)[0][0], images)
    with pytest.raises(TrainingError, match="16 images, fewer than train.batch_size=32"):
        train_loader(data, 32, 0, workers=0)


# ---------------------------------------------------------------------------------------------
# restore (from scratch), train_step
# ---------------------------------------------------------------------------------------------


def test_restore_from_scratch_keeps_the_built_weights_and_seeds_the_rank(synth_root, tmp_path, runs):
    run = runs(compose_config(*tiny_train_args(synth_root, "train.seed=5")), tmp_path / "run")
    built = cloned(run.model.state_dict())
    restore(run)
    assert_same(cloned(run.model.state_dict()), built)
    assert run.iteration == 0 and run.train_net is run.net and run.writer is not None
    assert torch.initial_seed() == 5  # train.seed + rank


def test_train_step_is_one_sgd_step_on_the_cross_entropy_of_the_batch(synth_root, tmp_path, runs):
    run, data = started(runs, synth_root, tmp_path / "run")
    images, masks = next(data)
    reference = copy.deepcopy(run.net)  # the same forward pass, batch-norm statistics of the batch included
    with torch.no_grad():
        logits, _ = reference(normalize(images, run.cfg.model.normalization))
    expected = F.cross_entropy(logits, masks, ignore_index=run.cfg.dataset.ignore_index).item()
    before = cloned(run.net.state_dict())

    loss = train_step(run, images, masks)

    assert math.isfinite(loss) and loss == pytest.approx(expected, rel=1e-5)
    assert run.iteration == 1 and run.scheduler.last_epoch == 1
    for group in run.optimizer.param_groups:  # poly schedule, max_iters=4, no warm-up
        assert group["lr"] == pytest.approx(group["initial_lr"] * (1 - 1 / 4) ** 0.9)
    trained = [n for n, p in run.net.named_parameters() if p.grad is not None]
    assert trained and all(not torch.equal(before[n], p) for n, p in run.net.named_parameters() if n in trained)


def test_train_step_stops_on_a_non_finite_loss_before_stepping(synth_root, tmp_path, runs):
    run, data = started(runs, synth_root, tmp_path / "run")
    with torch.no_grad():
        next(p for n, p in run.model.named_parameters() if "classifier" in n).fill_(float("nan"))
    before = {n: p.detach().clone() for n, p in run.net.named_parameters()}
    with pytest.raises(TrainingError, match="loss is nan at iteration 1: stopped"):
        train_step(run, *next(data))
    assert run.iteration == 0 and run.scheduler.last_epoch == 0
    assert all(torch.equal(p.nan_to_num(), before[n].nan_to_num()) for n, p in run.net.named_parameters())


# ---------------------------------------------------------------------------------------------
# evaluate_and_log
# ---------------------------------------------------------------------------------------------


def test_evaluate_and_log_records_the_metrics_and_says_whether_they_are_the_best(synth_root, tmp_path, runs):
    run, data = started(runs, synth_root, tmp_path / "run")
    train_step(run, *next(data))
    run.writer.close()
    run.writer = recorder = Recorder()
    run.net.eval()

    assert evaluate_and_log(run) is True
    metrics = run.last_metrics
    assert 0.0 <= metrics["miou"] <= 1.0 and metrics["num_images"] == 4 and len(metrics["per_class_iou"]) == 21
    assert run.last_eval_iteration == 1 and (run.best_miou, run.best_iteration) == (metrics["miou"], 1)
    assert run.net.training  # back in training mode
    assert recorder.scalars["val/miou"] == {1: metrics["miou"]}
    assert recorder.scalars["val/pixel_accuracy"] == {1: metrics["pixel_accuracy"]}
    assert {"val/iou/aeroplane", "val/iou/tvmonitor"} <= set(recorder.scalars)
    assert recorder.images["val/input_gt_prediction"][1].ndim == 3

    assert evaluate_and_log(run) is False  # the same weights: not better than the best
    assert run.best_iteration == 1


# ---------------------------------------------------------------------------------------------
# save and restore (resume)
# ---------------------------------------------------------------------------------------------


def test_save_then_restore_continues_exactly(synth_root, tmp_path, runs):
    run_dir = tmp_path / "run"
    run, data = started(runs, synth_root, run_dir)
    for _ in range(2):
        train_step(run, *next(data))
    save(run, best=evaluate_and_log(run))
    rng, weights = global_rng(), cloned(run.net.state_dict())
    optimizer, scheduler = copy.deepcopy(run.optimizer.state_dict()), run.scheduler.state_dict()
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["iteration"] == 2 and state["data"] == {"epoch": 0, "batch": 2, "batches_per_epoch": 4}
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    run.close()

    resumed = runs(compose_config(*tiny_train_args(synth_root, "train.resume=auto")), run_dir)
    assert resumed.resume_path == run_dir / "checkpoints" / "last.pt"
    fresh = resumed.net.state_dict()
    assert any(not torch.equal(fresh[k], weights[k]) for k in weights)  # set_up built new weights
    random.random(), np.random.rand(), torch.rand(1)  # restore must not depend on where the generators are
    restore(resumed)
    resumed.net.train()

    assert_same(cloned(resumed.net.state_dict()), weights, "weights")
    assert_same(resumed.optimizer.state_dict(), optimizer, "optimizer")
    assert_same(resumed.scheduler.state_dict(), scheduler, "scheduler")
    assert_same(global_rng(), rng, "rng")
    assert resumed.iteration == 2 and resumed.sampler_start == (0, 2)
    assert (resumed.best_miou, resumed.best_iteration) == (run.best_miou, run.best_iteration)

    # The next step: the same batch, the same loss, the same weights.
    images, masks = next(data)
    again = next(batches(resumed))
    assert torch.equal(again[0], images) and torch.equal(again[1], masks)
    assert train_step(resumed, *again) == train_step(run, images, masks)
    assert_same(cloned(resumed.net.state_dict()), cloned(run.net.state_dict()), "weights after a step")


def test_save_never_writes_non_finite_weights_over_the_last_good_checkpoint(synth_root, tmp_path, runs):
    run, data = started(runs, synth_root, tmp_path / "run")
    train_step(run, *next(data))
    save(run)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    good = last.read_bytes()
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()
    with torch.no_grad():
        next(iter(run.model.parameters())).view(-1)[0] = float("inf")
    with pytest.raises(TrainingError, match=f"non-finite weights at iteration 1: stopped without overwriting .*{last}"):
        save(run, best=True)
    assert last.read_bytes() == good and not (last.parent / "best.pt").exists()


# ---------------------------------------------------------------------------------------------
# finish
# ---------------------------------------------------------------------------------------------


def test_finish_writes_metrics_json_evaluating_only_if_the_last_step_was_not(synth_root, tmp_path, runs, monkeypatch):
    run, data = started(runs, synth_root, tmp_path / "run")
    train_step(run, *next(data))
    evaluate_and_log(run)
    evaluations, real_evaluate = [], trainer.evaluate

    def counted(*args, **kwargs):
        evaluations.append(run.iteration)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", counted)

    result = finish(run)  # iteration 1 was evaluated: no second evaluation
    assert evaluations == []
    assert result["iterations"] == 1 and result["miou"] == run.last_metrics["miou"] and result["world_size"] == 1
    assert list(result["per_class_iou"]) == list(run.cfg.dataset.class_names) and result["num_val_images"] == 4
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["iterations"] == 1 and saved["miou"] == result["miou"] and saved["best_iteration"] == 1
    assert all(v is None or v == result["per_class_iou"][k] for k, v in saved["per_class_iou"].items())

    train_step(run, *next(data))
    assert finish(run)["iterations"] == 2 and evaluations == [2]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["iterations"] == 2


def test_training_crops_are_padded_with_the_models_own_mean_pixel(synth_root, tmp_path, runs):
    import albumentations as A

    cfg = compose_config(*tiny_train_args(synth_root, "model.pixel_mean=[10,20,30]", "model.pixel_std=[2,2,2]"))
    run = runs(cfg, tmp_path / "run")
    transform = run.train_set.transform
    pads = [t for t in transform.compose.transforms if isinstance(t, A.PadIfNeeded)]
    assert len(pads) == 1 and tuple(pads[0].fill) == (10.0, 20.0, 30.0)
    assert run.model.pixel_mean.flatten().tolist() == [10.0, 20.0, 30.0]


def test_init_from_adopts_the_checkpoints_numerics_but_the_users_own(synth_root, tmp_path, runs):
    from seg.config import freeze_bn
    from seg.engine.checkpoint import save_checkpoint
    from seg.engine.trainer import adopt_numerics
    from seg.models.segmenter import build_segmenter

    source = compose_config(
        *tiny_train_args(synth_root),
        "model.normalization=deeplab",
        "model.pixel_mean=[128,128,128]",
        "model.pixel_std=[128,128,128]",
        "model.align_corners=true",
        "model.backbone.tf_same_padding=true",
        "model.backbone.bn_eps=0.001",
        "model.folded_batch_norm=true",
    )
    path = tmp_path / "converted.pt"
    weights = build_segmenter(source.model).state_dict()
    save_checkpoint(path, {"model": weights, "config": OmegaConf.to_yaml(source, resolve=True)})
    cfg = compose_config(*tiny_train_args(synth_root))
    adopt_numerics(cfg, path, keep={"model.align_corners"})
    m = cfg.model
    assert m.normalization == "deeplab" and list(m.pixel_mean) == [128.0] * 3 and list(m.pixel_std) == [128.0] * 3
    assert m.backbone.tf_same_padding and m.backbone.bn_eps == 0.001 and m.folded_batch_norm
    assert m.align_corners is False  # set by the user: kept

    # Through set_up and restore: the run's saved config has them, the weights load as they are,
    # and the folded batch norms are frozen (train.freeze_bn=null) unless the user says otherwise.
    run_dir = tmp_path / "run"
    run = runs(compose_config(*tiny_train_args(synth_root, f"train.init_from={path}")), run_dir)
    restore(run)
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert saved.model.folded_batch_norm and saved.model.pixel_mean == [128.0] * 3
    assert run.model.pixel_mean.flatten().tolist() == [128.0] * 3
    assert all(torch.equal(v, weights[k]) for k, v in run.model.state_dict().items())
    assert freeze_bn(run.cfg.train, run.cfg.model)
    assert not freeze_bn(OmegaConf.merge(run.cfg.train, {"freeze_bn": False}), run.cfg.model)
