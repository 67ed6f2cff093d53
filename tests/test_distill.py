"""`train.distill_from`: the student learns the teacher's softened per-pixel distributions as well
as the labels; the term, the step, the checkpoint's record of the teacher and an exact resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config, tiny_train_args
from omegaconf import OmegaConf
from test_trainer_steps import assert_same, cloned, runs  # noqa: F401  (fixture)

from seg.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from seg.engine.loss import SegmentationLoss, distillation_term
from seg.engine.trainer import batches, restore, save, train_step
from seg.files import file_sha256
from seg.models.segmenter import build_segmenter


def test_the_term_is_temperature_squared_kl_over_labelled_pixels():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 4, 6, generator=g), torch.randn(2, 5, 4, 6, generator=g)
    target = torch.randint(0, 5, (2, 4, 6), generator=g)
    target[0, 0] = 255
    valid = target != 255
    t = 3.0
    p = F.softmax(teacher / t, dim=1)
    by_hand = (p * (p.log() - F.log_softmax(student / t, dim=1))).sum(dim=1)[valid].sum() * t * t
    assert torch.allclose(distillation_term(student, teacher, valid, t), by_hand, atol=1e-5)
    assert distillation_term(teacher, teacher, valid, t).abs() < 1e-5  # nothing to learn from oneself

    loss = SegmentationLoss(255, distill_weight=0.5, temperature=t)
    with_teacher, norm = loss(student, None, target, teacher)
    without, same_norm = loss(student, None, target)
    assert norm == same_norm == valid.sum()
    assert torch.allclose(with_teacher - without, 0.5 * by_hand, atol=1e-5)


def teacher_checkpoint(path: Path, synth_root: Path, *overrides: str, seed: int = 1) -> Path:
    """A teacher of another head and output stride than the tiny student (random weights)."""
    torch.manual_seed(seed)
    cfg = compose_config(*tiny_train_args(synth_root, "head=deeplabv3", "model.output_stride=8", *overrides))
    save_checkpoint(
        path, {"model": build_segmenter(cfg.model).state_dict(), "config": OmegaConf.to_yaml(cfg, resolve=True)}
    )
    return path


def distilled(synth_root: Path, teacher: Path, *overrides: str):
    return compose_config(
        *tiny_train_args(synth_root, f"train.distill_from={teacher}", "train.distill.temperature=2", *overrides)
    )


def test_a_step_adds_the_teachers_term_and_checkpoints_record_the_teacher(synth_root, tmp_path, runs):  # noqa: F811
    teacher = teacher_checkpoint(tmp_path / "teacher.pt", synth_root)
    run = runs(distilled(synth_root, teacher), tmp_path / "run")
    restore(run)
    run.net.train()
    assert run.teacher is not None and not run.teacher.training and run.teacher.output_stride == 8
    assert all(not p.requires_grad for p in run.teacher.parameters())
    images, masks = next(batches(run))
    weights = cloned(run.net.state_dict())

    # The loss of the step, computed by hand from the same forward passes.
    x = run.model.normalize(images)
    with torch.no_grad():
        logits, _ = run.net(x)
        teacher_logits = run.teacher(run.teacher.normalize(images))
        ce = F.cross_entropy(logits, masks, ignore_index=255, reduction="sum")
        valid = masks != 255
        expected = (ce + 1.0 * distillation_term(logits, teacher_logits, valid, 2.0)) / valid.sum()
    teacher_before = cloned(run.teacher.state_dict())
    run.net.load_state_dict(weights)
    loss = train_step(run, images, masks)
    assert math.isclose(loss, expected.item(), rel_tol=1e-4)
    assert_same(cloned(run.teacher.state_dict()), teacher_before, "the teacher is never updated")

    save(run, best=False)
    recorded = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["distill"]
    assert recorded == {"teacher": str(teacher), "sha256": file_sha256(teacher)}


def test_resume_continues_exactly_with_the_same_teacher_only(synth_root, tmp_path, runs):  # noqa: F811
    teacher = teacher_checkpoint(tmp_path / "teacher.pt", synth_root)
    run_dir = tmp_path / "run"
    run = runs(distilled(synth_root, teacher), run_dir)
    restore(run)
    run.net.train()
    data = batches(run)
    for _ in range(2):
        train_step(run, *next(data))
    save(run, best=False)
    run.close()

    resumed = runs(distilled(synth_root, teacher, "train.resume=auto"), run_dir)
    restore(resumed)
    resumed.net.train()
    images, masks = next(data)
    again = next(batches(resumed))
    assert torch.equal(again[0], images)
    assert train_step(resumed, *again) == train_step(run, images, masks)
    assert_same(cloned(resumed.net.state_dict()), cloned(run.net.state_dict()), "weights after a step")
    resumed.close()

    other = teacher_checkpoint(tmp_path / "other.pt", synth_root, seed=2)  # other weights
    changed = runs(distilled(synth_root, other, "train.resume=auto"), run_dir)
    with pytest.raises(CheckpointError, match="resume with the same teacher"):
        restore(changed)
    changed.close()
    plain = runs(compose_config(*tiny_train_args(synth_root, "train.resume=auto")), run_dir)
    with pytest.raises(CheckpointError, match="resume with it"):
        restore(plain)


def test_a_teacher_of_other_classes_is_refused(synth_root, tmp_path, runs):  # noqa: F811
    teacher = teacher_checkpoint(
        tmp_path / "teacher.pt", synth_root, "dataset.num_classes=3", "dataset.class_names=[a,b,c]"
    )
    with pytest.raises(CheckpointError, match="predicts 3 classes, the student 21"):
        runs(distilled(synth_root, teacher), tmp_path / "run")
