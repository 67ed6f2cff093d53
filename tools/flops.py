"""Multiply-adds and parameters of a segmenter, as the DeepLab model zoo counts them.

    python tools/flops.py experiment=mobilenetv2_coco_voc_trainaug
    python tools/flops.py experiment=mobilenetv2_coco_voc_trainaug eval.output_stride=8 \
        eval.scales=[0.5,0.75,1.0,1.25,1.5,1.75] eval.flip=true
    python tools/flops.py backbone=mnv3_large head=lraspp flops.input_size=1025
    python tools/flops.py backbone=mnv1_a050 flops.classifier=true flops.input_size=160
    python tools/flops.py flops.layer_example=true

Prints a table; the last line is one JSON object (madds, params, input_size, output_stride, ...).
`flops.classifier=true` counts the encoder in its ImageNet classification form (global average
pool + 1000-way FC) as the encoders' papers do; `flops.layer_example=true` compares one standard
conv layer with a depthwise-separable one, by formula and by the hooks that count every model.

The same as `seg-flops ...` once the package is installed (`pip install .`); the code is in
seg/commands/flops.py.
"""

from seg.commands.flops import main, run  # noqa: F401  (main: for tests that load this file)

if __name__ == "__main__":
    run()
