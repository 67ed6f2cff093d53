"""The training loop behind `tools/train.py`, as a short list of named steps:

    run = set_up(cfg, run_dir)        devices and seeds, the run directory (locked), data, model, optimizer
    restore(run)                      resume: everything that decides what comes next (or init_from weights)
    while not done: train_step(run, batch); evaluate_and_log(run); save(run)
    finish(run)                       the final evaluation and metrics.json

Under torchrun every rank runs them; rank 0 alone logs and writes files. SIGINT / SIGTERM finish
the current step, write `checkpoints/last.pt` and stop with the command that resumes.

The run directory gets `.hydra/config.yaml` (the resolved config), `train.log` (Hydra's job log),
TensorBoard events, `checkpoints/last.pt` and `best.pt`, and `metrics.json`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from seg.cli import command_line_keys
from seg.config import check_train_config, freeze_bn
from seg.data import build_dataset
from seg.data.transforms import build_eval_transform, build_train_transform
from seg.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_segmenter,
    rng_state,
    save_checkpoint,
    set_rng_state,
    stored_config,
)
from seg.engine.cpu_share import CpuShare
from seg.engine.distributed import barrier, convert_sync_batchnorm, init_distributed
from seg.engine.evaluator import evaluate
from seg.engine.loss import SegmentationLoss
from seg.engine.sampling import SeededSamples, SeededTransform, TrainBatchSampler
from seg.engine.schedule import build_scheduler
from seg.errors import SegError
from seg.files import FileClashError, RunLock, file_sha256, remove_stale_temporaries, write_text_atomically
from seg.models.segmenter import Segmenter, TrainNet, build_segmenter, input_normalization, model_name
from seg.viz import image_grid

log = logging.getLogger(__name__)


class TrainingError(SegError, RuntimeError):
    """A run that cannot go on (bad setting, non-finite loss); tools print it as one line."""


class Interrupted(SegError):
    """SIGINT / SIGTERM: the run stopped after a step, saved, and says how to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for "killed by this signal"


# ---------------------------------------------------------------------------------------------
# The run and its set-up
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    """What a training run holds between its steps."""

    cfg: DictConfig
    run_dir: Path
    rank: int
    world_size: int
    device: torch.device
    train_set: Dataset
    val_set: Dataset
    model: Segmenter  # what is evaluated and saved
    net: TrainNet  # the segmenter plus the auxiliary head: what the optimizer updates
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    loss: SegmentationLoss
    autocast: Any
    memory_format: torch.memory_format
    resume_path: Optional[Path] = None
    init_path: Optional[Path] = None
    lock: Optional[RunLock] = None
    writer: Optional[SummaryWriter] = None
    train_net: Optional[nn.Module] = None  # `net` under DDP / torch.compile: what a step calls
    sampler: Optional[TrainBatchSampler] = None
    iteration: int = 0
    best_miou: float = -1.0
    best_iteration: int = 0
    wall_before: float = 0.0  # training time of the runs this one resumes
    last_metrics: Optional[dict] = None
    last_eval_iteration: int = -1
    rng_states: Optional[list] = None
    sampler_start: tuple[int, int] = (0, 0)  # (epoch, batch) the data order starts from
    stop_signal: int = 0  # set by SIGINT / SIGTERM: stop after the current step
    started: float = field(default_factory=time.perf_counter)
    teacher: Optional[Segmenter] = None  # train.distill_from: in eval mode, never updated
    teacher_source: Optional[dict] = None  # its path and SHA-256, recorded in every checkpoint
    qat: bool = False  # train.qat, once `model` is the fake-quantized QatSegmenter

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def wall_time(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def init_loader_worker(worker_id: int) -> None:
    # torch gives each worker its own seed; numpy and random would otherwise be copies of the parent's.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    # Ctrl-C reaches every process of the terminal's group: the main process alone decides how to
    # stop (finish the step, save), then shuts the workers down (with SIGTERM, which they obey).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _set_determinism(deterministic: bool) -> None:
    if deterministic:
        # cuBLAS needs a fixed workspace to be reproducible; must be set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: a few CUDA kernels (e.g. bilinear upsampling's backward) have no deterministic
    # version; they warn instead of stopping the run.
    if torch.are_deterministic_algorithms_enabled() != deterministic:  # the call imports torch._dynamo: ~4 s
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not deterministic


def pick_device(device: str, local_rank: int = 0) -> torch.device:
    if device != "auto":
        return torch.device(device)
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def _amp_dtype(train_cfg: DictConfig) -> torch.dtype:
    return torch.float16 if train_cfg.amp_dtype == "float16" else torch.bfloat16


def _checkpoint_path(value: Optional[str], key: str) -> Optional[Path]:
    if value is None:
        return None
    if key in ("train.init_from", "train.distill_from") and value.startswith("pretrained:"):
        from seg.pretrained import resolve_init_from

        value = resolve_init_from(value)  # downloaded and converted once, then from the cache
    path = Path(value).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{key}: checkpoint not found: {path}")
    return path


def _resume_path(cfg: DictConfig, run_dir: Path) -> Optional[Path]:
    if cfg.train.resume != "auto":
        return _checkpoint_path(cfg.train.resume, "train.resume")
    path = run_dir / "checkpoints" / "last.pt"
    if not path.is_file():
        log.info("train.resume=auto: no %s yet, starting from scratch", path)
        return None
    return path


def _claim_run_dir(run_dir: Path, resuming: bool) -> RunLock:
    """Lock the run directory for this process, refuse one that holds another run's results (unless
    resuming it), and remove the temporaries of a checkpoint write that was killed half way."""
    lock = RunLock(run_dir).acquire()
    try:
        if not resuming:
            found = [p for p in (run_dir / "checkpoints" / "last.pt", run_dir / "metrics.json") if p.exists()]
            if found:
                raise FileClashError(
                    f"run directory {run_dir} already holds a run ({found[0].name}): continue it with "
                    "train.resume=auto, or choose another hydra.run.dir"
                )
        for tmp in remove_stale_temporaries(run_dir / "checkpoints", ".*.tmp"):
            log.info("removed %s, left by a checkpoint write that was interrupted", tmp)
    except BaseException:
        lock.release()
        raise
    return lock


def _save_config(cfg: DictConfig, run_dir: Path) -> None:
    """The resolved config (and, under Hydra, the command-line overrides) in `.hydra/`."""
    out = run_dir / ".hydra"
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # not under Hydra (the Python API, tests)
        return
    write_text_atomically(out / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides)))


