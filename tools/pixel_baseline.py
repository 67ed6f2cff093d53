"""How far colour alone gets: a per-pixel colour classifier, trained on the train split, scored on val.

    python tools/pixel_baseline.py                      # the built-in dataset
    python tools/pixel_baseline.py dataset=voc_aug      # any dataset

The classifier is a lookup table over RGB quantised to 32 levels a channel (32,768 cells): each cell
predicts the class most frequent among the training pixels of that colour (cells never seen predict
the most frequent class overall). On the training distribution no per-pixel colour classifier does
better up to the quantisation, so the gap to a trained segmenter's mIoU is what spatial context buys.
"""

from __future__ import annotations

import json

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from seg.cli import launch, one_line_errors
from seg.commands import CONFIG_NAME, CONFIG_PATH
from seg.config import check_config, register_configs
from seg.data import build_dataset
from seg.metrics import ConfusionMatrix

register_configs()

LEVELS = 32  # per channel


def colour_cells(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> HxW cell index of each pixel's quantised colour."""
    q = (image >> 3).astype(np.int64)  # 256 / 32 = 8 values per level
    return (q[..., 0] * LEVELS + q[..., 1]) * LEVELS + q[..., 2]


def pixel_colour_baseline(dataset_cfg: DictConfig) -> dict:
    """Fit the colour lookup on `train`, evaluate it on `val`; returns ConfusionMatrix metrics."""
    num_classes, ignore = int(dataset_cfg.num_classes), int(dataset_cfg.ignore_index)
    train_set = build_dataset(dataset_cfg, "train")
    val_set = build_dataset(dataset_cfg, "val")
    counts = np.zeros(LEVELS**3 * num_classes, np.int64)
    for i in range(len(train_set)):
        image, mask = train_set[i]
        keep = mask != ignore
        counts += np.bincount(colour_cells(image)[keep] * num_classes + mask[keep], minlength=counts.size)
    counts = counts.reshape(LEVELS**3, num_classes)
    table = counts.argmax(1)
    table[counts.sum(1) == 0] = counts.sum(0).argmax()
    matrix = ConfusionMatrix(num_classes, ignore)
    for i in range(len(val_set)):
        image, mask = val_set[i]
        matrix.update(torch.from_numpy(table[colour_cells(image)]), torch.from_numpy(mask.astype(np.int64)))
    metrics = matrix.compute()
    metrics["num_train_images"], metrics["num_val_images"] = len(train_set), len(val_set)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
@one_line_errors
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    metrics = pixel_colour_baseline(cfg.dataset)
    for name, iou in zip(cfg.dataset.class_names, metrics["per_class_iou"]):
        print(f"{name:<16}{'n/a' if np.isnan(iou) else f'{100 * iou:.2f}':>8}")
    print(
        f"per-pixel colour classifier: val mIoU {metrics['miou']:.4f}, pixel accuracy "
        f"{metrics['pixel_accuracy']:.4f} ({metrics['num_train_images']} train / "
        f"{metrics['num_val_images']} val images)"
    )
    summary = {k: metrics[k] for k in ("miou", "pixel_accuracy", "mean_class_accuracy", "num_val_images")}
    print(json.dumps(summary))


if __name__ == "__main__":
    launch(main)
