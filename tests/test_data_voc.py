"""VOC 2012 reader, SBD train_aug preparation, and the bad-input errors every dataset shares."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from cli_helpers import exit_status
from data_samples import block_mask, random_image, write_voc
from PIL import Image

from seg.config import DatasetConfig
from seg.data import DatasetError, build_dataset
from seg.data.base import read_mask, write_mask
from seg.data.classes import VOC_CLASSES, voc_palette
from seg.data.voc import VOCSegmentation, read_sbd_mask, train_aug_ids

REPO = Path(__file__).resolve().parents[1]
REAL = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real"


def _voc_cfg(root: Path, **kw) -> DatasetConfig:
    return DatasetConfig(name="voc", root=str(root), **kw)


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- reading -------------------------------------------------------------------------------------


def test_palette_mask_reads_indices_not_colours(tmp_path):
    values = np.array([[0, 9, 12, 255]], np.uint8).repeat(3, 0)
    write_mask(tmp_path / "voc.png", values)
    assert Image.open(tmp_path / "voc.png").mode == "P"
    assert np.array_equal(read_mask(tmp_path / "voc.png"), values)
    # A palette unrelated to VOC's: still the indices.
    img = Image.fromarray(values)
    img.putpalette(np.random.default_rng(0).integers(0, 256, 768).astype(np.uint8).tolist())
    img.save(tmp_path / "odd.png")
    assert np.array_equal(read_mask(tmp_path / "odd.png"), values)


def test_voc_reader_and_both_root_forms(tmp_path):
    voc = write_voc(tmp_path, {"train": ["a", "b"], "val": ["c"]})
    for root in (tmp_path, voc):
        ds = build_dataset(_voc_cfg(root), "train")
        assert ds.names == ["a", "b"] and ds.class_names == list(VOC_CLASSES)
        image, mask = ds[1]
        assert image.dtype == np.uint8 and image.shape == (24, 32, 3)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 2, 255}
    assert build_dataset(_voc_cfg(tmp_path), "val").names == ["c"]
    assert len(build_dataset(_voc_cfg(tmp_path, val_split="train"), "val")) == 2  # roles resolve


def test_real_voc_sample(real_fixtures):
    for root in (real_fixtures, real_fixtures / "VOCdevkit" / "VOC2012"):
        ds = build_dataset(_voc_cfg(root), "val")
        assert ds.names == ["2007_000063"]
        image, mask = ds[0]
        assert image.shape == (375, 500, 3) and mask.shape == (375, 500)
        assert set(np.unique(mask).tolist()) == {0, 9, 12, 255}  # background, chair, dog, ignore


# --- bad input -----------------------------------------------------------------------------------


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_root_and_split_file(tmp_path):
    with pytest.raises(DatasetError) as e:
        build_dataset(_voc_cfg(tmp_path / "nowhere"), "train")
    assert str(tmp_path / "nowhere") in _one_line(e) and "data/README.md" in str(e.value)

    voc = write_voc(tmp_path, {"train": ["a"]})
    with pytest.raises(DatasetError) as e:
        build_dataset(DatasetConfig(name="voc_aug", root=str(tmp_path), train_split="train_aug"), "train")
    msg = _one_line(e)
    assert str(voc / "ImageSets" / "Segmentation" / "train_aug.txt") in msg and "data/README.md" in msg


def test_missing_file_listed_in_split(tmp_path, caplog):
    voc = write_voc(tmp_path, {"train": ["a", "b"]})
    (voc / "JPEGImages" / "b.jpg").unlink()
    with pytest.raises(DatasetError, match=r"JPEGImages/b\.jpg"):
        build_dataset(_voc_cfg(tmp_path), "train")
    with caplog.at_level(logging.WARNING):
        assert build_dataset(_voc_cfg(tmp_path, skip_bad=True), "train").names == ["a"]
    assert "skipped 1 missing" in caplog.text


def test_truncated_image_and_unreadable_mask(tmp_path, caplog):
    voc = write_voc(tmp_path, {"train": ["a", "b", "c"]}, h=64, w=64)
    jpg = voc / "JPEGImages" / "a.jpg"
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    (voc / "SegmentationClass" / "b.png").write_bytes(b"not a png")
    ds = build_dataset(_voc_cfg(tmp_path), "train")
    with pytest.raises(DatasetError, match=r"a\.jpg"):
        ds[0]
    with pytest.raises(DatasetError, match=r"b\.png"):
        ds[1]
    skipping = build_dataset(_voc_cfg(tmp_path, skip_bad=True), "train")
    with caplog.at_level(logging.WARNING):
        _, mask = skipping[0]  # a and b are bad: c comes back
    assert set(np.unique(mask)) == {0, 3, 255}
    assert skipping.num_skipped == 2 and "2 so far" in caplog.text


def test_size_mismatch_and_bad_values(tmp_path):
    voc = write_voc(tmp_path, {"train": ["a", "b"]})
    write_mask(voc / "SegmentationClass" / "a.png", block_mask(32, 24, 1))
    bad = block_mask(24, 32, 1)
    bad[0, 0], bad[0, 1] = 21, 200
    write_mask(voc / "SegmentationClass" / "b.png", bad)
    ds = build_dataset(_voc_cfg(tmp_path), "train")
    with pytest.raises(DatasetError, match=r"a\.png.*32x24.*24x32"):
        ds[0]
    with pytest.raises(DatasetError, match=r"b\.png has values \[21, 200\]"):
        ds[1]


def test_colour_mask_is_rejected(tmp_path):
    voc = write_voc(tmp_path, {"train": ["a"]})
    Image.fromarray(random_image(24, 32)).save(voc / "SegmentationClass" / "a.png")
    with pytest.raises(DatasetError, match=r"a\.png has mode RGB"):
        build_dataset(_voc_cfg(tmp_path), "train")[0]


# --- SBD and train_aug ---------------------------------------------------------------------------


def _write_sbd_mat(path: Path, seg: np.ndarray) -> None:
    # SBD's layout: a MATLAB struct GTcls with fields Segmentation, Boundaries, CategoriesPresent.
    path.parent.mkdir(parents=True, exist_ok=True)
    cats = np.unique(seg[seg > 0]).astype(np.uint8)
    scipy.io.savemat(path, {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros((20, 1), object),
                                      "CategoriesPresent": cats}})  # fmt: skip


def test_read_sbd_mat(tmp_path):
    seg = np.random.default_rng(0).integers(0, 21, (7, 9)).astype(np.uint8)
    _write_sbd_mat(tmp_path / "x.mat", seg)
    out = read_sbd_mask(tmp_path / "x.mat")
    assert out.dtype == np.uint8 and np.array_equal(out, seg)
    (tmp_path / "bad.mat").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"bad\.mat"):
        read_sbd_mask(tmp_path / "bad.mat")


def test_train_aug_ids():
    assert train_aug_ids(["a", "b"], ["c"], ["b", "c", "d"]) == ["a", "b", "d"]


def test_prepare_voc_builds_train_aug(tmp_path, capsys):
    voc = write_voc(tmp_path / "voc", {"train": ["a", "b"], "val": ["c"]})
    sbd = tmp_path / "sbd" / "benchmark_RELEASE" / "dataset"
    segs = {}
    for k, name in enumerate(["b", "c", "d", "e"]):
        segs[name] = block_mask(24, 32, 5 + k)
        segs[name][segs[name] == 255] = 0  # SBD masks have no outline band
        _write_sbd_mat(sbd / "cls" / f"{name}.mat", segs[name])
    (sbd / "train.txt").write_text("b\nd\n")
    (sbd / "val.txt").write_text("c\ne\n")
    for name in ("d", "e"):  # SBD's images are part of VOC 2012's JPEGImages
        Image.fromarray(random_image(24, 32)).save(voc / "JPEGImages" / f"{name}.jpg")

    tool = _tool("prepare_voc")
    args = ["--voc-root", str(tmp_path / "voc"), "--sbd-root", str(tmp_path / "sbd"), "--workers", "2"]
    assert exit_status(tool.main, args) == 1  # not the official 1,464 / 1,449 / 10,582
    assert "MISMATCH" in capsys.readouterr().out
    assert exit_status(tool.main, args + ["--skip-count-check"]) == 0
    assert "converting 0" in capsys.readouterr().out  # resumed: everything was converted already
    assert sorted(p.stem for p in (voc / "SegmentationClassAug").glob("*.png")) == ["d", "e"]

    cfg = DatasetConfig(name="voc_aug", root=str(tmp_path / "voc"), train_split="train_aug")
    ds = build_dataset(cfg, "train")
    assert ds.names == ["a", "b", "d", "e"]
    assert np.array_equal(ds[2][1], segs["d"])  # SBD's mask for d
    assert 255 in ds[1][1]  # VOC's own mask (with its outline) for b
    assert build_dataset(cfg, "val").names == ["c"]


def test_prepare_voc_reports_missing_sbd(tmp_path, capsys):
    write_voc(tmp_path / "voc", {"train": ["a"], "val": ["c"]})
    tool = _tool("prepare_voc")
    assert exit_status(tool.main, ["--voc-root", str(tmp_path / "voc"), "--sbd-root", str(tmp_path / "none")]) == 1
    assert str(tmp_path / "none") in capsys.readouterr().err


def test_voc_reader_class_is_reusable(tmp_path):
    write_voc(tmp_path, {"train": ["a"]})
    assert len(VOCSegmentation(tmp_path, "train")) == 1
    assert voc_palette()[255].tolist() == [224, 224, 192]
