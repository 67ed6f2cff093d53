"""The fast inference path shared by predict, export and the latency benchmark: batch norm folded
into the convolutions, channels_last memory format, inference mode, and the graph frozen for
oneDNN.

Folding removes one pass over every feature map per conv; channels_last lets oneDNN run the
convolutions without reordering NCHW tensors between layers; freezing (TorchScript's
`optimize_for_inference`) prepacks the conv weights and fuses the activations into the convs.
The frozen graph is traced once and runs at any input size (sizes are traced as shape ops).
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any, Optional

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

log = logging.getLogger(__name__)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with every BatchNorm2d that directly follows a Conv2d inside
    an nn.Sequential folded into that conv (the BN becomes an Identity).

    Our ConvBNAct blocks and torchvision's Conv2dNormActivation are such Sequentials, so this
    covers every conv + BN pair of our models and of the benchmark's peers.
    """
    model = copy.deepcopy(model).eval()
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = seq._modules[first], seq._modules[second]
            if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.running_mean is not None:
                seq._modules[first] = fuse_conv_bn_eval(conv, bn)
                seq._modules[second] = nn.Identity()
    return model


def count_batchnorm(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class FastModel(nn.Module):
    """Wraps a segmenter for inference: folded batch norm, channels_last, inference mode, frozen
    graph (`freeze`).

    Called like the model it wraps (`fast(x)`, `fast(x, output_size=...)`); the output is the
    same up to float rounding. The wrapped model is a copy: the original is left as it is. Calls
    with an `output_size` other than the input's, or a model that cannot be traced, run the folded
    channels_last model eagerly.
    """

    def __init__(self, model: nn.Module, freeze: bool = True) -> None:
        super().__init__()
        self.model = fold_batchnorm(model).to(memory_format=torch.channels_last)
        self.align_corners = getattr(model, "align_corners", False)
        self.output_stride = getattr(model, "output_stride", None)
        self.freeze = freeze
        self._frozen: Optional[torch.jit.ScriptModule] = None

    def _frozen_graph(self, x: torch.Tensor) -> Optional[torch.jit.ScriptModule]:
        if self._frozen is None and self.freeze:
            try:
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore")  # TorchScript's deprecation and tracer warnings
                    traced = torch.jit.trace(self.model, (x,), check_trace=False)
                    self._frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            except Exception as exc:  # not traceable (or TorchScript gone): the eager fast path still works
                log.warning(
                    "fast path: the graph could not be frozen (%s: %s); running the folded model eagerly",
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                )
                self.freeze = False
        return self._frozen

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """The wrapped segmenter's own normalisation."""
        return self.model.normalize(images)

    def forward(self, x: torch.Tensor, output_size: Optional[tuple[int, int]] = None, **kwargs: Any) -> Any:
        x = x.contiguous(memory_format=torch.channels_last)
        same_size = output_size is None or tuple(output_size) == tuple(x.shape[-2:])
        frozen = self._frozen_graph(x) if same_size and not kwargs else None
        with torch.inference_mode():
            if frozen is not None:
                return frozen(x)
            if output_size is not None:
                kwargs["output_size"] = output_size
            return self.model(x, **kwargs)


def fast_model(model: nn.Module, freeze: bool = True) -> FastModel:
    """The fast path of `model` (see FastModel)."""
    return FastModel(model, freeze)
