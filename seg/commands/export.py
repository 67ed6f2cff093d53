"""Export a checkpoint for apps, checked against PyTorch on real images before it is reported done.

    seg-export checkpoint=outputs/.../checkpoints/best.pt                 # ONNX fp32, 513x513
    seg-export checkpoint=PATH export.quantize=int8                        # ONNX int8 (QDQ)
    seg-export checkpoint=PATH export.dynamic=true                         # any height/width
    seg-export checkpoint=PATH export.include_preprocessing=true export.output=labels
    seg-export checkpoint=PATH export.format=executorch                    # .pte on XNNPACK (or int8)
    seg-export checkpoint=PATH export.format=tflite                        # or torchscript (legacy)
    seg-export checkpoint=PATH export.path=model.onnx

From a checkout: `python tools/export.py ...`, the same. Writes the model (default: beside the
checkpoint) and its metadata JSON (MODEL.json). Images for the check and the int8 calibration come
from the checkpoint's dataset, or from `dataset...` overrides given on the command line.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from seg.cli import dataset_on_command_line, launch, one_line_errors
from seg.commands import CONFIG_NAME, CONFIG_PATH
from seg.config import check_config, register_configs
from seg.export import run_export

register_configs()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
@one_line_errors
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    user_set_dataset = dataset_on_command_line()
    run_export(cfg, keep_dataset=user_set_dataset)


def run() -> None:
    """`seg-export`."""
    launch(main)


if __name__ == "__main__":
    run()
