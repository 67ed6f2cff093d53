"""The training loop behind `tools/train.py`.

One function, `train(cfg, run_dir)`, in the order things happen: devices and seeds, data, model,
optimizer, resume, then the loop (forward, loss, backward, step; log, evaluate, checkpoint). Under
torchrun every rank runs it; rank 0 alone logs and writes files.

The run directory gets `train.log` (Hydra's job log), TensorBoard events, `checkpoints/last.pt` and
`best.pt`, and `metrics.json`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from seg.data import build_dataset
from seg.data.transforms import build_eval_transform, build_train_transform, normalize
from seg.engine.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from seg.engine.distributed import barrier, convert_sync_batchnorm, init_distributed
from seg.engine.evaluator import evaluate
from seg.errors import SegError
from seg.engine.sampling import SeededSamples, SeededTransform, TrainBatchSampler
from seg.engine.schedule import build_scheduler
from seg.models.segmenter import build_segmenter
from seg.viz import image_grid

log = logging.getLogger(__name__)


class TrainingError(SegError, RuntimeError):
    """A run that cannot go on (bad setting, non-finite loss); tools print it as one line."""


# ---------------------------------------------------------------------------------------------
# Setup helpers
# ---------------------------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    # torch gives each worker its own seed; numpy and random would otherwise be copies of the parent's.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


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


def _device(cfg: DictConfig, local_rank: int) -> torch.device:
    if cfg.train.device != "auto":
        return torch.device(cfg.train.device)
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def _amp_dtype(train_cfg: DictConfig) -> torch.dtype:
    name = getattr(train_cfg.amp_dtype, "value", train_cfg.amp_dtype)
    return torch.float16 if name == "float16" else torch.bfloat16


def _checkpoint_path(value: Optional[str], key: str) -> Optional[Path]:
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{key}: checkpoint not found: {path}")
    return path


def _check_settings(cfg: DictConfig, world_size: int) -> None:
    t = cfg.train
    problems = []
    if t.max_iters <= 0:
        problems.append(f"train.max_iters={t.max_iters} must be > 0")
    elif not 0 <= t.warmup_iters < t.max_iters:
        problems.append(f"train.warmup_iters={t.warmup_iters} must be in [0, train.max_iters={t.max_iters})")
    if t.batch_size <= 0 or t.batch_size % world_size:
        problems.append(f"train.batch_size={t.batch_size} must divide evenly between {world_size} processes")
    if t.class_weights is not None and len(t.class_weights) != cfg.model.num_classes:
        problems.append(f"train.class_weights has {len(t.class_weights)} values for {cfg.model.num_classes} classes")
    if problems:
        raise TrainingError("; ".join(problems))


def _resume_path(cfg: DictConfig, run_dir: Path) -> Optional[Path]:
    if cfg.train.resume != "auto":
        return _checkpoint_path(cfg.train.resume, "train.resume")
    path = run_dir / "checkpoints" / "last.pt"
    if not path.is_file():
        log.info("train.resume=auto: no %s yet, starting from scratch", path)
        return None
    return path


class AuxHead(nn.Module):
    """Auxiliary classifier on the backbone's stride-8 features (training only, off by default)."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 128) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class TrainNet(nn.Module):
    """The segmenter plus the optional auxiliary head; returns `(logits, aux_logits or None)`.

    One module so that DDP synchronises the gradients of both. The auxiliary head reads the
    backbone's output through a forward hook, leaving the segmenter's own forward untouched.
    """

    def __init__(self, model: nn.Module, aux: Optional[nn.Module]) -> None:
        super().__init__()
        self.model, self.aux = model, aux
        self._features: Optional[torch.Tensor] = None
        if aux is not None:
            model.backbone.register_forward_hook(self._keep_features)

    def _keep_features(self, _module: nn.Module, _inputs: Any, outputs: dict) -> None:
        self._features = outputs["mid_level"]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        logits = self.model(x)
        if self.aux is None:
            return logits, None
        aux = self.aux(self._features)
        self._features = None
        return logits, F.interpolate(aux, size=x.shape[-2:], mode="bilinear", align_corners=False)


# Model settings that change what the weights compute without changing their shapes.
_NUMERICS = ("normalization", "align_corners", "backbone.tf_same_padding", "backbone.bn_eps")


