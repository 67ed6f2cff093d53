"""PASCAL VOC class names and colour palette: the one place that defines them."""

from __future__ import annotations

import numpy as np

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

IGNORE_INDEX = 255


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """The VOC palette as a (num_colors, 3) uint8 array.

    VOC's PNG masks use it: colour i spreads the bits of i over the high bits of R, G and B
    (index 255, the ignore label, is (224, 224, 192)).
    """
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for i in range(num_colors):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[i] = (r, g, b)
    return palette