def _param_groups(net: TrainNet, train_cfg: DictConfig) -> list[dict]:
    """Backbone at `lr * backbone_lr_mult`, the rest at `lr`; weight decay on conv/linear weights
    only, as DeepLab (slim regularises kernels, not batch-norm parameters or biases)."""
    t = train_cfg
    backbone = {id(p) for p in net.model.backbone.parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in net.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in backbone, p.ndim > 1), []).append(p)
    out = []
    for (is_backbone, decay), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "lr": t.lr * (t.backbone_lr_mult if is_backbone else 1.0),
                "weight_decay": t.weight_decay if decay else 0.0,
            }
        )
    return out


def _train_mode(net: nn.Module, frozen_bn: bool) -> None:
    net.train()
    if frozen_bn:
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def build_training(
    model_cfg: DictConfig, train_cfg: DictConfig, device: torch.device, ignore_index: int, world_size: int = 1
) -> tuple[Segmenter, TrainNet, torch.optim.Optimizer, Any, Any, SegmentationLoss]:
    """The model, its training wrapper, the optimizer, the poly schedule, the AMP scaler and the
    loss, as `train` and the training benchmark use them. The model is on `device`."""
    t = train_cfg
    model = build_segmenter(model_cfg)
    net = TrainNet.build(model, t.aux_loss_weight, int(model_cfg.num_classes))
    if t.sync_bn and world_size > 1 and not freeze_bn(t, model_cfg) and device.type != "cpu":
        net = convert_sync_batchnorm(net)
        model = net.model
    cuda = device.type == "cuda"
    memory_format = torch.channels_last if (t.channels_last and cuda) else torch.contiguous_format
    net.to(device).to(memory_format=memory_format)
    optimizer = torch.optim.SGD(_param_groups(net, t), lr=t.lr, momentum=t.momentum)
    scheduler = build_scheduler(optimizer, t.max_iters, t.poly_power, t.warmup_iters, t.warmup_factor)
    scaler = torch.amp.GradScaler("cuda", enabled=bool(t.amp) and cuda and _amp_dtype(t) == torch.float16)
    loss = SegmentationLoss(
        ignore_index,
        t.class_weights,
        t.label_smoothing,
        t.aux_loss_weight,
        device,
        distill_weight=float(t.distill.weight) if t.distill_from else 0.0,
        temperature=float(t.distill.temperature),
    )
    return model, net, optimizer, scheduler, scaler, loss