def _load_init(model: nn.Module, path: Path, model_cfg: DictConfig) -> None:
    """Fine-tuning start: model weights from a checkpoint; classifiers of another class count are
    dropped (re-initialised)."""
    state = load_checkpoint(path)
    weights = state["model"] if isinstance(state.get("model"), dict) else state
    if isinstance(state.get("config"), str):
        stored = OmegaConf.create(state["config"]).get("model", {})

        def value(cfg: Any, key: str) -> Any:
            v = OmegaConf.select(cfg, key, default=None)
            return getattr(v, "value", v)  # enums as their names

        differ = [k for k in _NUMERICS if value(stored, k) is not None and value(stored, k) != value(model_cfg, k)]
        if differ:
            # e.g. a converted TF DeepLab checkpoint (x/127.5 - 1, SAME padding) into a default model
            log.warning("train.init_from: %s was trained with other %s: set %s as it has them, or expect a "
                        "rough start", path, ", ".join(differ),
                        " ".join(f"model.{k}={value(stored, k)}" for k in differ))
    own = model.state_dict()
    dropped, mismatched = [], []
    for key, value in weights.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            (dropped if key.startswith("head.") and "classifier" in key else mismatched).append(key)
    if mismatched:
        raise CheckpointError(
            f"train.init_from: {path} does not fit the model: shape mismatch for {', '.join(mismatched[:5])}"
            + (f" and {len(mismatched) - 5} more" if len(mismatched) > 5 else "")
        )
    kept = {k: v for k, v in weights.items() if k not in dropped}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    if set(missing) - set(dropped) or unexpected:
        bad = sorted(set(missing) - set(dropped))[:5] + sorted(unexpected)[:5]
        raise CheckpointError(f"train.init_from: {path} does not fit the model: missing or unexpected {', '.join(bad)}")
    if dropped:
        log.info("train.init_from: %s has %d classes, this model %d: re-initialised %s", path,
                 weights[dropped[0]].shape[0], own[dropped[0]].shape[0], ", ".join(dropped))
    else:
        log.info("train.init_from: loaded all model weights from %s", path)


def _param_groups(net: TrainNet, cfg: DictConfig) -> list[dict]:
    """Backbone at `lr * backbone_lr_mult`, the rest at `lr`; weight decay on conv/linear weights
    only, as DeepLab (slim regularises kernels, not batch-norm parameters or biases)."""
    t = cfg.train
    backbone = {id(p) for p in net.model.backbone.parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in net.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in backbone, p.ndim > 1), []).append(p)
    out = []
    for (is_backbone, decay), params in sorted(groups.items()):
        out.append({"params": params, "lr": t.lr * (t.backbone_lr_mult if is_backbone else 1.0),
                    "weight_decay": t.weight_decay if decay else 0.0})
    return out


