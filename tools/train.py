"""Train a segmenter; the loop is `seg.engine.trainer.train`.

    python tools/train.py                                        # built-in dataset, CPU, ~5 minutes
    python tools/train.py experiment=mobilenetv2_coco_voc_trainaug   # the published VOC recipe
    python tools/train.py dataset=voc_aug backbone=mnv2_dm05 train.init_from=coco/checkpoints/best.pt
    python tools/train.py hydra.run.dir=outputs/run1 train.resume=auto   # continue an interrupted run
    torchrun --nproc_per_node=4 tools/train.py experiment=mobilenetv2_coco_voc_trainaug

Every key: seg/config.py. The run directory (`hydra.run.dir`) gets train.log, TensorBoard events,
checkpoints/last.pt and best.pt, and metrics.json.

The same as `seg-train ...` once the package is installed (`pip install .`); the code is in
seg/commands/train.py.
"""

from seg.commands.train import main, run  # noqa: F401  (main: for tests that load this file)

if __name__ == "__main__":
    run()
