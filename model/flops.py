"""Forward multiply-accumulates (MACs) of ResNet-50 on a canvas: the exact floor, and what a
streaming plan computes.

Both figures count FORWARD MACs of the backbone's convolutions (``model.resnet.LAYERS``; the max
pooling costs none, the head is negligible). The backward of a computed position costs about
twice its forward, in either figure, so their ratio holds for a training step too.

The floor (``floor_macs``). The backbone runs on a ``data.canvas.Canvas``: one fill colour
outside its content, so an output position of a layer can differ from the value that the fill
alone gives only if its receptive field touches a non-fill pixel. The least work that an exact
step can do is therefore, for each convolution, its MACs per output position times the number of
its output positions whose receptive field -- clipped to the canvas -- holds a non-fill pixel.
(A position that sees only the fill takes one of the few values that the edges' zero padding
allows, which a small proxy image computes once: the floor leaves them out.)

Receptive fields are exact arithmetic per axis (``axis_spans``). Every layer is a 'valid'
convolution or pooling on its source's output with symmetric zero padding (Keras' ZeroPadding2D
before conv1 and pool1, 'same' on the 3x3 stride-1 convolutions, none on the 1x1 ones), so
position i of a layer reads source positions [i s - p, i s - p + k - 1], clipped to the source
(the padding holds no pixel), and its pixel span runs from the first pixel of the first to the
last pixel of the last. A bottleneck block's output sums its main path and its shortcut; the
shortcut's span lies inside the main path's, so the block output spans what its last
convolution spans.

Counting is done on the content box only, never on the whole canvas: a summed-area table of the
box's non-fill mask answers "does this span hold a non-fill pixel" for every position at once,
in chunks of rows of positions (layers with equal spans are counted once). When every pixel of
the box differs from the fill, the count is the product of the positions per axis whose span
meets the box.

The plan (``planned_macs``). A ``model.streaming.Plan`` computes the whole network on each of
its windows, and once on its proxy image; each layer computes every output position of its
input there (``output_sizes``: the conv output-size arithmetic on the window's height and
width). A training step runs each window once, its forward and backward under one gradient
tape: no window is recomputed, so the planned figure counts each window's forward once.
"""
import functools

import numpy as np

from model.resnet import LAYERS

_IMAGE = -1                   # source index of the first layer: the input pixels
_CHUNK = 1 << 22              # table entries per chunk of the look-ups (~4 M, 16 MB)
_MASK_STRIP = 1 << 22         # content px per strip when the mask is built (~12 MB of RGB)


def _source_table():
    """For each layer of ``LAYERS``, the index of the layer whose output it reads (-1: image).

    conv1 reads the image and pool1 reads conv1; in a bottleneck block the 1x1 conv and the
    projection shortcut read the block's input, the 3x3 conv reads the 1x1 and the last 1x1
    reads the 3x3; a block's output (its input to the next block) spans what its last conv
    spans (see the module docstring)."""
    index = {layer.name: i for i, layer in enumerate(LAYERS)}
    sources, block_input = [], _IMAGE
    for i, layer in enumerate(LAYERS):
        prefix, _, suffix = layer.name.rpartition("_")
        if layer.name == "conv1_conv":
            sources.append(_IMAGE)
        elif layer.name == "pool1_pool":
            sources.append(index["conv1_conv"])
        elif prefix.endswith(("_1", "_0")):
            sources.append(block_input)
        elif prefix.endswith("_2"):
            sources.append(index[prefix[:-1] + "1_" + suffix])
        elif prefix.endswith("_3"):
            sources.append(index[prefix[:-1] + "2_" + suffix])
        else:
            raise AssertionError("unknown layer {}".format(layer.name))
        if layer.name == "pool1_pool" or prefix.endswith("_3"):
            block_input = i
    return tuple(sources)


SOURCES = _source_table()


