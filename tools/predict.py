"""Segment images with a checkpoint or an exported model.

    python tools/predict.py checkpoint=outputs/.../best.pt input=photo.jpg output=out/
    python tools/predict.py model=best.onnx input=photos/ output=out/
    python tools/predict.py checkpoint=PATH input=photos/ output=out/ predict.max_size=1024 predict.threads=2

Writes NAME.png (class indices, VOC palette) and NAME_overlay.jpg for each image; a checkpoint runs
on the fast path (batch norm folded, channels_last, inference mode) unless predict.fast=false.
`model=`, `input=` and `output=` are short for predict.model, predict.input, predict.output.

The same as `seg-predict ...` once the package is installed (`pip install .`); the code is in
seg/commands/predict.py.
"""

from seg.commands.predict import main, run  # noqa: F401  (main: for tests that load this file)

if __name__ == "__main__":
    run()
