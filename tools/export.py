"""Export a checkpoint for apps, checked against PyTorch on real images before it is reported done.

    python tools/export.py checkpoint=outputs/.../checkpoints/best.pt                 # ONNX fp32, 513x513
    python tools/export.py checkpoint=PATH export.quantize=int8                        # ONNX int8 (QDQ)
    python tools/export.py checkpoint=PATH export.dynamic=true                         # any height/width
    python tools/export.py checkpoint=PATH export.include_preprocessing=true export.output=labels
    python tools/export.py checkpoint=PATH export.format=torchscript                   # or tflite
    python tools/export.py checkpoint=PATH export.path=model.onnx

Writes the model (default: beside the checkpoint) and its metadata JSON (MODEL.json). Images for
the check and the int8 calibration come from the checkpoint's dataset, or from `dataset...`
overrides given on the command line.

The same as `seg-export ...` once the package is installed (`pip install .`); the code is in
seg/commands/export.py.
"""

from seg.commands.export import main, run  # noqa: F401  (main: for tests that load this file)

if __name__ == "__main__":
    run()
