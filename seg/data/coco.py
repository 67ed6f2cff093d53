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

pycocotools checks little: a polygon of one or two points, NaN or far-away coordinates or RLE counts
that do not add up make it raise, hang or read past its buffers (in a DataLoader worker or a
`prepare_coco` process that is a crash or a hang, not an error). So every selected annotation is
checked here first (`index_annotations`, `clean_segmentation`), and a bad one is reported in one
line naming the annotation, the image and the file.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from seg.data.base import (
    README_HINT,
    DatasetError,
    SegmentationDataset,
    Transform,
    one_line,
    pair_existing,
    read_text_lines,
    require_path,
    write_mask,
)
from seg.data.classes import IGNORE_INDEX, VOC_CLASSES

log = logging.getLogger(__name__)

COCO_TO_VOC: tuple[int, ...] = (0, 5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72)
CATEGORY_TO_CLASS: dict[int, int] = {cat: i for i, cat in enumerate(COCO_TO_VOC) if cat}
PREPARED_DIR = "voc_masks"
MIN_PIXELS = 1000

Annotation = tuple[Any, int]  # (COCO "segmentation" field, VOC class index)


def annotation_file(root: Path, split: str) -> Path:
    return root / "annotations" / f"instances_{split}.json"


# --- checking what pycocotools will be given -----------------------------------------------------


def _polygon_problem(part: Any, height: int, width: int) -> Optional[str]:
    """Why pycocotools cannot safely rasterize this polygon part, or None when it can."""
    if not isinstance(part, (list, tuple)):
        return f"a polygon part is a {type(part).__name__}, not a list of x, y numbers"
    n = len(part)
    if n < 6:
        return f"a polygon part has {n // 2} point(s) ({n} numbers), fewer than 3"
    if n % 2:
        return f"a polygon part has an odd count of coordinates ({n})"
    try:  # plain Python on purpose: COCO train has about a million parts, numpy per part is slower
        total, low, high = sum(part), min(part), max(part)
        finite = math.isfinite(total)
    except TypeError:
        return "a polygon part holds something other than numbers"
    except OverflowError:
        finite = False
    if not isinstance(total, (int, float)):
        return "a polygon part holds something other than numbers"
    if not finite:
        return "a polygon part has NaN, infinite or huge coordinates"
    # A point a little outside the image is common and harmless; one far away makes pycocotools
    # allocate (and walk) a line to it: gigabytes, or an integer overflow.
    reach = max(height, width)
    if low < -reach or high > 2 * reach:
        far = low if -low > high else high
        return f"a polygon part has coordinate {far:g}, far outside the {width}x{height} image"
    return None


def rle_string_counts(counts: str) -> list[int]:
    """The runs of a compressed COCO RLE string (pycocotools' `rleFrString`, with bounds checks)."""
    runs: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("compressed RLE 'counts' ends in the middle of a number")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"compressed RLE 'counts' holds {counts[p]!r}, not a valid RLE character")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def clean_segmentation(segmentation: Any, height: int, width: int) -> tuple[Any, int]:
    """`segmentation` as pycocotools can safely decode it at `height` x `width`, and the number of
    polygon parts left out (fewer than 3 points, bad coordinates). Raises ValueError saying what is
    wrong when nothing usable is left, or when an RLE does not fit the image."""
    if isinstance(segmentation, list):  # polygons: one object may have several parts
        good = [part for part in segmentation if _polygon_problem(part, height, width) is None]
        if not good:
            if not segmentation:
                raise ValueError("'segmentation' is an empty list of polygons")
            raise ValueError(f"no usable polygon: {_polygon_problem(segmentation[0], height, width)}")
        return good, len(segmentation) - len(good)
    if isinstance(segmentation, dict):  # RLE
        for key in ("counts", "size"):
            if key not in segmentation:
                raise ValueError(f"RLE 'segmentation' has no {key!r}")
        size = segmentation["size"]
        if (
            not isinstance(size, (list, tuple))
            or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
        ):
            raise ValueError(f"RLE 'size' is {size!r}, expected [height, width]")
        if list(size) != [height, width]:
            raise ValueError(f"RLE 'size' is {list(size)} but the image's [height, width] is [{height}, {width}]")
        counts = segmentation["counts"]
        if isinstance(counts, (str, bytes)):
            runs = rle_string_counts(counts if isinstance(counts, str) else counts.decode("latin-1"))
        elif isinstance(counts, list):
            try:
                arr = np.asarray(counts) if counts else np.zeros(0, np.int64)
            except (ValueError, TypeError, OverflowError):  # ragged nesting
                arr = np.zeros((0, 0))
            if arr.ndim != 1 or arr.dtype.kind not in "iu":
                raise ValueError("uncompressed RLE 'counts' holds something other than whole numbers")
            runs = arr.tolist()
        else:
            raise ValueError(f"RLE 'counts' is a {type(counts).__name__}, expected a list or a string")
        if any(r < 0 for r in runs):
            raise ValueError("RLE 'counts' has a negative run")
        if sum(runs) != height * width:
            raise ValueError(f"RLE 'counts' cover {sum(runs)} pixels, the {width}x{height} image has {height * width}")
        return segmentation, 0
    raise ValueError(f"'segmentation' is a {type(segmentation).__name__}, expected polygons (a list) or RLE (a dict)")


