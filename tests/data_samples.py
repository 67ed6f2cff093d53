"""Small datasets written by the data tests into their tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from seg.data.base import write_mask


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def block_mask(h: int, w: int, cls: int) -> np.ndarray:
    """Background with one `cls` rectangle outlined by 255, as VOC's masks are."""
    m = np.zeros((h, w), np.uint8)
    m[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255
    m[h // 4 + 1 : 3 * h // 4 - 1, w // 4 + 1 : 3 * w // 4 - 1] = cls
    return m


def write_voc(root: Path, splits: dict[str, list[str]], h: int = 24, w: int = 32) -> Path:
    """A VOC2012 tree under `root/VOCdevkit`; sample i's object has class 1 + i % 20."""
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    ids = sorted({i for names in splits.values() for i in names})
    for k, name in enumerate(ids):
        Image.fromarray(random_image(h, w, k)).save(voc / "JPEGImages" / f"{name}.jpg")
        write_mask(voc / "SegmentationClass" / f"{name}.png", block_mask(h, w, 1 + k % 20))
    for split, names in splits.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(n + "\n" for n in names))
    return voc
