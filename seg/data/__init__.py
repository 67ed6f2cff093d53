"""Datasets behind one interface: `build_dataset(cfg.dataset, split, transform)`.

Every dataset yields `(image, mask)`: RGB uint8 HxWx3 and uint8 HxW class indices, `ignore_index`
(255) for ignored pixels; with a transform from `seg.data.transforms`, uint8 [3,H,W] and int64 [H,W]
tensors. Each has `.names` (sample ids, for naming outputs) and `.class_names`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from torch.utils.data import Dataset

from seg.data.base import README_HINT, DatasetError, SegmentationDataset, Transform

if TYPE_CHECKING:
    from seg.config import DatasetConfig

__all__ = ["DATASETS", "DatasetError", "SegmentationDataset", "build_dataset", "resolve_split"]

DATASETS = ("synthetic", "voc", "voc_aug", "coco", "folder")


def resolve_split(cfg: "DatasetConfig", split: str) -> str:
    """'train' and 'val' mean the configured `train_split` / `val_split`; other names are literal."""
    return {"train": cfg.train_split, "val": cfg.val_split}.get(split, split)


def _check_config(cfg: "DatasetConfig") -> None:
    if len(cfg.class_names) != cfg.num_classes:
        raise DatasetError(
            f"dataset.num_classes={cfg.num_classes} but dataset.class_names has "
            f"{len(cfg.class_names)} names: give one name per class"
        )
    if not 0 < cfg.num_classes <= 255 or not 0 <= cfg.ignore_index <= 255:
        raise DatasetError(
            f"masks are uint8: need 0 < num_classes <= 255 and 0 <= ignore_index <= 255, got "
            f"num_classes={cfg.num_classes}, ignore_index={cfg.ignore_index}"
        )


def build_dataset(cfg: "DatasetConfig", split: str, transform: Optional[Transform] = None) -> Dataset:
    """The `split` of the dataset `cfg.name` ("train"/"val" resolve to the configured splits).

    Roots and split files are checked before anything heavy is read; problems raise DatasetError
    with one line naming the path.
    """
    name = str(cfg.name)
    _check_config(cfg)
    split = resolve_split(cfg, split)
    common = dict(
        class_names=list(cfg.class_names),
        ignore_index=cfg.ignore_index,
        transform=transform,
        skip_bad=cfg.skip_bad,
    )
    if name in ("voc", "voc_aug", "synthetic"):
        from seg.data.voc import AUG_MASK_DIRS, MASK_DIRS, VOCSegmentation, find_voc_root, split_file

        if name == "synthetic":
            from seg.data.synthetic import ensure_synthetic

            root = ensure_synthetic(cfg.root, cfg.synthetic)
        else:
            root = find_voc_root(cfg.root)
            if not split_file(root, split).is_file():
                hint = " (run tools/prepare_voc.py)" if name == "voc_aug" else ""
                raise DatasetError(f"split file not found: {split_file(root, split)}{hint} ({README_HINT})")
        mask_dirs = AUG_MASK_DIRS if name == "voc_aug" else MASK_DIRS
        return VOCSegmentation(root, split, mask_dirs=mask_dirs, **common)
    if name == "coco":
        from seg.data.coco import COCOSegmentation

        is_train = split == cfg.train_split and split != cfg.val_split
        min_pixels = cfg.coco.min_pixels if is_train else None
        return COCOSegmentation(Path(cfg.root), split, min_pixels=min_pixels, **common)
    if name == "folder":
        from seg.data.folder import FolderSegmentation

        return FolderSegmentation(cfg.root, split, images_dir=cfg.images_dir, masks_dir=cfg.masks_dir, **common)
    raise DatasetError(f"unknown dataset.name {name!r}: expected one of {', '.join(DATASETS)}")
