"""A user's own data: an images folder and a masks folder, paired by file stem.

    <root>/images/<split>/<stem>.jpg|png|...     or  <root>/images/<stem>.*  plus  <root>/<split>.txt
    <root>/masks/<split>/<stem>.png                   <root>/masks/<stem>.png

Masks hold class indices 0..num_classes-1 (palette or grayscale PNGs) and `ignore_index` for pixels
to ignore. Class names, `num_classes` and `ignore_index` come from the config. A mask is aligned with
its image's stored pixels: an image with an EXIF orientation is turned upright with its mask (a mask
drawn on the upright view of such an image is refused, see `seg/images.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from seg.data.base import (
    IMAGE_SUFFIXES,
    README_HINT,
    DatasetError,
    SegmentationDataset,
    Transform,
    pair_existing,
    read_split_file,
    require_path,
)


def _by_stem(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in suffixes}


class FolderSegmentation(SegmentationDataset):
    """Images and masks paired by stem; a split is a subfolder of both or a `<split>.txt` of stems."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        class_names: Sequence[str],
        images_dir: str = "images",
        masks_dir: str = "masks",
        ignore_index: int = 255,
        transform: Optional[Transform] = None,
        skip_bad: bool = False,
    ) -> None:
        self.root = require_path(Path(root).expanduser(), "dataset root")
        images_root = require_path(self.root / images_dir, "images folder")
        masks_root = require_path(self.root / masks_dir, "masks folder")
        listing = self.root / f"{split}.txt"
        if (images_root / split).is_dir():
            images_root = images_root / split
            masks_root = require_path(masks_root / split, "masks folder")
            stems = None
        elif listing.is_file():
            stems = read_split_file(listing)
        else:
            raise DatasetError(
                f"split {split!r} not found: neither {images_root / split}/ nor {listing} exists ({README_HINT})"
            )
        found_images = _by_stem(images_root, IMAGE_SUFFIXES)
        found_masks = _by_stem(masks_root, IMAGE_SUFFIXES)
        names = sorted(found_images) if stems is None else stems
        images = [found_images.get(n, images_root / f"{n}.jpg") for n in names]
        masks = [found_masks.get(n, masks_root / f"{n}.png") for n in names]
        names, images, masks = pair_existing(names, images, masks, skip_bad, self.root)
        super().__init__(names, images, masks, class_names, ignore_index, transform, skip_bad)
        self.split = split
