"""DeepLab's "poly" learning-rate schedule, stepped once per iteration."""

from __future__ import annotations

from typing import Callable

import torch


def poly_lr_lambda(
    max_iters: int, power: float = 0.9, warmup_iters: int = 0, warmup_factor: float = 0.1
) -> Callable[[int], float]:
    """LR multiplier of iteration ``it`` for ``torch.optim.lr_scheduler.LambdaLR``.

    ``(1 - it / max_iters) ** power``, and 0 from ``max_iters`` on. During the first
    ``warmup_iters`` iterations the multiplier instead ramps linearly from ``warmup_factor``
    (at it = 0) to the poly value at ``warmup_iters``, so there is no jump where warm-up ends.
    """
    if max_iters <= 0:
        raise ValueError(f"max_iters must be > 0, got {max_iters}")
    if not 0 <= warmup_iters < max_iters:
        raise ValueError(f"warmup_iters must be in [0, max_iters), got {warmup_iters}")

    def poly(it: int) -> float:
        return max(0.0, 1.0 - it / max_iters) ** power

    def lr_lambda(it: int) -> float:
        if it >= max_iters:
            return 0.0
        if it < warmup_iters:
            alpha = it / warmup_iters
            return warmup_factor + (poly(warmup_iters) - warmup_factor) * alpha
        return poly(it)

    # A plain function on purpose: LambdaLR leaves functions out of its state_dict, so a resumed
    # run keeps the schedule its config asks for and restores only the step count.
    return lr_lambda


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    max_iters: int,
    power: float = 0.9,
    warmup_iters: int = 0,
    warmup_factor: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` with the poly schedule; call ``scheduler.step()`` after every iteration."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lr_lambda(max_iters, power, warmup_iters, warmup_factor))
