"""Pictures of masks and metrics: VOC colours, overlays, confusion matrices, TensorBoard grids."""

from __future__ import annotations

import os
from typing import BinaryIO, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from seg.data.classes import IGNORE_INDEX, voc_palette
from seg.errors import SegError

_PALETTE = voc_palette(256)
# Pixels per strip when a full-size mask or overlay is processed in strips of rows (the floats of
# one overlay strip: 12 bytes a pixel, 12 MB).
_STRIP_PIXELS = 1 << 20


def _index_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {mask.shape}")
    if mask.dtype != np.uint8:
        # Argmax output is int64; refuse values that a uint8 cast would silently wrap.
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError("mask values must lie in [0, 255]")
        mask = mask.astype(np.uint8)
    return mask


def colorize(mask: np.ndarray) -> np.ndarray:
    """HxW class indices -> HxWx3 uint8 VOC colours (255, the ignore label, is cream)."""
    return _PALETTE[_index_mask(mask)]


def save_palette_png(mask: np.ndarray, path: str | os.PathLike | BinaryIO) -> None:
    """Write an HxW index mask as a 'P'-mode PNG with the VOC palette, like SegmentationClass.

    `path` is a file name or a binary file open for writing. PIL reads the mask's own memory
    (`frombuffer`): writing holds no copy of it, even for the full-size mask of a very large photo.
    """
    mask = np.ascontiguousarray(_index_mask(mask))
    h, w = mask.shape
    if h == 0 or w == 0:
        raise ValueError(f"cannot write an empty mask (shape {mask.shape})")
    # The raw indices as they are ("L" shares the buffer; the palette makes it "P" without remapping).
    img = Image.frombuffer("L", (w, h), mask, "raw", "L", 0, 1)
    img.putpalette(_PALETTE.reshape(-1).tolist())
    img.save(path, format="PNG")


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5, out: np.ndarray | None = None) -> np.ndarray:
    """Blend VOC colours of ``mask`` onto an HxWx3 uint8 RGB image; ignore pixels stay unblended.

    Computed in strips of rows, so only one strip is ever held as floats. ``out`` (HxWx3 uint8)
    receives the result; it may be ``image`` itself, or a view of it such as ``image[..., ::-1]``
    (the result in BGR order in the image's own memory), as each strip is read before it is
    written. Returns ``out`` (a new array when not given).
    """
    image = np.asarray(image)
    mask = _index_mask(mask)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != mask.shape:
        raise ValueError(f"need HxWx3 image and HxW mask, got {image.shape} and {mask.shape}")
    if out is None:
        out = np.empty(image.shape, dtype=np.uint8)
    elif out.shape != image.shape or out.dtype != np.uint8:
        raise ValueError(f"out must be a uint8 array of shape {image.shape}, got {out.dtype} {out.shape}")
    h, w = mask.shape
    rows = max(1, _STRIP_PIXELS // max(w, 1))
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        part, labels = image[r0:r1], mask[r0:r1]
        blended = (1.0 - alpha) * part.astype(np.float32) + alpha * colorize(labels).astype(np.float32)
        strip = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        ignore = labels == IGNORE_INDEX
        strip[ignore] = part[ignore]
        out[r0:r1] = strip
    return out


# JPEG's limit on either side.
JPEG_MAX_SIDE = 65535


class ImageWriteError(SegError, OSError):
    """An image file that the encoder could not write (the message names it)."""


def save_overlay_jpeg(
    image: np.ndarray,
    mask: np.ndarray,
    path: str | os.PathLike,
    alpha: float = 0.5,
    quality: int = 90,
    reuse_image: bool = False,
) -> None:
    """Write :func:`overlay` of ``image`` and ``mask`` as a JPEG at ``path`` (whose name must end in
    .jpg or .jpeg). The overlay is computed in strips and the encoder reads it row by row; with
    ``reuse_image`` the overlay is built in the image's own memory (the image is overwritten), so a
    very large photo needs no second full-size buffer.

    Raises ImageWriteError naming ``path`` when the encoder cannot write it.
    """
    import cv2

    image = np.asarray(image)
    if max(image.shape[:2]) > JPEG_MAX_SIDE:
        raise ImageWriteError(f"cannot write {path}: JPEG allows at most {JPEG_MAX_SIDE} pixels a side")
    if reuse_image and not (image.dtype == np.uint8 and image.flags.c_contiguous and image.flags.writeable):
        reuse_image = False
    bgr = image if reuse_image else np.empty(image.shape, dtype=np.uint8)
    overlay(image, mask, alpha, out=bgr[..., ::-1])  # OpenCV encodes BGR
    try:
        ok = cv2.imwrite(os.fspath(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    except cv2.error as exc:
        raise ImageWriteError(f"cannot write {path}: {str(exc).strip().splitlines()[-1]}") from None
    if not ok:
        raise ImageWriteError(f"cannot write {path}: the JPEG encoder failed (disk full, or not writable?)")


def confusion_matrix_figure(
    matrix: Sequence[Sequence[float]] | np.ndarray,
    class_names: Sequence[str],
    normalize: bool = True,
    title: str | None = None,
) -> Figure:
    """Heat map of a confusion matrix (rows = ground truth, cols = prediction).

    With ``normalize`` each row is divided by its sum, so a cell reads "fraction of this class's
    pixels predicted as that class" and the diagonal is per-class recall.
    """
    m = np.asarray(matrix, dtype=np.float64)
    n = len(class_names)
    if m.shape != (n, n):
        raise ValueError(f"matrix shape {m.shape} does not match {n} class names")
    if normalize:
        rows = m.sum(axis=1, keepdims=True)
        m = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)

    size = max(6.0, 0.45 * n + 2.5)
    # Object-oriented Agg figure: no pyplot, so no global backend switch and nothing to close.
    fig = Figure(figsize=(size, size), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(np.arange(n), labels=class_names, rotation=90)
    ax.set_yticks(np.arange(n), labels=class_names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    default = "confusion matrix (row-normalised)" if normalize else "confusion matrix"
    ax.set_title(title or default)
    # Numbers in the cells only while they still fit (VOC's 21 classes do).
    if n <= 30:
        threshold = 0.6 if normalize else 0.6 * float(m.max(initial=0.0))  # dark cells: white text
        for i in range(n):
            for j in range(n):
                v = m[i, j]
                if v == 0:
                    continue
                text = f"{v:.2f}" if normalize else f"{int(v)}"
                ax.text(j, i, text, ha="center", va="center", fontsize=6, color="white" if v > threshold else "black")
    fig.tight_layout()
    return fig


def save_confusion_matrix_png(
    matrix: Sequence[Sequence[float]] | np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    normalize: bool = True,
) -> None:
    """Write :func:`confusion_matrix_figure` to a PNG file."""
    confusion_matrix_figure(matrix, class_names, normalize=normalize).savefig(path)


def image_grid(
    images: Sequence[np.ndarray], gts: Sequence[np.ndarray], preds: Sequence[np.ndarray], pad: int = 2
) -> np.ndarray:
    """Rows of input | ground truth | prediction as one HxWx3 uint8 image (e.g. for TensorBoard).

    ``images`` are HxWx3 uint8 RGB; ``gts`` and ``preds`` HxW index masks. Samples of different
    sizes are padded to the largest one.
    """
    if not (len(images) == len(gts) == len(preds)) or len(images) == 0:
        raise ValueError("need the same non-zero number of images, gts and preds")
    h = max(np.asarray(im).shape[0] for im in images)
    w = max(np.asarray(im).shape[1] for im in images)
    cell_h, cell_w = h + pad, w + pad
    grid = np.full((len(images) * cell_h + pad, 3 * cell_w + pad, 3), 255, dtype=np.uint8)
    for r, (im, gt, pr) in enumerate(zip(images, gts, preds)):
        for c, tile in enumerate((np.asarray(im, dtype=np.uint8), colorize(gt), colorize(pr))):
            th, tw = tile.shape[:2]
            y, x = pad + r * cell_h, pad + c * cell_w
            grid[y : y + th, x : x + tw] = tile
    return grid
