"""The model's input canvas, held as uniform fill plus placed content, never materialised whole.

The paper pads every slide with white to a 21,500 x 21,500 px canvas; its augmentation fills
with white too, and its colour steps are per-pixel maps. So everything outside the slide's
footprint on the canvas is one colour, and a ``Canvas`` stores only what is not:

    canvas[y, x] = content[y - top, x - left]    inside the content box
                 = fill                           everywhere else

``shape`` (H, W) and ``offset`` (top, left) are pixels at the model's input mpp; the content box
lies inside the canvas. ``window`` builds any part of the canvas on demand, so the streaming
strategy (model/streaming.py) reads windows and the proxy of the uniform cells from it and never
needs the 21,500^2 array; ``dense()`` builds it whole, for the ``direct`` strategy and for tests.

Where a canvas comes from:

* ``place(image, canvas)``: centre-padding (or centre-cropping) with white, as
  ``data.augment.pad_to_canvas`` but without the padding; the image's own white border rows and
  columns are left out of the content box too (they equal the fill), so the glass that
  ``prepare --glass-to-white`` made white is skipped like the padding (``data.glass``);
* ``data.augment.apply_canvas``: the paper's augmentation in this form;
* ``Canvas.from_dense(image)``: any dense image; the fill is its corner pixel and the content its
  smallest box that holds every other colour (the whole image if its background is not exactly
  uniform, e.g. noise: then nothing is skipped).
"""
import collections
import warnings

import numpy as np

WHITE = 255


class Canvas(collections.namedtuple("Canvas", "content offset fill shape")):
    """content: uint8 (h, w, 3); offset: (top, left) px; fill: uint8 (3,); shape: (H, W) px."""
    __slots__ = ()

    def __new__(cls, content, offset, fill, shape):
        content = np.asarray(content)
        if content.dtype != np.uint8 or content.ndim != 3 or content.shape[2] != 3:
            raise ValueError("canvas content must be uint8 (h, w, 3), got {} {}".format(
                content.dtype, content.shape))
        top, left = (int(v) for v in np.asarray(offset).reshape(2))
        height, width = (int(v) for v in np.asarray(shape).reshape(2))
        fill = np.asarray(fill, np.uint8).reshape(3)
        h, w = content.shape[:2]
        if height < 1 or width < 1:
            raise ValueError("canvas shape must be positive, got {}x{}".format(height, width))
        if h and w and (top < 0 or left < 0 or top + h > height or left + w > width):
            raise ValueError("content {}x{} at ({}, {}) is not inside the {}x{} canvas".format(
                h, w, top, left, height, width))
        if not (h and w):        # nothing placed: every pixel is the fill
            content, top, left = np.zeros((0, 0, 3), np.uint8), 0, 0
        return super(Canvas, cls).__new__(cls, content, (top, left), fill, (height, width))

    @property
    def box(self):
        """(top, bottom, left, right): the content box in canvas px, half-open (may be empty)."""
        top, left = self.offset
        return top, top + self.content.shape[0], left, left + self.content.shape[1]

    @property
    def empty(self):
        return self.content.size == 0

    def window(self, top, bottom, left, right):
        """The canvas pixels [top, bottom) x [left, right) as a new uint8 array."""
        out = np.empty((bottom - top, right - left, 3), np.uint8)
        out[...] = self.fill
        y0, y1, x0, x1 = self.box
        a, b, c, d = max(top, y0), min(bottom, y1), max(left, x0), min(right, x1)
        if a < b and c < d:
            out[a - top:b - top, c - left:d - left] = self.content[a - y0:b - y0, c - x0:d - x0]
        return out

    def dense(self):
        """The whole canvas (H, W, 3): only for canvases small enough to hold."""
        return self.window(0, self.shape[0], 0, self.shape[1])

    def crop(self, top, left, height, width):
        """The canvas pixels [top, top + height) x [left, left + width) as a Canvas."""
        y0, y1, x0, x1 = self.box
        a, b = max(top, y0), min(top + height, y1)
        c, d = max(left, x0), min(left + width, x1)
        content = self.content[a - y0:b - y0, c - x0:d - x0] if a < b and c < d else \
            np.zeros((0, 0, 3), np.uint8)
        return Canvas(content, (max(0, a - top), max(0, c - left)), self.fill, (height, width))

    def as_element(self):
        """The dict that the tf.data pipeline carries (data/pipeline.py)."""
        return dict(content=self.content, offset=np.array(self.offset, np.int32),
                    fill=self.fill, shape=np.array(self.shape, np.int32))

    @classmethod
    def from_dense(cls, image, fill=None):
        """A dense uint8 (H, W, 3) image as a canvas: ``fill`` (default: its top-left pixel) and
        the smallest box holding every pixel of another colour."""
        image = _as_uint8_rgb(image)
        fill = image[0, 0].copy() if fill is None else np.asarray(fill, np.uint8).reshape(3)
        other = np.any(image != fill, axis=2)
        rows, cols = np.flatnonzero(other.any(axis=1)), np.flatnonzero(other.any(axis=0))
        if rows.size == 0:
            return cls(np.zeros((0, 0, 3), np.uint8), (0, 0), fill, image.shape[:2])
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        return cls(np.ascontiguousarray(image[top:bottom, left:right]), (top, left), fill,
                   image.shape[:2])


