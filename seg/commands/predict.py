"""Segment images with a checkpoint or an exported model.

    seg-predict checkpoint=outputs/.../best.pt input=photo.jpg output=out/
    seg-predict model=best.onnx input=photos/ output=out/
    seg-predict checkpoint=PATH input=photos/ output=out/ predict.max_size=1024 predict.threads=2

From a checkout: `python tools/predict.py ...`, the same. Writes NAME.png (class indices, VOC
palette) and NAME_overlay.jpg for each image; a checkpoint runs on the fast path (batch norm
folded, channels_last, inference mode) unless predict.fast=false. `model=`, `input=` and
`output=` are short for predict.model, predict.input, predict.output.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from seg.cli import launch, one_line_errors
from seg.commands import CONFIG_NAME, CONFIG_PATH
from seg.config import check_config, register_configs
from seg.predict import run_predict

register_configs()

ALIASES = {"model": "predict.model", "input": "predict.input", "output": "predict.output"}


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
@one_line_errors
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    counts = run_predict(cfg, log=print)
    if counts["images"] == 0:
        sys.exit(1)


def run() -> None:
    """`seg-predict`."""
    launch(main, aliases=ALIASES)


if __name__ == "__main__":
    run()
