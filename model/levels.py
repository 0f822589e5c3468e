"""Exact streaming in levels: each level of the network computed only where its output can
differ from the fill, in windows that carry only that level's own reach.

Levels. The backbone is cut into 17 levels (``LEVELS``): the stem (conv1 and its max pooling,
4 px per output position) and each of the 16 bottleneck blocks. Level l reads the output map of
level l-1 (the image for the stem) and writes its own. An output position of a level is a fixed
function of the input positions within its *reach* (``Level.reach``: 5 px for the stem, one
position for a stride-1 block, two input positions for a stride-2 block), so a window that
computes output rows [a, b) of a level needs its input rows [s a - before, s (b-1) + reach + 1)
(s: the level's stride, ``before``: the reach rounded up to s, so that the window's grid is the
canvas's grid), clipped to the canvas, where the zero padding is the whole image's. The stem
uses Keras' own padding and is cropped (``_crop``) after its pooling; a block runs its first 1x1
over the window and its 3x3 only at the kept outputs (``_around``: zeros only where the canvas
ends), then the rest on those.

Active positions. A position of level l whose receptive field (``Level.radius`` px around its
centre ``Level.jump`` i) holds only fill pixels has the value that a uniform fill image gives at
the same distance from the canvas edges (see model/streaming.py, "Uniform cells"). So each level
computes only its *active* positions, those whose receptive field touches a non-fill pixel
(``active_masks``: from the content's own pixels for the stem, then level by level over each
level's reach, so a rotated footprint or tissue with white glass around it is followed, not its
box). Every other position that a window
reads is taken from a proxy: the network run once on a small uniform image with the canvas's
phase (``ProxyMaps``), whose positions stand for canvas positions of the same edge signature, at
every level. That is the floor of model/flops.py, computed level by level: the work above it is
each level's reach at the edges of its windows, the rectangles that cover a mask, and the proxy.

Windows. A level's active positions are covered by disjoint rectangles (``cover``), by recursive
cuts (``_guillotine``): the box of the active positions is cut in two along the row or column
that costs least, each part trimmed to its own active positions, for as long as a cut lowers
the planned MACs, each window also charged ``WINDOW_MACS`` for its call. Small windows follow a
rotated edge or a gap in the tissue closely; large ones repeat the reach less. The next level's
windows assemble their input from the pieces that cross them and from the proxy (``_compose``).

Memory. A training step's forward keeps every level's output pieces and, for each window, its
inner activations after ReLU (a block's 1x1 output over the window and its 3x3 output at the
kept positions, the stem's conv1 output), and its input where the budget has room. The backward
runs from the last level to the first, each window's layers run back from what was kept
(``_block_backward_fn``, ``_stem_backward_fn``: frozen BatchNorm is a fixed scale, so nothing
is recomputed). When that does not fit the memory budget, the output cells are split into a
grid of super-windows (``plan``, chosen by ``_choose`` from an estimate of each one's bytes and
MACs): each is computed as above for only the positions that its cells need, and the proxy's
gradient is accumulated over them and run back once. The super-windows' overlap (each needs its
cells' receptive fields) is the price of less memory.

The GAP is the sum over computed output cells plus, for the cells never computed, the proxy
cells weighted by how many canvas cells each stands for (K, ``Plan.counts``); dL/dF is the same
at every cell (the head's kernel, scaled by dL/dlogit / N at the end), so the backward starts
from that kernel at every computed cell and K times it at each proxy cell.
"""
import collections

import numpy as np

from data.canvas import as_canvas
from model.flops import mask_strips
from model.loss import bce, sigmoid
from model.resnet import FEATURES, LAYERS, OUTPUT_STRIDE, cam_logits, preprocess
from model.streaming import output_cells, proxy_axis, variable_order

# ----------------------------------------------------------------------------------- geometry


class Level(collections.namedtuple(
        "Level", "name stride before reach jump radius channels projection layers")):
    """One level: ``stride`` (its input grid to its output grid), ``before``/``reach`` (input
    positions a window needs before its first output's centre / after its last one's),
    ``jump`` (px per output position), ``radius`` (px of the output's receptive field either
    side of its centre), ``channels`` (of its output), ``projection`` (a block with a 1x1
    shortcut conv), ``layers`` (its rows of ``model.resnet.LAYERS``)."""
    __slots__ = ()


def _levels():
    by_name = {layer.name: layer for layer in LAYERS}
    stem = [by_name["conv1_conv"], by_name["pool1_pool"]]
    pool = by_name["pool1_pool"]
    # pool k reads conv1 [2k-1, 2k+1], conv1 j reads px [2j-3, 2j+3]: px [4k-5, 4k+5]
    levels = [Level("stem", 4, 8, 5, pool.jump, pool.radius, pool.channels_out, False,
                    tuple(stem))]
    prefixes = [layer.name[:-len("_3_conv")] for layer in LAYERS if layer.name.endswith("_3_conv")]
    for prefix in prefixes:
        first, last = by_name[prefix + "_1_conv"], by_name[prefix + "_3_conv"]
        stride = first.stride
        layers = tuple(layer for layer in LAYERS if layer.name.startswith(prefix + "_"))
        # output k: the 3x3 reads the 1x1's k-1..k+1, which read input s(k-1)..s(k+1)
        levels.append(Level(prefix, stride, stride, stride, last.jump, last.radius,
                            last.channels_out, prefix + "_0_conv" in by_name, layers))
    return tuple(levels)


LEVELS = _levels()


