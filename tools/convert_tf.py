"""Convert an official DeepLab MobileNetV2 release into a checkpoint of this project.

    python tools/convert_tf.py source=deeplabv3_257_mv_gpu.tflite output=deeplab_mv_gpu.pt
    python tools/convert_tf.py source=deeplabv3_mnv2_dm05_pascal_quant.tflite      # Coral, dequantised
    python tools/convert_tf.py source=deeplabv3_mnv2_pascal_train_aug_2018_01_29.tar.gz   # model-zoo archive
    python tools/convert_tf.py source=deeplabv3_mnv2_pascal_train_aug/frozen_inference_graph.pb
    python tools/convert_tf.py source=deeplabv3_mnv2_pascal_train_aug/model.ckpt-30000   # needs pip install ".[tf]"

The architecture is read from the file (depth multiplier, classes, output stride, input size and
normalisation, align_corners). The checkpoint holds the weights, that config with TF DeepLab's
numerics, and the source's SHA-256 and tensor mapping, so tools/eval.py, export.py, predict.py and
`train.init_from` take it like any other. `python -m seg.pretrained` lists the official releases.

The same as `seg-convert ...` once the package is installed (`pip install .`); the code is in
seg/commands/convert_tf.py.
"""

from seg.commands.convert_tf import main, run  # noqa: F401  (main: for tests that load this file)

if __name__ == "__main__":
    run()