def make_run(
    cfg: DictConfig,
    device: torch.device,
    run_dir: Path = Path("."),
    train_set: Any = (),
    val_set: Any = (),
    rank: int = 0,
    world_size: int = 1,
) -> Run:
    """A Run of `cfg.model` trained as `cfg.train` says, on `device`: model, optimizer, schedule,
    scaler, loss, autocast and memory format (`set_up` adds the data and the run directory; the
    training benchmark times `train_step` on one made with no data)."""
    t = cfg.train
    ignore_index = int(OmegaConf.select(cfg, "dataset.ignore_index", default=255))
    model, net, optimizer, scheduler, scaler, loss = build_training(cfg.model, t, device, ignore_index, world_size)
    cuda = device.type == "cuda"
    run = Run(
        cfg=cfg,
        run_dir=run_dir,
        rank=rank,
        world_size=world_size,
        device=device,
        train_set=train_set,
        val_set=val_set,
        model=model,
        net=net,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        loss=loss,
        autocast=torch.autocast(device_type=device.type, dtype=_amp_dtype(t), enabled=bool(t.amp) and cuda),
        memory_format=torch.channels_last if (t.channels_last and cuda) else torch.contiguous_format,
    )
    run.train_net = net
    if t.distill_from:
        run.teacher, run.teacher_source = load_teacher(cfg, device)
    return run


def load_teacher(cfg: DictConfig, device: torch.device) -> tuple[Segmenter, dict]:
    """`train.distill_from`: the teacher segmenter (eval mode, no gradients) and where it came from.
    Any backbone, head or output stride of ours; its classes must be the student's."""
    path = _checkpoint_path(cfg.train.distill_from, "train.distill_from")
    teacher, stored = load_segmenter(path, map_location=device)
    if int(stored.model.num_classes) != int(cfg.model.num_classes):
        raise CheckpointError(
            f"train.distill_from: {path} predicts {stored.model.num_classes} classes, the student "
            f"{cfg.model.num_classes}: a teacher must label the same classes"
        )
    for p in teacher.parameters():
        p.requires_grad_(False)
    log.info("distilling from %s (%s, output stride %d)", path, teacher.name, teacher.output_stride)
    return teacher.to(device).eval(), {"teacher": str(path), "sha256": file_sha256(path)}


def set_up(cfg: DictConfig, run_dir: str | Path) -> Run:
    """Everything a run needs before its first step: processes and devices, the run directory
    (locked), checked settings, data (before the model: a missing dataset fails first), the model,
    optimizer, schedule and loss. Writes the resolved config into the run directory."""
    t = cfg.train
    run_dir = Path(run_dir)
    rank, world_size, local_rank = init_distributed()
    main = rank == 0
    if not main:
        logging.getLogger().setLevel(logging.WARNING)  # one voice: rank 0's
    check_train_config(cfg, world_size)
    device = pick_device(t.device, local_rank)
    _set_determinism(t.deterministic)

    # Files first: a missing checkpoint, or a run directory in use, fails before anything heavy.
    resume_path = _resume_path(cfg, run_dir)
    init_path = None if resume_path else _checkpoint_path(t.init_from, "train.init_from")
    lock = _claim_run_dir(run_dir, resuming=resume_path is not None) if main else None
    try:
        if init_path is not None:
            adopt_numerics(cfg, init_path, command_line_keys())
        if (resume_path or init_path) is not None and (cfg.model.backbone.pretrained or cfg.model.backbone.weights):
            # The checkpoint's weights replace the encoder's ImageNet start: nothing to fetch.
            cfg.model.backbone.pretrained = cfg.model.backbone.weights = None
        if main:
            _save_config(cfg, run_dir)
            log.info(
                "run directory: %s (device %s, %d process%s)",
                run_dir,
                device,
                world_size,
                "es" if world_size > 1 else "",
            )
        transform = SeededTransform(
            build_train_transform(
                t.crop_size,
                t.scale_min,
                t.scale_max,
                t.scale_step,
                t.flip,
                cfg.dataset.ignore_index,
                jitter=t.jitter,
                pad_value=input_normalization(cfg.model)[0],  # the model's own mean pixel: zero after normalising
            )
        )
        train_set = build_dataset(cfg.dataset, "train", transform)
        val_set = build_dataset(cfg.dataset, "val", build_eval_transform())
        if main:
            log.info(
                "data: %s, %d train / %d val images, %d classes",
                cfg.dataset.name,
                len(train_set),
                len(val_set),
                int(cfg.model.num_classes),
            )
        if t.sync_bn and world_size > 1 and not freeze_bn(t, cfg.model) and device.type == "cpu" and main:
            log.warning("train.sync_bn: not available on CPU; each process normalises its own share of the batch")

        # The same initial weights on every rank (seeded); per-rank seeds (dropout) come later.
        _seed_everything(t.seed)
        run = make_run(cfg, device, run_dir, train_set, val_set, rank, world_size)
        run.resume_path, run.init_path, run.lock = resume_path, init_path, lock
        if main:
            log.info(
                "model: %s, output stride %d, %.2fM parameters",
                run.model.name,
                cfg.model.output_stride,
                sum(p.numel() for p in run.model.parameters()) / 1e6,
            )
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return run


# ---------------------------------------------------------------------------------------------
# Restore: resume a run, or start from another run's weights
# ---------------------------------------------------------------------------------------------

