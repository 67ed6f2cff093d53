"""Multiply-add and parameter counts, as the DeepLab model zoo reports them.

One multiply-add per weight per output position of every conv and linear layer (bias, batch
norm, activations and resizes are not counted), measured by running the model once per input size
with forward hooks, so whatever the model computes is what is counted.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class MultiplyAddCounter:
    """Counts the multiply-adds of every forward pass of `model` while inside `with`: `total`."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.total = 0
        self._handles: list = []

    def _conv(self, module: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        kh, kw = module.kernel_size
        self.total += output.numel() * (module.in_channels // module.groups) * kh * kw

    def _linear(self, module: nn.Linear, _inputs: tuple, output: torch.Tensor) -> None:
        self.total += output.numel() * module.in_features

    def __enter__(self) -> "MultiplyAddCounter":
        for m in self.model.modules():
            if isinstance(m, nn.Conv2d):
                self._handles.append(m.register_forward_hook(self._conv))
            elif isinstance(m, nn.Linear):
                self._handles.append(m.register_forward_hook(self._linear))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def count_multiply_adds(model: nn.Module, height: int, width: int, in_channels: int = 3) -> int:
    """Multiply-adds of one forward pass of `model` on a 1 x in_channels x H x W input."""
    was_training = model.training
    model.eval()
    with MultiplyAddCounter(model) as counter, torch.inference_mode():
        model(torch.zeros(1, in_channels, height, width))
    model.train(was_training)
    return counter.total


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


def separable_layer_example(size: int = 14, in_channels: int = 512, out_channels: int = 512, kernel: int = 3) -> dict:
    """The MobileNet paper's cost comparison for one layer (Section 3.1), by formula and by hooks.

    A standard k x k conv from d_i to d_j channels on an h x w map costs h*w*d_i*d_j*k^2
    multiply-adds; a depthwise-separable one (k x k depthwise, then 1x1 pointwise) costs
    h*w*d_i*(k^2 + d_j), a ratio of 1/d_j + 1/k^2. Both layers are built as real modules (a conv
    with batch norm and ReLU, and MobileNetV1's depthwise-separable layer) and counted with the
    hooks every model is counted with, at stride 1 ("same" padding keeps h x w).
    """
    from seg.models.layers import ConvBNAct, DepthwiseSeparable

    h = w = size
    standard = ConvBNAct(in_channels, out_channels, kernel)
    separable = DepthwiseSeparable(in_channels, out_channels, kernel)
    formula = {
        "standard": h * w * in_channels * out_channels * kernel**2,
        "separable": h * w * in_channels * (kernel**2 + out_channels),
    }
    hooks = {
        "standard": count_multiply_adds(standard, h, w, in_channels),
        "separable": count_multiply_adds(separable, h, w, in_channels),
    }
    return {
        "size": size,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "kernel": kernel,
        "formula": formula,
        "hooks": hooks,
        "params": {"standard": count_parameters(standard), "separable": count_parameters(separable)},
        "ratio": hooks["separable"] / hooks["standard"],
        "ratio_formula": 1 / out_channels + 1 / kernel**2,
    }
