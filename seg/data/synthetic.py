"""The built-in dataset: procedurally generated scenes in PASCAL VOC's layout and 21 classes.

Generated once from `dataset.synthetic` (seed, sizes) into `<dataset.root>/<key>/VOCdevkit/VOC2012`,
where `key` hashes those parameters, then read by the VOC reader like the real thing.

Why it is a segmentation task and not a colour lookup:
- One pixel's colour does not give the class; two neighbouring ones do. Object colours come from a
  palette of 8 hues; each object class paints its textures in its own pair of them (within
  `hue_spread`, 8 degrees, of each; saturation and brightness vary freely), so every palette hue is
  shared by five classes and only the colours around a pixel name its class. A body or part takes its
  class's favourite pattern (stripes, checker, dots or blotches, which show both colours within a few
  pixels) with probability `texture_bias` (0.9), else any texture kind, and every pattern is the
  favourite of several classes. Backgrounds take any hue, leaning to duller colours and smooth
  textures (as sky, ground and walls do), and the clutter on them any hue and texture. A per-pixel
  colour classifier fitted on the training set reaches a val mIoU of about 0.13
  (`tools/pixel_baseline.py`; the tests check that it stays low), while the default 5-minute training
  run reaches 0.75 or more.
- Shape and structure tell the classes apart too: each of the 20 object classes is a silhouette
  family built from parts in a class-specific arrangement (two rings joined by a frame, a box with a
  row of windows, a head with two ears and two eyes, ...). Parts carry their own texture, so an object
  is not one uniform region, and some silhouettes have holes through which the background shows.
- Objects vary in scale (1.7x by default, more with `min_scale`/`max_scale`), aspect, rotation and
  mirroring, overlap and occlude each other (each stays at least half visible), are cut by the image
  border, and sit on two-region backgrounds cluttered with lines and irregular blobs, which are
  background.
- As in VOC, a thin band along every instance outline is labelled 255 (ignored), and images are JPEG
  (without chroma subsampling, which would blur a class's two colours into one).

Each image comes from its own random generator seeded by (seed, split, index), so the data depends
only on the parameters; every class is the first object of some images in each split, so every class
appears in val.
"""

from __future__ import annotations

import colorsys
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import uuid
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import cv2
import numpy as np
from PIL import Image

from seg.data.base import DatasetError, write_mask
from seg.data.classes import IGNORE_INDEX, VOC_CLASSES

if TYPE_CHECKING:
    from seg.config import SyntheticConfig

log = logging.getLogger(__name__)

# Bump when the generator changes what it draws: cached folders of older versions are then unused.
GENERATOR_VERSION = 2
SPLITS = ("train", "val")

# ---------------------------------------------------------------------------------------------
# Shapes: polygons in a local frame where the object spans about [-1, 1] (y down). Each part is
# (op, polygon): "body" fills the silhouette, "part" fills it with a second texture, "cut" makes a hole.
# ---------------------------------------------------------------------------------------------

Part = tuple[str, np.ndarray]


def _rect(cx: float, cy: float, w: float, h: float) -> np.ndarray:
    return np.array([[cx - w / 2, cy - h / 2], [cx + w / 2, cy - h / 2],
                     [cx + w / 2, cy + h / 2], [cx - w / 2, cy + h / 2]])  # fmt: skip


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 40) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _circle(cx: float, cy: float, r: float) -> np.ndarray:
    return _ellipse(cx, cy, r, r)


def _bar(x0: float, y0: float, x1: float, y1: float, t: float) -> np.ndarray:
    d = np.array([x1 - x0, y1 - y0])
    n = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9) * t / 2
    a, b = np.array([x0, y0]), np.array([x1, y1])
    return np.array([a + n, b + n, b - n, a - n])


def _poly(*pts: float) -> np.ndarray:
    return np.array(pts, dtype=float).reshape(-1, 2)


