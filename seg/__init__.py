"""DeepLabv3+ semantic segmentation with MobileNetV2/V3 encoders."""

import sys
import types

try:  # the installed package's version (pyproject.toml); the literal for a checkout that is not installed
    import importlib.metadata

    __version__ = importlib.metadata.version("seg")
except importlib.metadata.PackageNotFoundError:
    __version__ = "0.1.0"

# TensorBoard imports TensorFlow, when it is installed, just to write event files: seconds of start-up
# and hundreds of MB per process. Its `tensorboard.compat.notf` switch makes it use its own stub.
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


# The Python API (seg/api.py, seg/pretrained.py), imported on first use so that `import seg` stays
# light (no torch until a model is asked for).
_API = {
    "create_model": "seg.api",
    "list_models": "seg.api",
    "load": "seg.api",
    "Predictor": "seg.api",
    "from_pretrained": "seg.pretrained",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> object:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
