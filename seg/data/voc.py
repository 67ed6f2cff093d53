"""PASCAL VOC 2012 segmentation, and its 10,582-image `train_aug` split with SBD's masks.

Layout (see data/README.md):

    VOCdevkit/VOC2012/
      ImageSets/Segmentation/{train,val,trainval,train_aug}.txt
      JPEGImages/<id>.jpg
      SegmentationClass/<id>.png      VOC's palette PNGs (indices 0-20, 255 on object borders)
      SegmentationClassAug/<id>.png   SBD masks for train_aug, written by tools/prepare_voc.py

`train_aug` masks come from SegmentationClass when VOC has one (finer, with the 255 border band) and
from SegmentationClassAug otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import scipy.io

from seg.data.base import (
    README_HINT,
    DatasetError,
    SegmentationDataset,
    Transform,
    pair_existing,
    read_split_file,
    write_mask,
)
from seg.data.classes import IGNORE_INDEX, VOC_CLASSES

MASK_DIRS = ("SegmentationClass",)
AUG_MASK_DIRS = ("SegmentationClass", "SegmentationClassAug")
# Image counts of the full VOC 2012 splits and of train_aug (VOC train + SBD train/val - VOC val).
EXPECTED_COUNTS = {"train": 1464, "val": 1449, "train_aug": 10582}


def find_voc_root(root: str | Path) -> Path:
    """The VOC2012 folder, given it or the folder holding VOCdevkit (or VOCdevkit itself)."""
    root = Path(root).expanduser()
    for cand in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (cand / "JPEGImages").is_dir():
            return cand
    if not root.exists():
        raise DatasetError(f"dataset root not found: {root} ({README_HINT})")
    raise DatasetError(
        f"no VOC 2012 under {root}: expected {root}/VOCdevkit/VOC2012/JPEGImages or {root}/JPEGImages ({README_HINT})"
    )


def split_file(voc_root: Path, split: str) -> Path:
    return voc_root / "ImageSets" / "Segmentation" / f"{split}.txt"


def find_sbd_root(root: str | Path) -> Path:
    """SBD's `dataset` folder (holding cls/), given it or a folder above (benchmark_RELEASE)."""
    root = Path(root).expanduser()
    for cand in (root, root / "dataset", root / "benchmark_RELEASE" / "dataset"):
        if (cand / "cls").is_dir():
            return cand
    raise DatasetError(f"no SBD cls/ folder under {root} (expected benchmark_RELEASE/dataset/cls, {README_HINT})")


def read_sbd_mask(path: str | Path) -> np.ndarray:
    """The class mask of one SBD `cls/<id>.mat` file (MATLAB struct `GTcls.Segmentation`) as uint8."""
    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
        mask = np.asarray(mat["GTcls"].Segmentation)
    except Exception as e:  # scipy raises many kinds (MatReadError, ValueError, ...) on bad files
        raise DatasetError(f"cannot read SBD mask {path}: {e}") from e
    if mask.ndim != 2 or mask.min() < 0 or mask.max() > 255:
        raise DatasetError(f"SBD mask {path} is not a 2-D array of class indices")
    return mask.astype(np.uint8)


def convert_sbd_mask(job: tuple[Path, Path]) -> None:
    """(cls/<id>.mat, <id>.png): write the SBD mask as a palette PNG (a worker of prepare_voc)."""
    mat, png = job
    write_mask(png, read_sbd_mask(mat))


def train_aug_ids(voc_train: Iterable[str], voc_val: Iterable[str], sbd_ids: Iterable[str]) -> list[str]:
    """VOC train + SBD (train and val), minus every VOC val image: 10,582 ids on the full data."""
    return sorted((set(voc_train) | set(sbd_ids)) - set(voc_val))


class VOCSegmentation(SegmentationDataset):
    """One split of VOC 2012 (or any folder in its layout, like the built-in synthetic dataset)."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        mask_dirs: Sequence[str] = MASK_DIRS,
        class_names: Sequence[str] = VOC_CLASSES,
        ignore_index: int = IGNORE_INDEX,
        transform: Optional[Transform] = None,
        skip_bad: bool = False,
    ) -> None:
        self.root = find_voc_root(root)
        names = read_split_file(split_file(self.root, split))
        # One listing per mask folder instead of a stat per sample (train_aug has 10,582).
        listed = []
        for d in mask_dirs:
            folder = self.root / d
            listed.append((folder, {p.stem for p in folder.glob("*.png")} if folder.is_dir() else set()))
        masks = []
        for n in names:
            hit = next((folder for folder, stems in listed if n in stems), listed[0][0])
            masks.append(hit / f"{n}.png")
        images = [self.root / "JPEGImages" / f"{n}.jpg" for n in names]
        names, images, masks = pair_existing(names, images, masks, skip_bad, self.root)
        super().__init__(names, images, masks, class_names, ignore_index, transform, skip_bad)
        self.split = split