def _loss_terms(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor], ignore_index: int,
                label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and its normaliser (the number, or total class weight, of labelled
    pixels). Kept apart so the normaliser can be summed over ranks: the loss is then the mean over
    the global batch, the same whether one process or several compute it."""
    loss = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index, reduction="sum",
                           label_smoothing=label_smoothing)
    valid = target != ignore_index
    norm = weight[target[valid]].sum() if weight is not None else valid.sum().float()
    return loss, norm


def _train_mode(net: nn.Module, freeze_bn: bool) -> None:
    net.train()
    if freeze_bn:
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


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


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


@torch.inference_mode()
def _prediction_grid(model: nn.Module, dataset, count: int, normalization: str, device: torch.device) -> np.ndarray:
    """Input | ground truth | prediction for the first `count` val images (TensorBoard)."""
    was_training = model.training
    model.eval()
    images, gts, preds = [], [], []
    for i in range(min(count, len(dataset))):
        image, mask = dataset[i]
        logits = model(normalize(image[None].to(device), normalization))
        images.append(image.permute(1, 2, 0).numpy())
        gts.append(mask.numpy())
        preds.append(logits.argmax(1)[0].cpu().numpy())
    model.train(was_training)
    return image_grid(images, gts, preds)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train as `cfg` says, writing into `run_dir`; returns the final metrics (val mIoU, ...)."""
    t = cfg.train
    run_dir = Path(run_dir)
    rank, world_size, local_rank = init_distributed()
    main = rank == 0
    if not main:
        logging.getLogger().setLevel(logging.WARNING)  # one voice: rank 0's
    device = _device(cfg, local_rank)
    _set_determinism(t.deterministic)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not t.deterministic
    if main:
        # Hydra saves the config with its interpolations; keep the resolved values too.
        if (run_dir / ".hydra").is_dir():
            (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        log.info("run directory: %s (device %s, %d process%s)", run_dir, device, world_size,
                 "es" if world_size > 1 else "")

    # Fail on missing files before anything heavy.
    resume_path = _resume_path(cfg, run_dir)
    init_path = None if resume_path else _checkpoint_path(t.init_from, "train.init_from")
    _check_settings(cfg, world_size)

    # Data (before the model: a missing dataset fails first).
    transform = SeededTransform(build_train_transform(
        t.crop_size, t.scale_min, t.scale_max, t.scale_step, t.flip, cfg.dataset.ignore_index, jitter=t.jitter))
    train_set = build_dataset(cfg.dataset, "train", transform)
    val_set = build_dataset(cfg.dataset, "val", build_eval_transform())
    num_classes = int(cfg.model.num_classes)
    if main:
        log.info("data: %s, %d train / %d val images, %d classes", getattr(cfg.dataset.name, "value", cfg.dataset.name),
                 len(train_set), len(val_set), num_classes)

    # Model: the same initial weights on every rank (seeded), then per-rank seeds (dropout).
    _seed_everything(t.seed)
    model = build_segmenter(cfg.model)
    aux = AuxHead(model.backbone.channels["mid_level"], num_classes) if t.aux_loss_weight > 0 else None
    net = TrainNet(model, aux)
    if init_path is not None:
        _load_init(model, init_path, cfg.model)
    if t.sync_bn and world_size > 1 and not t.freeze_bn:
        if device.type == "cpu":
            # torch's SyncBatchNorm runs on GPUs only.
            if main:
                log.warning("train.sync_bn: not available on CPU; each process normalises its own share of the batch")
        else:
            net = convert_sync_batchnorm(net)
            model = net.model
    net.to(device)
    cuda = device.type == "cuda"
    memory_format = torch.channels_last if (t.channels_last and cuda) else torch.contiguous_format
    net.to(memory_format=memory_format)
    if main:
        n_params = sum(p.numel() for p in model.parameters())
        log.info("model: %s + %s, output stride %d, %.2fM parameters", cfg.model.backbone._target_.rsplit(".", 1)[-1],
                 cfg.model.head._target_.rsplit(".", 1)[-1], cfg.model.output_stride, n_params / 1e6)

    optimizer = torch.optim.SGD(_param_groups(net, cfg), lr=t.lr, momentum=t.momentum)
    scheduler = build_scheduler(optimizer, t.max_iters, t.poly_power, t.warmup_iters, t.warmup_factor)
    amp_dtype = _amp_dtype(t)
    use_amp = bool(t.amp) and cuda
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    class_weights = None
    if t.class_weights is not None:
        class_weights = torch.tensor(list(t.class_weights), dtype=torch.float32, device=device)

    # Resume: everything that decides what comes next.
    start_iter, best_miou, best_iter, wall_before = 0, -1.0, 0, 0.0
    data_pos = (0, 0)
    rng_states = None
    if resume_path is not None:
        state = load_checkpoint(resume_path)
        model.load_state_dict(state["model"])
        if aux is not None and state.get("aux_head") is not None:
            aux.load_state_dict(state["aux_head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_iter = int(state["iteration"])
        data_pos = (int(state["data"]["epoch"]), int(state["data"]["batch"]))
        best_miou = float(state["metrics"].get("best_miou", -1.0))
        best_iter = int(state["metrics"].get("best_iteration", 0))
        wall_before = float(state["metrics"].get("wall_time_s", 0.0))
        rng_states = state["rng"]
        if main:
            log.info("resumed from %s at iteration %d", resume_path, start_iter)

    ddp = world_size > 1
    train_net: nn.Module = net
    if ddp:
        train_net = DistributedDataParallel(net, device_ids=[device.index] if cuda else None)
    if t.compile:
        train_net = torch.compile(train_net)

    try:
        sampler = TrainBatchSampler(len(train_set), t.batch_size, t.seed, rank, world_size, *data_pos)
    except ValueError as e:
        raise TrainingError(str(e)) from e
    workers = int(cfg.dataset.num_workers)
    loader = DataLoader(
        SeededSamples(train_set, transform), batch_sampler=sampler, num_workers=workers, pin_memory=cuda,
        persistent_workers=workers > 0, worker_init_fn=_seed_worker,
        # Its own generator, so starting the loader never draws from the global RNG (exact resume).
        generator=torch.Generator().manual_seed(t.seed + rank),
    )

    # Per-rank random streams (dropout), restored on resume so the run continues bit for bit.
    _seed_everything(t.seed + rank)
    if rng_states is not None:
        if len(rng_states) == world_size:
            set_rng_state(rng_states[rank])
        elif main:
            log.warning("checkpoint has RNG states of %d processes, this run %d: reseeded", len(rng_states), world_size)

    writer = SummaryWriter(str(run_dir), purge_step=start_iter if start_iter else None) if main else None
    normalization = cfg.model.normalization
    ignore_index = int(cfg.dataset.ignore_index)
    class_names = list(cfg.dataset.class_names)
    ckpt_dir = run_dir / "checkpoints"
    last_metrics: Optional[dict] = None
    last_eval_iter = -1

    def run_eval(it: int) -> dict:
        metrics = evaluate(model, val_set, normalization, num_classes, ignore_index, device=device,
                           max_images=t.eval_max_images, progress=False)
        if writer is not None:
            writer.add_scalar("val/miou", metrics["miou"], it)
            writer.add_scalar("val/pixel_accuracy", metrics["pixel_accuracy"], it)
            for name, iou in zip(class_names, metrics["per_class_iou"]):
                writer.add_scalar(f"val/iou/{name}", iou, it)
            if t.vis_images > 0:
                grid = _prediction_grid(model, val_set, t.vis_images, normalization, device)
                writer.add_image("val/input_gt_prediction", grid, it, dataformats="HWC")
            log.info("iteration %d: val mIoU %.4f, pixel accuracy %.4f", it, metrics["miou"], metrics["pixel_accuracy"])
        _train_mode(net, t.freeze_bn)  # evaluation leaves every module in training mode
        return metrics

    def save(it: int, wall: float, best: bool) -> None:
        model_state, optimizer_state = model.state_dict(), optimizer.state_dict()
        if not _all_finite(model_state, optimizer_state):
            raise TrainingError(f"non-finite weights at iteration {it}: stopped without overwriting the last good "
                                f"checkpoint {ckpt_dir / 'last.pt'} (try a lower train.lr or train.warmup_iters)")
        rngs = [rng_state()]
        if ddp:
            rngs = [None] * world_size
            dist.all_gather_object(rngs, rng_state())
        if not main:
            return
        epoch, batch = sampler.position(it)
        state = {
            "model": model_state,
            "aux_head": aux.state_dict() if aux is not None else None,
            "optimizer": optimizer_state,
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "iteration": it,
            "data": {"epoch": epoch, "batch": batch, "batches_per_epoch": sampler.batches_per_epoch},
            "rng": rngs,
            "config": OmegaConf.to_yaml(cfg, resolve=True),
            "metrics": {"val": last_metrics, "best_miou": best_miou, "best_iteration": best_iter,
                        "wall_time_s": wall},
        }
        save_checkpoint(ckpt_dir / "last.pt", state)
        if best:
            save_checkpoint(ckpt_dir / "best.pt", state)

    # ---- the loop ----
    _train_mode(net, t.freeze_bn)
    it = start_iter
    start_time = time.perf_counter()
    window_start, window_images, window_loss, window_count = time.perf_counter(), 0, 0.0, 0
    batches = iter(loader)
    bar = tqdm(total=t.max_iters, initial=start_iter, desc="train", unit="it", dynamic_ncols=True,
               disable=not (main and t.progress))
    redirect = logging_redirect_tqdm() if main and t.progress else nullcontext()
    autocast = torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp)
    try:
        with redirect:
            while it < t.max_iters:
                images, masks = next(batches)
                images = images.to(device, non_blocking=True)
                masks = masks.to(device, non_blocking=True).long()
                x = normalize(images, normalization).contiguous(memory_format=memory_format)
                with autocast:
                    logits, aux_logits = train_net(x)
                loss_sum, norm = _loss_terms(logits, masks, class_weights, ignore_index, t.label_smoothing)
                if aux_logits is not None:
                    loss_sum = loss_sum + t.aux_loss_weight * _loss_terms(
                        aux_logits, masks, class_weights, ignore_index, t.label_smoothing)[0]
                stats = torch.stack([loss_sum.detach(), norm.detach()]).double()
                if ddp:
                    dist.all_reduce(stats)
                loss_value = (stats[0] / stats[1].clamp(min=1)).item()
                if not math.isfinite(loss_value):
                    raise TrainingError(
                        f"loss is {loss_value} at iteration {it + 1}: stopped; the last good checkpoint is "
                        f"{ckpt_dir / 'last.pt'} (try a lower train.lr or train.warmup_iters)")
                # DDP averages gradients over ranks, hence `* world_size`: the gradient is that of the
                # mean over the whole global batch.
                loss = loss_sum / stats[1].clamp(min=1).to(loss_sum.dtype) * world_size
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                it += 1

                window_images += t.batch_size
                window_loss += loss_value
                window_count += 1
                bar.update(1)
                if main and (it % t.log_every == 0 or it == t.max_iters):
                    elapsed = time.perf_counter() - window_start
                    lr = t.lr * scheduler.lr_lambdas[0](scheduler.last_epoch)  # the head's; backbone: x mult
                    rate = window_images / max(elapsed, 1e-9)
                    mean_loss = window_loss / window_count
                    bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}")
                    writer.add_scalar("train/loss", mean_loss, it)
                    writer.add_scalar("train/lr", lr, it)
                    writer.add_scalar("train/images_per_s", rate, it)
                    log.info("iteration %d/%d: loss %.4f, lr %.2e, %.1f images/s", it, t.max_iters, mean_loss, lr, rate)
                    window_start, window_images, window_loss, window_count = time.perf_counter(), 0, 0.0, 0

                is_best = False
                if (t.eval_every and it % t.eval_every == 0) or it == t.max_iters:
                    last_metrics, last_eval_iter = run_eval(it), it
                    if last_metrics["miou"] > best_miou:
                        best_miou, best_iter, is_best = last_metrics["miou"], it, True
                    window_start = time.perf_counter()  # evaluation time is not training speed
                if (t.checkpoint_every and it % t.checkpoint_every == 0) or it == t.max_iters or is_best:
                    save(it, wall_before + time.perf_counter() - start_time, is_best)
    finally:
        bar.close()
        del batches
        if writer is not None:
            writer.flush()

    if last_eval_iter != it:  # e.g. resumed from a finished run
        last_metrics = run_eval(it)
    wall = wall_before + time.perf_counter() - start_time
    result = {
        "miou": last_metrics["miou"],
        "per_class_iou": dict(zip(class_names, last_metrics["per_class_iou"])),
        "pixel_accuracy": last_metrics["pixel_accuracy"],
        "mean_class_accuracy": last_metrics["mean_class_accuracy"],
        "frequency_weighted_iou": last_metrics["frequency_weighted_iou"],
        "num_val_images": last_metrics["num_images"],
        "iterations": it,
        "best_miou": best_miou,
        "best_iteration": best_iter,
        "wall_time_s": round(wall, 1),
        "world_size": world_size,
    }
    if main:
        (run_dir / "metrics.json").write_text(json.dumps(_jsonable(result), indent=2) + "\n")
        writer.close()
    barrier()
    return result


def time_train_steps(model_cfg: DictConfig, train_cfg: DictConfig, crop_size: int, batch_size: int,
                     warmup: int, runs: int) -> tuple[float, str]:
    """Training images/s of one process on random data: the loop's step without data loading, timed
    over `runs` steps after `warmup` (`tools/benchmark.py train`). Returns (images/s, device)."""
    device = _device(OmegaConf.create({"train": {"device": train_cfg.device}}), 0)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = True
    model = build_segmenter(model_cfg).to(device)
    memory_format = torch.channels_last if (train_cfg.channels_last and cuda) else torch.contiguous_format
    model.to(memory_format=memory_format).train()
    net = TrainNet(model, None)
    optimizer = torch.optim.SGD(_param_groups(net, OmegaConf.create({"train": train_cfg})), lr=train_cfg.lr,
                                momentum=train_cfg.momentum)
    amp_dtype = _amp_dtype(train_cfg)
    use_amp = bool(train_cfg.amp) and cuda
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    images = torch.randint(0, 256, (batch_size, 3, crop_size, crop_size), dtype=torch.uint8, device=device)
    masks = torch.randint(0, int(model_cfg.num_classes), (batch_size, crop_size, crop_size), device=device)
    step_fn = torch.compile(net) if train_cfg.compile else net
    seconds = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        x = normalize(images, model_cfg.normalization).contiguous(memory_format=memory_format)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
            logits, _ = step_fn(x)
        loss_sum, norm = _loss_terms(logits, masks, None, 255, 0.0)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss_sum / norm).backward()
        scaler.step(optimizer)
        scaler.update()
        if cuda:
            torch.cuda.synchronize(device)
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    # The median step: robust to the odd slow step on a shared machine.
    return batch_size / float(np.median(seconds)), str(device)
