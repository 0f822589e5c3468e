"""model/flops.py: the exact floor of a canvas and the MACs that a streaming plan computes.

The floor's counts are checked against a brute force that knows nothing of spans: dense masks
propagated through the network's own graph, position by position (an output position touches
the content when any input position of its clipped kernel window does; a block's output when
its main path or its shortcut does). One small run of the real Keras backbone checks the
layer arithmetic itself: every layer's output size, and the pixels that a few positions'
gradients reach.
"""
import numpy as np
import pytest

from data import augment
from data.canvas import Canvas
from model import flops
from model.resnet import LAYERS

BY_NAME = {layer.name: i for i, layer in enumerate(LAYERS)}


def _layer_touch(source, layer):
    """Brute force: which positions of ``layer`` have a touching input position in their
    clipped kernel window, one position at a time."""
    height, width = source.shape
    out_h = (height + 2 * layer.pad - layer.kernel) // layer.stride + 1
    out_w = (width + 2 * layer.pad - layer.kernel) // layer.stride + 1
    touch = np.zeros((out_h, out_w), bool)
    for i in range(out_h):
        a = max(0, i * layer.stride - layer.pad)
        b = min(height, i * layer.stride - layer.pad + layer.kernel)
        for j in range(out_w):
            c = max(0, j * layer.stride - layer.pad)
            d = min(width, j * layer.stride - layer.pad + layer.kernel)
            touch[i, j] = source[a:b, c:d].any()
    return touch


def _brute_counts(mask):
    """{layer name: touching positions}, walking ResNet-50's graph by its layer names."""
    counts = {}

    def run(name, source):
        touch = _layer_touch(source, LAYERS[BY_NAME[name]])
        counts[name] = int(touch.sum())
        return touch

    x = run("pool1_pool", run("conv1_conv", mask))
    for stage, blocks in ((2, 3), (3, 4), (4, 6), (5, 3)):
        for block in range(1, blocks + 1):
            name = "conv{}_block{}_".format(stage, block)
            main = run(name + "3_conv", run(name + "2_conv", run(name + "1_conv", x)))
            shortcut = run(name + "0_conv", x) if block == 1 else x
            x = main | shortcut
    return counts


def _canvas(mask, shape, offset, fill=(255, 255, 255)):
    """A canvas whose content box at ``offset`` is non-fill exactly where ``mask`` is True."""
    rng = np.random.RandomState(0)
    content = rng.randint(0, 200, mask.shape + (3,)).astype(np.uint8)
    content[~mask] = fill
    return Canvas(content, offset, fill, shape)


def _dense_mask(canvas):
    dense = canvas.dense()
    return np.any(dense != canvas.fill, axis=2)


