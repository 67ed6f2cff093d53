"""Augmentation (albumentations) and normalisation.

Transforms turn a raw sample (RGB uint8 HxWx3, uint8 HxW mask) into `(image uint8 [3,H,W], mask
int64 [H,W])` tensors. They do not normalise: the engine normalises batches on the device with
`normalize()`, using the model config's `normalization`, so training, eval, export and predict agree.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from seg.data.classes import IGNORE_INDEX

# ImageNet's mean colour in 0..255 (torchvision's statistics); also the image pad value.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
PAD_VALUE = (124, 116, 104)


def pixel_mean_std(normalization) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) in 0..255 units for `imagenet` or `deeplab` (x/127.5 - 1)."""
    name = str(normalization)
    if name == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if name == "deeplab":
        return (127.5,) * 3, (127.5,) * 3
    raise ValueError(f"unknown normalization {normalization!r}: expected 'imagenet' or 'deeplab'")


def normalize(images: torch.Tensor, normalization) -> torch.Tensor:
    """(images - mean) / std as float32; images are uint8 or float in 0..255, NCHW or CHW."""
    mean, std = pixel_mean_std(normalization)
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(3, 1, 1)
    return (images.float() - m) / s


class SegmentationTransform:
    """Calls an albumentations pipeline as `(image, mask) -> (uint8 [3,H,W], int64 [H,W])`.

    Albumentations draws from its own generators, which DataLoader workers would inherit as identical
    copies; each process reseeds them from torch's seed on first use (in a worker that seed is the
    worker's own), so workers differ and `torch.manual_seed` makes runs repeatable.
    """

    def __init__(self, transforms: Sequence[A.BasicTransform]) -> None:
        self.compose = A.Compose([*transforms, ToTensorV2()])
        self._seeded_for: Optional[tuple[int, int]] = None

    def _reseed(self) -> None:
        info = torch.utils.data.get_worker_info()
        key = (os.getpid(), info.id if info is not None else -1)
        if key != self._seeded_for:
            self.compose.set_random_seed(torch.initial_seed() % 2**32)
            self._seeded_for = key

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        self._reseed()
        out = self.compose(image=image, mask=mask)
        # ToTensorV2 leaves a CHW view of HWC memory. Copies go through numpy (one thread): on a busy
        # CPU that is several times faster than torch's multi-threaded copies of such small tensors.
        image = torch.from_numpy(np.ascontiguousarray(out["image"].numpy()))
        return image, torch.from_numpy(out["mask"].numpy().astype(np.int64))


def _scale_transform(scale_min: float, scale_max: float, scale_step: float) -> A.BasicTransform:
    def fixed(s: float) -> A.RandomScale:
        return A.RandomScale(scale_limit=(s - 1, s - 1), interpolation=cv2.INTER_LINEAR, p=1.0)

    if scale_step and scale_step > 0:  # DeepLab: one of {min, min+step, ..., max}
        steps = np.arange(scale_min, scale_max + scale_step / 2, scale_step)
        if len(steps) > 1:
            return A.OneOf([fixed(float(s)) for s in steps], p=1.0)
        return fixed(float(steps[0]))
    return A.RandomScale(scale_limit=(scale_min - 1, scale_max - 1), interpolation=cv2.INTER_LINEAR, p=1.0)


def build_train_transform(
    crop_size: int,
    scale_min: float = 0.5,
    scale_max: float = 2.0,
    scale_step: float = 0.25,
    flip: bool = True,
    ignore_index: int = IGNORE_INDEX,
    jitter: bool = False,
    pad_value: Sequence[float] = PAD_VALUE,
) -> SegmentationTransform:
    """Random scale, pad to the crop (mean colour / ignore_index), random crop, flip, jitter."""
    t: list[A.BasicTransform] = [
        _scale_transform(scale_min, scale_max, scale_step),
        A.PadIfNeeded(
            min_height=crop_size,
            min_width=crop_size,
            border_mode=cv2.BORDER_CONSTANT,
            fill=tuple(pad_value),
            fill_mask=ignore_index,
        ),
        A.RandomCrop(height=crop_size, width=crop_size),
    ]
    if flip:
        t.append(A.HorizontalFlip(p=0.5))
    if jitter:
        t.append(A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.8))
    return SegmentationTransform(t)


def build_eval_transform() -> SegmentationTransform:
    """The full image, unchanged: only the conversion to tensors."""
    return SegmentationTransform([])