def _aeroplane(r: np.random.Generator) -> list[Part]:
    w = r.uniform(0.22, 0.32)
    return [("body", _bar(-1, 0, 1, 0, w)),
            ("body", _poly(0.25, -w / 2, -0.25, -0.95, -0.05, -0.95, 0.45, -w / 2)),
            ("body", _poly(0.25, w / 2, -0.25, 0.95, -0.05, 0.95, 0.45, w / 2)),
            ("body", _bar(-0.9, -0.45, -0.9, 0, 0.18)),
            ("part", _ellipse(0.75, 0, 0.2, w * 0.35))]  # fmt: skip


def _bicycle(r: np.random.Generator) -> list[Part]:
    rw, t = r.uniform(0.38, 0.46), r.uniform(0.15, 0.2)
    parts: list[Part] = []
    for x in (-0.58, 0.58):
        parts += [("body", _circle(x, 0.35, rw)), ("cut", _circle(x, 0.35, rw - t))]
    parts += [("body", _bar(-0.58, 0.35, -0.05, -0.35, 0.15)), ("body", _bar(-0.05, -0.35, 0.58, 0.35, 0.15)),
              ("body", _bar(-0.05, -0.35, 0.45, -0.35, 0.15)), ("body", _bar(-0.58, 0.35, 0.2, 0.35, 0.14)),
              ("part", _bar(-0.25, -0.52, 0.1, -0.52, 0.16))]  # fmt: skip
    return parts


def _bird(r: np.random.Generator) -> list[Part]:
    t = r.uniform(0.35, 0.5)
    return [("body", _poly(-1, -0.7, 0, 0.25, 1, -0.7, 1, -0.7 + t, 0, 0.25 + t, -1, -0.7 + t)),
            ("part", _circle(0, 0.25 + t / 2 - 0.05, t * 0.55))]  # fmt: skip


def _boat(r: np.random.Generator) -> list[Part]:
    return [("body", _poly(-1, 0.25, 1, 0.25, 0.6, 0.8, -0.6, 0.8)),
            ("body", _bar(0, 0.3, 0, -1, 0.14)),
            ("part", _poly(0.06, -0.95, 0.06, 0.15, r.uniform(0.6, 0.85), 0.15))]  # fmt: skip


def _bottle(r: np.random.Generator) -> list[Part]:
    w = r.uniform(0.55, 0.75)
    return [("body", _rect(0, 0.3, w, 1.4)), ("body", _poly(-w / 2, -0.4, w / 2, -0.4, 0.15, -0.65, -0.15, -0.65)),
            ("body", _rect(0, -0.8, 0.3, 0.35)), ("part", _rect(0, -0.98, 0.36, 0.12)),
            ("part", _rect(0, 0.35, w, 0.5))]  # fmt: skip


def _bus(r: np.random.Generator) -> list[Part]:
    n = int(r.integers(3, 5))
    parts: list[Part] = [("body", _rect(0, 0, 2.0, 1.0)),
                         ("body", _circle(-0.55, 0.5, 0.2)), ("body", _circle(0.55, 0.5, 0.2))]  # fmt: skip
    for x in np.linspace(-0.7, 0.7, n):
        parts.append(("part", _rect(x, -0.15, 1.2 / n, 0.35)))
    return parts


def _car(r: np.random.Generator) -> list[Part]:
    return [("body", _rect(0, 0.15, 2.0, 0.55)),
            ("body", _poly(-0.55, -0.12, 0.45, -0.12, 0.25, -0.6, -0.35, -0.6)),
            ("part", _circle(-0.55, 0.45, 0.27)), ("part", _circle(0.55, 0.45, 0.27))]  # fmt: skip


def _cat(r: np.random.Generator) -> list[Part]:
    e = r.uniform(0.1, 0.15)
    return [("body", _circle(0, 0.2, 0.75)),
            ("body", _poly(-0.72, -0.1, -0.6, -1, -0.1, -0.5)), ("body", _poly(0.72, -0.1, 0.6, -1, 0.1, -0.5)),
            ("part", _circle(-0.3, 0.1, e)), ("part", _circle(0.3, 0.1, e))]  # fmt: skip


