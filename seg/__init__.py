"""DeepLabv3+ semantic segmentation with MobileNetV2/V3 encoders."""

import sys
import types

__version__ = "0.1.0"

# TensorBoard imports TensorFlow, when it is installed, just to write event files: seconds of start-up
# and hundreds of MB per process. Its `tensorboard.compat.notf` switch makes it use its own stub.
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


def __getattr__(name: str) -> object:
    # `seg.from_pretrained` without making `import seg` load torch and the release registry.
    if name == "from_pretrained":
        from seg.pretrained import from_pretrained

        return from_pretrained
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
