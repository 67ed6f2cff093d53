"""Evaluate a checkpoint with the official VOC metric (one confusion matrix over the whole split).

    seg-eval checkpoint=outputs/.../checkpoints/best.pt
    seg-eval checkpoint=PATH eval.output_stride=8 eval.scales=[0.5,0.75,1.0,1.25,1.5,1.75] eval.flip=true
    seg-eval checkpoint=PATH experiment=mobilenetv2_coco_voc_trainaug dataset=voc dataset.root=/data

From a checkout: `python tools/eval.py ...`, the same. The model is rebuilt from the config stored
in the checkpoint; so is the dataset unless `dataset` keys are given on the command line. Writes
metrics.json, confusion_matrix.png and TensorBoard events into the run directory (and, with
eval.save_predictions=true, predictions/).
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from seg.cli import dataset_on_command_line, launch, one_line_errors
from seg.commands import CONFIG_NAME, CONFIG_PATH
from seg.config import check_config, register_configs
from seg.engine.evaluator import run_evaluation

register_configs()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
@one_line_errors
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    user_set_dataset = dataset_on_command_line()
    run_evaluation(cfg, HydraConfig.get().runtime.output_dir, keep_dataset=user_set_dataset)


def run() -> None:
    """`seg-eval`."""
    launch(main)


if __name__ == "__main__":
    run()
