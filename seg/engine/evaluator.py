"""Evaluation as DeepLab does it: each image at its full size, optionally at several scales and
left-right flipped; one confusion matrix over the whole split gives the official mIoU.

Multi-scale + flip: the logits of every scale (and of the flipped image, flipped back) are resized
bilinearly to the original image size, softmaxed, and the probabilities averaged before the
argmax.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from seg.data import build_dataset
from seg.data.classes import IGNORE_INDEX
from seg.data.transforms import build_eval_transform
from seg.engine.checkpoint import load_segmenter
from seg.engine.distributed import get_rank, get_world_size, is_main_process
from seg.flops import MultiplyAddCounter, count_evaluation, scaled_size
from seg.metrics import ConfusionMatrix
from seg.viz import confusion_matrix_figure, overlay, save_confusion_matrix_png, save_palette_png

# Called once per image with (index in the dataset, image uint8 [3,H,W], prediction int64 [H,W],
# ground truth int64 [H,W]); eval uses it to write prediction PNGs.
PredictionCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


@torch.inference_mode()
def predict_probs(
    model: nn.Module, image: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False
) -> torch.Tensor:
    """Class probabilities [N, C, H, W] for a normalised float batch [N, 3, H, W].

    With `scales=[1.0]` and `flip=False` this is softmax of one forward pass, so its argmax is the
    argmax of the plain model's logits.
    """
    height, width = image.shape[-2:]
    total: Optional[torch.Tensor] = None
    for scale in scales:
        x = image
        if scale != 1.0:
            size = (scaled_size(height, scale), scaled_size(width, scale))
            x = F.interpolate(image, size=size, mode="bilinear", align_corners=getattr(model, "align_corners", False))
        # The flipped copy gets a pass of its own: batching it with the original was measured slower
        # at 513x513 and above (activations twice the size fall out of cache) and doubles peak memory.
        inputs = [x, x.flip(-1)] if flip else [x]
        for i, inp in enumerate(inputs):
            logits = model(inp, output_size=(height, width))
            if i == 1:
                logits = logits.flip(-1)
            probs = logits.float().softmax(dim=1)
            total = probs if total is None else total.add_(probs)  # in place: no new full-size buffer
    assert total is not None, "scales must not be empty"
    return total / (len(scales) * (2 if flip else 1))


def _shard(dataset: Dataset, max_images: Optional[int]) -> Dataset:
    """The first `max_images` items, split between ranks without padding (no image counted twice)."""
    indices = list(range(len(dataset)))  # type: ignore[arg-type]
    if max_images is not None:
        indices = indices[:max_images]
    return Subset(dataset, indices[get_rank() :: get_world_size()])


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    device: str | torch.device = "cpu",
    max_images: Optional[int] = None,
    progress: bool = True,
    num_workers: int = 0,
    on_prediction: Optional[PredictionCallback] = None,
    pad_to: Optional[int] = None,
) -> dict:
    """Evaluate `model` on `dataset` (items: image uint8 [3,H,W], mask int64 [H,W]), one image at a
    time at full size. Under torchrun each rank takes a share and the matrices are summed.

    `pad_to`: pad each image at the bottom and right to this square size with the mean pixel (0
    once normalised) and crop the prediction back, as TF DeepLab evaluates on its 513x513 crop.

    Returns the `ConfusionMatrix.compute()` metrics plus `seconds_per_image` and `num_images`.
    """
    was_training = model.training
    model.eval()
    shard = _shard(dataset, max_images)
    loader = DataLoader(shard, batch_size=1, shuffle=False, num_workers=num_workers)
    matrix = ConfusionMatrix(num_classes, ignore_index, device=device)
    bar = tqdm(loader, desc="eval", unit="img", disable=not (progress and is_main_process()), dynamic_ncols=True)
    seconds, count = 0.0, 0
    with MultiplyAddCounter(model) as counter:  # what the evaluated images really cost
        seconds, count = _evaluate_images(model, bar, shard, matrix, device, scales, flip, pad_to, on_prediction)
    model.train(was_training)

    matrix.all_reduce()
    totals = torch.tensor([seconds, float(count), float(counter.total)], dtype=torch.float64)
    if get_world_size() > 1:
        torch.distributed.all_reduce(totals)
    metrics = matrix.compute()
    metrics["num_images"] = int(totals[1].item())
    metrics["seconds_per_image"] = totals[0].item() / max(1.0, totals[1].item())
    metrics["multiply_adds_per_image"] = totals[2].item() / max(1.0, totals[1].item())
    metrics["device"] = torch.device(device).type
    return metrics


def _evaluate_images(model, bar, shard, matrix, device, scales, flip, pad_to, on_prediction) -> tuple[float, int]:
    """The loop of `evaluate`: predictions into `matrix`; returns (seconds, images)."""
    seconds, count = 0.0, 0
    for position, (image, mask) in enumerate(bar):
        image, mask = image.to(device), mask.to(device)
        start = time.perf_counter()
        x = model.normalize(image)
        height, width = x.shape[-2:]
        if pad_to is not None:
            if max(height, width) > pad_to:
                raise ValueError(f"eval.pad_to={pad_to} is smaller than image {position} ({height}x{width})")
            x = F.pad(x, (0, pad_to - width, 0, pad_to - height))
        probs = predict_probs(model, x, scales, flip)
        pred = probs[..., :height, :width].argmax(dim=1)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        count += 1
        matrix.update(pred, mask)
        if on_prediction is not None:
            on_prediction(shard.indices[position], image[0].cpu(), pred[0].cpu(), mask[0].cpu())
    return seconds, count


def _published_row(cfg: DictConfig, metrics: dict, model: nn.Module, checkpoint: Path) -> dict:
    """The summary in the published DeepLab table's form: multiply-adds per image as evaluated
    (the images' own sizes), and those of the published table's square crop (`flops.input_size`)."""
    output_stride = model.output_stride
    crop = count_evaluation(model, cfg.flops.input_size, list(cfg.eval.scales), cfg.eval.flip)["madds"]
    return {
        "checkpoint": checkpoint.name,
        "eval_os": output_stride,
        "scales": list(cfg.eval.scales),
        "flip": bool(cfg.eval.flip),
        "multiply_adds": metrics["multiply_adds_per_image"],
        "multiply_adds_crop": crop,
        "crop_size": int(cfg.flops.input_size),
        "device": metrics["device"],
        "seconds_per_image": metrics["seconds_per_image"],
        "miou": metrics["miou"],
        "file_mb": checkpoint.stat().st_size / 2**20,
    }


def run_evaluation(cfg: DictConfig, run_dir: str | Path, keep_dataset: bool = False) -> dict:
    """`tools/eval.py`: evaluate `cfg.checkpoint` on its val split and write the reports.

    The model comes from the checkpoint's own config; the dataset too, unless `keep_dataset`
    (the user gave `dataset...` overrides). `cfg.eval` says how to evaluate.
    """
    if not cfg.checkpoint:
        raise ValueError("checkpoint=PATH is required: the checkpoint to evaluate")
    checkpoint = Path(cfg.checkpoint)
    model, stored = load_segmenter(checkpoint)
    dataset_cfg = cfg.dataset if keep_dataset else stored.dataset
    dataset = build_dataset(dataset_cfg, "val", build_eval_transform())
    output_stride = cfg.eval.output_stride or stored.model.output_stride
    model.set_output_stride(output_stride)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)

    run_dir = Path(run_dir)
    on_prediction = None
    if cfg.eval.save_predictions:
        out = run_dir / "predictions"
        out.mkdir(parents=True, exist_ok=True)

        def on_prediction(index: int, image: torch.Tensor, pred: torch.Tensor, _gt: torch.Tensor) -> None:
            name = dataset.names[index]
            mask = pred.to(torch.uint8).numpy()
            save_palette_png(mask, out / f"{name}.png")
            Image.fromarray(overlay(image.permute(1, 2, 0).numpy(), mask)).save(out / f"{name}_overlay.jpg", quality=90)

    metrics = evaluate(
        model,
        dataset,
        num_classes=stored.model.num_classes,
        ignore_index=dataset_cfg.ignore_index,
        scales=list(cfg.eval.scales),
        flip=cfg.eval.flip,
        device=device,
        max_images=cfg.eval.max_images,
        on_prediction=on_prediction,
        pad_to=cfg.eval.pad_to,
    )
    if not is_main_process():
        return metrics
    model.cpu()
    row = _published_row(cfg, metrics, model, checkpoint)
    class_names = list(dataset_cfg.class_names)
    report = {
        **metrics,
        "output_stride": output_stride,
        "scales": row["scales"],
        "flip": row["flip"],
        "checkpoint": str(checkpoint),
        "multiply_adds": row["multiply_adds"],
        "multiply_adds_crop": row["multiply_adds_crop"],
        "class_names": class_names,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    save_confusion_matrix_png(metrics["confusion_matrix"], class_names, run_dir / "confusion_matrix.png")
    with SummaryWriter(str(run_dir)) as writer:
        writer.add_scalar("eval/miou", metrics["miou"])
        writer.add_scalar("eval/pixel_accuracy", metrics["pixel_accuracy"])
        for name, iou in zip(class_names, metrics["per_class_iou"]):
            writer.add_scalar(f"eval/iou/{name}", iou)
        writer.add_figure("eval/confusion_matrix", confusion_matrix_figure(metrics["confusion_matrix"], class_names))
    print(format_report(metrics, class_names, row))
    print(f"run directory: {run_dir}")
    return report


def format_report(metrics: dict, class_names: Sequence[str], row: dict) -> str:
    """Per-class IoU table and the one-row summary in the published table's columns."""
    lines = [f"{'class':<16}{'IoU':>8}"]
    for name, iou in zip(class_names, metrics["per_class_iou"]):
        lines.append(f"{name:<16}{'n/a' if math.isnan(iou) else f'{100 * iou:.2f}':>8}")
    lines.append(
        f"{'mIoU':<16}{100 * metrics['miou']:>8.2f}   pixel acc {100 * metrics['pixel_accuracy']:.2f}   "
        f"mean class acc {100 * metrics['mean_class_accuracy']:.2f}   "
        f"fwIoU {100 * metrics['frequency_weighted_iou']:.2f}"
    )
    scales = ",".join(f"{s:g}" for s in row["scales"])
    lines += [
        "",
        "| Checkpoint | Eval OS | Eval scales | Flip | Multiply-adds / image | "
        f"at {row['crop_size']}x{row['crop_size']} | {row['device'].upper()} s / image | mIoU | File |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {row['checkpoint']} | {row['eval_os']} | {scales} | {'yes' if row['flip'] else 'no'} | "
        f"{row['multiply_adds'] / 1e9:.2f}B | {row['multiply_adds_crop'] / 1e9:.2f}B | "
        f"{row['seconds_per_image']:.3f} | {100 * row['miou']:.2f}% | {row['file_mb']:.1f}MB |",
    ]
    return "\n".join(lines)
