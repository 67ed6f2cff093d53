"""Pictures of masks and metrics: VOC colours, overlays, confusion matrices, TensorBoard grids."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from seg.data.classes import IGNORE_INDEX, voc_palette

_PALETTE = voc_palette(256)


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


def save_palette_png(mask: np.ndarray, path: str | os.PathLike) -> None:
    """Write an HxW index mask as a 'P'-mode PNG with the VOC palette, like SegmentationClass."""
    mask = _index_mask(mask)
    # frombytes keeps the raw indices; converting an 'L' image to 'P' could remap them.
    h, w = mask.shape
    img = Image.frombytes("P", (w, h), np.ascontiguousarray(mask).tobytes())
    img.putpalette(_PALETTE.reshape(-1).tolist())
    img.save(path)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend VOC colours of ``mask`` onto an HxWx3 uint8 RGB image; ignore pixels stay unblended."""
    image = np.asarray(image)
    mask = _index_mask(mask)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != mask.shape:
        raise ValueError(f"need HxWx3 image and HxW mask, got {image.shape} and {mask.shape}")
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colorize(mask).astype(np.float32)
    out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    ignore = mask == IGNORE_INDEX
    out[ignore] = image[ignore]
    return out


def confusion_matrix_figure(matrix: Sequence[Sequence[float]] | np.ndarray,
                            class_names: Sequence[str], normalize: bool = True,
                            title: str | None = None) -> Figure:
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
                ax.text(j, i, text, ha="center", va="center", fontsize=6,
                        color="white" if v > threshold else "black")
    fig.tight_layout()
    return fig


def save_confusion_matrix_png(matrix: Sequence[Sequence[float]] | np.ndarray,
                              class_names: Sequence[str], path: str | os.PathLike,
                              normalize: bool = True) -> None:
    """Write :func:`confusion_matrix_figure` to a PNG file."""
    confusion_matrix_figure(matrix, class_names, normalize=normalize).savefig(path)


def image_grid(images: Sequence[np.ndarray], gts: Sequence[np.ndarray],
               preds: Sequence[np.ndarray], pad: int = 2) -> np.ndarray:
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
            grid[y:y + th, x:x + tw] = tile
    return grid
