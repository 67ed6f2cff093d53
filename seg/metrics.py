"""Segmentation metrics from one confusion matrix accumulated over a whole split.

This is the official PASCAL VOC protocol: pixels of every image go into a single matrix and IoU is
computed once at the end. Averaging per-image IoUs gives a different (and not comparable) number.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from seg.data.classes import IGNORE_INDEX


class ConfusionMatrix:
    """``num_classes x num_classes`` int64 pixel counts; rows = ground truth, cols = prediction."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, device: torch.device | str = "cpu") -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.mat.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add class-index predictions and targets of the same shape ([N,H,W] or [H,W])."""
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        n = self.num_classes
        pred = pred.reshape(-1).to(device=self.mat.device, dtype=torch.int64)
        target = target.reshape(-1).to(device=self.mat.device, dtype=torch.int64)
        # Ignore pixels and any out-of-range target label are left out of the count.
        keep = (target != self.ignore_index) & (target >= 0) & (target < n)
        target, pred = target[keep], pred[keep]
        # An out-of-range prediction is a bug upstream; dropping it would hide errors.
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= n):
            raise ValueError(f"predictions must lie in [0, {n}), got range [{int(pred.min())}, {int(pred.max())}]")
        idx = target * n + pred
        self.mat += torch.bincount(idx, minlength=n * n).reshape(n, n)

    def all_reduce(self) -> None:
        """Sum the matrix over all ranks (no-op when torch.distributed is not initialised)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        # NCCL cannot reduce CPU tensors; move to this rank's GPU for the reduction and back.
        if dist.get_backend() == "nccl" and self.mat.device.type != "cuda":
            buf = self.mat.cuda()
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            self.mat.copy_(buf.cpu())
        else:
            dist.all_reduce(self.mat, op=dist.ReduceOp.SUM)

    def compute(self) -> dict:
        """Metrics as plain Python values (JSON-serialisable apart from NaN)."""
        h = self.mat.detach().to("cpu", torch.float64)
        tp = torch.diag(h)
        gt = h.sum(dim=1)
        pr = h.sum(dim=0)
        total = h.sum()
        union = gt + pr - tp
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        # A class absent from both ground truth and prediction has no IoU: NaN, left out of mIoU.
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        class_acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
        if total > 0:
            pixel_acc = (tp.sum() / total).item()
            freq = gt / total
            valid = union > 0
            fwiou = (freq[valid] * iou[valid]).sum().item()
        else:
            pixel_acc = fwiou = math.nan
        return {
            "per_class_iou": iou.tolist(),
            "miou": _nanmean(iou),
            "pixel_accuracy": pixel_acc,
            "mean_class_accuracy": _nanmean(class_acc),
            "frequency_weighted_iou": fwiou,
            "confusion_matrix": self.mat.detach().cpu().tolist(),
        }


def _nanmean(x: torch.Tensor) -> float:
    valid = ~torch.isnan(x)
    return x[valid].mean().item() if valid.any() else math.nan
