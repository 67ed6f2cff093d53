"""A user's own folder dataset, the dataset configs, and the common interface."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import CONF_DIR, compose_config
from data_samples import random_image
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError
from PIL import Image

from seg.config import DatasetConfig
from seg.data import DATASETS, DatasetError, build_dataset
from seg.data.base import write_mask
from seg.data.transforms import build_eval_transform

CLASSES = ["background", "road", "car"]


def _write(image_path: Path, mask_path: Path, mask: np.ndarray) -> None:
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(random_image(*mask.shape)).save(image_path)
    Image.fromarray(mask).save(mask_path)  # grayscale "L"


def _cfg(root: Path, **kw) -> DatasetConfig:
    kw = {"class_names": CLASSES, "num_classes": 3, **kw}
    return DatasetConfig(name="folder", root=str(root), **kw)


def test_split_subfolders_and_custom_classes(tmp_path):
    mask = np.array([[0, 1], [2, 254]], np.uint8).repeat(4, 0).repeat(4, 1)
    for split, stems in {"train": ["x", "y"], "val": ["z"]}.items():
        for s in stems:
            _write(tmp_path / "images" / split / f"{s}.jpg", tmp_path / "masks" / split / f"{s}.png", mask)
    ds = build_dataset(_cfg(tmp_path, ignore_index=254), "train", build_eval_transform())
    assert ds.names == ["x", "y"] and ds.class_names == CLASSES
    x, y = ds[0]
    assert x.shape == (3, 8, 8) and set(y.unique().tolist()) == {0, 1, 2, 254}
    assert build_dataset(_cfg(tmp_path, ignore_index=254), "val").names == ["z"]
    with pytest.raises(DatasetError, match=r"values \[254\] outside \[0, 3\) and ignore_index 255"):
        build_dataset(_cfg(tmp_path), "train")[0]


def test_split_files_and_palette_masks(tmp_path):
    mask = np.array([[0, 1, 2, 255]], np.uint8).repeat(3, 0)
    for stem in ("a", "b", "c"):
        _write(tmp_path / "images" / f"{stem}.png", tmp_path / "masks" / f"{stem}.png", mask)
    write_mask(tmp_path / "masks" / "c.png", mask)  # palette PNG: indices
    (tmp_path / "train.txt").write_text("a\nc\n")
    ds = build_dataset(_cfg(tmp_path), "train")
    assert ds.names == ["a", "c"] and np.array_equal(ds[1][1], mask)
    with pytest.raises(DatasetError, match=r"val\.txt"):
        build_dataset(_cfg(tmp_path), "val")


def test_folder_bad_config_and_missing_folders(tmp_path):
    with pytest.raises(DatasetError, match=r"num_classes=4 but dataset.class_names has 3"):
        build_dataset(_cfg(tmp_path, num_classes=4), "train")
    with pytest.raises(DatasetError, match=r"ignore_index"):
        build_dataset(_cfg(tmp_path, ignore_index=300), "train")
    with pytest.raises(DatasetError, match=str(tmp_path / "images")):
        build_dataset(_cfg(tmp_path), "train")


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_configs_compose(name):
    cfg = compose_config(f"dataset={name}")
    assert cfg.dataset.name == name
    assert len(cfg.dataset.class_names) == cfg.dataset.num_classes
    # _global_: a dataset file also says what model its runs get by default (conf/dataset/synthetic.yaml)
    assert (CONF_DIR / "dataset" / f"{name}.yaml").read_text().startswith("# @package _global_\n")
    for key in ("root", "train_split", "val_split", "num_workers", "num_classes", "ignore_index"):
        assert key in cfg.dataset


def test_config_typos_fail():
    with pytest.raises(ConfigCompositionException):
        compose_config("dataset.synthetic.num_trian=5")
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_config("dataset.name=vco")
    cfg = compose_config("dataset.synthetic.num_train=5")
    assert OmegaConf.to_object(cfg.dataset).synthetic.num_train == 5