# Model settings that change what the weights compute without changing their shapes.
_NUMERICS = (
    "normalization",
    "pixel_mean",
    "pixel_std",
    "align_corners",
    "backbone.tf_same_padding",
    "backbone.bn_eps",
    "folded_batch_norm",
)
# Model settings that only say where the first weights came from.
_START_ONLY = ("backbone.pretrained", "backbone.weights")


def _plain(cfg: Any, key: str) -> Any:
    v = OmegaConf.select(cfg, key, default=None)
    return OmegaConf.to_container(v) if OmegaConf.is_config(v) else v


def _model_differences(stored: DictConfig, current: DictConfig) -> list[str]:
    """`key: stored -> current` for every model setting (but where the weights came from) that differs."""
    keys: set[str] = set()

    def walk(node: Any, prefix: str) -> None:
        for k in node:
            value = node[k]
            if OmegaConf.is_dict(value):
                walk(value, f"{prefix}{k}.")
            else:
                keys.add(f"{prefix}{k}")

    walk(stored, "")
    walk(current, "")
    return [
        f"model.{k}: {_plain(stored, k)!r} -> {_plain(current, k)!r}"
        for k in sorted(keys)
        if k not in _START_ONLY and _plain(stored, k) != _plain(current, k)
    ]


def adopt_numerics(cfg: DictConfig, path: Path, keep: set[str]) -> None:
    """`train.init_from`: the model takes the checkpoint's numerics (normalisation, align_corners,
    TF padding, batch-norm epsilon, folded batch norm), but for the keys in `keep` (those the user
    set): weights computed with other numerics would start from a worse model than they are."""
    state = load_checkpoint(path)
    if not isinstance(state.get("config"), str):
        return
    stored = stored_config(state, path).model
    adopted = []
    for key in _NUMERICS:
        if f"model.{key}" in keep:
            continue
        value, current = _plain(stored, key), _plain(cfg.model, key)
        if value != current:
            OmegaConf.update(cfg.model, key, value, merge=False)
            adopted.append(f"model.{key}={value}")
    if adopted:
        log.info("train.init_from: %s: the model takes its numerics: %s", path, " ".join(adopted))


def _load_init(model: nn.Module, path: Path, model_cfg: DictConfig) -> None:
    """Fine-tuning start: model weights from a checkpoint; classifiers of another class count are
    dropped (re-initialised)."""
    state = load_checkpoint(path)
    weights = state["model"] if isinstance(state.get("model"), dict) else state
    hint = ""
    if isinstance(state.get("config"), str):
        stored = stored_config(state, path).model
        if model_name(stored) != model_name(model_cfg):
            hint = (
                f" (it holds a {model_name(stored)} at output stride {stored.output_stride}; this run builds a "
                f"{model_name(model_cfg)})"
            )
        differ = [k for k in _NUMERICS if _plain(stored, k) is not None and _plain(stored, k) != _plain(model_cfg, k)]
        if differ:
            # e.g. a converted TF DeepLab checkpoint (x/127.5 - 1, SAME padding) into a default model
            log.warning(
                "train.init_from: %s was trained with other %s: set %s as it has them, or expect a rough start",
                path,
                ", ".join(differ),
                " ".join(f"model.{k}={_plain(stored, k)}" for k in differ),
            )
    own = model.state_dict()
    dropped, mismatched = [], []
    for key, value in weights.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            (dropped if key.startswith("head.") and "classifier" in key else mismatched).append(key)
    if mismatched:
        raise CheckpointError(
            f"train.init_from: {path} does not fit the model: shape mismatch for {', '.join(mismatched[:5])}"
            + (f" and {len(mismatched) - 5} more" if len(mismatched) > 5 else "")
            + hint
        )
    # The normalisation stays this run's (model.normalization); a different one was warned about above.
    kept = {k: v for k, v in weights.items() if k not in dropped and k not in ("pixel_mean", "pixel_std")}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    if set(missing) - set(dropped) or unexpected:
        bad = sorted(set(missing) - set(dropped))[:5] + sorted(unexpected)[:5]
        raise CheckpointError(
            f"train.init_from: {path} does not fit the model: missing or unexpected {', '.join(bad)}{hint}"
        )
    if dropped:
        log.info(
            "train.init_from: %s has %d classes, this model %d: re-initialised %s",
            path,
            weights[dropped[0]].shape[0],
            own[dropped[0]].shape[0],
            ", ".join(dropped),
        )
    else:
        log.info("train.init_from: loaded all model weights from %s", path)