def _to_rle(segmentation: Any, height: int, width: int) -> Any:
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):  # uncompressed RLE (crowd regions)
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation  # compressed RLE


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO "segmentation" (polygons, uncompressed or compressed RLE) as a uint8 0/1 HxW mask.

    Checked first (`clean_segmentation`): unusable polygon parts are left out, and a segmentation
    pycocotools cannot decode safely raises DatasetError.
    """
    try:
        segmentation, _ = clean_segmentation(segmentation, height, width)
    except ValueError as e:
        raise DatasetError(f"bad COCO segmentation: {e}") from None
    return mask_utils.decode(_to_rle(segmentation, height, width))


def segmentation_area(segmentation: Any, height: int, width: int) -> int:
    """Pixels covered by a checked segmentation (what COCO's `area` holds, for RLE exactly)."""
    return int(mask_utils.area(_to_rle(segmentation, height, width)))


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


def render_mask_file(job: tuple) -> None:
    """(png path, height, width, annotations[, what the image is]): render and write one mask (a
    worker of prepare_coco). Rendering errors come back as one DatasetError naming the image."""
    path, height, width, annotations = job[:4]
    where = job[4] if len(job) > 4 else str(path)
    try:
        mask = render_mask(annotations, height, width)
    except (DatasetError, MemoryError):
        raise
    except Exception as e:
        raise DatasetError(f"cannot render the mask of {where} into {path}: {one_line(e)}") from e
    write_mask(path, mask)


# --- reading and checking the annotation file ----------------------------------------------------


def load_annotations(path: Path) -> dict:
    """The parsed JSON of a COCO annotation file; unreadable or invalid JSON raises DatasetError."""
    require_path(path, "COCO annotation file")
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except OSError as e:
        raise DatasetError(f"cannot read COCO annotations {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise DatasetError(
            f"COCO annotations {path} are not UTF-8 JSON: {e.reason} near byte {e.start} "
            f"(is the file complete? download it again)"
        ) from None
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"COCO annotations {path} are not valid JSON: {e.msg} at line {e.lineno} column {e.colno} "
            f"(is the file complete? download it again)"
        ) from None
    except (ValueError, RecursionError) as e:
        raise DatasetError(f"COCO annotations {path} are not valid JSON: {one_line(e)}") from None
    if not isinstance(data, dict):
        raise DatasetError(
            f"COCO annotations {path} hold a JSON {type(data).__name__}, expected an object with "
            f"'images' and 'annotations' ({README_HINT})"
        )
    return data


@dataclass
class CocoImage:
    """One image of an annotation file with its selected, checked annotations."""

    id: Any
    file_name: str
    height: int
    width: int
    stem: str  # Path(file_name).stem: names the sample and its mask
    annotations: list[Annotation] = field(default_factory=list)
    area: float = 0.0  # total `area` of the selected annotations (for the training filter)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _id_text(v: Any) -> str:
    return str(v) if _is_int(v) else repr(v)


