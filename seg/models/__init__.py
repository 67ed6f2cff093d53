"""MobileNet encoders, DeepLab heads and the segmenter that composes them."""

from seg.models.segmenter import Segmenter, build_segmenter

__all__ = ["Segmenter", "build_segmenter"]
