"""COCO 2017 instances as semantic masks in PASCAL VOC's 21 classes.

The mapping follows torchvision's reference scripts: COCO category `COCO_TO_VOC[i]` becomes VOC class
`i` (0 is background and no COCO category), every other category is background, pixels covered by
more than one selected instance (crowd regions included) become 255, and training images whose
selected annotations have a total `area` of `min_pixels` (1000) or less are dropped; val is kept whole.

Masks are rendered with pycocotools (polygons, compressed and uncompressed RLE). Rendering on the fly
needs the annotation JSON in memory; `tools/prepare_coco.py` renders them once to

    <root>/voc_masks/<split>/<image stem>.png   palette PNGs, as VOC's
    <root>/voc_masks/<split>.txt                "<image stem> <selected area>" per image, written last

and the dataset reads those when the list is present.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from seg.data.base import (
    README_HINT,
    DatasetError,
    SegmentationDataset,
    Transform,
    pair_existing,
    require_path,
    write_mask,
)
from seg.data.classes import IGNORE_INDEX, VOC_CLASSES

COCO_TO_VOC: tuple[int, ...] = (0, 5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72)
CATEGORY_TO_CLASS: dict[int, int] = {cat: i for i, cat in enumerate(COCO_TO_VOC) if cat}
PREPARED_DIR = "voc_masks"
MIN_PIXELS = 1000

Annotation = tuple[Any, int]  # (COCO "segmentation" field, VOC class index)


def annotation_file(root: Path, split: str) -> Path:
    return root / "annotations" / f"instances_{split}.json"


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO "segmentation" (polygons, uncompressed or compressed RLE) as a uint8 0/1 HxW mask."""
    if isinstance(segmentation, list):  # polygons: one object may have several parts
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):  # uncompressed RLE (crowd regions)
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:  # compressed RLE
        rle = segmentation
    return mask_utils.decode(rle)


def render_mask(annotations: Iterable[Annotation], height: int, width: int) -> np.ndarray:
    """One VOC-class mask from selected instances; where two or more overlap, 255."""
    label = np.zeros((height, width), np.uint8)
    cover = np.zeros((height, width), np.uint16)
    for segmentation, cls in annotations:
        m = decode_segmentation(segmentation, height, width).astype(bool)
        label[m] = cls
        cover += m
    label[cover > 1] = IGNORE_INDEX
    return label


def render_mask_file(job: tuple[Path, int, int, list[Annotation]]) -> None:
    """(png path, height, width, annotations): render and write one mask (a worker of prepare_coco)."""
    path, height, width, annotations = job
    write_mask(path, render_mask(annotations, height, width))


def select_annotations(data: dict) -> dict[int, list[dict]]:
    """Annotations of the mapped categories, crowd included, grouped by image id."""
    by_image: dict[int, list[dict]] = defaultdict(list)
    for ann in data["annotations"]:
        if ann["category_id"] in CATEGORY_TO_CLASS:
            by_image[ann["image_id"]].append(ann)
    return by_image


def keep_image(annotations: Sequence[dict], min_pixels: Optional[int]) -> bool:
    """Training filter: the selected annotations must cover more than `min_pixels` (their `area`)."""
    if min_pixels is None:
        return True
    return len(annotations) > 0 and sum(a["area"] for a in annotations) > min_pixels


def load_annotations(path: Path) -> dict:
    require_path(path, "COCO annotation file")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read COCO annotations {path}: {e}") from e


class COCOSegmentation(SegmentationDataset):
    """One COCO split (`train2017`, `val2017`) in VOC's classes.

    `min_pixels` drops images whose selected annotations cover that many pixels or fewer; pass None
    (the default, as for val) to keep every image.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "val2017",
        min_pixels: Optional[int] = None,
        class_names: Sequence[str] = VOC_CLASSES,
        ignore_index: int = IGNORE_INDEX,
        transform: Optional[Transform] = None,
        skip_bad: bool = False,
    ) -> None:
        self.root = require_path(Path(root).expanduser(), "dataset root")
        self.split = split
        image_dir = self.root / split
        listing = self.root / PREPARED_DIR / f"{split}.txt"
        self.prepared = listing.is_file()
        self._annotations: dict[str, list[Annotation]] = {}
        self._sizes: dict[str, tuple[int, int]] = {}
        if self.prepared:
            names = []
            for line in listing.read_text().splitlines():
                stem, area = line.split()
                if min_pixels is None or float(area) > min_pixels:
                    names.append(stem)
            images = [image_dir / f"{n}.jpg" for n in names]
            masks = [self.root / PREPARED_DIR / split / f"{n}.png" for n in names]
        else:
            # Checked before the (large) JSON is parsed.
            require_path(annotation_file(self.root, split), "COCO annotation file")
            data = load_annotations(annotation_file(self.root, split))
            by_image = select_annotations(data)
            names, images = [], []
            for info in sorted(data["images"], key=lambda i: i["id"]):
                anns = by_image.get(info["id"], [])
                if not keep_image(anns, min_pixels):
                    continue
                stem = Path(info["file_name"]).stem
                names.append(stem)
                images.append(image_dir / info["file_name"])
                # Keep only what rendering needs, not the whole JSON (DataLoader workers copy it).
                self._annotations[stem] = [
                    (a["segmentation"], CATEGORY_TO_CLASS[a["category_id"]]) for a in anns
                ]
                self._sizes[stem] = (info["height"], info["width"])
            del data, by_image
            masks = images  # rendered from annotations; errors name the image
        if not names:
            raise DatasetError(f"no images in COCO split {split} under {self.root} ({README_HINT})")
        names, images, masks = pair_existing(names, images, masks, skip_bad, self.root)
        super().__init__(names, images, masks, class_names, ignore_index, transform, skip_bad)

    def read_mask(self, index: int) -> np.ndarray:
        if self.prepared:
            return super().read_mask(index)
        name = self.names[index]
        return render_mask(self._annotations[name], *self._sizes[name])