def _load_resume(run: Run, path: Path) -> None:
    """Everything that decides what comes next: weights, optimizer, schedule, scaler, iteration,
    data position, best result, RNG states. The checkpoint must be of this model and within
    `train.max_iters`."""
    state = load_checkpoint(path)
    if not isinstance(state.get("model"), dict) or "iteration" not in state or "optimizer" not in state:
        raise CheckpointError(
            f"train.resume: {path} holds no training state (model, optimizer, iteration): is it a converted or "
            "exported model? Start from its weights with train.init_from instead"
        )
    differences = _model_differences(stored_config(state, path).model, run.cfg.model)
    if differences:
        raise CheckpointError(
            f"train.resume: {path} was trained as another model ({'; '.join(differences[:4])}"
            f"{f'; and {len(differences) - 4} more' if len(differences) > 4 else ''}): resume with its model "
            "settings, or start a new run from its weights with train.init_from"
        )
    _check_same_teacher(state.get("distill"), run.teacher_source, path)
    if bool(run.cfg.train.qat) != isinstance(state.get("qat"), dict):
        raise CheckpointError(
            f"train.resume: {path} was trained "
            + ("with train.qat=true: resume with it" if state.get("qat") else "without train.qat: resume without it")
        )
    iteration = int(state["iteration"])
    if iteration > run.cfg.train.max_iters:
        raise CheckpointError(
            f"train.resume: {path} is at iteration {iteration}, past train.max_iters={run.cfg.train.max_iters}: "
            f"set train.max_iters >= {iteration} to continue it"
        )
    run.model.load_state_dict(state["model"])
    if run.net.aux is not None and state.get("aux_head") is not None:
        run.net.aux.load_state_dict(state["aux_head"])
    if run.cfg.train.qat:  # the graph of the weights just loaded, then its quantizers' ranges
        enter_qat(run)
        run.model.load_quantizer_state_dict(state["qat"], f"train.resume: {path}")
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.iteration = iteration
    data = state["data"]
    run.sampler_start = (int(data["epoch"]), int(data["batch"]))
    metrics = state.get("metrics", {})
    run.best_miou = float(metrics.get("best_miou", -1.0))
    run.best_iteration = int(metrics.get("best_iteration", 0))
    run.wall_before = float(metrics.get("wall_time_s", 0.0))
    run.rng_states = state["rng"]
    if run.main:
        log.info("resumed from %s at iteration %d", path, iteration)


def _check_same_teacher(recorded: Optional[dict], current: Optional[dict], path: Path) -> None:
    """A resumed distillation continues with the teacher it started with (same file bytes)."""
    if recorded is None and current is None:
        return
    if recorded is None or current is None:
        raise CheckpointError(
            f"train.resume: {path} was trained "
            + (
                f"with train.distill_from={recorded['teacher']}: resume with it"
                if recorded
                else "without a teacher: resume without train.distill_from"
            )
        )
    if recorded["sha256"] != current["sha256"]:
        raise CheckpointError(
            f"train.resume: {path} was distilled from {recorded['teacher']} (sha256 {recorded['sha256'][:16]}), "
            f"but train.distill_from={current['teacher']} has sha256 {current['sha256'][:16]}: resume with the "
            "same teacher"
        )


def enter_qat(run: Run) -> None:
    """`train.qat`: from here on the model is the fake-quantized graph of the weights it holds now,
    without an auxiliary head, in float32 (fake quantization is float), with an optimizer and a
    schedule over the graph's parameters (a resume loads their state next)."""
    from seg.engine.qat import QatSegmenter

    t = run.cfg.train
    run.model = QatSegmenter(run.model, int(t.crop_size), frozen_bn=freeze_bn(t, run.cfg.model))
    run.net = TrainNet(run.model, None)
    run.optimizer = torch.optim.SGD(_param_groups(run.net, t), lr=t.lr, momentum=t.momentum)
    run.scheduler = build_scheduler(run.optimizer, t.max_iters, t.poly_power, t.warmup_iters, t.warmup_factor)
    run.loss.aux_weight = 0.0
    run.autocast = torch.autocast(device_type=run.device.type, enabled=False)
    run.qat = True
    if run.main:
        log.info(
            "train.qat: fake quantization of %d weights (int8, per channel) and %d activations (int8)%s%s",
            *run.model.quantizer_counts(),
            "; no auxiliary head" if t.aux_loss_weight > 0 else "",
            "; float32 (train.amp off)" if t.amp and run.device.type == "cuda" else "",
        )


