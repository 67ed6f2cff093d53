"""Small datasets written by the data and training tests into their tmp_path."""

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


def write_voc_tree(root: Path, n_train: int, n_val: int, num_classes: int, split: str = "train_aug") -> Path:
    """VOC layout with 40x40 images: a rectangle of class 1 + i % (num_classes - 1) on background."""
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    rng = np.random.default_rng(0)
    names = {split: [f"t{i}" for i in range(n_train)], "val": [f"v{i}" for i in range(n_val)]}
    for i, name in enumerate(names[split] + names["val"]):
        mask = np.zeros((40, 40), np.uint8)
        y, x = rng.integers(0, 20, 2)
        mask[y : y + 16, x : x + 16] = 1 + i % (num_classes - 1)
        image = rng.integers(0, 60, (40, 40, 3), dtype=np.uint8)
        image[mask > 0] += 150
        Image.fromarray(image).save(voc / "JPEGImages" / f"{name}.jpg")
        write_mask(voc / "SegmentationClass" / f"{name}.png", mask)
    for s, ids in names.items():
        (voc / "ImageSets" / "Segmentation" / f"{s}.txt").write_text("".join(n + "\n" for n in ids))
    return root
