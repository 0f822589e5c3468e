"""Slides (OpenSlide at physical mpp), manifests, the prepare cache, CAMELYON manifests.

Importing ``data`` is light: no TensorFlow (the tf.data pipeline lives in ``data.pipeline``).
"""
from data.slide import SlideError, read_slide

__all__ = ["read_slide", "SlideError"]
