"""Segment images with a checkpoint or an exported model.

    python tools/predict.py checkpoint=outputs/.../best.pt input=photo.jpg output=out/
    python tools/predict.py model=best.onnx input=photos/ output=out/
    python tools/predict.py checkpoint=PATH input=photos/ output=out/ predict.max_size=1024 predict.threads=2

Writes NAME.png (class indices, VOC palette) and NAME_overlay.jpg for each image; a checkpoint runs
on the fast path (batch norm folded, channels_last, inference mode) unless predict.fast=false.
`model=`, `input=` and `output=` are short for predict.model, predict.input, predict.output.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from seg.cli import launch, one_line_errors
from seg.config import check_config, register_configs
from seg.predict import run_predict

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
@one_line_errors
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    counts = run_predict(cfg, log=print)
    if counts["images"] == 0:
        sys.exit(1)


if __name__ == "__main__":
    launch(main, aliases={"model": "predict.model", "input": "predict.input", "output": "predict.output"})