def index_annotations(data: dict, path: Path, skip_bad: bool = False) -> list[CocoImage]:
    """Every image of a parsed annotation file, sorted by id, with its annotations of the mapped
    categories (crowd included), each checked so that pycocotools can render it.

    A problem raises DatasetError with one line naming the key or the image and annotation ids.
    With `skip_bad`, an image with a bad record or a bad selected annotation is left out instead,
    with one counted warning. Polygon parts of fewer than 3 points are left out of an annotation
    that has other parts, with a counted warning.
    """
    if not isinstance(data, dict):
        raise DatasetError(f"COCO annotations {path} hold a JSON {type(data).__name__}, expected an object")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            what = "no" if key not in data else f"a {type(data[key]).__name__} as"
            raise DatasetError(
                f"COCO annotations {path} have {what} {key!r}, expected a list: is this a COCO "
                f"instances file? ({README_HINT})"
            )
    skipped: dict[Any, str] = {}  # image id -> first problem (with skip_bad)

    def bad(image_id: Any, message: str) -> None:
        if not skip_bad or image_id is None:
            raise DatasetError(message)
        skipped.setdefault(image_id, message)

    def img_where(iid: Any) -> str:
        return f"COCO annotations {path}: image {_id_text(iid)}"

    images: dict[Any, CocoImage] = {}
    stems: dict[str, Any] = {}
    for k, info in enumerate(data["images"]):
        if not isinstance(info, dict) or "id" not in info:
            raise DatasetError(
                f"COCO annotations {path}: image #{k} has no 'id' (every image needs "
                f"'id', 'file_name', 'height' and 'width')"
            )
        iid = info["id"]
        if not (_is_int(iid) or isinstance(iid, str)):
            raise DatasetError(f"COCO annotations {path}: image #{k} has 'id' {iid!r}, expected an integer")
        if iid in images:
            raise DatasetError(f"COCO annotations {path}: image id {_id_text(iid)} appears twice")
        missing = [key for key in ("file_name", "height", "width") if key not in info]
        if missing:
            bad(
                iid,
                f"{img_where(iid)} has no {missing[0]!r} (every image needs 'id', 'file_name', 'height' and 'width')",
            )
            continue
        name, height, width = info["file_name"], info["height"], info["width"]
        if not isinstance(name, str) or not name.strip() or "\n" in name or "\r" in name:
            bad(iid, f"{img_where(iid)} has 'file_name' {name!r}, expected a file name on one line")
            continue
        if not (_is_int(height) and _is_int(width) and height > 0 and width > 0):
            bad(
                iid,
                f"{img_where(iid)} ({name}) has 'height' {height!r} and 'width' {width!r}, expected positive integers",
            )
            continue
        stem = os.path.splitext(os.path.basename(name))[0]  # Path(name).stem, 4x faster on 118k images
        if stem in stems:
            raise DatasetError(
                f"{img_where(iid)} ({name}) has the file stem {stem!r} of image {_id_text(stems[stem])}: masks are "
                f"named by stem, give the images distinct names"
            )
        stems[stem] = iid
        images[iid] = CocoImage(iid, name, height, width, stem)

    dropped_parts, computed_areas, orphans = 0, 0, 0
    first_dropped: Optional[tuple[int, dict, CocoImage]] = None

    def ann_where(k: int, ann: dict, image: Optional[CocoImage] = None) -> str:
        aid = _id_text(ann["id"]) if "id" in ann else f"#{k}"
        if image is None:
            return f"COCO annotations {path}: annotation {aid}"
        return f"COCO annotations {path}: annotation {aid} of image {_id_text(image.id)} ({image.file_name})"

    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise DatasetError(f"COCO annotations {path}: annotation #{k} is a {type(ann).__name__}, not an object")
        for key in ("image_id", "category_id"):
            if key not in ann:
                raise DatasetError(
                    f"{ann_where(k, ann)} has no {key!r} (every annotation needs 'image_id', 'category_id' "
                    f"and 'segmentation')"
                )
        category = ann["category_id"]
        if not _is_int(category) or category not in CATEGORY_TO_CLASS:
            continue
        iid = ann["image_id"]
        image = images.get(iid) if isinstance(iid, (int, str)) and not isinstance(iid, bool) else None
        if image is None:
            orphans += iid not in skipped
            continue
        if "segmentation" not in ann:
            bad(
                iid,
                f"{ann_where(k, ann, image)} has no 'segmentation' (every annotation needs 'image_id', "
                f"'category_id' and 'segmentation')",
            )
            continue
        try:
            segmentation, dropped = clean_segmentation(ann["segmentation"], image.height, image.width)
        except ValueError as e:
            bad(iid, f"{ann_where(k, ann, image)}: {e} (fix or remove the annotation)")
            continue
        if dropped:
            dropped_parts += dropped
            first_dropped = first_dropped or (k, ann, image)
        area = ann.get("area")
        if area is None:
            # `area` only feeds the training filter, and it is derived data: COCO's own tools compute
            # it from the segmentation, and converters from other formats often leave it out. Doing
            # the same keeps such files usable and the filter exact, instead of failing on a number
            # the user would have to compute in exactly this way.
            area = segmentation_area(segmentation, image.height, image.width)
            computed_areas += 1
        elif isinstance(area, bool) or not isinstance(area, (int, float)) or not math.isfinite(area) or area < 0:
            bad(
                iid,
                f"{ann_where(k, ann, image)} has 'area' {area!r}, expected a number of pixels (remove "
                f"it to have it computed from the segmentation)",
            )
            continue
        image.annotations.append((segmentation, CATEGORY_TO_CLASS[category]))
        image.area += area

    if first_dropped is not None:
        log.warning(
            "left out %d polygon parts with fewer than 3 points or bad coordinates, first in %s",
            dropped_parts,
            ann_where(*first_dropped),
        )
    if computed_areas:
        log.info("%s: computed 'area' of %d annotations from their segmentation", path, computed_areas)
    if orphans:
        log.warning("%s: ignored %d annotations whose image_id is no image of the file", path, orphans)
    if skipped:
        log.warning(
            "%s: skipped %d images with bad records or annotations, first: %s",
            path,
            len(skipped),
            next(iter(skipped.values())),
        )
    keep = [img for iid, img in images.items() if iid not in skipped]
    return sorted(keep, key=lambda img: (isinstance(img.id, str), img.id))


