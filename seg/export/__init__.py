"""Export for apps: ONNX (fp32, int8), TorchScript, TFLite; every export is checked against PyTorch.

`run_export(cfg)` is `tools/export.py`; the formats live in onnx.py, quantize.py, torchscript.py and
tflite.py, the checks in check.py, and runtime.py runs any exported file on an image.
"""

from seg.export.common import ExportError

__all__ = ["ExportError", "run_export"]


def run_export(*args, **kwargs):
    from seg.export.pipeline import run_export as run

    return run(*args, **kwargs)
