"""The built-in dataset: deterministic, cached safely, every class in val, not a colour lookup."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from seg.config import DatasetConfig, SyntheticConfig
from seg.data import build_dataset
from seg.data.classes import VOC_CLASSES
from seg.data.synthetic import dataset_key, ensure_synthetic, generate

SMALL = SyntheticConfig(num_train=30, num_val=20, image_size=64, seed=0)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """SMALL generated once for the module (through the cache, as training uses it)."""
    root = tmp_path_factory.mktemp("synthetic")
    return ensure_synthetic(root, SMALL)


def test_generation_is_deterministic(tmp_path, small):
    generate(tmp_path / "again", SMALL)
    assert _files(tmp_path / "again") == _files(small)
    other = SyntheticConfig(num_train=30, num_val=20, image_size=64, seed=1)
    generate(tmp_path / "seed1", other)
    a = (small / "VOCdevkit/VOC2012/SegmentationClass/val_000000.png").read_bytes()
    assert (tmp_path / "seed1/VOCdevkit/VOC2012/SegmentationClass/val_000000.png").read_bytes() != a
    assert dataset_key(other) != dataset_key(SMALL)


def test_dataset_in_voc_layout_with_every_class_in_val(small):
    root = small.parent
    cfg = DatasetConfig(name="synthetic", root=str(root), synthetic=SMALL)
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) == 30 and len(val) == 20
    assert val.class_names == list(VOC_CLASSES) and val.names[0] == "val_000000"
    seen = set()
    for i in range(len(val)):
        image, mask = val[i]
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and mask.shape == (64, 64)
        seen |= set(np.unique(mask).tolist())
    assert seen == set(range(21)) | {255}


def test_cache_is_reused_and_safe_under_concurrency(tmp_path):
    cfg = SyntheticConfig(num_train=4, num_val=2, image_size=32)
    (tmp_path / f".{dataset_key(cfg)}.tmpstale").mkdir()  # left by an interrupted run
    results = []
    threads = [threading.Thread(target=lambda: results.append(ensure_synthetic(tmp_path, cfg))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and results[0] == tmp_path / dataset_key(cfg)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [dataset_key(cfg)]
    marker = results[0] / "synthetic.json"
    before = marker.stat().st_mtime_ns
    assert ensure_synthetic(tmp_path, cfg) == results[0] and marker.stat().st_mtime_ns == before


def test_class_is_not_a_pixel_colour(small):
    """A per-pixel colour classifier (histogram over 8x8x8 RGB bins) fitted on train fails on val."""
    cfg = DatasetConfig(name="synthetic", root=str(small.parent), synthetic=SMALL)

    def pixels(split):
        ds = build_dataset(cfg, split)
        pairs = [ds[i] for i in range(len(ds))]
        rgb = np.concatenate([im.reshape(-1, 3) for im, _ in pairs]).astype(np.int64) // 32
        lab = np.concatenate([m.ravel() for _, m in pairs])
        keep = lab < 255
        return rgb[keep] @ [64, 8, 1], lab[keep]

    bins, labels = pixels("train")
    hist = np.zeros((512, 21))
    np.add.at(hist, (bins, labels), 1)
    val_bins, val_labels = pixels("val")
    pred = hist[val_bins].argmax(1)
    objects = val_labels > 0
    assert (pred[objects] == val_labels[objects]).mean() < 0.25  # chance over 20 classes: 0.05
    cm = np.bincount(21 * val_labels + pred, minlength=441).reshape(21, 21)
    iou = np.diag(cm) / np.maximum(cm.sum(0) + cm.sum(1) - np.diag(cm), 1)
    assert iou.mean() < 0.15, iou.mean()