def keep_image(image: CocoImage, min_pixels: Optional[int]) -> bool:
    """Training filter: the selected annotations must cover more than `min_pixels` (their `area`)."""
    if min_pixels is None:
        return True
    return len(image.annotations) > 0 and image.area > min_pixels


def read_listing(path: Path) -> list[tuple[str, float]]:
    """(image stem, selected area) per line of a prepared `voc_masks/<split>.txt`.

    Lines are "<stem> <area>"; the area is the last field, so stems may contain spaces.
    """
    entries = []
    for number, line in enumerate(read_text_lines(path, "COCO mask list"), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        try:
            if len(parts) != 2:
                raise ValueError
            entries.append((parts[0], float(parts[1])))
        except ValueError:
            raise DatasetError(
                f"COCO mask list {path}, line {number}: expected '<image stem> <area>', got {line[:80]!r} "
                f"(delete the file and run tools/prepare_coco.py again)"
            ) from None
    return entries


def write_listing(path: Path, images: Sequence[CocoImage]) -> None:
    """Write `voc_masks/<split>.txt` atomically: "<stem> <area>" per image."""
    tmp = path.with_suffix(".txt.tmp")
    tmp.write_text("".join(f"{img.stem} {img.area:.1f}\n" for img in images), encoding="utf-8")
    tmp.replace(path)


def _prepared_images(image_dir: Path, stems: Sequence[str]) -> list[Path]:
    """`<stem>.jpg` as COCO names its images, or the file of that stem with another suffix."""
    paths = [image_dir / f"{s}.jpg" for s in stems]
    if image_dir.is_dir() and not all(p.is_file() for p in paths):
        others: dict[str, Path] = {}
        for p in sorted(image_dir.iterdir()):
            others.setdefault(p.stem, p)
        paths = [p if p.is_file() else others.get(s, p) for s, p in zip(stems, paths)]
    return paths


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
        self.annotation_path = annotation_file(self.root, split)
        self._annotations: dict[str, list[Annotation]] = {}
        self._sizes: dict[str, tuple[int, int]] = {}
        self._ids: dict[str, Any] = {}
        if self.prepared:
            names = [stem for stem, area in read_listing(listing) if min_pixels is None or area > min_pixels]
            images = _prepared_images(image_dir, names)
            masks = [self.root / PREPARED_DIR / split / f"{n}.png" for n in names]
        else:
            # Checked before the (large) JSON is parsed.
            require_path(self.annotation_path, "COCO annotation file")
            indexed = index_annotations(load_annotations(self.annotation_path), self.annotation_path, skip_bad)
            names, images = [], []
            for info in indexed:
                if not keep_image(info, min_pixels):
                    continue
                names.append(info.stem)
                images.append(image_dir / info.file_name)
                # Keep only what rendering needs, not the whole JSON (DataLoader workers copy it).
                self._annotations[info.stem] = info.annotations
                self._sizes[info.stem] = (info.height, info.width)
                self._ids[info.stem] = info.id
            del indexed
            masks = images  # rendered from annotations; errors name the image
        if not names:
            raise DatasetError(f"no images in COCO split {split} under {self.root} ({README_HINT})")
        names, images, masks = pair_existing(names, images, masks, skip_bad, self.root)
        super().__init__(names, images, masks, class_names, ignore_index, transform, skip_bad)

    def describe(self, index: int) -> str:
        if self.prepared:
            return super().describe(index)
        name = self.names[index]
        return (
            f"image {self.image_paths[index]}, mask from image id {_id_text(self._ids[name])} in {self.annotation_path}"
        )

    def read_mask(self, index: int) -> np.ndarray:
        if self.prepared:
            return super().read_mask(index)
        name = self.names[index]
        return render_mask(self._annotations[name], *self._sizes[name])