def check_image(image):
    """Raises ValueError unless ``image`` is a uint8 (H, W, 3) numpy array."""
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            and image.shape[2] == 3):
        raise ValueError("expected a uint8 (H, W, 3) RGB array, got {} {}".format(
            getattr(image, "dtype", type(image)), getattr(image, "shape", "")))


def warn_crop(image, canvas, fail_if_larger):
    """Warns (or raises ValueError with ``fail_if_larger``) when ``image`` exceeds the canvas."""
    h, w = image.shape[:2]
    if h > canvas or w > canvas:
        message = "image {}x{} is larger than the canvas {}x{}: centre-cropped".format(
            h, w, canvas, canvas)
        if fail_if_larger:
            raise ValueError(message)
        warnings.warn(message)


def _as_uint8_rgb(image):
    array = image.numpy() if hasattr(image, "numpy") else np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError("expected one uint8 RGB image (H, W, 3), got {} {}".format(
            array.dtype, array.shape))
    return array


def as_canvas(image):
    """A ``Canvas`` from a Canvas, the pipeline's dict of tensors or arrays, or a dense image."""
    if isinstance(image, Canvas):
        return image
    if isinstance(image, dict):
        value = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in image.items()}
        return Canvas(value["content"], value["offset"], value["fill"], value["shape"])
    return Canvas.from_dense(image)


def canvas_offset(size, canvas):
    """Where row/column 0 of an image of ``size`` px lands on a ``canvas`` px axis.

    Centre-pad: ``(canvas - size) // 2`` white pixels before, the rest after. Centre-crop (image
    larger): the central ``canvas`` pixels are kept, from image pixel ``(size - canvas) // 2``,
    i.e. a negative offset.
    """
    size, canvas = int(size), int(canvas)
    if size <= canvas:
        return (canvas - size) // 2
    return -((size - canvas) // 2)


def crop_to_canvas(image, canvas):
    """The central part of ``image`` that a ``canvas`` px square keeps (a view, no copy)."""
    h, w = image.shape[:2]
    y0, x0 = max(0, -canvas_offset(h, canvas)), max(0, -canvas_offset(w, canvas))
    return image[y0:y0 + canvas, x0:x0 + canvas]


def fill_box(image, fill=WHITE, step=64):
    """(top, bottom, left, right), half-open: the smallest box of ``image`` (uint8 (H, W, 3))
    that holds every pixel other than ``fill``; (0, 0, 0, 0) when there is none.

    Scans inwards from each edge ``step`` rows or columns at a time, so it reads only the fill
    border plus one strip per side, and stops at once on an image whose edges are not the fill
    (a slide whose glass was not whitened)."""
    fill = np.broadcast_to(np.asarray(fill, np.uint8), (3,))
    height, width = image.shape[:2]

    def rows_with_other(r0, r1, c0, c1):
        return np.flatnonzero(np.any(image[r0:r1, c0:c1] != fill, axis=2).any(axis=1)) + r0

    def cols_with_other(r0, r1, c0, c1):
        return np.flatnonzero(np.any(image[r0:r1, c0:c1] != fill, axis=2).any(axis=0)) + c0

    top = next((hit[0] for r in range(0, height, step)
                for hit in [rows_with_other(r, r + step, 0, width)] if hit.size), None)
    if top is None:
        return 0, 0, 0, 0
    bottom = next(hit[-1] + 1 for r in range(height, top, -step)
                  for hit in [rows_with_other(max(top, r - step), r, 0, width)] if hit.size)
    left = next(hit[0] for c in range(0, width, step)
                for hit in [cols_with_other(top, bottom, c, c + step)] if hit.size)
    right = next(hit[-1] + 1 for c in range(width, left, -step)
                 for hit in [cols_with_other(top, bottom, max(left, c - step), c)] if hit.size)
    return int(top), int(bottom), int(left), int(right)


def place(image, canvas, fail_if_larger=False):
    """``image`` centre-padded with white (or centre-cropped) on a ``canvas`` px square, as a
    ``Canvas``: equal to ``data.augment.pad_to_canvas(image, canvas)``, without the padding.
    White rows and columns at the image's edges are padding too: the content box is the
    smallest one that holds every other pixel (``fill_box``), the canvas is the same."""
    check_image(image)
    warn_crop(image, canvas, fail_if_larger)
    content = crop_to_canvas(image, canvas)
    h, w = content.shape[:2]
    top, bottom, left, right = fill_box(content, WHITE)
    if (left, right) != (0, w):
        content = np.ascontiguousarray(content[top:bottom, left:right])
    elif (top, bottom) != (0, h):
        content = content[top:bottom]
    return Canvas(content, (max(0, canvas_offset(h, canvas)) + top,
                            max(0, canvas_offset(w, canvas)) + left),
                  (WHITE,) * 3, (canvas, canvas))
