"""COCO -> VOC classes: polygons, compressed and uncompressed RLE, overlaps, crowd, the filter."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import exit_status
from data_samples import random_image
from PIL import Image
from pycocotools import mask as mask_utils

from seg.config import CocoConfig, DatasetConfig
from seg.data import DatasetError, build_dataset
from seg.data.coco import COCO_TO_VOC, decode_segmentation, load_annotations

REPO = Path(__file__).resolve().parents[1]
H, W = 40, 50
PERSON, DOG, CAR, CHAIR = 15, 12, 7, 9  # VOC indices of COCO 1, 18, 3, 62


def _box(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _uncompressed_rle(mask: np.ndarray) -> dict:
    counts, prev, run = [], 0, 0
    for v in mask.flatten(order="F"):  # COCO runs go down columns, starting with zeros
        if v == prev:
            run += 1
        else:
            counts.append(run)
            prev, run = v, 1
    counts.append(run)
    return {"counts": counts, "size": list(mask.shape)}


def _compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"counts": rle["counts"].decode(), "size": rle["size"]}


def _rect_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _write_coco(root: Path) -> None:
    anns = [
        # image 1: everything at once
        dict(image_id=1, category_id=1, segmentation=_box(2, 2, 24, 24), area=484, iscrowd=0),  # person
        dict(image_id=1, category_id=18, segmentation=_box(15, 15, 34, 34), area=361, iscrowd=0),  # dog, overlaps
        dict(
            image_id=1, category_id=3, segmentation=_compressed_rle(_rect_mask(35, 2, 48, 12)), area=130, iscrowd=0
        ),  # car, compressed RLE
        dict(
            image_id=1, category_id=1, segmentation=_uncompressed_rle(_rect_mask(35, 25, 48, 38)), area=169, iscrowd=1
        ),  # crowd of people, uncompressed RLE
        dict(image_id=1, category_id=90, segmentation=_box(2, 30, 12, 38), area=80, iscrowd=0),  # toothbrush
        # image 2: selected area exactly 1000 -> dropped from train; image 3: 1001 -> kept
        dict(image_id=2, category_id=62, segmentation=_box(0, 0, 10, 10), area=1000, iscrowd=0),
        dict(image_id=3, category_id=62, segmentation=_box(0, 0, 10, 10), area=600, iscrowd=0),
        dict(image_id=3, category_id=62, segmentation=_box(20, 20, 30, 30), area=401, iscrowd=0),
        # image 4: only an unmapped category
        dict(image_id=4, category_id=90, segmentation=_box(0, 0, 40, 30), area=5000, iscrowd=0),
    ]
    for i, a in enumerate(anns):
        a["id"] = i + 1
    images = [dict(id=i, file_name=f"{i:012d}.jpg", height=H, width=W) for i in range(1, 6)]
    cats = [dict(id=c, name=str(c)) for c in (1, 3, 18, 62, 90)]
    data = {"images": images, "annotations": anns, "categories": cats}
    (root / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
        (root / split).mkdir()
        for info in images:
            Image.fromarray(random_image(H, W, info["id"])).save(root / split / info["file_name"])


def _cfg(root: Path, **kw) -> DatasetConfig:
    return DatasetConfig(name="coco", root=str(root), train_split="train2017", val_split="val2017", **kw)


def test_mapping_is_torchvisions():
    assert COCO_TO_VOC == (0, 5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72)


def test_masks_polygon_rle_overlap_crowd(tmp_path):
    _write_coco(tmp_path)
    ds = build_dataset(_cfg(tmp_path), "val")
    image, mask = ds[0]
    assert ds.names[0] == "000000000001" and image.shape == (H, W, 3) and mask.shape == (H, W)
    assert mask[5, 5] == PERSON  # polygon
    assert mask[25, 25] == DOG  # polygon
    assert mask[17, 17] == 255  # person and dog overlap
    assert mask[5, 40] == CAR  # compressed RLE
    assert (mask[26:37, 36:47] == PERSON).all()  # crowd region, uncompressed RLE, labelled
    assert mask[34, 6] == 0  # unmapped category: background
    assert set(np.unique(mask)) == {0, CAR, DOG, PERSON, 255}
    assert (ds[3][1] == 0).all()


def test_training_filter_1000_pixels(tmp_path):
    _write_coco(tmp_path)
    train = build_dataset(_cfg(tmp_path), "train")
    assert train.names == ["000000000001", "000000000003"]  # 2: exactly 1000; 4, 5: nothing selected
    assert len(build_dataset(_cfg(tmp_path), "val")) == 5  # val is not filtered
    assert len(build_dataset(_cfg(tmp_path, coco=CocoConfig(min_pixels=None)), "train")) == 5


def test_prepare_coco_matches_on_the_fly(tmp_path, capsys):
    _write_coco(tmp_path)
    fly = {s: build_dataset(_cfg(tmp_path), s) for s in ("train", "val")}
    spec = importlib.util.spec_from_file_location("prepare_coco", REPO / "tools" / "prepare_coco.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert exit_status(tool.main, ["--coco-root", str(tmp_path), "--workers", "2"]) == 0
    assert exit_status(tool.main, ["--coco-root", str(tmp_path), "--splits", "val2017", "--workers", "1"]) == 0
    assert "rendering 0" in capsys.readouterr().out  # resumed
    for split, on_the_fly in fly.items():
        prepared = build_dataset(_cfg(tmp_path), split)
        assert prepared.prepared and prepared.names == on_the_fly.names
        for i in range(len(prepared)):
            assert np.array_equal(prepared[i][1], on_the_fly[i][1])


def test_missing_annotations(tmp_path):
    (tmp_path / "val2017").mkdir()
    with pytest.raises(DatasetError, match=r"instances_val2017\.json.*data/README\.md"):
        build_dataset(_cfg(tmp_path), "val")
    with pytest.raises(DatasetError, match=r"nowhere"):
        build_dataset(_cfg(tmp_path / "nowhere"), "val")


def test_real_coco_subset(real_fixtures):
    root = real_fixtures / "coco"
    data = load_annotations(root / "annotations" / "instances_val2017.json")
    sizes = {i["id"]: (i["height"], i["width"]) for i in data["images"]}
    kinds = set()
    for ann in data["annotations"]:  # every annotation decodes, to about its stated area
        seg = ann["segmentation"]
        kinds.add("polygon" if isinstance(seg, list) else "rle")
        m = decode_segmentation(seg, *sizes[ann["image_id"]])
        assert m.shape == sizes[ann["image_id"]]
        assert abs(int(m.sum()) - ann["area"]) <= max(20, 0.1 * ann["area"])
    assert kinds == {"polygon", "rle"}

    ds = build_dataset(_cfg(root), "val")
    assert len(ds) == 10
    crowd = next(a for a in data["annotations"] if a["iscrowd"])  # the uncompressed RLE, a person
    i = ds.names.index(f"{crowd['image_id']:012d}")
    x, y, w, h = (int(v) for v in crowd["bbox"])
    region = ds[i][1][y : y + h, x : x + w]
    assert np.isin(region, [0, PERSON, 255]).all() and (region == PERSON).sum() > 0.3 * crowd["area"]
    table = ds.names.index("000000182202")  # one large dining-table polygon (COCO 67 -> VOC 11)
    assert abs(int((ds[table][1] == 11).sum()) - 72455) < 0.03 * 72455
