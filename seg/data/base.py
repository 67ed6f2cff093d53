"""What every dataset shares: reading files, checking samples, skipping bad ones.

A raw sample is `(image, mask)`: RGB uint8 HxWx3 and uint8 HxW holding class indices, with
`ignore_index` (255 by default) marking pixels that count for nothing. With a transform,
`__getitem__` returns what the transform returns (tensors, see `seg/data/transforms.py`).

Images are read by `seg.images`, the reader predict uses, so training and prediction see the same
pixels; EXIF orientation is applied to the image and its mask alike (masks are aligned with the
image's stored pixels, as VOC's and COCO's are).
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

from seg import images
from seg.errors import SegError
from seg.files import write_atomically

log = logging.getLogger(__name__)

README_HINT = "see data/README.md"

Transform = Callable[[np.ndarray, np.ndarray], object]


class DatasetError(SegError):
    """A problem with the data on disk. Tools print it as one line, without a traceback."""


def require_path(path: Path, what: str) -> Path:
    """Fail with one line naming `path` when it does not exist."""
    if not path.exists():
        raise DatasetError(f"{what} not found: {path} ({README_HINT})")
    return path


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_text_lines(path: Path, what: str) -> list[str]:
    """The lines of a UTF-8 text file (a byte-order mark is fine); a binary, UTF-16 or otherwise
    undecodable file raises DatasetError naming the file, the line and the byte."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"cannot read {what} {path}: {e.strerror or e}") from e
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DatasetError(f"{what} {path} is UTF-16 text: save it as UTF-8 ({README_HINT})")
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise DatasetError(
            f"{what} {path} is not a text file: NUL byte at line {line} (byte {nul}); expected UTF-8 "
            f"text ({README_HINT})"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DatasetError(
            f"{what} {path} is not UTF-8 text: byte 0x{data[e.start]:02x} at line {line} (byte {e.start}); "
            f"save it as UTF-8 ({README_HINT})"
        ) from None
    return text.splitlines()


def _split_line_name(line: str) -> str:
    """The sample id on one split-file line: `x`, `x.jpg`, `dir/x.jpg`, or a VOC-style pair of paths
    `JPEGImages/x.jpg SegmentationClassAug/x.png`; an id may contain spaces (`my photo`)."""
    text = line.strip()
    parts = text.split()
    if len(parts) == 2 and all(Path(p).suffix.lower() in IMAGE_SUFFIXES for p in parts):
        text = parts[0]
    name = Path(text).name
    return Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else name


def read_split_file(path: Path) -> list[str]:
    """Sample ids, one a line of UTF-8 text (ids may contain spaces). Also accepts
    `JPEGImages/x.jpg SegmentationClassAug/x.png` lines."""
    require_path(path, "split file")
    names = [_split_line_name(line) for line in read_text_lines(path, "split file") if line.strip()]
    if not names:
        raise DatasetError(f"split file is empty: {path} ({README_HINT})")
    return names


def read_image(path: Path) -> np.ndarray:
    """`seg.images.read_image` (RGB uint8 HxWx3, upright: the reader predict uses too); a missing,
    unreadable or truncated file raises DatasetError."""
    try:
        return images.read_image(path)
    except images.ImageReadError as e:
        raise DatasetError(str(e)) from e


def read_mask(path: Path) -> np.ndarray:
    """Class indices as uint8 HxW (`seg.images.read_mask`), in the file's stored pixel order.

    Palette ('P') PNGs, as VOC ships them, are read as their palette indices, never as colours;
    grayscale ('L', 'I;16', 'I') masks as their values. Problems raise DatasetError.
    """
    try:
        return images.read_mask(path)
    except images.ImageReadError as e:
        raise DatasetError(f"{e} ({README_HINT})") from e


def write_mask(path: Path, mask: np.ndarray) -> None:
    """Write class indices as a VOC-style palette PNG, atomically (a crash leaves no partial file)."""
    from seg.viz import save_palette_png  # matplotlib stays out of the data loaders' imports

    write_atomically(path, partial(save_palette_png, np.ascontiguousarray(mask, dtype=np.uint8)))


def check_sample(
    image: np.ndarray, mask: np.ndarray, num_classes: int, ignore_index: int, path: Path, orientation: int = 1
) -> None:
    """Raise DatasetError when sizes differ or the mask holds values that are no class. `image` is
    as stored, and `orientation` its EXIF orientation (for the message when the mask is upright)."""
    if image.shape[:2] != mask.shape[:2]:
        raise DatasetError(
            f"image and mask sizes differ for {path}: image {image.shape[1]}x{image.shape[0]}, "
            f"mask {mask.shape[1]}x{mask.shape[0]} (WxH)"
            + images.upright_mask_note(image.shape, mask.shape, orientation)
        )
    counts = np.bincount(mask.ravel(), minlength=256)
    counts[:num_classes] = 0
    counts[ignore_index] = 0
    bad = np.flatnonzero(counts)
    if bad.size:
        raise DatasetError(
            f"mask {path} has values {bad.tolist()} outside [0, {num_classes}) and ignore_index {ignore_index}"
        )


class SegmentationDataset(Dataset):
    """Pairs of image and mask files; subclasses fill `names`, `image_paths` and `mask_paths`.

    `load(i)` returns the raw sample; `__getitem__` applies the transform. With `skip_bad`, a sample
    that fails to load or check is replaced by the next good one and counted in a warning.
    """

    def __init__(
        self,
        names: Sequence[str],
        image_paths: Sequence[Path],
        mask_paths: Sequence[Path],
        class_names: Sequence[str],
        ignore_index: int = 255,
        transform: Optional[Transform] = None,
        skip_bad: bool = False,
    ) -> None:
        self.names = list(names)
        self.image_paths = list(image_paths)
        self.mask_paths = list(mask_paths)
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_index = ignore_index
        self.transform = transform
        self.skip_bad = skip_bad
        self.num_skipped = 0

    def __len__(self) -> int:
        return len(self.names)

    def read_mask(self, index: int) -> np.ndarray:
        return read_mask(self.mask_paths[index])

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw, checked sample `index`: RGB uint8 HxWx3 image and uint8 HxW mask, upright.

        The image is read by `seg.images` (as predict reads it). Masks are aligned with the image's
        stored pixels (VOC's, COCO's), so the size check is made as stored, and then the image's
        EXIF orientation turns image and mask alike."""
        try:
            image, orientation = images.read_image_stored(self.image_paths[index])
        except images.ImageReadError as e:
            raise DatasetError(str(e)) from e
        mask = self.read_mask(index)
        check_sample(image, mask, self.num_classes, self.ignore_index, self.mask_paths[index], orientation)
        return images.orient(image, orientation), images.orient(mask, orientation)

    def describe(self, index: int) -> str:
        """The files of sample `index`, for error messages."""
        image, mask = self.image_paths[index], self.mask_paths[index]
        return f"image {image}" if image == mask else f"image {image}, mask {mask}"

    def _load_one(self, index: int):
        """`load(index)` and the transform; whatever goes wrong becomes one DatasetError naming the
        sample's files, so that the main process and DataLoader workers alike report one line."""
        try:
            image, mask = self.load(index)
        except (SegError, MemoryError):  # one line already; a MemoryError is kept as it is
            raise
        except Exception as e:  # PIL, numpy, pycocotools, a subclass's reader: the data is at fault
            raise DatasetError(
                f"cannot load sample {self.names[index]!r} ({self.describe(index)}): {one_line(e)}"
            ) from e
        if self.transform is None:
            return image, mask
        try:
            return self.transform(image, mask)
        except (SegError, MemoryError):  # one line already; a MemoryError is kept as it is
            raise
        except Exception as e:  # cv2 / albumentations on an image they cannot handle
            raise DatasetError(
                f"cannot transform sample {self.names[index]!r} ({self.describe(index)}, image "
                f"{image.shape[1]}x{image.shape[0]}): {one_line(e)}"
            ) from e

    def __getitem__(self, index: int):
        if not self.skip_bad:
            return self._load_one(index)
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            try:
                return self._load_one(i)
            except DatasetError as e:
                self.num_skipped += 1
                log.warning("skipped bad sample %s (%d so far in this process): %s", self.names[i], self.num_skipped, e)
        raise DatasetError(f"no readable sample in this dataset ({README_HINT})")


def one_line(exc: BaseException, limit: int = 300) -> str:
    """`Type: message` of an exception on one line (whitespace folded), at most `limit` characters."""
    kind = type(exc).__qualname__
    if type(exc).__module__ not in ("builtins", "__main__"):
        kind = f"{type(exc).__module__}.{kind}"  # struct.error, cv2.error: the module says which
    text = " ".join(str(exc).split())
    text = f"{kind}: {text}" if text else kind
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pair_existing(
    names: Sequence[str],
    image_paths: Sequence[Path],
    mask_paths: Sequence[Path],
    skip_bad: bool,
    where: Path,
) -> tuple[list[str], list[Path], list[Path]]:
    """Keep the samples whose image and mask files exist.

    A missing file is an error naming it (and how many more are missing); with `skip_bad` the
    sample is dropped with one counted warning instead.
    """
    keep, missing = [], []
    for n, ip, mp in zip(names, image_paths, mask_paths):
        lost = [p for p in (ip, mp) if not p.is_file()]
        if lost:
            missing.extend(lost)
        else:
            keep.append((n, ip, mp))
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        if not skip_bad:
            raise DatasetError(f"file not found: {missing[0]}{more} ({README_HINT})")
        log.warning("skipped %d missing files under %s, first: %s", len(missing), where, missing[0])
    if not keep:
        raise DatasetError(f"no samples with both image and mask under {where} ({README_HINT})")
    n, ip, mp = zip(*keep)
    return list(n), list(ip), list(mp)