def _chair(r: np.random.Generator) -> list[Part]:
    return [("body", _bar(-0.5, -1, -0.5, 0.1, 0.28)), ("body", _bar(-0.64, 0.1, 0.64, 0.1, 0.28)),
            ("body", _bar(-0.5, 0.1, -0.5, 1, 0.2)), ("body", _bar(0.5, 0.1, 0.5, 1, 0.2)),
            ("part", _rect(-0.5, -0.55, 0.28, 0.5))]  # fmt: skip


def _cow(r: np.random.Generator) -> list[Part]:
    parts: list[Part] = [("body", _rect(-0.1, -0.05, 1.4, 0.65)), ("body", _rect(0.8, -0.4, 0.4, 0.45))]
    for x in (-0.7, -0.45, 0.2, 0.45):
        parts.append(("body", _bar(x, 0.1, x, 0.9, 0.2)))
    for _ in range(2):
        parts.append(("part", _ellipse(r.uniform(-0.5, 0.3), r.uniform(-0.15, 0.05), 0.18, 0.12)))
    return parts


def _diningtable(r: np.random.Generator) -> list[Part]:
    return [("body", _bar(-1, -0.45, 1, -0.45, 0.28)), ("body", _bar(0, -0.45, 0, 0.85, 0.26)),
            ("body", _bar(-0.5, 0.85, 0.5, 0.85, 0.2)), ("part", _bar(-0.95, -0.5, 0.95, -0.5, 0.12))]  # fmt: skip


def _dog(r: np.random.Generator) -> list[Part]:
    return [("body", _circle(0, 0, 0.95)), ("cut", _circle(r.uniform(0.4, 0.55), -0.15, 0.8)),
            ("part", _circle(-0.62, 0.05, 0.14))]  # fmt: skip


def _horse(r: np.random.Generator) -> list[Part]:
    return [("body", _bar(-1, 0, 0.3, 0, r.uniform(0.25, 0.35))), ("body", _poly(0.2, -0.65, 1, 0, 0.2, 0.65)),
            ("part", _poly(-1, -0.35, -0.7, 0, -1, 0.35, -0.85, 0))]  # fmt: skip


def _motorbike(r: np.random.Generator) -> list[Part]:
    return [("body", _poly(-0.55, 0.3, 0.55, 0.3, 0.35, -0.3, -0.35, -0.3)),
            ("body", _bar(0.35, -0.3, 0.55, -0.65, 0.15)),
            ("part", _circle(-0.6, 0.4, 0.38)), ("part", _circle(0.6, 0.4, 0.38))]  # fmt: skip


def _person(r: np.random.Generator) -> list[Part]:
    a = r.uniform(0.5, 0.75)
    return [("body", _circle(0, -0.74, 0.24)), ("body", _bar(-0.12, 0.15, -0.3, 1, 0.22)),
            ("body", _bar(0.12, 0.15, 0.3, 1, 0.22)), ("body", _bar(-0.28, -0.45, -a, 0.15, 0.18)),
            ("body", _bar(0.28, -0.45, a, 0.15, 0.18)),
            ("part", _poly(-0.3, -0.52, 0.3, -0.52, 0.22, 0.22, -0.22, 0.22))]  # fmt: skip


def _pottedplant(r: np.random.Generator) -> list[Part]:
    parts: list[Part] = [("part", _poly(-0.4, 0.3, 0.4, 0.3, 0.3, 1, -0.3, 1))]
    for k in range(5):
        t = np.pi * (0.15 + 0.7 * k / 4)
        parts.append(("body", _circle(0.5 * np.cos(t + np.pi), -0.25 - 0.45 * np.sin(t), 0.3)))
    parts.append(("body", _bar(0, 0.3, 0, -0.3, 0.16)))
    return parts