def restore(run: Run) -> None:
    """Resume (`train.resume`) or take another run's weights (`train.init_from`), then wrap the
    model for DDP / torch.compile and seed each rank's random streams."""
    if run.resume_path is not None:
        _load_resume(run, run.resume_path)
    elif run.init_path is not None:
        _load_init(run.model, run.init_path, run.cfg.model)
    t = run.cfg.train
    if t.qat and not run.qat:
        enter_qat(run)
    run.train_net = run.net
    if run.world_size > 1:
        run.train_net = DistributedDataParallel(
            run.net, device_ids=[run.device.index] if run.device.type == "cuda" else None
        )
    if t.compile:
        run.train_net = torch.compile(run.train_net)
    # Per-rank random streams (dropout), restored on resume so the run continues bit for bit.
    _seed_everything(t.seed + run.rank)
    if run.rng_states is not None:
        if len(run.rng_states) == run.world_size:
            set_rng_state(run.rng_states[run.rank])
        elif run.main:
            log.warning(
                "checkpoint has RNG states of %d processes, this run %d: reseeded", len(run.rng_states), run.world_size
            )
    if run.main:
        run.writer = SummaryWriter(str(run.run_dir), purge_step=run.iteration if run.iteration else None)


def train_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    workers: int,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
    start: tuple[int, int] = (0, 0),
) -> DataLoader:
    """Endless training batches of `dataset` (built with a SeededTransform) for one rank, from
    (epoch, batch) `start`: the order and every sample's augmentation depend only on the seed."""
    try:
        sampler = TrainBatchSampler(len(dataset), batch_size, seed, rank, world_size, *start)
    except ValueError as e:
        raise TrainingError(str(e)) from None
    return DataLoader(
        SeededSamples(dataset, dataset.transform),
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=init_loader_worker,
        # Its own generator, so starting the loader never draws from the global RNG (exact resume).
        generator=torch.Generator().manual_seed(seed + rank),
    )


