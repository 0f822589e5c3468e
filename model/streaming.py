"""The `streaming` strategy in one level, as TF1's graph mode runs it (eagerly, streaming is
model/levels.py): exact whole-slide forward and gradients, one window at a time, with a cost
that follows the tissue rather than the canvas.

Why tiles are exact (docs/architecture.md, "Exact streaming"). BatchNorm is frozen and run on
its inference statistics, so the backbone is a fixed function of its input. In the ResNet-50 of
keras_applications (TF 1.15) the only spatial operations are

    ZeroPadding 3 + conv 7x7/2 valid, ZeroPadding 1 + maxpool 3x3/2 valid,
    1x1/2 strided convs (first conv and shortcut of stages 3-5), 3x3/1 'same' convs,

so the output cell j (per axis, stride ``OUTPUT_STRIDE`` = 32) is centred on input pixel 32 j
and sees pixels [32 j - 241, 32 j + 241] (receptive field 483 px; ``model.resnet.LAYERS`` has
every layer's kernel, stride and field, and the constants used here), and an image of L pixels
gives ceil(L / 32) output cells. A window of the image whose origin is a multiple of 32 therefore
computes output cells on the same grid as the whole image, and every cell whose receptive field
lies inside the window -- or is cut only by a window edge that is also an image edge, where the
zero padding is the same -- equals the whole-image cell. Windows here are the tile's *interior*
plus a ``margin`` of at least 256 px (241 rounded up to a multiple of 32) on every side that is
not an image edge; only the interior cells are used, and the interiors partition the cells that
are computed.

Uniform cells. The input is a ``data.canvas.Canvas``: one fill colour (the paper's white padding
after augmentation) except a content box. A cell whose receptive field misses the content box
sees only the fill, so it is a function of the fill and of where the image edges cut its field:
per axis, of its signature (i if 32 i - 241 < 0, L - 1 - 32 i if 32 i + 241 > L - 1; neither for
an interior cell). A *proxy*, a uniform image of the fill with the canvas's phase (each side
congruent mod 32 to the canvas's, so its edges cut fields at the same places), holds one cell of
every signature that the canvas has; ``proxy_axis`` finds the shortest. Each uniform canvas cell
takes the features of the proxy cell of its signatures, and K[a, b] counts how many canvas cells
proxy cell (a, b) stands for. Only the cells whose field touches the content are tiled.

Forward: with F the (h, w, 2048) feature map, N = h w cells, kernel w and bias b of the head,

    GAP = (1/N) [ sum_tiles sum_{interior cells} F + sum_{proxy cells} K F_proxy ],
    logit = GAP . w + b,   CAM[cell] = F[cell] . w + b   (pre-sigmoid, so mean(CAM) = logit).

Backward: with the BCE loss L(logit, y), dL/dlogit = sigmoid(logit) - y and dL/dF[cell] =
dL/dlogit * w / N, the same at every cell. Hence for the backbone parameters theta

    dL/dtheta = (dL/dlogit / N) * d/dtheta [ sum_windows sum_cells weight[cell] F[cell] . w ],

with weight 1 on a tile's interior cells, 0 on its margin cells, and K on the proxy's cells.
The bracket does not depend on the logit: a *single* pass over the windows (forward + backward
of each) gives both the GAP and the gradient, which is scaled at the end.
Head: dL/dw = dL/dlogit * GAP, dL/db = dL/dlogit. Peak memory is one window's forward and
backward, plus the content and one copy of the gradients; windows are cut from the canvas on
the host, and the canvas never exists whole.

Window and tile sizes are in pixels of the model's input (the cache's target mpp).
"""
import collections

import numpy as np
import tensorflow as tf

from data.canvas import as_canvas
from model.loss import bce, sigmoid
from model.runner import numpy_function
from model.resnet import FEATURES, MARGIN, OUTPUT_STRIDE, RADIUS, cam_logits


