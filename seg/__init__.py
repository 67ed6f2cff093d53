"""DeepLabv3+ semantic segmentation with MobileNetV2/V3 encoders."""

__version__ = "0.1.0"