def batches(run: Run) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless training batches from the data position the run is at."""
    t = run.cfg.train
    loader = train_loader(
        run.train_set,
        t.batch_size,
        t.seed,
        int(run.cfg.dataset.num_workers),
        run.device.type == "cuda",
        run.rank,
        run.world_size,
        run.sampler_start,
    )
    run.sampler = loader.batch_sampler
    return iter(loader)


# ---------------------------------------------------------------------------------------------
# The steps of the loop
# ---------------------------------------------------------------------------------------------


def train_step(run: Run, images: torch.Tensor, masks: torch.Tensor) -> float:
    """One SGD step on a batch (uint8 images [N,3,H,W], int64 masks [N,H,W]); returns the loss
    (the mean over the global batch). A stop signal on any rank is shared with all of them here."""
    images = images.to(run.device, non_blocking=True)
    masks = masks.to(run.device, non_blocking=True).long()
    x = run.model.normalize(images).contiguous(memory_format=run.memory_format)
    with run.autocast:
        logits, aux_logits = run.train_net(x)
        teacher_logits = None
        if run.teacher is not None:  # on the same augmented crops, normalised as the teacher was trained
            with torch.no_grad():
                teacher_logits = run.teacher(run.teacher.normalize(images))
    loss_sum, norm = run.loss(logits, aux_logits, masks, teacher_logits)
    stats = torch.stack(
        [
            loss_sum.detach().double(),
            norm.detach().double(),
            torch.tensor(float(run.stop_signal), dtype=torch.float64, device=loss_sum.device),
        ]
    )
    if run.world_size > 1:
        dist.all_reduce(stats)
        if stats[2] > 0 and not run.stop_signal:
            run.stop_signal = signal.SIGTERM  # another rank was told to stop: stop together
    loss_value = (stats[0] / stats[1].clamp(min=1)).item()
    if not math.isfinite(loss_value):
        raise TrainingError(
            f"loss is {loss_value} at iteration {run.iteration + 1}: stopped; the last good checkpoint is "
            f"{run.checkpoint_dir / 'last.pt'} (try a lower train.lr or train.warmup_iters)"
        )
    # DDP averages gradients over ranks, hence `* world_size`: the gradient is that of the mean over
    # the whole global batch.
    loss = loss_sum / stats[1].clamp(min=1).to(loss_sum.dtype) * run.world_size
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.iteration += 1
    return loss_value


@torch.inference_mode()
def _prediction_grid(model: Segmenter, dataset: Dataset, count: int, device: torch.device) -> np.ndarray:
    """Input | ground truth | prediction for the first `count` val images (TensorBoard)."""
    was_training = model.training
    model.eval()
    images, gts, preds = [], [], []
    for i in range(min(count, len(dataset))):  # type: ignore[arg-type]
        image, mask = dataset[i]
        logits = model(model.normalize(image[None].to(device)))
        images.append(image.permute(1, 2, 0).numpy())
        gts.append(mask.numpy())
        preds.append(logits.argmax(1)[0].cpu().numpy())
    model.train(was_training)
    return image_grid(images, gts, preds)


def evaluate_and_log(run: Run) -> bool:
    """Val mIoU at the current iteration, to the log and TensorBoard; returns whether it is the
    best so far."""
    t = run.cfg.train
    metrics = evaluate(
        run.model,
        run.val_set,
        int(run.cfg.model.num_classes),
        int(run.cfg.dataset.ignore_index),
        device=run.device,
        max_images=t.eval_max_images,
        progress=False,
    )
    it = run.iteration
    if run.writer is not None:
        run.writer.add_scalar("val/miou", metrics["miou"], it)
        run.writer.add_scalar("val/pixel_accuracy", metrics["pixel_accuracy"], it)
        for name, iou in zip(run.cfg.dataset.class_names, metrics["per_class_iou"]):
            run.writer.add_scalar(f"val/iou/{name}", iou, it)
        if t.vis_images > 0:
            grid = _prediction_grid(run.model, run.val_set, t.vis_images, run.device)
            run.writer.add_image("val/input_gt_prediction", grid, it, dataformats="HWC")
        log.info("iteration %d: val mIoU %.4f, pixel accuracy %.4f", it, metrics["miou"], metrics["pixel_accuracy"])
    _train_mode(run.net, freeze_bn(run.cfg.train, run.cfg.model))  # evaluation leaves every module in training mode
    run.last_metrics, run.last_eval_iteration = metrics, it
    if metrics["miou"] > run.best_miou:
        run.best_miou, run.best_iteration = metrics["miou"], it
        return True
    return False


def _all_finite(*states: dict) -> bool:
    """Whether every float tensor in these (nested) state dicts is finite."""

    def tensors(obj: Any):
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, dict):
            for v in obj.values():
                yield from tensors(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                yield from tensors(v)

    return all(bool(torch.isfinite(x).all()) for s in states for x in tensors(s) if x.is_floating_point())


def save(run: Run, best: bool = False) -> None:
    """`checkpoints/last.pt` (and `best.pt`): everything `restore` needs to continue exactly.
    Written atomically; weights that are not finite are never written over the last good file."""
    if run.qat:  # a plain segmenter's state, and the quantizers' ranges beside it
        model_state, qat_state = run.model.float_state_dict(), run.model.quantizer_state_dict()
    else:
        model_state, qat_state = run.model.state_dict(), None
    optimizer_state = run.optimizer.state_dict()
    last = run.checkpoint_dir / "last.pt"
    if not _all_finite(model_state, optimizer_state, qat_state or {}):
        raise TrainingError(
            f"non-finite weights at iteration {run.iteration}: stopped without overwriting the last "
            f"good checkpoint {last} (try a lower train.lr or train.warmup_iters)"
        )
    rngs = [rng_state()]
    if run.world_size > 1:
        rngs = [None] * run.world_size
        dist.all_gather_object(rngs, rng_state())
    if not run.main:
        return
    epoch, batch = run.sampler.position(run.iteration)
    state = {
        "model": model_state,
        "aux_head": run.net.aux.state_dict() if run.net.aux is not None else None,
        "optimizer": optimizer_state,
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "iteration": run.iteration,
        "data": {"epoch": epoch, "batch": batch, "batches_per_epoch": run.sampler.batches_per_epoch},
        "rng": rngs,
        "config": OmegaConf.to_yaml(run.cfg, resolve=True),
        "distill": run.teacher_source,
        "qat": qat_state,
        "metrics": {
            "val": run.last_metrics,
            "best_miou": run.best_miou,
            "best_iteration": run.best_iteration,
            "wall_time_s": run.wall_time,
        },
    }
    save_checkpoint(last, state)
    if best:
        save_checkpoint(run.checkpoint_dir / "best.pt", state)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def finish(run: Run) -> dict:
    """The final metrics (evaluating once more if the last step was not evaluated), written to
    metrics.json; returns them."""
    if run.last_eval_iteration != run.iteration:  # e.g. resumed from a finished run
        evaluate_and_log(run)
    m = run.last_metrics
    result = {
        "miou": m["miou"],
        "per_class_iou": dict(zip(run.cfg.dataset.class_names, m["per_class_iou"])),
        "pixel_accuracy": m["pixel_accuracy"],
        "mean_class_accuracy": m["mean_class_accuracy"],
        "frequency_weighted_iou": m["frequency_weighted_iou"],
        "num_val_images": m["num_images"],
        "iterations": run.iteration,
        "best_miou": run.best_miou,
        "best_iteration": run.best_iteration,
        "wall_time_s": round(run.wall_time, 1),
        "world_size": run.world_size,
    }
    if run.main:
        write_text_atomically(run.run_dir / "metrics.json", json.dumps(_jsonable(result), indent=2) + "\n")
    barrier()
    return result


# ---------------------------------------------------------------------------------------------
# Stopping on a signal
# ---------------------------------------------------------------------------------------------


@contextmanager
def stop_on_signals(run: Run) -> Iterator[None]:
    """While inside: the first SIGINT / SIGTERM asks the loop to stop after the current step; a
    second one stops at once (the default behaviour)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def ask_to_stop(signum: int, _frame: Any) -> None:
        run.stop_signal = signum
        for s, handler in previous.items():  # a second signal: stop now
            signal.signal(s, handler)
        if run.main:
            # Not through logging: the signal may arrive while the main thread is inside a logging
            # call, and re-entering the stream's buffered writer raises. A raw write is safe here.
            os.write(2, f"{signal.Signals(signum).name}: stopping after this step (again to stop at once)\n".encode())

    for s in previous:
        signal.signal(s, ask_to_stop)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _resume_command(run: Run) -> str:
    args = [a for a in sys.argv[1:] if not a.startswith(("hydra.run.dir=", "train.resume=", "hydra.output_subdir="))]
    program = sys.argv[0] if sys.argv else ""
    # `python tools/train.py` (or `python -m seg.commands.train`) from a checkout, `seg-train` installed
    command = ["python", program] if program.endswith(".py") else [Path(program).name or "seg-train"]
    return shlex.join([*command, *args, f"hydra.run.dir={run.run_dir}", "train.resume=auto"])