def output_cells(pixels):
    """Output positions along an axis of ``pixels`` input pixels: ceil(pixels / 32)."""
    return -(-int(pixels) // OUTPUT_STRIDE)


Span = collections.namedtuple("Span", "cell_start cell_stop window_start window_stop")
Span.__doc__ = """One tile along one axis: interior output cells [cell_start, cell_stop) and the
input window [window_start, window_stop) in pixels that computes them."""


def _check_sizes(tile, margin):
    if tile < OUTPUT_STRIDE or tile % OUTPUT_STRIDE or margin < 0 or margin % OUTPUT_STRIDE:
        raise ValueError("tile ({}) and margin ({}) must be multiples of {} px, tile > 0"
                         .format(tile, margin, OUTPUT_STRIDE))


def _split_axis(length, count, margin, cells):
    """``count`` tiles over output cells [start, stop) of an axis of ``length`` px, whose
    windows are near-equal; None when rounding to cells leaves a tile empty."""
    start, stop = cells
    low = max(0, start * OUTPUT_STRIDE - margin)
    high = min(length, stop * OUTPUT_STRIDE + margin)
    window = (high - low + 2.0 * margin * (count - 1)) / count
    # interior boundary k sits at low + k*window - (2k-1)*margin px, rounded to a cell
    bounds = [start] + [int(round((low + k * window - (2 * k - 1) * margin) / OUTPUT_STRIDE))
                        for k in range(1, count)] + [stop]
    if any(b <= a for a, b in zip(bounds[:-1], bounds[1:])):
        return None
    return [Span(a, b, max(0, a * OUTPUT_STRIDE - margin), min(length, b * OUTPUT_STRIDE + margin))
            for a, b in zip(bounds[:-1], bounds[1:])]


def plan_axis(length, tile, margin=MARGIN, cells=None):
    """Splits output cells ``cells`` = [start, stop) (default: all) of an axis of ``length`` px
    into the fewest tiles whose windows are at most ``tile + 2 margin`` px.

    ``tile`` is the interior of a middle tile; a tile at an image edge has no margin there, so its
    interior may be ``tile + margin``. With n tiles the windows compute the cells' extent plus
    ``2 margin (n-1)`` px, and the interior boundaries (multiples of 32) make the windows
    near-equal. A window that would reach past the image ends exactly at its edge.
    """
    length, tile, margin = int(length), int(tile), int(margin)
    if length < 1:
        raise ValueError("image side must be at least 1 px, got {}".format(length))
    _check_sizes(tile, margin)
    start, stop = cells if cells is not None else (0, output_cells(length))
    if not 0 <= start < stop <= output_cells(length):
        raise ValueError("cells [{}, {}) are not in the {} px axis".format(start, stop, length))
    extent = min(length, stop * OUTPUT_STRIDE + margin) - max(0, start * OUTPUT_STRIDE - margin)
    largest = tile + 2 * margin
    for count in range(max(1, -(-(extent - 2 * margin) // tile)), stop - start + 1):
        spans = _split_axis(length, count, margin, (start, stop))
        if spans and max(s.window_stop - s.window_start for s in spans) <= largest:
            return spans
    # one cell per tile: a tile narrower than a cell's window cannot do better
    return [Span(i, i + 1, max(0, i * OUTPUT_STRIDE - margin),
                 min(length, (i + 1) * OUTPUT_STRIDE + margin)) for i in range(start, stop)]


def plan_windows(height, width, tile, margin=MARGIN, rows=None, cols=None):
    """Tiles (row Span, column Span) over the cells ``rows`` x ``cols`` (default: all) whose
    windows hold at most ``(tile + 2 margin)^2`` pixels, with the fewest computed pixels.

    Memory follows a window's area, not its shape: for each number of row tiles the columns get
    the widest windows that the area allows, and the cheapest split in pixels wins (a 3,400 x
    3,000 px region is 2 windows of 3,400 x 1,756, not 4 of 1,756^2).
    """
    _check_sizes(int(tile), int(margin))
    rows = rows or (0, output_cells(height))
    cols = cols or (0, output_cells(width))
    budget = (tile + 2 * margin) ** 2
    best = None
    # square windows need `square` row tiles; thinner ones more (3 rows x 1 column can beat
    # 1 x 3 or 2 x 2): try up to twice as many
    square = len(plan_axis(height, tile, margin, rows))
    for count in range(1, min(2 * square + 2, rows[1] - rows[0]) + 1):
        row_spans = _split_axis(height, count, margin, rows)
        if row_spans is None:
            continue
        tallest = max(s.window_stop - s.window_start for s in row_spans)
        col_tile = (budget // tallest - 2 * margin) // OUTPUT_STRIDE * OUTPUT_STRIDE
        if col_tile < OUTPUT_STRIDE:
            continue
        col_spans = plan_axis(width, col_tile, margin, cols)
        widest = max(s.window_stop - s.window_start for s in col_spans)
        if tallest * widest > budget:
            continue
        cost = (sum(s.window_stop - s.window_start for s in row_spans)
                * sum(s.window_stop - s.window_start for s in col_spans))
        key = (cost, len(row_spans) * len(col_spans))
        if best is None or key < best[0]:
            best = (key, row_spans, col_spans)
    if best is None:   # the square plan always fits its own budget
        best = (None, plan_axis(height, tile, margin, rows), plan_axis(width, tile, margin, cols))
    return [(r, c) for r in best[1] for c in best[2]]


def computed_pixel_ratio(height, width, tile, margin=MARGIN):
    """Input pixels the windows of a whole canvas compute (they overlap) over its pixels (>= 1)."""
    windows = plan_windows(height, width, tile, margin)
    return sum(_area(r, c) for r, c in windows) / float(height * width)


def _area(row, col):
    return (row.window_stop - row.window_start) * (col.window_stop - col.window_start)


# ------------------------------------------------------------------------- uniform cells

def _signature(length, cell):
    """How the image edges cut the receptive field of ``cell`` on an axis of ``length`` px:
    (cell index if cut at the start, distance of its centre to the last pixel if cut at the end).
    """
    centre = OUTPUT_STRIDE * cell
    return (cell if centre - RADIUS < 0 else None,
            length - 1 - centre if centre + RADIUS > length - 1 else None)


def proxy_axis(length):
    """(proxy length, proxy cell of each canvas cell) for one axis of ``length`` px.

    The proxy is the shortest length congruent to ``length`` mod 32 (so its cells sit at the
    same phase to both edges) that has a cell of every signature the canvas axis has; canvas
    cell i maps to the proxy cell of the same signature (``_signature``).
    """
    length = int(length)
    canvas = [_signature(length, i) for i in range(output_cells(length))]
    needed = set(canvas)
    for proxy in range(length % OUTPUT_STRIDE or OUTPUT_STRIDE, length + 1, OUTPUT_STRIDE):
        cells = [_signature(proxy, k) for k in range(output_cells(proxy))]
        if needed.issubset(cells):
            first = {}
            for k, signature in enumerate(cells):
                first.setdefault(signature, k)
            return proxy, np.array([first[s] for s in canvas], np.int64)
    raise AssertionError("unreachable: the axis itself is its own proxy")


def content_cells(box, height, width):
    """(rows, cols): the cells [start, stop) whose receptive field touches the content box
    (top, bottom, left, right) in px; None for an empty box."""
    top, bottom, left, right = box
    if bottom <= top or right <= left:
        return None

    def axis(a, b, length):
        start = max(0, -(-(a - RADIUS) // OUTPUT_STRIDE))
        stop = min(output_cells(length), (b - 1 + RADIUS) // OUTPUT_STRIDE + 1)
        return start, stop
    return axis(top, bottom, height), axis(left, right, width)


Proxy = collections.namedtuple("Proxy", "height width row_map col_map counts")
Proxy.__doc__ = """The uniform image that stands for every fill-only cell: its size in px,
the proxy row/column of each canvas row/column of cells, and K (proxy cells) = how many uniform
canvas cells each stands for."""


class Plan(collections.namedtuple("Plan", "height width windows proxy")):
    """What a canvas costs: the tiles (row Span, column Span) that are computed, and the Proxy
    of the uniform cells (None when every cell is tiled)."""
    __slots__ = ()

    @property
    def computed_pixels(self):
        pixels = sum(_area(r, c) for r, c in self.windows)
        return pixels + (self.proxy.height * self.proxy.width if self.proxy else 0)

    @property
    def computed_pixel_ratio(self):
        """Input pixels computed (windows + proxy) / canvas pixels."""
        return self.computed_pixels / float(self.height * self.width)


def plan(canvas, tile, margin=MARGIN, skip_uniform=True):
    """The ``Plan`` of a ``data.canvas.Canvas``: tiles over the cells whose receptive field
    touches the content, a proxy for the rest -- or tiles over every cell, whichever computes
    fewer pixels (a canvas that the content nearly fills is cheaper without a proxy)."""
    height, width = canvas.shape
    full = Plan(height, width, plan_windows(height, width, tile, margin), None)
    if not skip_uniform:
        return full
    cells = content_cells(canvas.box, height, width)
    rows_all, cols_all = (0, output_cells(height)), (0, output_cells(width))
    if cells == (rows_all, cols_all):
        return full
    proxy_height, row_map = proxy_axis(height)
    proxy_width, col_map = proxy_axis(width)
    shape = (output_cells(proxy_height), output_cells(proxy_width))
    rows_per = np.bincount(row_map, minlength=shape[0])
    cols_per = np.bincount(col_map, minlength=shape[1])
    counts = np.outer(rows_per, cols_per)
    windows = []
    if cells is not None:
        (r0, r1), (c0, c1) = cells
        counts -= np.outer(np.bincount(row_map[r0:r1], minlength=shape[0]),
                           np.bincount(col_map[c0:c1], minlength=shape[1]))
        windows = plan_windows(height, width, tile, margin, rows=cells[0], cols=cells[1])
    skipping = Plan(height, width, windows,
                    Proxy(proxy_height, proxy_width, row_map, col_map, counts))
    return skipping if skipping.computed_pixels < full.computed_pixels else full


def variable_order(model, backbone_vars):
    """Where each of ``model.trainable_variables`` comes from: its index in ``backbone_vars``,
    or "kernel" / "bias" for the head's, so that a strategy's grads line up with them."""
    head = {id(model.head.kernel): "kernel", id(model.head.bias): "bias"}
    backbone = {id(v): i for i, v in enumerate(backbone_vars)}
    order = []
    for v in model.trainable_variables:
        if id(v) in backbone:
            order.append(backbone[id(v)])
        elif id(v) in head:
            order.append(head[id(v)])
        else:
            raise ValueError("streaming: trainable variable {} is neither in the backbone nor "
                             "the head".format(v.name))
    return order


class Streaming(object):
    """Exact tile-wise strategy for one slide at a time (the contract of docs/architecture.md).

    ``tile``: interior side of a middle tile in px (multiple of 32); windows hold at most
    ``(tile + 2 margin)^2`` px, in any shape (``plan_windows``). The tile is given:
    ``model.strategy.choose_tile`` is the one place a tile comes from (a user's setting, a memory
    budget or this machine's memory), and ``model.strategy.make_strategy`` passes its choice in.
    ``margin``: px added around each interior; below ``MARGIN`` (256) the result is not exact,
    which only ``allow_inexact=True`` permits (the selfcheck uses it to show that it notices).
    ``skip_uniform``: compute fill-only cells once from a proxy (``plan``); False tiles every
    cell. ``progress``: a tqdm bar over the windows of each call.

    ``predict`` and ``gradients`` take a ``data.canvas.Canvas`` (or the pipeline's dict of it);
    a dense uint8 image is read as ``Canvas.from_dense``. ``last_plan`` is the last call's Plan.
    """

    def __init__(self, model, tile, margin=MARGIN, allow_inexact=False, skip_uniform=True,
                 progress=False):
        margin = int(margin)
        if margin % OUTPUT_STRIDE or margin < 0:
            raise ValueError("margin must be a multiple of {} px, got {}".format(OUTPUT_STRIDE,
                                                                                 margin))
        if margin < MARGIN and not allow_inexact:
            raise ValueError("margin {} px < {} px (receptive-field radius {} px): tiles would not "
                             "be exact".format(margin, MARGIN, RADIUS))
        tile = int(tile)
        if tile < OUTPUT_STRIDE or tile % OUTPUT_STRIDE:
            raise ValueError("tile must be a positive multiple of {} px, got {}"
                             .format(OUTPUT_STRIDE, tile))
        self.model, self.tile, self.margin, self.progress = model, tile, margin, progress
        self.skip_uniform, self.last_plan = skip_uniform, None
        self._backbone_vars = list(model.backbone.trainable_variables)
        self._order = variable_order(model, self._backbone_vars)

        window_spec = tf.TensorSpec([None, None, 3], tf.uint8)
        weights_spec = tf.TensorSpec([None, None], tf.float32)   # one weight per window cell
        # One trace each: the None dims serve every window shape (edge windows, the proxy).
        self._forward_window = numpy_function(self._forward_window_fn,
                                              [window_spec, weights_spec])
        self._train_window = tf.function(self._train_window_fn,
                                         input_signature=[window_spec, weights_spec])

    # -- per-window graphs ---------------------------------------------------------------------
    def _features(self, window):
        # the backbone's Input is float32 (its preprocess casts); uint8 -> float32 is exact
        return self.model.backbone(tf.cast(window, tf.float32)[None], training=False)[0]

    def _forward_window_fn(self, window, weights):
        features = self._features(window)
        return (tf.reduce_sum(features * weights[:, :, None], axis=[0, 1]),
                cam_logits(self.model, features))

    def _train_window_fn(self, window, weights):
        kernel = tf.stop_gradient(self.model.head.kernel[:, 0])
        with tf.GradientTape() as tape:
            features = self._features(window)
            weighted = tf.reduce_sum(tf.tensordot(features, kernel, axes=[[-1], [0]]) * weights)
        grads = tape.gradient(weighted, self._backbone_vars)
        return tf.reduce_sum(features * weights[:, :, None], axis=[0, 1]), grads

    # -- planning ------------------------------------------------------------------------------
    def plan(self, image):
        """The Plan of an image or canvas (see ``plan``)."""
        return plan(as_canvas(image), self.tile, self.margin, self.skip_uniform)

    def _windows(self, canvas, plan_):
        """(row Span or None, column Span or None, window, weights): the tiles, then the proxy."""
        tiles = plan_.windows
        if self.progress:   # a 21,500 px canvas can be a few hundred windows: show where it is
            from tqdm import tqdm
            tiles = tqdm(tiles, desc="windows", unit="window", leave=False)
        for r, c in tiles:
            window = canvas.window(r.window_start, r.window_stop, c.window_start, c.window_stop)
            weights = np.zeros((output_cells(r.window_stop - r.window_start),
                                output_cells(c.window_stop - c.window_start)), np.float32)
            top, left = r.window_start // OUTPUT_STRIDE, c.window_start // OUTPUT_STRIDE
            weights[r.cell_start - top:r.cell_stop - top, c.cell_start - left:c.cell_stop - left] = 1
            yield r, c, window, weights
        proxy = plan_.proxy
        if proxy is not None and proxy.counts.any():
            window = np.empty((proxy.height, proxy.width, 3), np.uint8)
            window[...] = canvas.fill
            yield None, None, window, proxy.counts.astype(np.float32)

    def _head(self):
        kernel, bias = tf.keras.backend.batch_get_value([self.model.head.kernel,
                                                         self.model.head.bias])
        return kernel[:, 0].astype(np.float64), float(bias[0])

    # -- the strategy contract -------------------------------------------------------------------
    def predict(self, image, cam=False):
        """dict(probability, logit, cam): cam is the pre-sigmoid CAM, (ceil(H/32), ceil(W/32))."""
        canvas = as_canvas(image)
        plan_ = self.last_plan = self.plan(canvas)
        height, width = canvas.shape
        grid = np.zeros((output_cells(height), output_cells(width)), np.float32) if cam else None
        total = np.zeros(FEATURES, np.float64)
        for r, c, window, weights in self._windows(canvas, plan_):
            feature_sum, cam_window = self._forward_window(window, weights)
            total += feature_sum
            if not cam:
                continue
            if r is None:     # the proxy: every uniform cell takes its signature's value
                proxy = plan_.proxy
                uniform = cam_window[np.ix_(proxy.row_map, proxy.col_map)]
                for (rr, cc) in plan_.windows:      # keep what the tiles wrote
                    uniform[rr.cell_start:rr.cell_stop, cc.cell_start:cc.cell_stop] = \
                        grid[rr.cell_start:rr.cell_stop, cc.cell_start:cc.cell_stop]
                grid = uniform
            else:
                top, left = r.window_start // OUTPUT_STRIDE, c.window_start // OUTPUT_STRIDE
                grid[r.cell_start:r.cell_stop, c.cell_start:c.cell_stop] = cam_window[
                    r.cell_start - top:r.cell_stop - top, c.cell_start - left:c.cell_stop - left]
        kernel, bias = self._head()
        logit = float(total.dot(kernel) / grid_size(height, width) + bias)
        return dict(probability=sigmoid(logit), logit=logit, cam=grid)

    def gradients(self, image, label):
        """(loss, probability, grads): BCE of one slide; grads line up with
        ``model.trainable_variables`` (tf.Tensor float32)."""
        canvas = as_canvas(image)
        label = float(label.numpy() if hasattr(label, "numpy") else label)
        plan_ = self.last_plan = self.plan(canvas)
        cells = grid_size(*canvas.shape)
        total = np.zeros(FEATURES, np.float64)
        accumulated = None
        for _, _, window, weights in self._windows(canvas, plan_):
            feature_sum, grads = self._train_window(window, weights)
            total += feature_sum.numpy()
            accumulated = list(grads) if accumulated is None else [
                a + g for a, g in zip(accumulated, grads)]
        kernel, bias = self._head()
        gap = total / cells
        logit = float(gap.dot(kernel) + bias)
        probability = sigmoid(logit)
        dlogit = probability - label
        scale = tf.constant(dlogit / cells, tf.float32)
        backbone = [g * scale for g in accumulated]
        head = {"kernel": tf.constant((dlogit * gap)[:, None], tf.float32),
                "bias": tf.constant([dlogit], tf.float32)}
        grads = [head[k] if isinstance(k, str) else backbone[k] for k in self._order]
        return bce(logit, label), probability, grads


def grid_size(height, width):
    """N, the number of output cells of an image: ceil(H/32) * ceil(W/32)."""
    return output_cells(height) * output_cells(width)
