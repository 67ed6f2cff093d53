"""Multiply-add and parameter counts, as the DeepLab model zoo reports them.

One multiply-add per weight per output position of every conv and linear layer (bias, batch
norm, activations and resizes are not counted), measured by running the model once per input size
with forward hooks, so whatever the model computes is what is counted.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def count_multiply_adds(model: nn.Module, height: int, width: int) -> int:
    """Multiply-adds of one forward pass of `model` on a 1x3xHxW input."""
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            model(torch.zeros(1, 3, height, width))
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return total


def scaled_size(input_size: int, scale: float) -> int:
    """DeepLab's side length of an input rescaled by `scale`: int((size - 1) * scale) + 1."""
    return int((input_size - 1) * scale) + 1


def count_evaluation(model: nn.Module, input_size: int, scales: Sequence[float] = (1.0,), flip: bool = False) -> dict:
    """Multiply-adds of evaluating one `input_size` square crop over `scales` (x2 with flip)."""
    passes = []
    for s in scales:
        side = scaled_size(input_size, s)
        madds = count_multiply_adds(model, side, side)
        passes.append({"scale": s, "size": side, "madds": madds * (2 if flip else 1)})
    return {"passes": passes, "madds": sum(p["madds"] for p in passes)}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
