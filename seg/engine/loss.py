"""The training loss: per-pixel cross-entropy ignoring `ignore_index`, with optional class weights,
label smoothing and an auxiliary term, normalised over the global batch."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def cross_entropy_terms(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: Optional[torch.Tensor],
    ignore_index: int,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and its normaliser (the number, or total class weight, of labelled
    pixels). Kept apart so the normaliser can be summed over ranks: the loss is then the mean over
    the global batch, the same whether one process or several compute it."""
    loss = F.cross_entropy(
        logits.float(),
        target,
        weight=weight,
        ignore_index=ignore_index,
        reduction="sum",
        label_smoothing=label_smoothing,
    )
    valid = target != ignore_index
    norm = weight[target[valid]].sum() if weight is not None else valid.sum().float()
    return loss, norm


class SegmentationLoss:
    """`(logits, aux_logits or None, target) -> (summed loss, normaliser)`: the main term plus
    `aux_weight` times the auxiliary classifier's (normalised by the main term's pixels)."""

    def __init__(
        self,
        ignore_index: int,
        class_weights: Optional[Sequence[float]] = None,
        label_smoothing: float = 0.0,
        aux_weight: float = 0.0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.aux_weight = aux_weight
        self.weight = None
        if class_weights is not None:
            self.weight = torch.tensor(list(class_weights), dtype=torch.float32, device=device)

    def __call__(
        self, logits: torch.Tensor, aux_logits: Optional[torch.Tensor], target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loss, norm = cross_entropy_terms(logits, target, self.weight, self.ignore_index, self.label_smoothing)
        if aux_logits is not None:
            aux, _ = cross_entropy_terms(aux_logits, target, self.weight, self.ignore_index, self.label_smoothing)
            loss = loss + self.aux_weight * aux
        return loss, norm