def _stopped(run: Run) -> Interrupted:
    name = signal.Signals(run.stop_signal).name
    return Interrupted(
        f"stopped by {name} after iteration {run.iteration}: saved {run.checkpoint_dir / 'last.pt'}; resume with: "
        f"{_resume_command(run)}",
        run.stop_signal,
    )


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train as `cfg` says, writing into `run_dir`; returns the final metrics (val mIoU, ...)."""
    run = set_up(cfg, run_dir)
    try:
        restore(run)
        with stop_on_signals(run):
            _loop(run)
        if run.stop_signal:
            raise _stopped(run)
        return finish(run)
    finally:
        run.close()


def _loop(run: Run) -> None:
    t = run.cfg.train
    _train_mode(run.net, freeze_bn(run.cfg.train, run.cfg.model))
    run.started = time.perf_counter()
    window_start, window_images, window_loss, window_count = time.perf_counter(), 0, 0.0, 0
    data = batches(run)
    share = _cpu_threads(run)
    bar = tqdm(
        total=t.max_iters,
        initial=run.iteration,
        desc="train",
        unit="it",
        dynamic_ncols=True,
        disable=not (run.main and t.progress),
    )
    redirect = logging_redirect_tqdm() if run.main and t.progress else nullcontext()
    try:
        with redirect:
            while run.iteration < t.max_iters and not run.stop_signal:
                images, masks = next(data)
                loss_value = train_step(run, images, masks)
                it = run.iteration
                if share is not None and (threads := share.update()) is not None and run.main:
                    log.info(
                        "CPU: other processes use %.1f of %d cores: %d thread%s",
                        share.others,
                        share.cores,
                        threads,
                        "s" if threads > 1 else "",
                    )
                window_images += t.batch_size
                window_loss += loss_value
                window_count += 1
                bar.update(1)
                if run.main and (it % t.log_every == 0 or it == t.max_iters):
                    elapsed = time.perf_counter() - window_start
                    lr = t.lr * run.scheduler.lr_lambdas[0](run.scheduler.last_epoch)  # the head's; backbone: x mult
                    rate = window_images / max(elapsed, 1e-9)
                    mean_loss = window_loss / window_count
                    bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}")
                    run.writer.add_scalar("train/loss", mean_loss, it)
                    run.writer.add_scalar("train/lr", lr, it)
                    run.writer.add_scalar("train/images_per_s", rate, it)
                    log.info("iteration %d/%d: loss %.4f, lr %.2e, %.1f images/s", it, t.max_iters, mean_loss, lr, rate)
                    window_start, window_images, window_loss, window_count = time.perf_counter(), 0, 0.0, 0

                is_best = False
                if (t.eval_every and it % t.eval_every == 0) or it == t.max_iters:
                    is_best = evaluate_and_log(run)
                    window_start = time.perf_counter()  # evaluation time is not training speed
                if (
                    (t.checkpoint_every and it % t.checkpoint_every == 0)
                    or it == t.max_iters
                    or is_best
                    or run.stop_signal
                ):
                    save(run, is_best)
    finally:
        bar.close()
        # An exception's traceback can keep the loader alive past this function: stop its workers now.
        shutdown = getattr(data, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        del data
        if run.writer is not None:
            run.writer.flush()


def _cpu_threads(run: Run) -> Optional[CpuShare]:
    """On a CPU: the fixed `train.cpu_threads`, or a CpuShare that follows the free cores."""
    if run.device.type != "cpu":
        return None
    if run.cfg.train.cpu_threads is not None:
        torch.set_num_threads(int(run.cfg.train.cpu_threads))
        return None
    return CpuShare()
