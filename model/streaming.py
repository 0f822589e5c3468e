"""The `streaming` strategy: exact whole-slide forward and gradients, one tile at a time.

Why it is exact (see SPEC, "The two memory strategies"). BatchNorm is frozen and run on its
inference statistics, so the backbone is a fixed function of its input. In the ResNet-50 of
keras_applications (TF 1.15) the only spatial operations are

    ZeroPadding 3 + conv 7x7/2 valid, ZeroPadding 1 + maxpool 3x3/2 valid,
    1x1/2 strided convs (first conv and shortcut of stages 3-5), 3x3/1 'same' convs,

so the output cell j (per axis, stride ``OUTPUT_STRIDE`` = 32) is centred on input pixel 32 j
and sees pixels [32 j - 241, 32 j + 241] (receptive field 483 px), and an image of L pixels
gives ceil(L / 32) output cells. A window of the image whose origin is a multiple of 32 therefore
computes output cells on the same grid as the whole image, and every cell whose receptive field
lies inside the window -- or is cut only by a window edge that is also an image edge, where the
zero padding is the same -- equals the whole-image cell. Windows here are the tile's *interior*
plus a ``margin`` of at least 256 px (241 rounded up to a multiple of 32) on every side that is
not an image edge; only the interior cells are used, and the interiors partition the grid.

Forward: with F the (h, w, 2048) feature map, N = h w cells, kernel w and bias b of the head,

    GAP = (1/N) sum_tiles sum_{interior cells} F,    logit = GAP . w + b,
    CAM[cell] = F[cell] . w + b   (pre-sigmoid, so mean(CAM) = logit).

Backward: with the BCE loss L(logit, y), dL/dlogit = sigmoid(logit) - y and dL/dF[cell] =
dL/dlogit * w / N, the same at every cell. Hence for the backbone parameters theta

    dL/dtheta = (dL/dlogit / N) * sum_tiles d/dtheta [ sum_{interior cells} F[cell] . w ],

and the bracket does not depend on the logit: a *single* pass over the tiles (forward +
backward of each window) gives both the GAP and the gradient, which is scaled at the end.
Head: dL/dw = dL/dlogit * GAP, dL/db = dL/dlogit. Peak memory is one window's forward and
backward, plus the uint8 image and one copy of the gradients; the image is sliced on the host
and never exists as a float tensor whole.

Tile sizes are in pixels of the model's input (the cache's target mpp).
"""
import collections
import math

import numpy as np
import tensorflow as tf

from model.resnet import FEATURES, OUTPUT_STRIDE, cam_logits