def grid(length, level):
    """Output positions of ``level`` along an axis of ``length`` px: ceil(length / jump)."""
    return -(-int(length) // level.jump)


def input_span(level, start, stop, length):
    """The input positions [lo, hi) that output positions [start, stop) of ``level`` read, on an
    input axis of ``length`` positions (clipped: the zero padding there is the whole image's)."""
    return (max(0, level.stride * start - level.before),
            min(length, level.stride * (stop - 1) + level.reach + 1))


def _input_length(index, length):
    return int(length) if index == 0 else grid(length, LEVELS[index - 1])


def window_macs(index, rows, cols, length_rows, length_cols):
    """Forward MACs of level ``index`` computing output rows [rows) x cols [cols) (half-open
    pairs) on a canvas of ``length_rows`` x ``length_cols`` px."""
    return int(_macs(index, rows[0], rows[1], cols[0], cols[1], length_rows, length_cols))


def _costs(level):
    """(MACs per position of a window's whole input span at the level's stride, MACs per output
    position): the first 1x1 runs on the whole window, the rest on its kept outputs; the stem's
    conv1 on its whole window at stride 2 (its pooling costs nothing)."""
    if level.name == "stem":
        return level.layers[0].macs, 0
    full = out = 0
    for layer in level.layers:
        if layer.name[len(level.name) + 1:] == "1_conv":
            full += layer.macs
        else:
            out += layer.macs
    return full, out


_COSTS = [_costs(level) for level in LEVELS]


def _macs(index, top, bottom, left, right, length_rows, length_cols):
    """``window_macs`` of windows [top, bottom) x [left, right): scalars or int64 arrays."""
    level = LEVELS[index]
    s, before, after = level.stride, level.before, level.reach + 1
    rows_in, cols_in = _input_length(index, length_rows), _input_length(index, length_cols)
    n_r = np.minimum(rows_in, s * (bottom - 1) + after) - np.maximum(0, s * top - before)
    n_c = np.minimum(cols_in, s * (right - 1) + after) - np.maximum(0, s * left - before)
    full, out = _COSTS[index]
    if index == 0:
        return full * (-(-n_r // 2)) * (-(-n_c // 2))
    return full * (-(-n_r // s)) * (-(-n_c // s)) + out * (bottom - top) * (right - left)


# Bytes that a training step keeps per value of a level's layers, calibrated so that the whole
# network on P px costs model.strategy's TRAIN_BYTES_PER_PIXEL x P (its one memory model).
def _values_per_position(level):
    """Activation values of ``level`` per output position (every layer's output, at its own
    grid, per position of the level's output grid)."""
    return sum(layer.channels_out * (level.jump / float(layer.jump)) ** 2
               for layer in level.layers)


def bytes_per_value(training=True):
    from model.strategy import BASE_BYTES, bytes_per_pixel  # noqa: F401  (one memory model)
    per_px = sum(_values_per_position(level) / float(level.jump ** 2) for level in LEVELS)
    return bytes_per_pixel(training) / per_px


# ------------------------------------------------------------------------------- active masks

def _any_within(mask, axis, start, length, jump, radius):
    """(first, out) along ``axis`` of the bool ``mask``, whose index 0 there is coordinate
    ``start``: for the positions i of a grid of ``length`` positions, position i centred at
    coordinate jump i, whether ``mask`` holds a True within [jump i - radius, jump i + radius];
    ``out`` runs over the positions from ``first`` whose interval meets the mask at all."""
    size = mask.shape[axis]
    first = max(0, -(-(start - radius) // jump))
    stop = min(int(length), (start + size - 1 + radius) // jump + 1)
    count = max(0, stop - first)
    shape = list(mask.shape)
    if count == 0:
        shape[axis] = 0
        return first, np.zeros(shape, bool)
    low = jump * first - radius                 # the coordinate of the padded axis' index 0
    shape[axis] = jump * (count - 1) + 2 * radius + 1
    padded = np.zeros(shape, bool)
    offset = start - low                        # >= 0 as radius >= (jump - 1) / 2
    kept = min(size, shape[axis] - offset)
    cut = [slice(None)] * mask.ndim
    cut[axis] = slice(offset, offset + kept)
    source = [slice(None)] * mask.ndim
    source[axis] = slice(0, kept)
    padded[tuple(cut)] = mask[tuple(source)]
    out = None
    for o in range(2 * radius + 1):             # one strided view per offset in the interval
        cut[axis] = slice(o, o + jump * (count - 1) + 1, jump)
        view = padded[tuple(cut)]
        out = view.copy() if out is None else np.logical_or(out, view, out=out)
    return first, out


def active_masks(canvas):
    """For each level, (row0, col0, mask): the bool mask of its output positions whose receptive
    field (``Level.radius`` px around its centre, clipped to the canvas) holds a non-fill pixel of
    ``canvas``, over the rows/cols from (row0, col0) that can; (0, 0, empty) when none can.

    The stem's mask comes from the content's own pixels, a strip of rows at a time: first, per
    row, which positions' column interval meets a non-fill pixel, then the same over rows. A
    later level reads input positions s (i - 1) to s (i + 1) (s: its stride), and its receptive
    field is the union of theirs, so its mask is the previous level's, OR-ed over that reach."""
    if canvas.empty:
        return [(0, 0, np.zeros((0, 0), bool))] * len(LEVELS)
    top, _, left, _ = canvas.box
    height, width = canvas.shape
    stem = LEVELS[0]
    c0, strips = 0, []
    for _, strip in mask_strips(canvas):
        c0, part = _any_within(strip, 1, left, grid(width, stem), stem.jump, stem.radius)
        strips.append(part)
    r0, mask = _any_within(np.concatenate(strips), 0, top, grid(height, stem), stem.jump,
                           stem.radius)
    masks = [(r0, c0, mask)]
    for level in LEVELS[1:]:
        r0, mask = _any_within(mask, 0, r0, grid(height, level), level.stride, level.stride)
        c0, mask = _any_within(mask, 1, c0, grid(width, level), level.stride, level.stride)
        masks.append((r0, c0, mask))
    return masks


# ----------------------------------------------------------------------------------- planning

# What a window costs beyond its MACs (a call forward and back, its input assembled, its
# gradient sent back), in MACs: 1e8 is about 2.5 ms of this 2-core CPU's rate. Against 5e8, it
# plans 2x the windows and 5% fewer MACs, and a 21,500² step ran about 9% faster
# (docs/benchmarks.md).
WINDOW_MACS = 1e8

Window = collections.namedtuple("Window", "top bottom left right")
Window.__doc__ = """Output positions [top, bottom) x [left, right) of one level, canvas grid."""


def _cuts(index, sub, t, l, shape, transposed):
    """(cost, first, second): the cheapest cut of ``sub`` (a trimmed piece of a level's mask,
    its [0, 0] at canvas position (t, l)) between its rows (its columns when ``transposed``:
    ``sub`` is then the piece's transpose) into two windows, each trimmed to its own active
    positions. Windows are (top, bottom, left, right) in canvas positions."""
    h, w = sub.shape
    if h < 2:
        return None
    rows = np.arange(h)
    any_ = sub.any(axis=1)
    first = np.where(any_, sub.argmax(axis=1), w)
    last = np.where(any_, w - 1 - sub[:, ::-1].argmax(axis=1), -1)
    k = rows[1:]                                        # the cut: rows [0, k) and [k, h)
    end = np.maximum.accumulate(np.where(any_, rows, -1))[k - 1] + 1
    start = np.minimum.accumulate(np.where(any_, rows, h)[::-1])[::-1][k]
    lo1, hi1 = np.minimum.accumulate(first)[k - 1], np.maximum.accumulate(last)[k - 1] + 1
    lo2 = np.minimum.accumulate(first[::-1])[::-1][k]
    hi2 = np.maximum.accumulate(last[::-1])[::-1][k] + 1
    zero = np.zeros_like(k)
    one = (zero, end, lo1, hi1)
    two = (start, zero + h, lo2, hi2)
    if transposed:      # back to (rows, cols) of the canvas
        one, two = (one[2], one[3], one[0], one[1]), (two[2], two[3], two[0], two[1])
    t, l = (l, t) if transposed else (t, l)
    both = [np.concatenate([a, b]) for a, b in zip(one, two)]      # one call for both halves
    cost = _macs(index, t + both[0], t + both[1], l + both[2], l + both[3], *shape)
    cost = cost[:k.size] + cost[k.size:]
    best = int(np.argmin(cost))
    return (float(cost[best]) + 2 * WINDOW_MACS,
            tuple(int(v[best]) + o for v, o in zip(one, (t, t, l, l))),
            tuple(int(v[best]) + o for v, o in zip(two, (t, t, l, l))))


def _guillotine(index, mask, r0, c0, shape):
    """Windows covering ``mask`` by recursive cuts: a window is cut in two, each part trimmed
    to its active positions, while the cheapest cut (over rows and columns) lowers the planned
    MACs, each window charged ``WINDOW_MACS``."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    stack = [(r0 + rows[0], r0 + rows[-1] + 1, c0 + cols[0], c0 + cols[-1] + 1)]
    windows = []
    while stack:
        t, b, l, r = stack.pop()
        sub = mask[t - r0:b - r0, l - c0:r - c0]
        single = float(_macs(index, t, b, l, r, *shape)) + WINDOW_MACS
        best = min((c for c in (_cuts(index, sub, t, l, shape, False),
                                _cuts(index, sub.T, l, t, shape, True)) if c is not None),
                   key=lambda c: c[0], default=None)
        if best is not None and best[0] < single:
            stack.extend(best[1:])
        else:
            windows.append(Window(t, b, l, r))
    return windows


def cover(index, mask, r0, c0, shape):
    """Disjoint windows of level ``index`` covering the True positions of ``mask`` (whose [0, 0]
    is output position (r0, c0)) on a canvas of ``shape`` px, by recursive cuts
    (``_guillotine``), each window charged ``WINDOW_MACS``."""
    if not mask.any():
        return []
    return _guillotine(index, mask, r0, c0, shape)


class Plan(collections.namedtuple("Plan", "shape parts proxy counts reads_uniform")):
    """What a canvas costs: ``parts``, one list of windows per level for each super-window (one
    when everything fits at once); the proxy's size (``ProxyGeometry``); K, how many canvas
    output cells that no super-window computes each proxy cell stands for; whether a window
    reads a position that no window computed (``uses_proxy``: either makes the proxy run)."""
    __slots__ = ()

    @property
    def windows(self):
        return sum(len(level) for part in self.parts for level in part)

    def macs(self):
        """Forward MACs the plan computes: every window of every level, and the proxy."""
        from model.flops import network_macs
        total = sum(window_macs(i, (w.top, w.bottom), (w.left, w.right), *self.shape)
                    for part in self.parts for i, level in enumerate(part) for w in level)
        if self.uses_proxy:
            total += network_macs(self.proxy.height, self.proxy.width)
        return int(total)

    @property
    def uses_proxy(self):
        return bool(self.reads_uniform or self.counts.any())

    def part_bytes(self, training=True, inputs=False):
        """Bytes of the largest super-window: every level's output kept (float32; a training
        step keeps them all with each window's inner activations, ``_kept_values``, and their
        gradients for two levels at a time), plus the largest window's own work at
        ``bytes_per_value``. ``inputs``: a training step that also keeps each window's input
        for its backward (``LevelStreaming.gradients`` does when that fits the budget)."""
        per = bytes_per_value(training)
        largest = 0.0
        for part in self.parts:
            outputs = [4.0 * sum(_kept_values(i, w, self.shape, training, inputs) for w in level)
                       for i, level in enumerate(part)]
            window = max([0.0] + [per * _values_per_position(LEVELS[i]) * (w.bottom - w.top + 2)
                                  * (w.right - w.left + 2)
                                  for i, level in enumerate(part) for w in level])
            if training:
                kept = sum(outputs) + max(a + b for a, b in zip(outputs, outputs[1:] + [0.0]))
            else:
                kept = max(a + b for a, b in zip(outputs, outputs[1:] + [0.0]))
            largest = max(largest, kept + window)
        return largest


def _kept_values(index, w, shape, training, inputs=False):
    """Values that a step keeps for window ``w`` of level ``index`` until its backward: its
    output, and in training its inner activations (a block's 1x1 output over its whole window
    at its stride and its 3x3 output at the kept positions; the stem's conv1 output, at stride
    2), and with ``inputs`` its input. The inputs are counted with the outputs, among the
    gradients of two levels at a time too, and the stem's uint8 pixels as 4 bytes: more than
    they take, which leaves the runtime room for a window's input assembled in the forward."""
    level = LEVELS[index]
    out = (w.bottom - w.top) * (w.right - w.left)
    values = level.channels * out
    if training:
        rows = input_span(level, w.top, w.bottom, _input_length(index, shape[0]))
        cols = input_span(level, w.left, w.right, _input_length(index, shape[1]))
        s, channels = (2, level.channels) if index == 0 else (level.stride, level.channels // 4)
        if index:
            values += channels * out
        values += channels * (-(-(rows[1] - rows[0]) // s)) * (-(-(cols[1] - cols[0]) // s))
        if inputs:
            values += (3 if index == 0 else LEVELS[index - 1].channels) * \
                (rows[1] - rows[0]) * (cols[1] - cols[0])
    return values


def _part(canvas, masks, cells):
    """(windows of every level, whether one reads a position that none computed) for output
    cells ``cells`` = (top, bottom, left, right) of the last level: from the last level back,
    each covers its active positions that the next one reads, within the box of those reads."""
    shape = canvas.shape
    box, need, uniform = cells, None, False
    part = [[] for _ in LEVELS]
    for index in range(len(LEVELS) - 1, -1, -1):
        r0, c0, mask = masks[index]
        t, b = max(box[0], r0), min(box[1], r0 + mask.shape[0])
        l, r = max(box[2], c0), min(box[3], c0 + mask.shape[1])
        if t < b and l < r:
            sub = mask[t - r0:b - r0, l - c0:r - c0]
            if need is not None:
                sub = sub & need[t - box[0]:b - box[0], l - box[2]:r - box[2]]
            part[index] = cover(index, sub, t, l, shape)
        if need is not None and not uniform:    # does the next level read what none computed?
            covered = np.zeros_like(need)
            for w in part[index]:
                covered[w.top - box[0]:w.bottom - box[0], w.left - box[2]:w.right - box[2]] = True
            uniform = bool((need & ~covered).any())
        if not index or not part[index]:
            break
        box, need = _reads(part[index], index, shape)
    return part, uniform


def _reads(windows, index, shape):
    """(box, need): the positions of level ``index - 1`` that ``windows`` of level ``index``
    read, as a bool mask over their bounding box (top, bottom, left, right)."""
    level = LEVELS[index]
    n_r, n_c = _input_length(index, shape[0]), _input_length(index, shape[1])
    spans = [input_span(level, w.top, w.bottom, n_r) + input_span(level, w.left, w.right, n_c)
             for w in windows]
    box = (min(v[0] for v in spans), max(v[1] for v in spans),
           min(v[2] for v in spans), max(v[3] for v in spans))
    need = np.zeros((box[1] - box[0], box[3] - box[2]), bool)
    for a, b, c, d in spans:
        need[a - box[0]:b - box[0], c - box[2]:d - box[2]] = True
    return box, need


ProxyGeometry = collections.namedtuple("ProxyGeometry", "height width")


def _signature(length, jump, radius, i):
    centre = jump * i
    return (i if centre - radius < 0 else None,
            length - 1 - centre if centre + radius > length - 1 else None)


def proxy_maps(length, proxy_length):
    """For each level, the proxy position (int64 array) of each canvas position of its grid along
    an axis of ``length`` px; None when the proxy lacks a signature."""
    maps = []
    for level in LEVELS:
        proxy = {}
        for k in range(grid(proxy_length, level)):
            proxy.setdefault(_signature(proxy_length, level.jump, level.radius, k), k)
        n = grid(length, level)
        out = np.empty(n, np.int64)
        interior = proxy.get((None, None))
        for i in range(n):
            centre = level.jump * i
            if centre - level.radius >= 0 and centre + level.radius <= length - 1:
                if interior is None:
                    return None
                out[i] = interior
                continue
            k = proxy.get(_signature(length, level.jump, level.radius, i))
            if k is None:
                return None
            out[i] = k
        maps.append(out)
    return maps


def proxy_length(length):
    """The shortest proxy axis (congruent to ``length`` mod 32) with every signature of every
    level that an axis of ``length`` px has, and its maps (``proxy_maps``)."""
    start = proxy_axis(length)[0]
    for candidate in range(start, int(length) + 1, OUTPUT_STRIDE):
        maps = proxy_maps(length, candidate)
        if maps is not None:
            return candidate, maps
    raise AssertionError("unreachable: the axis is its own proxy")


def _split(cells, count):
    a, b = cells
    edges = [a + (b - a) * k // count for k in range(count + 1)]
    return [(x, y) for x, y in zip(edges[:-1], edges[1:]) if y > x]


def _prefix(mask):
    """int32 (h + 1, w + 1) summed-area table of a bool mask."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int32)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int32), axis=1, out=table[1:, 1:])
    return table


class _Estimate(object):
    """Each super-window's kept bytes and the forward MACs of a grid of them, from the active
    masks alone (no windows): level by level from the last, a super-window needs the active
    positions inside its cells' box grown by each level's reach (``input_span``). The bytes
    follow ``Plan.part_bytes`` without the windows' own work and their cover's slack, so they
    are scaled to it (``plan``); the MACs rank grids by their overlap."""

    def __init__(self, masks, shape, training):
        self.shape, self.training = shape, training
        # one table per grid: the last level on it, whose mask holds every earlier one's there
        last_on = {level.jump: index for index, level in enumerate(LEVELS)}
        tables = {index: (masks[index][0], masks[index][1], _prefix(masks[index][2]))
                  for index in set(last_on.values())}
        self.tables = [tables[last_on[level.jump]] for level in LEVELS]
        self.kept, self.macs = [], []
        for index, level in enumerate(LEVELS):
            full, out = _COSTS[index]
            self.macs.append(float(4 * full if index == 0 else full + out))  # conv1: 4 per output
            values = level.channels
            if training:
                values += (4 * level.channels) if index == 0 else 2 * (level.channels // 4)
            self.kept.append(4.0 * values)

    def _count(self, index, rows, cols):
        r0, c0, table = self.tables[index]
        h, w = table.shape[0] - 1, table.shape[1] - 1
        a, b = (np.minimum(h, np.maximum(0, v - r0)) for v in rows)
        c, d = (np.minimum(w, np.maximum(0, v - c0)) for v in cols)
        return (table[np.ix_(b, d)] - table[np.ix_(a, d)] - table[np.ix_(b, c)]
                + table[np.ix_(a, c)]).astype(np.float64)

    def __call__(self, row_cells, col_cells):
        """(bytes of each super-window (rows x cols), MACs of them all) for super-windows over
        output cells ``row_cells`` x ``col_cells`` (lists of (start, stop))."""
        rows = [np.array([c[0] for c in row_cells]), np.array([c[1] for c in row_cells])]
        cols = [np.array([c[0] for c in col_cells]), np.array([c[1] for c in col_cells])]
        outputs, macs = [None] * len(LEVELS), 0.0
        for index in range(len(LEVELS) - 1, -1, -1):
            count = self._count(index, rows, cols)
            outputs[index] = count * self.kept[index]
            macs += count.sum() * self.macs[index]
            if index:
                level = LEVELS[index]
                for axis, spans in ((0, rows), (1, cols)):
                    length = _input_length(index, self.shape[axis])
                    spans[0], spans[1] = (np.maximum(0, level.stride * spans[0] - level.before),
                                          np.minimum(length, level.stride * (spans[1] - 1)
                                                     + level.reach + 1))
        pairs = [a + b for a, b in zip(outputs, outputs[1:] + [0.0])]
        kept = np.maximum.reduce(pairs)
        if self.training:
            kept = kept + sum(outputs)
        return kept, macs


# What a plan's windows keep over ``_Estimate``'s bytes, 1.38-1.39 on a paper-sized slide:
# starting there usually saves a second try.
_SCALE = 1.4


def _choose(estimate, box, memory_bytes, cap, scale):
    """(rows, cols) of a grid of super-windows over ``box`` (output cells) whose largest
    super-window's estimated bytes x ``scale`` fit ``memory_bytes``, with few estimated MACs. A
    search, not an exhaustive one: for each number of rows, the columns that fit (a bisection,
    then the counts down to half of it, as fit is not monotone where part sizes jump) with the
    least MACs; more rows while that still pays. No side over ``cap`` cells (None: no cap).
    When no grid fits, one super-window per cell."""
    height, width = box[1] - box[0], box[3] - box[2]
    low_r = 1 if cap is None else -(-height // cap)
    low_c = 1 if cap is None else -(-width // cap)
    fits = {}

    def fit(n_r, n_c):
        if (n_r, n_c) not in fits:
            kept, macs = estimate(_split(box[:2], n_r), _split(box[2:], n_c))
            fits[n_r, n_c] = (kept.max() * scale <= memory_bytes, macs)
        return fits[n_r, n_c]

    best = None
    for n_r in range(low_r, height + 1):
        if not fit(n_r, width)[0]:
            continue
        lo, hi = low_c, width             # columns that fit: memory falls with them, mostly
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fit(n_r, mid)[0] else (mid + 1, hi)
        # where a part's size jumps between counts, fewer columns may fit too: look below
        macs, n_c = min((fit(n_r, c)[1], c) for c in range(max(low_c, lo // 2), lo + 1)
                        if fit(n_r, c)[0])
        if best is None or macs < best[0]:
            best = (macs, n_r, n_c)
        elif macs > 1.25 * best[0]:       # more rows only add overlap from here
            break
        if n_c == low_c:
            break
    if best is None:
        return height, width
    return best[1], best[2]


def plan(canvas, memory_bytes=None, training=True, tile=None):
    """The ``Plan`` of a ``data.canvas.Canvas``: one super-window over every active output cell
    when its kept activations fit ``memory_bytes`` (None: no limit; tried first where the
    estimate alone allows it), else a grid of near-equal super-windows that do, chosen for its
    small overlap by an estimate from the active masks (``_Estimate``, ``_choose``) and checked
    against the windows' own bytes. ``tile``: at most this many px of output cells per
    super-window side (a multiple of 32), whatever the memory."""
    if memory_bytes is not None and memory_bytes <= 0:
        raise ValueError("streaming: a memory budget of {:.2f} GB leaves no room for a step"
                         .format(memory_bytes / 1e9))
    canvas = as_canvas(canvas)
    height, width = canvas.shape
    masks = active_masks(canvas)
    r0, c0, last = masks[-1]
    proxy_h, rows_map = proxy_length(height)
    proxy_w, cols_map = proxy_length(width)
    rows_per = np.bincount(rows_map[-1], minlength=grid(proxy_h, LEVELS[-1]))
    cols_per = np.bincount(cols_map[-1], minlength=grid(proxy_w, LEVELS[-1]))
    counts = np.outer(rows_per, cols_per)
    parts, uniform = [], False
    if last.any():
        rows = np.flatnonzero(last.any(axis=1))
        cols = np.flatnonzero(last.any(axis=0))
        box = (r0 + rows[0], r0 + rows[-1] + 1, c0 + cols[0], c0 + cols[-1] + 1)
        cap = None if tile is None else max(1, int(tile) // OUTPUT_STRIDE)
        estimate = None if memory_bytes is None else _Estimate(masks, canvas.shape, training)
        coarsest = (1 if cap is None else -(-(box[1] - box[0]) // cap),
                    1 if cap is None else -(-(box[3] - box[2]) // cap))
        scale = None
        while True:
            if estimate is None:
                n_r, n_c = coarsest
            elif scale is None:     # the coarsest grid first where its bare estimate fits
                scale = _SCALE
                kept = estimate(_split(box[:2], coarsest[0]), _split(box[2:], coarsest[1]))[0]
                n_r, n_c = coarsest if kept.max() <= memory_bytes else \
                    _choose(estimate, box, memory_bytes, cap, scale)
            else:
                n_r, n_c = _choose(estimate, box, memory_bytes, cap, scale)
            cells = [(a, b, c, d) for a, b in _split(box[:2], n_r) for c, d in _split(box[2:], n_c)]
            made = [_part(canvas, masks, c) for c in cells]
            parts = [m[0] for m in made]
            uniform = any(m[1] for m in made)
            candidate = Plan((height, width), parts, ProxyGeometry(proxy_h, proxy_w), counts,
                             uniform)
            if estimate is None:
                break
            need = candidate.part_bytes(training)
            if need <= memory_bytes or (n_r >= box[1] - box[0] and n_c >= box[3] - box[2]):
                break
            # the windows need more than estimated: scale the estimate up to what they need
            kept = estimate(_split(box[:2], n_r), _split(box[2:], n_c))[0].max()
            scale = max(scale * 1.05, need / kept * 1.02)
        for part in parts:
            for w in part[-1]:
                counts = counts - np.outer(
                    np.bincount(rows_map[-1][w.top:w.bottom], minlength=counts.shape[0]),
                    np.bincount(cols_map[-1][w.left:w.right], minlength=counts.shape[1]))
    plan_ = Plan((height, width), parts, ProxyGeometry(proxy_h, proxy_w), counts, uniform)
    return plan_, rows_map, cols_map


# ---------------------------------------------------------------------------------- computing

Piece = collections.namedtuple("Piece", "top bottom left right value")


class LevelStreaming(object):
    """The exact streaming strategy in levels (module docstring), for one slide at a time.

    ``memory_gb`` (or ``memory_bytes``): the budget of a step's kept activations (None: this
    machine's share, ``model.strategy._machine_budget``, less the runtime's ``BASE_BYTES``);
    ``tile``: caps a super-window's side in px of output cells.
    ``progress``: a tqdm bar over each call's windows. ``predict`` and ``gradients`` keep the
    contract of ``model.streaming.Streaming``; ``last_plan`` is the last call's ``Plan``, and
    ``kept_inputs`` whether the last ``gradients`` kept its windows' inputs.
    Runs eagerly (TF1's graph mode uses ``model.streaming.Streaming``).
    """

    def __init__(self, model, memory_gb=None, tile=None, progress=False, memory_bytes=None):
        self.model, self.tile, self.progress = model, tile, progress
        self.memory_bytes = memory_bytes if memory_gb is None else float(memory_gb) * 1e9
        self.last_plan, self.kept_inputs = None, None
        base = [layer for layer in model.backbone.layers
                if hasattr(layer, "layers") and layer.layers][0]
        self._layer = base.get_layer
        self._backbone_vars = list(model.backbone.trainable_variables)
        import tensorflow as tf
        self._functions = []
        for index, level in enumerate(LEVELS):
            spec = (tf.TensorSpec([None, None, 3], tf.uint8) if index == 0 else
                    tf.TensorSpec([None, None, LEVELS[index - 1].channels], tf.float32))
            self._functions.append(tf.function(
                lambda x, crop, i=index: self._level_fn(i, x, crop),
                input_signature=[spec, tf.TensorSpec([4], tf.int32)]))
        # each level's own trainable variables, and where they sit in the backbone's list
        index_of = {id(v): i for i, v in enumerate(self._backbone_vars)}
        self._level_index = [[index_of[id(v)] for layer in level.layers
                              for v in base.get_layer(layer.name).trainable_weights]
                             for level in LEVELS]
        # training: each level's forward also returns its inner activations after ReLU, and
        # its backward runs from them, recomputing nothing that costs MACs
        crop = tf.TensorSpec([4], tf.int32)
        image = tf.TensorSpec([None, None, 3], tf.uint8)
        conv1 = tf.TensorSpec([None, None, LEVELS[0].channels], tf.float32)
        self._train_functions = [tf.function(lambda x, c: self._stem(x, c, inner=True),
                                             input_signature=[image, crop])]
        self._back_functions = [tf.function(
            lambda x, c, a, up: self._stem_backward_fn(x, c, a, up),
            input_signature=[image, crop, conv1, conv1], autograph=False)]
        for index, level in enumerate(LEVELS[1:], 1):
            x_spec = tf.TensorSpec([None, None, LEVELS[index - 1].channels], tf.float32)
            inner = tf.TensorSpec([None, None, level.channels // 4], tf.float32)
            out = tf.TensorSpec([None, None, level.channels], tf.float32)
            self._train_functions.append(tf.function(
                lambda x, c, i=index: self._block(LEVELS[i], x, c, inner=True),
                input_signature=[x_spec, crop]))
            self._back_functions.append(tf.function(
                lambda x, c, a1, a2, y, up, i=index: self._block_backward_fn(i, x, c, a1, a2, y,
                                                                               up),
                input_signature=[x_spec, crop, inner, inner, out, out], autograph=False))
        if sorted(sum(self._level_index, [])) != list(range(len(self._backbone_vars))):
            raise ValueError("streaming: the levels do not hold every backbone variable once")
        self._order = variable_order(model, self._backbone_vars)

    # -- one level on one window ---------------------------------------------------------------
    def _conv(self, name, x, relu=True, fold=False):
        """Keras' conv ``name``_conv, its frozen BatchNorm ``name``_bn and, with ``relu``, a
        ReLU. ``fold``: as one conv whose kernel and bias carry the BatchNorm's scale and shift,
        which TensorFlow fuses with the ReLU into one operation where the layers pass over the
        output three times: the same function up to float32 rounding. Prediction folds. A
        training step runs the layers as the whole image does: a value within rounding of 0
        would otherwise fall on the other side of a ReLU, and its gradient take the other
        branch."""
        import tensorflow as tf
        conv, bn = self._layer(name + "_conv"), self._layer(name + "_bn")
        if fold:
            scale = _bn_scale(bn)
            y = tf.nn.bias_add(tf.nn.conv2d(x, conv.kernel * scale, conv.strides, "VALID"),
                               (conv.bias - bn.moving_mean) * scale + bn.beta)
        else:
            y = bn(tf.nn.bias_add(tf.nn.conv2d(x, conv.kernel, conv.strides, "VALID"), conv.bias),
                   training=False)
        return tf.nn.relu(y) if relu else y

    def _stem(self, x, crop, inner=False):
        a = self._conv("conv1", self._layer("conv1_pad")(preprocess(x)[None]), fold=not inner)
        y = self._pool(a, crop)
        return (y, a[0]) if inner else y

    def _pool(self, a, crop):
        layer = self._layer
        return layer("pool1_pool")(layer("pool1_pad")(a))[0][crop[0]:crop[1], crop[2]:crop[3]]

    def _stem_backward_fn(self, x, crop, a, upstream):
        """The stem's backward from its kept conv1 output after ReLU (``a``): the pooling's
        gradient (it costs no MACs) under a tape, then conv1's kernel and bias by hand."""
        import tensorflow as tf
        with tf.GradientTape() as tape:
            tape.watch(a)
            pooled = self._pool(a[None], crop)
        g = _relu_grad(tape.gradient(pooled, a, output_gradients=upstream), a)[None]
        scale = _bn_scale(self._layer("conv1_bn"))
        kernel = self._layer("conv1_conv").kernel
        image = self._layer("conv1_pad")(preprocess(x)[None])
        return [tf.compat.v1.nn.conv2d_backprop_filter(image, tf.shape(kernel), g,
                                                       [1, 2, 2, 1], "VALID") * scale,
                tf.reduce_sum(g, axis=[0, 1, 2]) * scale]

    def _block(self, level, x, crop, inner=False):
        """Block ``level`` on the input window ``x``: its 1x1 over the whole window, its 3x3
        only at the kept outputs ``crop`` (``_around``), the rest on those. ``inner``: a
        training step's, which also returns the 1x1's and the 3x3's outputs (``_conv``)."""
        import tensorflow as tf
        name, s, fold = level.name, level.stride, not inner
        a1 = self._conv(name + "_1", x[None], fold=fold)
        a2 = self._conv(name + "_2", _around(a1[0], crop)[None], fold=fold)
        y = self._conv(name + "_3", a2, relu=False, fold=fold)
        # the shortcut on the kept positions only: input s*i for output i
        short = x[crop[0] * s:(crop[1] - 1) * s + 1, crop[2] * s:(crop[3] - 1) * s + 1][None]
        if level.projection:
            short = self._conv(name + "_0", short, relu=False, fold=fold)
        out = tf.nn.relu(short + y)[0]
        return (out, a1[0], a2[0]) if inner else out

    def _level_fn(self, index, x, crop):
        return self._stem(x, crop) if index == 0 else self._block(LEVELS[index], x, crop)

    def _block_backward_fn(self, index, x, crop, a1, a2, out, upstream):
        """The backward of block ``index`` on one window, layer by layer from what its forward
        kept (``a1``: the 1x1's output after ReLU over the whole window, ``a2``: the 3x3's at the
        kept outputs; ``out``: the block's output), so that nothing is recomputed. Frozen
        BatchNorm is a fixed scale per channel; a 1x1 conv's gradients are two matrix products.
        Returns the gradients of the level's variables (``_level_index`` order) and of ``x``."""
        import tensorflow as tf
        level = LEVELS[index]
        s = level.stride
        layer = lambda suffix: self._layer(level.name + "_" + suffix)  # noqa: E731

        def scale(suffix):
            return _bn_scale(layer(suffix + "_bn"))

        def one_by_one(x_in, g, suffix):
            """A 1x1 conv and its frozen BatchNorm run back from ``g``, the gradient after the
            BatchNorm: its per-channel scale goes on the kernel-sized results, not on ``g``."""
            kernel, sigma = layer(suffix + "_conv").kernel[0, 0], scale(suffix)
            grads[suffix + "_conv"] = (
                (tf.tensordot(x_in, g, axes=[[0, 1], [0, 1]]) * sigma)[None, None],
                tf.reduce_sum(g, axis=[0, 1]) * sigma)
            return tf.tensordot(g, kernel * sigma, axes=[[2], [1]])

        grads = {}
        g = _relu_grad(upstream, out)
        d_a2 = one_by_one(a2, g, "3")
        g2 = _relu_grad(d_a2, a2)[None]
        kernel2, scale2 = layer("2_conv").kernel, scale("2")
        around = _around(a1, crop)[None]
        grads["2_conv"] = (
            tf.compat.v1.nn.conv2d_backprop_filter(around, tf.shape(kernel2), g2,
                                                   [1, 1, 1, 1], "VALID") * scale2,
            tf.reduce_sum(g2, axis=[0, 1, 2]) * scale2)
        d_around = tf.compat.v1.nn.conv2d_backprop_input(tf.shape(around), kernel2 * scale2, g2,
                                                         [1, 1, 1, 1], "VALID")[0]
        d_a1 = _from_around(d_around, crop, tf.shape(a1))
        shape = tf.shape(x)
        dx = _spread(one_by_one(x[::s, ::s], _relu_grad(d_a1, a1), "1"), s, shape[0], shape[1])
        # the shortcut read input s*i for each kept output i
        if level.projection:
            short = x[crop[0] * s:(crop[1] - 1) * s + 1:s, crop[2] * s:(crop[3] - 1) * s + 1:s]
            d_short = one_by_one(short, g, "0")
        else:
            d_short = g
        rows, cols = (crop[1] - 1) * s + 1 - crop[0] * s, (crop[3] - 1) * s + 1 - crop[2] * s
        dx += tf.pad(_spread(d_short, s, rows, cols),
                     [[crop[0] * s, shape[0] - crop[0] * s - rows],
                      [crop[2] * s, shape[1] - crop[2] * s - cols], [0, 0]])
        ordered = []
        for conv in level.layers:
            ordered.extend(grads[conv.name[len(level.name) + 1:]])
        return ordered + [dx]

    def _forward(self, index, x, crop, inner=None):
        """``_level``; with a list ``inner``, a block also appends its inner activations."""
        if inner is None:
            return self._level(index, x, crop)
        made = self._train_functions[index](x, np.asarray(crop, np.int32))
        inner.append(tuple(made[1:]))
        return made[0]

    def _level(self, index, x, crop):
        """Level ``index`` on the input window ``x``, its output positions ``crop`` (window
        grid: rows [crop[0], crop[1]), cols [crop[2], crop[3])) kept. Each level is one
        tf.function, traced once (every window shape shares it): under a tape, TensorFlow then
        keeps only what the level's backward needs, as in a graph."""
        return self._functions[index](x, np.asarray(crop, np.int32))

    # -- the proxy ------------------------------------------------------------------------------
    @staticmethod
    def _proxy_image(canvas, geometry):
        import tensorflow as tf
        image = np.empty((geometry.height, geometry.width, 3), np.uint8)
        image[...] = canvas.fill
        return tf.constant(image)

    def _proxy(self, canvas, geometry, inner=None):
        """The proxy's map at every level; ``inner``: a list per level (training)."""
        x, maps = self._proxy_image(canvas, geometry), []
        for index, level in enumerate(LEVELS):
            rows, cols = -(-int(x.shape[0]) // level.stride), -(-int(x.shape[1]) // level.stride)
            x = self._forward(index, x, (0, rows, 0, cols), None if inner is None else inner[index])
            maps.append(x)
        return maps

    # -- assembling a window's input ----------------------------------------------------------
    def _uniform(self, proxy, rows_map, cols_map, rows, cols):
        import tensorflow as tf
        return tf.gather(tf.gather(proxy, rows_map[rows[0]:rows[1]]),
                         cols_map[cols[0]:cols[1]], axis=1)

    def _compose(self, pieces, uniform, rows, cols):
        """The map over rows x cols: the pieces that cross it, the proxy elsewhere."""
        import tensorflow as tf
        crossing = [p for p in pieces if p.top < rows[1] and p.bottom > rows[0]
                    and p.left < cols[1] and p.right > cols[0]]
        if len(crossing) == 1:
            p = crossing[0]
            if p.top <= rows[0] and p.bottom >= rows[1] and p.left <= cols[0] \
                    and p.right >= cols[1]:
                return p.value[rows[0] - p.top:rows[1] - p.top, cols[0] - p.left:cols[1] - p.left]
        bands = []
        for a, b, segments in _layout(crossing, rows, cols):
            parts = [uniform((a, b), (start, stop)) if p is None else
                     p.value[a - p.top:b - p.top, start - p.left:stop - p.left]
                     for start, stop, p in segments]
            bands.append(parts[0] if len(parts) == 1 else tf.concat(parts, axis=1))
        return bands[0] if len(bands) == 1 else tf.concat(bands, axis=0)

    def _input(self, canvas, index, rows, cols, previous, uniform_of):
        """A window's input: the canvas's pixels for the stem, else the previous level's
        pieces over rows x cols and the proxy's values where no piece was computed."""
        import tensorflow as tf
        if index == 0:
            return tf.constant(canvas.window(rows[0], rows[1], cols[0], cols[1]))
        return self._compose(previous, uniform_of[index - 1], rows, cols)

    @staticmethod
    def _crop(level, w, rows, cols):
        s = level.stride
        return (w.top - rows[0] // s, w.bottom - rows[0] // s,
                w.left - cols[0] // s, w.right - cols[0] // s)

    def _run_level(self, canvas, index, windows, previous, uniform_of, bar, inner=None,
                   inputs=None):
        """The pieces of level ``index``: each window computed from its input. ``inner``: a
        list that receives each block window's inner activations (training); ``inputs``: one
        that receives each window's input."""
        level = LEVELS[index]
        height, width = canvas.shape
        n_r, n_c = _input_length(index, height), _input_length(index, width)
        made = []
        for w in windows:
            rows = input_span(level, w.top, w.bottom, n_r)
            cols = input_span(level, w.left, w.right, n_c)
            x = self._input(canvas, index, rows, cols, previous, uniform_of)
            value = self._forward(index, x, self._crop(level, w, rows, cols), inner)
            made.append(Piece(w.top, w.bottom, w.left, w.right, value))
            if inputs is not None:
                inputs.append(x)
            if bar is not None:
                bar.update(1)
        return made

    def _run_part(self, canvas, part, proxies, rows_map, cols_map, bar):
        """The last level's pieces of one super-window, every level computed in turn."""
        uniform_of = [lambda r, c, p=p: self._uniform(proxies[p], rows_map[p], cols_map[p], r, c)
                      for p in range(len(LEVELS))]
        pieces = None
        for index, windows in enumerate(part):
            pieces = self._run_level(canvas, index, windows, pieces, uniform_of, bar)
        return pieces

    # -- the strategy contract ------------------------------------------------------------------
    def _budget(self, training):
        if self.memory_bytes is not None:
            return self.memory_bytes
        from model.strategy import levels_budget
        return levels_budget()[0]

    def plan(self, image, training=True):
        """(Plan, row maps, column maps) of an image or canvas (see ``plan``)."""
        return plan(as_canvas(image), self._budget(training), training, self.tile)

    def _bar(self, plan_):
        if not self.progress:
            return None
        from tqdm import tqdm
        return tqdm(total=plan_.windows, desc="windows", unit="window", leave=False)

    def _head(self):
        import tensorflow as tf
        kernel, bias = tf.keras.backend.batch_get_value([self.model.head.kernel,
                                                         self.model.head.bias])
        return kernel[:, 0].astype(np.float64), float(bias[0])

    def predict(self, image, cam=False):
        """dict(probability, logit, cam): cam is the pre-sigmoid CAM, (ceil(H/32), ceil(W/32))."""
        canvas = as_canvas(image)
        plan_, rows_map, cols_map = self.plan(canvas, training=False)
        self.last_plan = plan_
        total = np.zeros(FEATURES, np.float64)
        grid_ = np.zeros((output_cells(canvas.shape[0]), output_cells(canvas.shape[1])),
                         np.float32) if cam else None
        proxies = [None] * len(LEVELS)
        if plan_.uses_proxy:
            proxies = self._proxy(canvas, plan_.proxy)
            final = proxies[-1].numpy().astype(np.float64)
            total += np.tensordot(plan_.counts.astype(np.float64), final, axes=[[0, 1], [0, 1]])
            if cam:
                proxy_cam = cam_logits(self.model, proxies[-1]).numpy()
                grid_ = proxy_cam[np.ix_(rows_map[-1], cols_map[-1])].astype(np.float32)
        bar = self._bar(plan_)
        for part in plan_.parts:
            for p in self._run_part(canvas, part, proxies, rows_map, cols_map, bar):
                total += p.value.numpy().astype(np.float64).sum(axis=(0, 1))
                if cam:
                    grid_[p.top:p.bottom, p.left:p.right] = cam_logits(self.model, p.value).numpy()
        if bar is not None:
            bar.close()
        kernel, bias = self._head()
        logit = float(total.dot(kernel) / _cells(canvas) + bias)
        return dict(probability=sigmoid(logit), logit=logit, cam=grid_)

    def _run_back(self, index, x, crop, upstream, out, inner):
        """(gradients of level ``index``'s variables, of its input or None), from ``upstream``,
        the gradient of its kept output ``out``, from its kept ``inner`` activations."""
        crop = np.asarray(crop, np.int32)
        if index == 0:
            return self._back_functions[0](x, crop, inner[0], upstream), None
        grads = self._back_functions[index](x, crop, inner[0], inner[1], out, upstream)
        return grads[:-1], grads[-1].numpy()

    def _scatter(self, dx, rows, cols, pieces, d_pieces, d_proxy, rows_map, cols_map):
        """Adds a window's input gradient ``dx`` (rows x cols of a level's grid) to the pieces'
        gradients where a piece computed it, and to the proxy's, by signature, elsewhere."""
        crossed, area = [], 0
        for k, p in enumerate(pieces):
            a, b = max(rows[0], p.top), min(rows[1], p.bottom)
            c, d = max(cols[0], p.left), min(cols[1], p.right)
            if a < b and c < d:
                d_pieces[k][a - p.top:b - p.top, c - p.left:d - p.left] += \
                    dx[a - rows[0]:b - rows[0], c - cols[0]:d - cols[0]]
                crossed.append(p)
                area += (b - a) * (d - c)
        # pieces never overlap: when they fill the window, no position came from the proxy
        if d_proxy is None or area == (rows[1] - rows[0]) * (cols[1] - cols[0]):
            return
        for a, b, segments in _layout(crossed, rows, cols):
            for start, stop, p in segments:
                if p is not None:
                    continue
                # the maps run start-cut, interior, end-cut: sum runs of equal values, then add
                r, c = rows_map[a:b], cols_map[start:stop]
                r_starts = np.flatnonzero(np.diff(np.concatenate([[-1], r])))
                c_starts = np.flatnonzero(np.diff(np.concatenate([[-1], c])))
                part = dx[a - rows[0]:b - rows[0], start - cols[0]:stop - cols[0]]
                summed = np.add.reduceat(np.add.reduceat(part, r_starts, axis=0), c_starts,
                                         axis=1)
                np.add.at(d_proxy, np.ix_(r[r_starts], c[c_starts]), summed)

    def gradients(self, image, label):
        """(loss, probability, grads): BCE of one slide; grads line up with
        ``model.trainable_variables`` (tf.Tensor float32).

        Forward: every level's windows, keeping each level's output pieces and each window's
        inner activations (and its input, where the budget has room). Backward: from the last
        level to the first, each window run back from its pieces' gradient and what it kept;
        its input gradient goes to the previous level's pieces, or to the proxy where the input
        was uniform. The proxy is run back last, level by level."""
        import tensorflow as tf
        canvas = as_canvas(image)
        label = float(label.numpy() if hasattr(label, "numpy") else label)
        plan_, rows_map, cols_map = self.plan(canvas, training=True)
        self.last_plan = plan_
        height, width = canvas.shape
        kernel_np = self._head()[0].astype(np.float32)
        total = np.zeros(FEATURES, np.float64)
        proxies = d_proxies = [None] * len(LEVELS)
        proxy_inner = [[] for _ in LEVELS]
        if plan_.uses_proxy:
            proxies = self._proxy(canvas, plan_.proxy, proxy_inner)
            total += np.tensordot(plan_.counts.astype(np.float64),
                                  proxies[-1].numpy().astype(np.float64), axes=[[0, 1], [0, 1]])
            d_proxies = [np.zeros(p.shape, np.float32) for p in proxies]
            d_proxies[-1] += plan_.counts.astype(np.float32)[:, :, None] * kernel_np
        accumulated = [np.zeros(v.shape, np.float32) for v in self._backbone_vars]
        uniform_of = [lambda r, c, p=p: self._uniform(proxies[p], rows_map[p], cols_map[p], r, c)
                      for p in range(len(LEVELS))]
        # each window's input kept for its backward, where the budget has room for it
        keep_inputs = self.kept_inputs = bool(plan_.part_bytes(True, inputs=True)
                                              <= self._budget(True))
        bar = self._bar(plan_)
        for part in plan_.parts:
            kept, inner, inputs = [], [], []
            for index, windows in enumerate(part):      # forward, keeping every level's output
                inner.append([])
                inputs.append([] if keep_inputs else None)
                kept.append(self._run_level(canvas, index, windows, kept[-1] if kept else None,
                                            uniform_of, bar, inner[-1], inputs[-1]))
            for p in kept[-1]:
                total += p.value.numpy().astype(np.float64).sum(axis=(0, 1))
            d_pieces = [np.broadcast_to(kernel_np, tuple(p.value.shape)).copy() for p in kept[-1]]
            for index in range(len(LEVELS) - 1, -1, -1):   # backward
                level = LEVELS[index]
                n_r, n_c = _input_length(index, height), _input_length(index, width)
                previous = kept[index - 1] if index else None
                d_previous = [np.zeros(p.value.shape, np.float32) for p in previous or []]
                for k, (w, d_piece) in enumerate(zip(part[index], d_pieces)):
                    rows = input_span(level, w.top, w.bottom, n_r)
                    cols = input_span(level, w.left, w.right, n_c)
                    x = inputs[index][k] if keep_inputs else \
                        self._input(canvas, index, rows, cols, previous, uniform_of)
                    crop = self._crop(level, w, rows, cols)
                    d_vars, dx = self._run_back(index, x, crop, d_piece, kept[index][k].value,
                                                inner[index][k])
                    for i, g in zip(self._level_index[index], d_vars):
                        accumulated[i] += g.numpy()
                    if index:
                        self._scatter(dx, rows, cols, previous, d_previous, d_proxies[index - 1],
                                      rows_map[index - 1], cols_map[index - 1])
                    if bar is not None:
                        bar.update(1)
                d_pieces = d_previous
                kept[index] = inner[index] = inputs[index] = None
        if bar is not None:
            bar.close()
        for index in range(len(LEVELS) - 1, -1, -1) if plan_.uses_proxy else ():  # the proxy
            x = self._proxy_image(canvas, plan_.proxy) if index == 0 else proxies[index - 1]
            crop = (0, int(proxies[index].shape[0]), 0, int(proxies[index].shape[1]))
            d_vars, dx = self._run_back(index, x, crop, d_proxies[index], proxies[index],
                                        proxy_inner[index][0])
            for i, g in zip(self._level_index[index], d_vars):
                accumulated[i] += g.numpy()
            if index:
                d_proxies[index - 1] += dx
        head_kernel, bias = self._head()
        cells = _cells(canvas)
        gap = total / cells
        logit = float(gap.dot(head_kernel) + bias)
        probability = sigmoid(logit)
        dlogit = probability - label
        scale = np.float32(dlogit / cells)
        backbone = [tf.constant(g * scale) for g in accumulated]
        head = {"kernel": tf.constant((dlogit * gap)[:, None], tf.float32),
                "bias": tf.constant([dlogit], tf.float32)}
        grads = [head[k] if isinstance(k, str) else backbone[k] for k in self._order]
        return bce(logit, label), probability, grads


def _layout(pieces, rows, cols):
    """How the pieces (disjoint) that cross rows x cols tile it: bands (a, b, segments), rows
    [a, b) cut where a piece starts or ends, each band's columns cut into segments (start, stop,
    piece), piece None where no piece computed the positions (the proxy's)."""
    cuts = sorted({rows[0], rows[1]} | {v for p in pieces for v in (p.top, p.bottom)
                                        if rows[0] < v < rows[1]})
    bands = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        segments, at = [], cols[0]
        for p in sorted((p for p in pieces if p.top < b and p.bottom > a), key=lambda p: p.left):
            if p.left > at:
                segments.append((at, p.left, None))
            stop = min(cols[1], p.right)
            segments.append((max(at, p.left), stop, p))
            at = stop
        if at < cols[1]:
            segments.append((at, cols[1], None))
        bands.append((a, b, segments))
    return bands


def _bn_scale(bn):
    """dy/dx of a frozen BatchNormalization layer, per channel: gamma / sqrt(variance + eps)."""
    import tensorflow as tf
    return bn.gamma * tf.math.rsqrt(bn.moving_variance + bn.epsilon)


def _relu_grad(upstream, out):
    """The gradient through a ReLU whose output is ``out``: ``upstream`` where ``out`` > 0, in
    one pass (TensorFlow's own ReluGrad)."""
    import tensorflow as tf
    return tf.raw_ops.ReluGrad(gradients=upstream, features=out)


def _spread(d, stride, rows, cols):
    """``d`` (h, w, c) at every ``stride``-th position of a zero (rows, cols, c) map (the input
    gradient of a strided 1x1 conv): rows s*i, cols s*j hold d[i, j]."""
    import tensorflow as tf
    if stride == 1:
        return d
    shape = tf.shape(d)
    grown = tf.pad(d[:, None, :, None], [[0, 0], [0, stride - 1], [0, 0], [0, stride - 1],
                                          [0, 0]])
    grown = tf.reshape(grown, [shape[0] * stride, shape[1] * stride, shape[2]])
    return grown[:rows, :cols]


def _around(a, crop):
    """The positions of ``a`` (h, w, c) that a 3x3 'same' conv reads for its outputs ``crop``
    (rows [crop[0], crop[1]), cols [crop[2], crop[3])): rows crop[0] - 1 to crop[1], columns
    likewise, zero where they fall outside ``a`` (the padding of the whole image: a window's
    input stops short of its kept outputs' reach only at the canvas's edges)."""
    import tensorflow as tf
    padded = tf.pad(a, [[1, 1], [1, 1], [0, 0]])
    return padded[crop[0]:crop[1] + 2, crop[2]:crop[3] + 2]


def _from_around(d_around, crop, shape):
    """The gradient of ``a`` (``shape``) from that of ``_around(a, crop)``: its rows crop[0] - 1
    to crop[1] and columns likewise, less those outside ``a`` (the zero padding)."""
    import tensorflow as tf
    top, left = tf.maximum(crop[0] - 1, 0), tf.maximum(crop[2] - 1, 0)
    bottom, right = tf.minimum(crop[1] + 1, shape[0]), tf.minimum(crop[3] + 1, shape[1])
    inner = d_around[top - (crop[0] - 1):bottom - (crop[0] - 1),
                     left - (crop[2] - 1):right - (crop[2] - 1)]
    return tf.pad(inner, [[top, shape[0] - bottom], [left, shape[1] - right], [0, 0]])


def _cells(canvas):
    return output_cells(canvas.shape[0]) * output_cells(canvas.shape[1])
