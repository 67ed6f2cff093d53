"""Training / eval transforms and normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seg.config import Normalization
from seg.data.transforms import (
    PAD_VALUE,
    build_eval_transform,
    build_train_transform,
    normalize,
    pixel_mean_std,
)


def _sample(h: int = 30, w: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(0, 21, (h, w), dtype=np.uint8)


def test_train_output_types_and_crop():
    image, mask = _sample()
    t = build_train_transform(64, 0.5, 2.0, 0.25, True, 255, jitter=True)
    for _ in range(5):
        x, y = t(image, mask)
        assert x.dtype == torch.uint8 and x.shape == (3, 64, 64)
        assert y.dtype == torch.int64 and y.shape == (64, 64)
        assert set(y.unique().tolist()) <= set(range(21)) | {255}


def test_padding_uses_mean_colour_and_ignore_index():
    image, mask = _sample(30, 40)
    x, y = build_train_transform(64, 1.0, 1.0, 0, False, 255)(image, mask)
    padded = y == 255
    assert padded.sum() == 64 * 64 - 30 * 40  # scale 1: the image is all there, the rest is padding
    assert (x.permute(1, 2, 0)[padded] == torch.tensor(PAD_VALUE, dtype=torch.uint8)).all()
    _, y = build_train_transform(64, 1.0, 1.0, 0, False, 7)(image, mask % 7)
    assert (y == 7).sum() >= 64 * 64 - 30 * 40


def test_scale_steps_as_deeplab():
    image, mask = _sample(40, 40)
    # Crop larger than any scaled image: the unpadded area reveals the scale that was drawn.
    t = build_train_transform(100, 0.5, 2.0, 0.5, False, 255)
    sides = {int((t(image, np.zeros_like(mask))[1] != 255).sum().item() ** 0.5) for _ in range(40)}
    assert sides <= {20, 40, 60, 80} and len(sides) >= 3


def test_flip_mirrors_image_and_mask_together():
    image, mask = _sample(32, 32)
    t = build_train_transform(32, 1.0, 1.0, 0, True, 255)
    flips = 0
    for _ in range(20):
        x, y = t(image, mask)
        flipped = torch.equal(x, torch.from_numpy(image[:, ::-1].copy()).permute(2, 0, 1))
        assert flipped or torch.equal(x, torch.from_numpy(image).permute(2, 0, 1))
        assert torch.equal(y, torch.from_numpy((mask[:, ::-1] if flipped else mask).astype(np.int64)))
        flips += flipped
    assert 0 < flips < 20


def test_seeded_by_torch():
    image, mask = _sample()
    outs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        t = build_train_transform(48, 0.5, 2.0, 0, True, 255)
        outs.append(torch.cat([t(image, mask)[1].flatten() for _ in range(3)]))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_eval_is_the_full_image():
    image, mask = _sample(31, 45)
    x, y = build_eval_transform()(image, mask)
    assert torch.equal(x, torch.from_numpy(image).permute(2, 0, 1)) and y.dtype == torch.int64
    assert torch.equal(y, torch.from_numpy(mask.astype(np.int64)))


@pytest.mark.parametrize("name", ["imagenet", Normalization.imagenet, "deeplab", Normalization.deeplab])
def test_normalize(name):
    mean, std = pixel_mean_std(name)
    images = torch.tensor(mean).round().view(1, 3, 1, 1).expand(2, 3, 4, 5).to(torch.uint8)
    out = normalize(images, name)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 4, 5) and out.abs().max() < 0.02
    if getattr(name, "value", name) == "deeplab":
        assert normalize(torch.tensor([0.0, 255.0]).view(1, 1, 2).expand(3, 1, 2), name).tolist() == [[[-1.0, 1.0]]] * 3
    else:
        assert np.allclose(std, (58.395, 57.12, 57.375))
    with pytest.raises(ValueError, match="imagenet"):
        pixel_mean_std("bogus")