RECEPTIVE_FIELD = 483                       # px, ResNet-50 (keras_applications, see above)
_RADIUS = (RECEPTIVE_FIELD - 1) // 2        # 241 px on either side of the cell centre
MARGIN = -(-_RADIUS // OUTPUT_STRIDE) * OUTPUT_STRIDE   # 256 px: smallest exact margin
# Peak resident memory of a step on a window of P input pixels ~ BASE_BYTES + PER_PIXEL * P, plus
# the uint8 slide (3 bytes/px). Training: direct steps measured here, 1024^2 -> 2.70 GB and
# 2048^2 -> 7.96 GB peak RSS (docs/benchmarks.md, "## streaming"), i.e. ~1.67 KB/px over ~0.95 GB;
# BASE_BYTES adds the streaming gradient accumulator and slack. Prediction keeps no activations
# for a backward pass; its per-pixel figure is a conservative estimate, not a measurement.
TRAIN_BYTES_PER_PIXEL = 1700
PREDICT_BYTES_PER_PIXEL = 600
BASE_BYTES = 1.5e9
DEFAULT_TILE = 1792      # px of interior; windows <= 2304 px, ~10 GB per training step


def output_cells(pixels):
    """Output positions along an axis of ``pixels`` input pixels: ceil(pixels / 32)."""
    return -(-int(pixels) // OUTPUT_STRIDE)


Span = collections.namedtuple("Span", "cell_start cell_stop window_start window_stop")
Span.__doc__ = """One tile along one axis: interior output cells [cell_start, cell_stop) and the
input window [window_start, window_stop) in pixels that computes them."""


def plan_axis(length, tile, margin=MARGIN):
    """Splits an axis of ``length`` px into tiles whose windows are at most ``tile + 2 margin``.

    ``tile`` is the interior of a middle tile; a tile at an image edge has no margin there, so its
    interior may be ``tile + margin``. With n tiles the windows compute ``length + 2 margin (n-1)``
    px in all, so n is the fewest that fit, n = ceil((length - 2 margin) / tile), and the interior
    boundaries (multiples of 32) make the windows near-equal, ~(length + 2 margin (n-1)) / n px.
    A window that would reach past the image ends exactly at its edge.
    """
    length, tile, margin = int(length), int(tile), int(margin)
    if length < 1:
        raise ValueError("image side must be at least 1 px, got {}".format(length))
    if tile < OUTPUT_STRIDE or tile % OUTPUT_STRIDE or margin < 0 or margin % OUTPUT_STRIDE:
        raise ValueError("tile ({}) and margin ({}) must be multiples of {} px, tile > 0"
                         .format(tile, margin, OUTPUT_STRIDE))
    cells, largest = output_cells(length), tile + 2 * margin
    count = max(1, -(-(length - 2 * margin) // tile))
    while True:
        window = (length + 2.0 * margin * (count - 1)) / count
        # interior boundary k sits at k*window - (2k-1)*margin px, rounded to a cell
        bounds = [0] + [int(round((k * window - (2 * k - 1) * margin) / OUTPUT_STRIDE))
                        for k in range(1, count)] + [cells]
        spans = []
        for start, stop in zip(bounds[:-1], bounds[1:]):
            pixel_stop = min(length, stop * OUTPUT_STRIDE)
            spans.append(Span(start, stop, max(0, start * OUTPUT_STRIDE - margin),
                              min(length, pixel_stop + margin)))
        ok = all(s.cell_stop > s.cell_start for s in spans)
        if ok and max(s.window_stop - s.window_start for s in spans) <= largest:
            return spans
        count += 1   # rounding to cells pushed a window past the largest: one tile more


def computed_pixel_ratio(height, width, tile, margin=MARGIN):
    """Input pixels the tiles compute (windows overlap) over the image's pixels (>= 1)."""
    rows = sum(s.window_stop - s.window_start for s in plan_axis(height, tile, margin))
    cols = sum(s.window_stop - s.window_start for s in plan_axis(width, tile, margin))
    return rows * cols / float(height * width)


def tile_for_memory(memory_gb, margin=MARGIN, training=True):
    """The largest interior tile (px, multiple of 32) whose square window fits ``memory_gb``."""
    per_pixel = TRAIN_BYTES_PER_PIXEL if training else PREDICT_BYTES_PER_PIXEL
    room = float(memory_gb) * 1e9 - BASE_BYTES
    window = math.sqrt(max(room, 0.0) / per_pixel)
    tile = int((window - 2 * margin) // OUTPUT_STRIDE) * OUTPUT_STRIDE
    if tile < OUTPUT_STRIDE:
        raise ValueError("memory_gb={} leaves no room for a tile with a {} px margin (needs about "
                         "{:.1f} GB)".format(memory_gb, margin, (BASE_BYTES + per_pixel * (
                             2 * margin + OUTPUT_STRIDE) ** 2) / 1e9))
    return tile


def _as_uint8_image(image):
    array = image.numpy() if hasattr(image, "numpy") else np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError("streaming expects one uint8 RGB image (H, W, 3), got {} {}"
                         .format(array.dtype, array.shape))
    return array


class Streaming(object):
    """Exact tile-wise strategy for one slide at a time (the contract of docs/architecture.md).

    ``tile``: interior side of a middle tile in px (multiple of 32; windows are at most
    ``tile + 2 margin`` px, see ``plan_axis``); or ``memory_gb``: the tile is chosen so that a
    training step fits that budget (``tile_for_memory``); neither: ``DEFAULT_TILE``.
    ``margin``: px added around each interior; below ``MARGIN`` (256) the result is not exact, which
    only ``allow_inexact=True`` permits (the selfcheck uses it to show that it notices).
    ``progress``: a tqdm bar over the tiles of each call.
    """

    def __init__(self, model, tile=None, memory_gb=None, margin=MARGIN, allow_inexact=False,
                 progress=False):
        margin = int(margin)
        if margin % OUTPUT_STRIDE or margin < 0:
            raise ValueError("margin must be a multiple of {} px, got {}".format(OUTPUT_STRIDE,
                                                                                 margin))
        if margin < MARGIN and not allow_inexact:
            raise ValueError("margin {} px < {} px (receptive-field radius {} px): tiles would not "
                             "be exact".format(margin, MARGIN, _RADIUS))
        if tile is None:
            tile = tile_for_memory(memory_gb, margin) if memory_gb else DEFAULT_TILE
        tile = int(tile)
        if tile < OUTPUT_STRIDE or tile % OUTPUT_STRIDE:
            raise ValueError("tile must be a positive multiple of {} px, got {}"
                             .format(OUTPUT_STRIDE, tile))
        self.model, self.tile, self.margin, self.progress = model, tile, margin, progress
        self._backbone_vars = list(model.backbone.trainable_variables)
        head = {id(model.head.kernel): "kernel", id(model.head.bias): "bias"}
        backbone = {id(v): i for i, v in enumerate(self._backbone_vars)}
        # where each of model.trainable_variables comes from, so grads line up with them
        self._order = []
        for v in model.trainable_variables:
            if id(v) in backbone:
                self._order.append(backbone[id(v)])
            elif id(v) in head:
                self._order.append(head[id(v)])
            else:
                raise ValueError("streaming: trainable variable {} is neither in the backbone nor "
                                 "the head".format(v.name))

        window_spec = tf.TensorSpec([None, None, 3], tf.uint8)
        cells_spec = tf.TensorSpec([4], tf.int32)   # interior rows/cols in window output cells
        # One trace each: the None dims serve every window shape (edge windows differ).
        self._forward_tile = tf.function(self._forward_tile_fn,
                                         input_signature=[window_spec, cells_spec])
        self._train_tile = tf.function(self._train_tile_fn,
                                       input_signature=[window_spec, cells_spec])

    # -- per-window graphs ---------------------------------------------------------------------
    def _interior(self, window, cells):
        # the backbone's Input is float32 (its preprocess casts); uint8 -> float32 is exact
        features = self.model.backbone(tf.cast(window, tf.float32)[None], training=False)[0]
        return features[cells[0]:cells[1], cells[2]:cells[3]]

    def _forward_tile_fn(self, window, cells):
        features = self._interior(window, cells)
        return tf.reduce_sum(features, axis=[0, 1]), cam_logits(self.model, features)

    def _train_tile_fn(self, window, cells):
        kernel = tf.stop_gradient(self.model.head.kernel[:, 0])
        with tf.GradientTape() as tape:
            features = self._interior(window, cells)
            weighted = tf.reduce_sum(tf.tensordot(features, kernel, axes=[[-1], [0]]))
        grads = tape.gradient(weighted, self._backbone_vars)
        return tf.reduce_sum(features, axis=[0, 1]), grads

    # -- tiling ------------------------------------------------------------------------------
    def tiles(self, height, width):
        """(row Span, column Span) pairs covering an image of height x width px."""
        rows, cols = plan_axis(height, self.tile, self.margin), plan_axis(width, self.tile,
                                                                          self.margin)
        return [(r, c) for r in rows for c in cols]

    def computed_pixel_ratio(self, height, width):
        return computed_pixel_ratio(height, width, self.tile, self.margin)

    def _windows(self, image):
        height, width = image.shape[:2]
        tiles = self.tiles(height, width)
        if self.progress:   # a 21,500 px slide is a few hundred windows: show where it is
            from tqdm import tqdm
            tiles = tqdm(tiles, desc="tiles", unit="tile", leave=False)
        for r, c in tiles:
            window = np.ascontiguousarray(image[r.window_start:r.window_stop,
                                                c.window_start:c.window_stop])
            top, left = r.window_start // OUTPUT_STRIDE, c.window_start // OUTPUT_STRIDE
            cells = np.array([r.cell_start - top, r.cell_stop - top,
                              c.cell_start - left, c.cell_stop - left], np.int32)
            yield r, c, tf.constant(window), tf.constant(cells)

    def _head(self):
        kernel = self.model.head.kernel.numpy()[:, 0].astype(np.float64)
        return kernel, float(self.model.head.bias.numpy()[0])

    # -- the strategy contract -------------------------------------------------------------------
    def predict(self, image, cam=False):
        """dict(probability, logit, cam): cam is the pre-sigmoid CAM, (ceil(H/32), ceil(W/32))."""
        image = _as_uint8_image(image)
        height, width = image.shape[:2]
        grid = np.zeros((output_cells(height), output_cells(width)), np.float32) if cam else None
        total = np.zeros(FEATURES, np.float64)
        for r, c, window, cells in self._windows(image):
            feature_sum, cam_tile = self._forward_tile(window, cells)
            total += feature_sum.numpy()
            if cam:
                grid[r.cell_start:r.cell_stop, c.cell_start:c.cell_stop] = cam_tile.numpy()
        kernel, bias = self._head()
        logit = float(total.dot(kernel) / grid_size(height, width) + bias)
        return dict(probability=_sigmoid(logit), logit=logit, cam=grid)

    def gradients(self, image, label):
        """(loss, probability, grads): BCE of one slide; grads line up with
        ``model.trainable_variables`` (tf.Tensor float32)."""
        image = _as_uint8_image(image)
        label = float(label.numpy() if hasattr(label, "numpy") else label)
        height, width = image.shape[:2]
        cells = grid_size(height, width)
        total = np.zeros(FEATURES, np.float64)
        accumulated = None
        for _, _, window, interior in self._windows(image):
            feature_sum, grads = self._train_tile(window, interior)
            total += feature_sum.numpy()
            accumulated = list(grads) if accumulated is None else [
                a + g for a, g in zip(accumulated, grads)]
        kernel, bias = self._head()
        gap = total / cells
        logit = float(gap.dot(kernel) + bias)
        probability = _sigmoid(logit)
        # BCE on the logit (as tf.nn.sigmoid_cross_entropy_with_logits): stable for any logit
        loss = max(logit, 0.0) - logit * label + math.log1p(math.exp(-abs(logit)))
        dlogit = probability - label
        scale = tf.constant(dlogit / cells, tf.float32)
        backbone = [g * scale for g in accumulated]
        head = {"kernel": tf.constant((dlogit * gap)[:, None], tf.float32),
                "bias": tf.constant([dlogit], tf.float32)}
        grads = [head[k] if isinstance(k, str) else backbone[k] for k in self._order]
        return loss, probability, grads


def grid_size(height, width):
    """N, the number of output cells of an image: ceil(H/32) * ceil(W/32)."""
    return output_cells(height) * output_cells(width)


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
