"""Train a segmenter; the loop is `seg.engine.trainer.train`.

    seg-train                                        # built-in dataset, CPU, ~5 minutes
    seg-train experiment=mobilenetv2_coco_voc_trainaug   # the published VOC recipe
    seg-train dataset=voc_aug backbone=mnv2_dm05 train.init_from=coco/checkpoints/best.pt
    seg-train hydra.run.dir=outputs/run1 train.resume=auto   # continue an interrupted run
    torchrun --nproc_per_node=4 -m seg.commands.train experiment=mobilenetv2_coco_voc_trainaug

From a checkout: `python tools/train.py ...`, the same. Every key: seg/config.py. The run directory
(`hydra.run.dir`) gets train.log, TensorBoard events, checkpoints/last.pt and best.pt, and metrics.json.
"""

from __future__ import annotations

import os
import sys
import time

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from seg.cli import launch, one_line_errors
from seg.commands import CONFIG_NAME, CONFIG_PATH
from seg.config import register_configs
from seg.engine.distributed import cleanup, init_distributed, is_main_process
from seg.engine.trainer import train

register_configs()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
@one_line_errors
def main(cfg: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        metrics = train(cfg, run_dir)
        main_process = is_main_process()
    finally:
        cleanup()
    if main_process:
        print(f"run directory: {run_dir}")
        print(f"val mIoU: {metrics['miou']:.4f}")


def _same_run_dir_on_every_rank() -> None:
    """Under torchrun every process would stamp its own start time into the default run directory;
    use rank 0's, and let only rank 0 write Hydra's .hydra/ files."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch.distributed as dist

    rank, _, _ = init_distributed()
    if not any(a.startswith("hydra.run.dir=") for a in sys.argv[1:]):
        # The same pattern as hydra.run.dir in conf/config.yaml.
        chosen = [time.strftime("outputs/%Y-%m-%d/%H-%M-%S")]
        dist.broadcast_object_list(chosen, src=0)
        sys.argv.append(f"hydra.run.dir={chosen[0]}")
    if rank != 0:
        sys.argv.append("hydra.output_subdir=null")


def run() -> None:
    """`seg-train`."""
    _same_run_dir_on_every_rank()
    if not any(a.startswith("hydra.output_subdir=") for a in sys.argv[1:]):
        # Hydra would write .hydra/ into the run directory before main() runs, i.e. before the
        # trainer locks it (a second run into a directory in use must not touch its files); the
        # trainer writes the config itself once the directory is its own.
        sys.argv.append("hydra.output_subdir=null")
    launch(main)


if __name__ == "__main__":
    run()
