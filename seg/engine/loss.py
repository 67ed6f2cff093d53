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


def distillation_term(
    logits: torch.Tensor, teacher_logits: torch.Tensor, valid: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Summed over the labelled pixels: temperature^2 x KL(teacher || student) of the per-pixel class
    distributions softened by `temperature` (the T^2 keeps its gradients on the cross-entropy's scale
    whatever the temperature). Pixels labelled ignore (padding, VOC's object outlines) are left out
    with the cross-entropy's, so both terms share one normaliser."""
    student = F.log_softmax(logits.float() / temperature, dim=1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    per_pixel = F.kl_div(student, teacher, reduction="none", log_target=True).sum(dim=1)
    return per_pixel[valid].sum() * temperature**2


class SegmentationLoss:
    """`(logits, aux_logits or None, target, teacher_logits or None) -> (summed loss, normaliser)`:
    the main term, plus `aux_weight` times the auxiliary classifier's, plus `distill_weight` times the
    distillation term (all normalised by the main term's pixels)."""

    def __init__(
        self,
        ignore_index: int,
        class_weights: Optional[Sequence[float]] = None,
        label_smoothing: float = 0.0,
        aux_weight: float = 0.0,
        device: torch.device | str = "cpu",
        distill_weight: float = 0.0,
        temperature: float = 1.0,
    ) -> None:
        self.ignore_index = ignore_index
        self.distill_weight = distill_weight
        self.temperature = temperature
        self.label_smoothing = label_smoothing
        self.aux_weight = aux_weight
        self.weight = None
        if class_weights is not None:
            self.weight = torch.tensor(list(class_weights), dtype=torch.float32, device=device)

    def __call__(
        self,
        logits: torch.Tensor,
        aux_logits: Optional[torch.Tensor],
        target: torch.Tensor,
        teacher_logits: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loss, norm = cross_entropy_terms(logits, target, self.weight, self.ignore_index, self.label_smoothing)
        if aux_logits is not None:
            aux, _ = cross_entropy_terms(aux_logits, target, self.weight, self.ignore_index, self.label_smoothing)
            loss = loss + self.aux_weight * aux
        if teacher_logits is not None:
            distill = distillation_term(logits, teacher_logits, target != self.ignore_index, self.temperature)
            loss = loss + self.distill_weight * distill
        return loss, norm