def _output_size(length, layer):
    """Output positions of ``layer`` on ``length`` input positions (0 when too short)."""
    return max(0, (length + 2 * layer.pad - layer.kernel) // layer.stride + 1)


@functools.lru_cache(maxsize=4096)
def output_sizes(length):
    """Output positions of each layer of ``LAYERS`` along an axis of ``length`` px."""
    sizes = []
    for layer, source in zip(LAYERS, SOURCES):
        sizes.append(_output_size(length if source == _IMAGE else sizes[source], layer))
    return tuple(sizes)


def axis_spans(length):
    """For each layer of ``LAYERS``, (first, last): int64 arrays of the first and last canvas
    pixel (inclusive) of the receptive field of each of its output positions along an axis of
    ``length`` px, clipped to the axis. Layers with equal spans share the same arrays (a 1x1
    stride-1 layer its source's; a block's strided 1x1 and its shortcut), so that counts can
    be cached by them."""
    pixels = np.arange(int(length), dtype=np.int64)
    spans, made = [], {}
    for layer, source in zip(LAYERS, SOURCES):
        first, last = (pixels, pixels) if source == _IMAGE else spans[source]
        if layer.kernel == 1 and layer.stride == 1 and layer.pad == 0:
            spans.append((first, last))
            continue
        key = (source, layer.kernel, layer.stride, layer.pad)   # a block's 1x1 and shortcut
        if key not in made:
            start = np.arange(_output_size(first.size, layer), dtype=np.int64) * layer.stride \
                - layer.pad
            low = np.clip(start, 0, first.size - 1)
            high = np.clip(start + layer.kernel - 1, 0, first.size - 1)
            made[key] = (first[low], last[high])
        spans.append(made[key])
    return spans


@functools.lru_cache(maxsize=4096)
def network_macs(height, width):
    """Forward MACs of the backbone on a ``height`` x ``width`` px image: every output position
    of every convolution."""
    return sum(layer.macs * rows * cols for layer, rows, cols
               in zip(LAYERS, output_sizes(int(height)), output_sizes(int(width))))


def planned_macs(plan):
    """Forward MACs that a ``model.streaming.Plan`` computes: the whole network on each of its
    windows and on its proxy image (when the proxy stands for any cell), each once."""
    total = sum(network_macs(r.window_stop - r.window_start, c.window_stop - c.window_start)
                for r, c in plan.windows)
    proxy = plan.proxy
    if proxy is not None and proxy.counts.any():
        total += network_macs(proxy.height, proxy.width)
    return int(total)


# ------------------------------------------------------------------------------------ the floor

def mask_strips(canvas):
    """(row offset, bool mask of rows) of the content box, a strip of rows at a time: True where
    a pixel differs from the canvas's fill."""
    content, fill = canvas.content, canvas.fill
    rows = max(1, _MASK_STRIP // max(1, content.shape[1]))
    for r0 in range(0, content.shape[0], rows):
        strip = content[r0:r0 + rows]
        # channel by channel: several times faster than np.any over a (rows, w, 3) comparison
        mask = strip[..., 0] != fill[0]
        if content.strides[2] or not fill[0] == fill[1] == fill[2]:    # not one channel seen 3x
            mask |= strip[..., 1] != fill[1]
            mask |= strip[..., 2] != fill[2]
        yield r0, mask


def summed_area(canvas):
    """int32 (h + 1, w + 1) summed-area table of the content box's non-fill mask: entry [y, x]
    counts the non-fill pixels of box rows < y and columns < x."""
    height, width = canvas.content.shape[:2]
    table = np.zeros((height + 1, width + 1), np.int32)
    for r0, strip in mask_strips(canvas):
        part = table[1 + r0:1 + r0 + strip.shape[0], 1:]
        part[...] = strip
        np.cumsum(part, axis=1, out=part)      # int32 in place: no cast, no second table
    for row in range(1, height + 1):
        np.add(table[row - 1], table[row], out=table[row])
    return table


def _box_bounds(spans, start, length):
    """(kept, begin, end): which positions' spans meet the box axis [start, start + length),
    and their spans as half-open box coordinates, clipped to the box."""
    first, last = spans
    begin = np.clip(first - start, 0, length)
    end = np.clip(last + 1 - start, 0, length)
    kept = end > begin
    return kept, begin[kept], end[kept]


def _touching(rows, cols, table):
    """Positions (row span x column span, box coordinates) whose span holds a non-fill pixel,
    from the summed-area ``table``, a chunk of rows of positions at a time: the chunk's row
    bands first (whole rows of the table), then each band's column spans."""
    (_, top, bottom), (_, left, right) = rows, cols
    if top.size == 0 or left.size == 0:
        return 0
    count = 0
    step = max(1, _CHUNK // table.shape[1])
    for r0 in range(0, top.size, step):
        band = table[bottom[r0:r0 + step]] - table[top[r0:r0 + step]]
        count += int(np.count_nonzero(band[:, right] - band[:, left]))
    return count


def touching_positions(canvas):
    """For each layer of ``LAYERS``, the number of its output positions on ``canvas`` (a
    ``data.canvas.Canvas``) whose receptive field holds a non-fill pixel."""
    if canvas.empty:
        return [0] * len(LAYERS)
    top, _, left, _ = canvas.box
    height, width = canvas.content.shape[:2]
    table = summed_area(canvas)
    if table[-1, -1] == 0:
        return [0] * len(LAYERS)
    if table[-1, -1] == height * width:     # no fill in the box: the axes are independent
        table = None
    rows_of = axis_spans(canvas.shape[0])
    cols_of = axis_spans(canvas.shape[1])
    counts, cache = [], {}
    for rows, cols in zip(rows_of, cols_of):
        key = (id(rows[0]), id(rows[1]), id(cols[0]), id(cols[1]))
        if key not in cache:
            r = _box_bounds(rows, top, height)
            c = _box_bounds(cols, left, width)
            cache[key] = (int(r[0].sum()) * int(c[0].sum()) if table is None
                          else _touching(r, c, table))
        counts.append(cache[key])
    return counts


def floor_macs(canvas):
    """The exact floor: forward MACs of every convolution's output positions whose receptive
    field touches a non-fill pixel of ``canvas`` (clipped to the canvas)."""
    return int(sum(layer.macs * count
                   for layer, count in zip(LAYERS, touching_positions(canvas))))