@pytest.mark.parametrize("shape,offset,box,density", [
    ((64, 90), (10, 7), (20, 30), 0.05),       # even sides: a strided 1x1 drops the last row
    ((67, 61), (0, 0), (67, 61), 0.01),        # sparse content over the whole canvas
    ((75, 97), (60, 80), (15, 17), 0.3),       # content at the far corner
    ((97, 33), (1, 2), (40, 30), 0.0005),      # almost no content
])
def test_floor_counts_match_a_brute_force(shape, offset, box, density):
    mask = np.random.RandomState(1).rand(*box) < density
    mask[box[0] // 2, box[1] // 2] = True
    canvas = _canvas(mask, shape, offset)
    counts = flops.touching_positions(canvas)
    brute = _brute_counts(_dense_mask(canvas))
    assert {layer.name: n for layer, n in zip(LAYERS, counts)} == brute
    assert flops.floor_macs(canvas) == sum(LAYERS[BY_NAME[k]].macs * n for k, n in brute.items())


def test_floor_of_a_canvas_full_of_content_is_the_whole_network():
    for shape in ((64, 90), (301, 257)):
        content = np.full(shape + (3,), 7, np.uint8)
        canvas = Canvas(content, (0, 0), (255, 255, 255), shape)
        assert flops.floor_macs(canvas) == flops.network_macs(*shape)


def test_floor_of_an_empty_canvas_is_zero():
    empty = Canvas(np.zeros((0, 0, 3), np.uint8), (0, 0), (255, 255, 255), (21500, 21500))
    assert flops.floor_macs(empty) == 0
    only_fill = Canvas(np.full((40, 50, 3), 255, np.uint8), (100, 100), (255, 255, 255),
                       (400, 400))
    assert flops.floor_macs(only_fill) == 0


def test_network_macs_is_resnet50s():
    # 3.86 G multiply-accumulates at 224 x 224 (ResNet-50's convolutions, without the classifier)
    assert flops.network_macs(224, 224) == 3855925248
    assert flops.output_sizes(224)[-1] == 7 and flops.output_sizes(21500)[-1] == 672


def test_spans_have_the_tables_fields_and_strides():
    for layer, (first, last) in zip(LAYERS, flops.axis_spans(2000)):
        middle = first.size // 2
        assert last[middle] - first[middle] + 1 == layer.field, layer.name
        assert first[middle + 1] - first[middle] == layer.jump, layer.name
        assert first[0] == 0 and last[-1] <= 1999


def _full_window_plan(height, width):
    from model.streaming import Plan, Span, output_cells
    return Plan(height, width, [(Span(0, output_cells(height), 0, height),
                                 Span(0, output_cells(width), 0, width))], None)


def test_a_single_full_canvas_window_is_the_whole_network():
    from model import streaming
    assert flops.planned_macs(_full_window_plan(1000, 777)) == flops.network_macs(1000, 777)
    content = np.full((1000, 777, 3), 9, np.uint8)
    plan = streaming.plan(Canvas(content, (0, 0), (255, 255, 255), (1000, 777)), tile=1024)
    assert len(plan.windows) == 1 and plan.proxy is None
    assert flops.planned_macs(plan) == flops.network_macs(1000, 777)


@pytest.mark.parametrize("size,content,tile,rotate", [
    (3000, (400, 300), 512, None),
    (3000, (1500, 2200), 256, 45.0),
    (3000, (2900, 2900), 1024, 0.0),
])
def test_a_plan_never_computes_less_than_the_floor(size, content, tile, rotate):
    from model import streaming
    from model.selfcheck import synthetic_tissue
    tissue = synthetic_tissue(*content, seed=3)
    params = augment.sample_params(np.random.default_rng(5), translate_px=50)
    if rotate is not None:
        params = params._replace(rotate_deg=rotate)
    canvas = augment.apply_canvas(tissue, params, size)
    plan = streaming.plan(canvas, tile)
    floor = flops.floor_macs(canvas)
    assert 0 < floor <= flops.planned_macs(plan)
    assert floor < flops.network_macs(size, size)


def test_the_layer_arithmetic_is_the_keras_backbones():
    """One forward of the real ResNet-50 on 64 x 90 px: every layer's output size, and the
    pixels that the gradient of a few positions (corners and middle) reaches are their spans."""
    import tensorflow as tf
    tf.compat.v1.enable_v2_behavior()
    tf.compat.v1.set_random_seed(0)
    base = tf.keras.applications.ResNet50(include_top=False, weights=None,
                                          input_shape=(None, None, 3))
    probe = tf.keras.Model(base.input, [base.get_layer(l.name).output for l in LAYERS])
    height, width = 64, 90
    image = tf.constant(np.random.RandomState(0).uniform(-100, 100, (1, height, width, 3)),
                        tf.float32)
    rows, cols = flops.axis_spans(height), flops.axis_spans(width)
    names = ("conv1_conv", "pool1_pool", "conv2_block3_2_conv", "conv3_block1_0_conv",
             "conv3_block2_2_conv", "conv4_block1_1_conv")
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(image)
        outputs = probe(image, training=False)
        probes = {}
        for name in names:           # corners and a middle position of each layer
            out = outputs[BY_NAME[name]]
            out_h, out_w = out.shape[1:3]
            for i, j in ((0, 0), (out_h - 1, out_w - 1), (out_h // 2, out_w // 3)):
                probes[name, i, j] = tf.reduce_sum(out[0, i, j])
    assert [tuple(o.shape[1:3]) for o in outputs] == \
        list(zip(flops.output_sizes(height), flops.output_sizes(width)))
    for (name, i, j), value in probes.items():
        k = BY_NAME[name]
        reached = np.any(tape.gradient(value, image)[0].numpy() != 0, axis=2)
        ys, xs = np.flatnonzero(reached.any(axis=1)), np.flatnonzero(reached.any(axis=0))
        assert (ys[0], ys[-1], xs[0], xs[-1]) == (rows[k][0][i], rows[k][1][i],
                                                  cols[k][0][j], cols[k][1][j]), (name, i, j)
    del tape
