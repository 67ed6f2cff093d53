"""Evaluate a checkpoint with the official VOC metric (one confusion matrix over the whole split).

    python tools/eval.py checkpoint=outputs/.../checkpoints/best.pt
    python tools/eval.py checkpoint=PATH eval.output_stride=8 \
        eval.scales=[0.5,0.75,1.0,1.25,1.5,1.75] eval.flip=true
    python tools/eval.py checkpoint=PATH experiment=mobilenetv2_coco_voc_trainaug dataset=voc dataset.root=/data

The model is rebuilt from the config stored in the checkpoint; so is the dataset unless `dataset`
keys are given on the command line. Writes metrics.json, confusion_matrix.png and TensorBoard
events into the run directory (and, with eval.save_predictions=true, predictions/).

The same as `seg-eval ...` once the package is installed (`pip install .`); the code is in
seg/commands/eval.py.
"""

from seg.commands.eval import main, run  # noqa: F401  (main: for tests that load this file)

if __name__ == "__main__":
    run()