def _sheep(r: np.random.Generator) -> list[Part]:
    parts: list[Part] = []
    for k in range(7):
        t = 2 * np.pi * k / 7 + r.uniform(-0.2, 0.2)
        parts.append(("body", _circle(0.5 * np.cos(t), 0.3 * np.sin(t) - 0.1, r.uniform(0.33, 0.43))))
    parts += [("body", _bar(-0.4, 0.2, -0.4, 0.85, 0.16)), ("body", _bar(0.3, 0.2, 0.3, 0.85, 0.16)),
              ("part", _circle(0.85, -0.35, 0.2))]  # fmt: skip
    return parts


def _sofa(r: np.random.Generator) -> list[Part]:
    h = r.uniform(0.5, 0.8)
    return [("body", _rect(0, 0.5, 2.0, 0.5)), ("body", _rect(-0.85, 0.25 - h / 2, 0.3, h + 0.2)),
            ("body", _rect(0.85, 0.25 - h / 2, 0.3, h + 0.2)), ("part", _rect(0, 0.33, 1.4, 0.16))]  # fmt: skip


def _train(r: np.random.Generator) -> list[Part]:
    parts: list[Part] = [("body", _bar(-1, 0.1, 1, 0.1, 0.16))]
    for x in (-0.68, 0, 0.68):
        parts += [("body", _rect(x, 0, 0.55, 0.6)), ("part", _rect(x, -0.08, 0.25, 0.2))]
    return parts


def _tvmonitor(r: np.random.Generator) -> list[Part]:
    return [("body", _rect(0, -0.15, 1.7, 1.25)), ("part", _rect(0, -0.15, 1.35, 0.92)),
            ("body", _bar(0, 0.45, 0, 0.8, 0.18)), ("body", _bar(-0.4, 0.82, 0.4, 0.82, 0.18))]  # fmt: skip


# SHAPES[i] draws VOC class i + 1.
SHAPES: tuple[Callable[[np.random.Generator], list[Part]], ...] = (
    _aeroplane, _bicycle, _bird, _boat, _bottle, _bus, _car, _cat, _chair, _cow,
    _diningtable, _dog, _horse, _motorbike, _person, _pottedplant, _sheep, _sofa, _train, _tvmonitor,
)  # fmt: skip

# ---------------------------------------------------------------------------------------------
# Textures: one distribution for every region of every image, whatever its class.
# ---------------------------------------------------------------------------------------------


# Colours, in HSV. Object colours come from a palette of 8 hues, 45 degrees apart; each object class
# owns a pair of palette hues at least 90 degrees apart (the 20 such pairs: one per class) and paints
# its textures in both, within `hue_spread` degrees of each. Every palette hue is thus shared by five
# classes: one pixel's colour narrows the class to five, while two neighbouring colours name it.
# Backgrounds take any hue and lean to low saturation (sky, roads, walls), overlapping the objects'.
HUE_SPREAD = 8.0
PALETTE = tuple(45.0 * i for i in range(8))
CLASS_HUES = tuple((PALETTE[a], PALETTE[b]) for a in range(8) for b in range(a + 2, 8) if b - a != 7)
OBJECT_HSV = ((0.45, 1.0), (0.45, 1.0))  # saturation, value ranges
BACKGROUND_HSV = ((0.0, 0.55), (0.25, 1.0))


def _colour(
    r: np.random.Generator, hue: Optional[float] = None, hsv: tuple = OBJECT_HSV, spread: float = HUE_SPREAD
) -> np.ndarray:
    """An RGB colour (0..255): hue within `spread` degrees of `hue`, or any hue when None."""
    h = r.uniform(0, 360) if hue is None else hue + r.uniform(-spread, spread)
    rgb = colorsys.hsv_to_rgb((h % 360) / 360, r.uniform(*hsv[0]), r.uniform(*hsv[1]))
    return np.array(rgb) * 255


@lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy, xx


# Texture kinds: solid, stripes, checker, gradient, dots, blotches. An object class's body favours one
# of the patterns (with probability `texture_bias`) and its parts another, so every pattern is typical
# of several classes; backgrounds (sky, ground, walls) lean to the smooth kinds.
OBJECT_TEXTURES = (1 / 6,) * 6
PATTERNS = (1, 2, 4, 5)  # the kinds that show both colours close together: objects' favourites
BACKGROUND_TEXTURES = (0.35, 0.05, 0.05, 0.3, 0.0, 0.25)


def _favouring(kind: int, weight: float) -> tuple[float, ...]:
    return tuple(weight + (1 - weight) / 6 if k == kind else (1 - weight) / 6 for k in range(6))


def texture(
    r: np.random.Generator,
    h: int,
    w: int,
    kinds: tuple[float, ...] = OBJECT_TEXTURES,
    contrast: float = 70,
    hues: Optional[tuple[float, float]] = None,
    hsv: tuple = OBJECT_HSV,
    spread: float = HUE_SPREAD,
) -> np.ndarray:
    """An HxWx3 float32 texture: kind drawn with probabilities `kinds`; colours from `_colour`, one
    near each of `hues` (an object class's pair, in random order), else one of any hue and a second
    within `contrast` of it (backgrounds and clutter: weak edges inside, as in natural images)."""
    if hues is None:
        c0 = _colour(r, None, hsv, spread)
        c1 = np.clip(c0 + r.uniform(-contrast, contrast, 3), 0, 255)
    else:
        c0, c1 = (_colour(r, h, hsv, spread) for h in (hues if r.random() < 0.5 else hues[::-1]))
    yy, xx = _grid(h, w)
    kind = r.choice(6, p=kinds)
    if kind == 0:  # solid
        t = np.zeros((h, w), np.float32)
    elif kind == 1:  # stripes
        a, period = r.uniform(0, np.pi), r.uniform(6, 16)
        t = (((xx * np.cos(a) + yy * np.sin(a)) % period) < period / 2).astype(np.float32)
    elif kind == 2:  # checker
        cell = r.uniform(4, 10)
        t = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2).astype(np.float32)
    elif kind == 3:  # gradient
        a = r.uniform(0, 2 * np.pi)
        p = xx * np.cos(a) + yy * np.sin(a)
        t = (p - p.min()) / (np.ptp(p) + 1e-6)
    elif kind == 4:  # dots
        t = np.zeros((h, w), np.float32)
        step = r.uniform(6, 12)
        for y in np.arange(r.uniform(0, step), h, step):
            for x in np.arange(r.uniform(0, step), w, step):
                cv2.circle(t, (int(x), int(y)), max(1, int(step / 4)), 1.0, -1)
    else:  # blotches: smooth noise
        small = r.random((max(2, h // 12), max(2, w // 12)), dtype=np.float32)
        t = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    tex = c0.astype(np.float32) + t[..., None] * (c1 - c0).astype(np.float32)
    return tex + r.standard_normal((h, w, 1), dtype=np.float32) * np.float32(r.uniform(2, 10))


# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------


def _place(
    parts: list[Part], r: np.random.Generator, size: int, scale: tuple[float, float], max_rotation: float
) -> list[Part]:
    """Local polygons -> pixel polygons: scale, aspect, rotation, mirroring, position."""
    s = r.uniform(*scale) * size
    aspect = np.exp(r.uniform(-0.1, 0.1))
    a = np.deg2rad(r.uniform(-max_rotation, max_rotation))
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    lin = rot @ np.diag([s * aspect * (-1 if r.random() < 0.5 else 1), s / aspect])
    centre = r.uniform(0.1, 0.9, 2) * size
    return [(op, poly @ lin.T + centre) for op, poly in parts]


def _fill(polys: list[np.ndarray], size: int) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    for p in polys:
        cv2.fillPoly(m, [np.round(p * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return m.astype(bool)


def _object_masks(parts: list[Part], size: int) -> tuple[np.ndarray, np.ndarray]:
    body = _fill([p for op, p in parts if op != "cut"], size)
    body &= ~_fill([p for op, p in parts if op == "cut"], size)
    part = _fill([p for op, p in parts if op == "part"], size) & body
    return body, part


def _background(r: np.random.Generator, size: int) -> np.ndarray:
    img = texture(r, size, size, BACKGROUND_TEXTURES, 45, hsv=BACKGROUND_HSV)
    if r.random() < 0.7:  # two regions (sky / ground) split by a tilted horizon
        y0, y1 = r.uniform(0.25, 0.75, 2) * size
        yy, xx = _grid(size, size)
        below = yy > y0 + (y1 - y0) * xx / size
        img[below] = texture(r, size, size, BACKGROUND_TEXTURES, 45, hsv=BACKGROUND_HSV)[below]
    for _ in range(int(r.integers(1, 6))):  # clutter, all background
        if r.random() < 0.5:
            pts = (r.uniform(-0.1, 1.1, (int(r.integers(2, 4)), 2)) * size).astype(np.int32)
            cv2.polylines(img, [pts], False, _colour(r).tolist(), int(r.integers(1, 3)))
        else:
            rad = r.uniform(0.02, 0.08) * size
            pts = r.uniform(0, size, 2) + r.normal(0, rad, (int(r.integers(4, 8)), 2))
            blob = np.zeros((size, size), np.uint8)
            cv2.fillPoly(blob, [cv2.convexHull(pts.astype(np.int32))], 1)
            img[blob.astype(bool)] = texture(r, size, size)[blob.astype(bool)]
    return img


def render_scene(
    r: np.random.Generator,
    size: int,
    classes: list[int],
    scale: tuple[float, float] = (0.3, 0.5),
    min_visible: float = 0.5,
    ignore_border: int = 1,
    hue_spread: float = HUE_SPREAD,
    texture_bias: float = 0.9,
    max_rotation: float = 10.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One image (RGB uint8) and its mask (uint8, 255 on instance outlines) with these classes.

    Objects are placed in order, later ones in front; a placement that leaves any object less than
    `min_visible` visible is drawn again (an object that never fits is left out).
    """
    img = _background(r, size)
    instances = np.zeros((size, size), np.int32)
    labels = np.zeros((size, size), np.uint8)
    areas: list[int] = []
    for cls in classes:
        for _attempt in range(20):
            parts = _place(SHAPES[cls - 1](r), r, size, scale, max_rotation)
            body, part = _object_masks(parts, size)
            if body.sum() < 20:
                continue
            trial = instances.copy()
            trial[body] = len(areas) + 1
            visible = np.bincount(trial.ravel(), minlength=len(areas) + 2)[1:]
            if all(v >= min_visible * a for v, a in zip(visible, areas + [int(body.sum())])):
                break
        else:
            continue
        areas.append(int(body.sum()))
        instances = trial
        labels[body] = cls
        k = cls - 1
        body_kinds = _favouring(PATTERNS[k % 4], texture_bias)
        part_kinds = _favouring(PATTERNS[(k + 2) % 4], texture_bias)
        img[body] = texture(r, size, size, body_kinds, hues=CLASS_HUES[k], spread=hue_spread)[body]
        img[part] = texture(r, size, size, part_kinds, hues=CLASS_HUES[k], spread=hue_spread)[part]
    img = np.clip(img + r.standard_normal(img.shape, dtype=np.float32) * 3, 0, 255).astype(np.uint8)
    if ignore_border > 0:
        # Like VOC's outline band: pixels within `ignore_border` of another instance are ignored.
        k = np.ones((2 * ignore_border + 1,) * 2, np.uint8)
        inst = instances.astype(np.float32)
        labels[cv2.dilate(inst, k) != cv2.erode(inst, k)] = IGNORE_INDEX
    return img, labels


def _params(cfg: "SyntheticConfig") -> dict[str, Any]:
    from seg.config import SyntheticConfig  # here: seg.config imports seg.data

    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(SyntheticConfig)}


def dataset_key(cfg: "SyntheticConfig") -> str:
    """A folder name that changes whenever the generated data would."""
    blob = json.dumps({"version": GENERATOR_VERSION, **_params(cfg)}, sort_keys=True)
    return f"synthetic-v{GENERATOR_VERSION}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


def generate(out_dir: str | Path, cfg: "SyntheticConfig") -> Path:
    """Write the dataset into `out_dir` in VOC layout; return its VOC2012 folder."""
    p = _params(cfg)
    ok = p["image_size"] >= 16 and 1 <= p["min_objects"] <= p["max_objects"]
    if not (ok and 0 < p["min_scale"] <= p["max_scale"]):
        raise DatasetError(
            "dataset.synthetic needs image_size >= 16, 1 <= min_objects <= max_objects and "
            f"0 < min_scale <= max_scale; got {p}"
        )
    voc = Path(out_dir) / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
    n_cls = len(SHAPES)
    all_names = []
    for split_id, split in enumerate(SPLITS):
        names = []
        for i in range(p[f"num_{split}"]):
            r = np.random.default_rng([p["seed"], split_id, i])
            # The first object cycles through the classes so that every split holds every class.
            classes = [1 + i % n_cls] + list(
                r.integers(1, n_cls + 1, int(r.integers(p["min_objects"], p["max_objects"] + 1)) - 1)
            )
            image, mask = render_scene(
                r, p["image_size"], classes, (p["min_scale"], p["max_scale"]), p["min_visible"],
                p["ignore_border"], p["hue_spread"], p["texture_bias"], p["max_rotation"],
            )  # fmt: skip
            name = f"{split}_{i:06d}"
            Image.fromarray(image).save(
                voc / "JPEGImages" / f"{name}.jpg", quality=p["jpeg_quality"], subsampling=0
            )  # full-resolution colour (4:4:4): a class shows in its two colours, kept apart
            write_mask(voc / "SegmentationClass" / f"{name}.png", mask)
            names.append(name)
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(n + "\n" for n in names))
        all_names += names
    (voc / "ImageSets" / "Segmentation" / "trainval.txt").write_text("".join(n + "\n" for n in all_names))
    meta = {"generator_version": GENERATOR_VERSION, "params": p, "class_names": list(VOC_CLASSES)}
    (Path(out_dir) / "synthetic.json").write_text(json.dumps(meta, indent=2) + "\n")
    return voc


@contextmanager
def _lock(path: Path) -> Iterator[bool]:
    """An exclusive file lock where the platform has one (yields whether it is held)."""
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): the atomic rename alone keeps the cache whole
        yield False
        return
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_synthetic(root: str | Path, cfg: "SyntheticConfig") -> Path:
    """The cached dataset folder for `cfg` under `root`, generated first if missing.

    Generation writes to a temporary folder renamed into place, under a lock, so an interrupted or
    concurrent run (DataLoader workers, several ranks) never sees or leaves a half-written dataset.
    """
    root = Path(root).expanduser()
    key = dataset_key(cfg)
    final = root / key
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root / f".{key}.lock") as locked:
        if final.is_dir():  # another process finished while we waited
            return final
        if locked:  # leftovers of interrupted runs: nobody else can be writing them now
            for stale in root.glob(f".{key}.tmp*"):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f".{key}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}"  # mkdir honours the umask
        tmp.mkdir()
        try:
            log.info("generating the synthetic dataset in %s", final)
            generate(tmp, cfg)
            os.rename(tmp, final)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not final.is_dir():
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final
