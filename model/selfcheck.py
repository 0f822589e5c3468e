"""The numerical self-check: the streaming strategy against the whole image, judged against a
float64 reference (``python -m reproduce selfcheck`` runs ``check``).

Computes, on one image small enough to run whole, the logit, the loss, the CAM and the gradient
of the BCE loss for every trainable variable three times:

- ``streaming``, float32, by one of two engines (``check(engine=...)``): ``"levels"`` (the
  default, the design training uses): ``model.levels.LevelStreaming``, every level computed only
  where it differs from the fill, in one super-window or, with ``tile``, several; ``"windows"``:
  the older one-level design, ``model.streaming.Streaming`` (tiles with a margin; only it takes
  the deliberately inexact ``margin``);
- ``whole_float32``: the whole image through the same Keras model with a GradientTape,
  independent of model/direct.py (``whole_image``);
- the reference: the whole image through a float64 copy of the network (``Float64Copy``: same
  weights, frozen BatchNorm on its inference statistics, every op in float64, on the CPU). Its
  input is the same float32 preprocessed image the float32 model sees, then cast to float64, so
  the only difference is the arithmetic. ``whole_image_float64`` backpropagates it one residual
  block at a time, rerunning each block from its stored input, which keeps a 1500 x 1900 image
  within a few GB; every block still sees the whole image.

For a tensor a against b the relative error is max|a - b| / max(max|b|, 1e-30): one scale per
tensor, so tiny entries of a tensor do not inflate it (``relative_error``).

Why float64. A float32 whole image is not exact either. Rounding in its forward pass, carried
through 50 layers and across ReLU inputs near 0, moves some gradients by up to ~1e-4 of their
largest entry at 1500 x 1900 px (``conv2_block2_3_conv/bias``: 1.3e-4 against float64, whatever
the tiling). Comparing streaming with the float32 whole image cannot tell which of the two is
off. Against float64 both are measured, and the check passes when, for every tensor (logit,
loss, CAM and each gradient),

    error(streaming) <= FACTOR * error(whole_float32) + FLOOR         (``judge``)

``FACTOR`` = 4: streaming computes the same float32 values in each window and sums them in
another order (within a window, then over windows), so its error is of the same size as the
whole image's, and either may be a few times the other on a given tensor by chance (measured:
streaming is at most ~1.1x float32's own on its worst tensor). A streaming mistake (a margin below
the receptive field, a mis-weighted proxy cell) gives errors of 1e-3 or more, thousands of times
float32's. ``FLOOR`` = 1e-6 (about 8 float32 units in the last place of the tensor's largest
entry) covers tensors where float32's own error is nearly 0, e.g. a logit or a CAM that a single
window computes as the whole image does. The result also keeps streaming against the float32
whole image (the top-level ``*_rel_error`` figures, as the float32 equality tests in
tests/test_streaming.py measure them).

Weights. Random initialisation leaves every BatchNorm at mean 0, variance 1, gamma 1, beta 0 --
an identity that hides mistakes in how the frozen statistics are used -- so ``perturb_batchnorm``
draws random frozen statistics and affine parameters (seeded). The dense layer is seeded random
with a non-zero bias (``set_random_head``), or trained: the whole model first takes a few Adam
steps on whole synthetic images (``train_whole``). The float64 copy takes the weights after both.

Content. ``content_canvas`` is an H x W canvas of uniform fill (``data.canvas.Canvas``) with h x w
of synthetic tissue inside it, placed off centre and passed through the augmentation's flips,
rotation and colour steps (``data.augment.apply_canvas``, seeded), so that the streaming side
skips what sees only the fill (model/streaming.py, "Uniform cells"; model/levels.py, "Active
positions") and the comparison covers the proxy, its border rings and the windows around the
tissue. For levels the result also reports the planned forward MACs against the exact floor
(``model.flops.floor_macs``) of the canvas the engine was given.
"""
import collections

import numpy as np
import tensorflow as tf

from data import augment
from data.canvas import as_canvas
from model.flops import floor_macs
from model.levels import LevelStreaming
from model.resnet import FEATURES, MARGIN, build_model, cam_logits, freeze_batchnorm, preprocess
from model.streaming import Streaming

FACTOR = 4.0
FLOOR = 1e-6
DEFAULT_TILE = 96       # the windows engine's tile when none is given
ENGINES = ("levels", "windows")
OUTPUTS = ("logit", "loss", "cam")


def criterion():
    """The rule the check applies, as its result reports it."""
    return dict(reference="float64 whole image", factor=FACTOR, floor=FLOOR,
                rule="per tensor: streaming error <= factor * whole_float32 error + floor")


def synthetic_tissue(height, width, seed):
    """A structured RGB uint8 image: white background, pink tissue blobs, dark nuclei-like dots,
    one dense purple focus. Smooth random fields thresholded, all from ``seed``."""
    rng = np.random.RandomState(seed)

    def smooth_field(cell):
        coarse = rng.standard_normal((height // cell + 2, width // cell + 2))
        rows = np.linspace(0, coarse.shape[0] - 1.001, height)
        cols = np.linspace(0, coarse.shape[1] - 1.001, width)
        r0, c0 = rows.astype(int), cols.astype(int)
        fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
        a = coarse[r0][:, c0]
        b = coarse[r0][:, c0 + 1]
        c = coarse[r0 + 1][:, c0]
        d = coarse[r0 + 1][:, c0 + 1]
        return (a * (1 - fr) * (1 - fc) + b * (1 - fr) * fc + c * fr * (1 - fc) + d * fr * fc)

    image = np.full((height, width, 3), 245.0)
    tissue = smooth_field(max(8, min(height, width) // 6)) > 0.0
    image[tissue] = (225, 160, 200)
    nuclei = (smooth_field(6) > 1.2) & tissue
    image[nuclei] = (90, 50, 140)
    focus = smooth_field(max(8, min(height, width) // 10)) > 1.3
    image[focus] = (120, 60, 150)
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def perturb_batchnorm(model, seed):
    """Seeded random frozen BN statistics/affine: mean ~ N(0, 0.1), var ~ U(0.5, 2),
    gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1). Still untrainable and used with training=False."""
    rng = np.random.RandomState(seed + 1)
    for layer in _all_layers(model):
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype(np.float32),
                               rng.normal(0, 0.1, beta.shape).astype(np.float32),
                               rng.normal(0, 0.1, mean.shape).astype(np.float32),
                               rng.uniform(0.5, 2.0, var.shape).astype(np.float32)])


def _all_layers(model):
    for layer in model.layers:
        if isinstance(layer, tf.keras.Model):
            for inner in _all_layers(layer):
                yield inner
        else:
            yield layer


def whole_image(model, image, label):
    """Reference on the whole image: dict(logit, cam, loss, grads) with grads for
    ``model.trainable_variables`` (BCE on the logit, GradientTape), in the model's own float
    type: float32 for ``build_model``'s, float64 for a ``Float64Copy``."""
    x = tf.constant(image[None], tf.float32)
    with tf.GradientTape() as tape:
        features = model.backbone(x, training=False)
        logit = model.head(tf.reduce_mean(features, axis=[1, 2]))[0, 0]
        loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.constant(label, logit.dtype),
                                                       logits=logit)
    grads = tape.gradient(loss, model.trainable_variables)
    return dict(logit=float(logit.numpy()), loss=float(loss.numpy()),
                cam=cam_logits(model, features[0]).numpy(), grads=[g.numpy() for g in grads])


class Float64Copy(object):
    """The network of a ``build_model`` model in float64: the same layers and weights, every
    BatchNorm frozen and unfused (TF's fused kernel has no float64), every op in float64.

    ``input(image)`` preprocesses as the float32 model does (``model.resnet.preprocess``,
    float32) and casts the result to float64, so both see the same input values; ``backbone``
    runs the whole network on it at once. ``segments``: the network cut at the stem's and every
    residual block's output (``Segment``), which ``whole_image_float64`` runs one at a time.
    ``trainable_variables`` are in the float32 model's order; ``head`` is Dense(1) in float64,
    so ``whole_image`` and ``model.resnet.cam_logits`` take the copy as they take the model."""

    def __init__(self, model):
        self.base = _float64_network(_inner_resnet(model.backbone))
        self.segments = _segments(self.base)
        self.head = tf.keras.layers.Dense(1, dtype="float64", name="head")
        self.head.build((None, FEATURES))
        self.head.set_weights([w.astype(np.float64) for w in model.head.get_weights()])
        _check_same_variables(model.trainable_variables, self.trainable_variables)

    @property
    def trainable_variables(self):
        return self.base.trainable_variables + self.head.trainable_variables

    def input(self, image):
        return tf.cast(preprocess(image), tf.float64)

    def backbone(self, image, training=False):
        return self.base(self.input(image), training=training)


Segment = collections.namedtuple("Segment", "entry steps variables")
Segment.__doc__ = """Consecutive layers of a functional network that read only each other and
the output of the layer named ``entry``: ``steps`` (layer, names of its inputs) in order, the
last one the segment's output; ``variables``: their trainable variables."""


def _segments(network):
    """``network`` (keras_applications' ResNet-50) cut after 'pool1_pool' and after every
    block's output ('..._out'): the cuts that leave each segment one input."""
    config = network.get_config()
    entry, steps, segments = config["layers"][0]["name"], [], []
    for spec in config["layers"][1:]:
        steps.append((network.get_layer(spec["name"]),
                      [inbound[0] for inbound in spec["inbound_nodes"][0]]))
        if spec["name"] == "pool1_pool" or spec["name"].endswith("_out"):
            segments.append(_segment(entry, steps))
            entry, steps = spec["name"], []
    if steps:
        raise ValueError("layers after the last block output: {}".format(steps[0][0].name))
    return segments


def _segment(entry, steps):
    """A ``Segment``, checked to read nothing from outside itself but ``entry``."""
    known = {entry}
    for layer, inputs in steps:
        if not set(inputs) <= known:
            raise ValueError("{} reads from outside its segment".format(layer.name))
        known.add(layer.name)
    variables = [v for layer, _ in steps for v in layer.trainable_weights]
    return Segment(entry, tuple(steps), variables)


def run_segment(segment, x):
    """The segment's output for the input ``x`` (BatchNorm on its frozen statistics)."""
    values = {segment.entry: x}
    for layer, inputs in segment.steps:
        given = [values[name] for name in inputs]
        kwargs = dict(training=False) if isinstance(
            layer, tf.keras.layers.BatchNormalization) else {}
        values[layer.name] = layer(given[0] if len(given) == 1 else given, **kwargs)
    return values[segment.steps[-1][0].name]


def whole_image_float64(copy, image, label):
    """``whole_image`` for a ``Float64Copy``, the same figures in float64, with the memory of
    the segments' outputs plus one segment's backward (the whole-image tape of a 1500 x 1900
    image in float64 is over 20 GB): the forward keeps each segment's input only, and the
    backward reruns one segment at a time from it, last first, with the gradient of its output
    from the segment after it. Still the whole image at once: no tiles, no margins."""
    inputs = [copy.input(tf.constant(image[None], tf.float32))]
    for segment in copy.segments:
        inputs.append(run_segment(segment, inputs[-1]))
    features = inputs.pop()
    with tf.GradientTape() as tape:
        tape.watch(features)
        logit = copy.head(tf.reduce_mean(features, axis=[1, 2]))[0, 0]
        loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.constant(label, tf.float64),
                                                       logits=logit)
    upstream, *head_grads = tape.gradient(loss, [features] + copy.head.trainable_variables)
    grads = dict(zip(map(id, copy.head.trainable_variables), head_grads))
    for segment in reversed(copy.segments):
        upstream = _segment_backward(segment, inputs.pop(), upstream, grads)
    return dict(logit=float(logit.numpy()), loss=float(loss.numpy()),
                cam=cam_logits(copy, features[0]).numpy(),
                grads=[grads[id(v)].numpy() for v in copy.trainable_variables])


def _segment_backward(segment, x, upstream, grads):
    """Reruns ``segment`` on ``x`` and backpropagates ``upstream`` (the gradient of its
    output): stores its variables' gradients in ``grads`` (by id) and returns x's gradient."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        output = run_segment(segment, x)
    got = tape.gradient(output, [x] + segment.variables, output_gradients=upstream)
    grads.update(zip(map(id, segment.variables), got[1:]))
    return got[0]


def _inner_resnet(backbone):
    """The keras_applications ResNet-50 inside ``build_backbone``'s model (after preprocessing)."""
    inner = [layer for layer in backbone.layers if isinstance(layer, tf.keras.Model)]
    if len(inner) != 1:
        raise ValueError("expected one nested ResNet-50 in the backbone, found {}"
                         .format(len(inner)))
    return inner[0]


def _float64_network(network):
    """``network`` rebuilt from its config with every layer in float64 and BatchNorm unfused,
    its weights copied in as float64 and its BatchNorm frozen."""
    config = network.get_config()
    for layer in config["layers"]:
        layer["config"]["dtype"] = "float64"
        if layer["class_name"] == "BatchNormalization":
            layer["config"]["fused"] = False
    copy = tf.keras.Model.from_config(config)
    copy.set_weights([w.astype(np.float64) for w in network.get_weights()])
    return freeze_batchnorm(copy)


def _check_same_variables(ours, theirs):
    """The float64 copy must list the same trainable variables, in the same order and shapes."""
    shapes = [tuple(v.shape.as_list()) for v in ours]
    if shapes != [tuple(v.shape.as_list()) for v in theirs]:
        raise ValueError("the float64 copy's trainable variables differ from the model's")


def relative_error(a, b):
    """max|a - b| / max(max|b|, 1e-30), in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def set_random_head(model, image, seed):
    """A seeded dense layer of realistic magnitude: kernel c (n + 1), n ~ N(0, 1) (mixed signs,
    mostly positive, so GAP . w does not cancel to ~0 and hide errors), with c chosen so that
    GAP . w = 2 on ``image``; bias -1 (logit ~ 1, CAM cells of both signs)."""
    gap = tf.reduce_mean(model.backbone(tf.constant(image[None], tf.float32), training=False),
                         axis=[1, 2])[0].numpy().astype(np.float64)
    direction = np.random.RandomState(seed + 2).standard_normal(gap.shape) + 1.0
    scale = 2.0 / max(abs(gap.dot(direction)), 1e-12)
    model.head.set_weights([(scale * direction)[:, None].astype(np.float32),
                            np.array([-1.0], np.float32)])


def train_whole(model, steps, height, width, seed):
    """``steps`` Adam steps (lr 1e-3, so a few steps move the weights) on whole synthetic images
    with alternating labels: gives the comparison trained dense weights."""
    optimizer = tf.keras.optimizers.Adam(1e-3)
    for step in range(steps):
        image = synthetic_tissue(height, width, seed + 100 + step)
        grads = whole_image(model, image, float(step % 2))["grads"]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))


def content_canvas(height, width, content, seed):
    """An H x W ``Canvas``: ``content`` (h, w) px of synthetic tissue on a square canvas of
    max(H, W), translated off centre by a fifth of it, with seeded flips, rotation and colour
    steps of the paper's ranges (data.augment), centre-cropped to H x W."""
    side = max(height, width)
    tissue = synthetic_tissue(content[0], content[1], seed)
    params = augment.sample_params(np.random.default_rng([seed, 1]))._replace(
        translate_x_px=side // 5, translate_y_px=-(side // 6))
    placed = augment.apply_canvas(tissue, params, side, fail_if_larger=False)
    return placed.crop((side - height) // 2, (side - width) // 2, height, width)


def _set_head(model, image, checkpoint, head, train_steps, seed):
    """The dense layer both computations use: a checkpoint's, or seeded random; then
    ``train_steps`` Adam steps on whole images for a trained head."""
    if checkpoint:
        model.load_weights(checkpoint)
    else:
        set_random_head(model, image, seed)
    if head == "trained":
        train_whole(model, train_steps, image.shape[0], image.shape[1], seed)


def streaming_results(streaming, given, label):
    """Streaming's logit, loss, CAM and gradients on ``given``, as ``whole_image`` returns them."""
    predicted = streaming.predict(given, cam=True)
    loss, _, grads = streaming.gradients(given, label)
    return dict(logit=predicted["logit"], loss=loss, cam=predicted["cam"],
                grads=[g.numpy() for g in grads])


def named_tensors(results, names):
    """One computation's results by name: 'logit', 'loss', 'cam', then each gradient under its
    variable's name (``names``, in ``trainable_variables`` order)."""
    tensors = collections.OrderedDict((key, np.asarray(results[key])) for key in OUTPUTS)
    tensors.update(zip(names, results["grads"]))
    return tensors


def relative_errors(tensors, reference):
    """``relative_error`` of every tensor of ``reference`` (name -> array), by name."""
    return collections.OrderedDict((name, relative_error(tensors[name], reference[name]))
                                   for name in reference)


def summary(errors):
    """The figures of one comparison: the logit, loss and CAM errors, and the worst gradient
    error with its tensor's name."""
    gradients = {name: e for name, e in errors.items() if name not in OUTPUTS}
    worst = max(gradients, key=gradients.get)
    return dict(logit_rel_error=errors["logit"], loss_rel_error=errors["loss"],
                cam_rel_error=errors["cam"], gradient_max_rel_error=gradients[worst],
                gradient_worst_tensor=worst)


def judge(streaming_errors, float32_errors, factor=FACTOR, floor=FLOOR):
    """Streaming against float64 judged by float32's own error against float64, per tensor.

    A tensor is within when its streaming error <= factor * its whole_float32 error + floor;
    the check passes when every tensor is. Returns dict(passed, and the limiting tensor: the
    one with the largest ratio of streaming error to that allowance, its two errors, the
    allowance and the ratio; passed means ratio <= 1)."""
    allowed = {name: factor * float32_errors[name] + floor for name in streaming_errors}
    ratios = {name: streaming_errors[name] / allowed[name] for name in streaming_errors}
    limiting = max(ratios, key=ratios.get)
    return dict(passed=bool(ratios[limiting] <= 1.0), tensor=limiting,
                streaming=streaming_errors[limiting], whole_float32=float32_errors[limiting],
                allowed=allowed[limiting], ratio=ratios[limiting])


def _compare(model, streaming, image, given, label):
    """Runs the three computations (streaming on ``given``, the whole ``image`` in float32 and
    in float64); returns (streaming against float32 as name -> error, the float64 block of the
    result, the float32 logit, the CAM's largest absolute difference to float32)."""
    names = [v.name for v in model.trainable_variables]
    ours = named_tensors(streaming_results(streaming, given, label), names)
    float32 = named_tensors(whole_image(model, image, label), names)
    float64 = named_tensors(whole_image_float64(Float64Copy(model), image, label), names)
    against_float64 = (relative_errors(ours, float64), relative_errors(float32, float64))
    verdict = judge(*against_float64)
    block = dict(streaming=summary(against_float64[0]), whole_float32=summary(against_float64[1]),
                 logit=float(float64["logit"]), passed=verdict.pop("passed"), limiting=verdict)
    return (relative_errors(ours, float32), block, float(float32["logit"]),
            float(np.max(np.abs(ours["cam"] - float32["cam"]))))


def check(height, width, tile=None, weights="none", checkpoint=None, perturb_bn=False,
          head="random", train_steps=3, label=1.0, seed=0, margin=None, content=None,
          engine="levels"):
    """Runs the three computations; returns the JSON-able result dict (``passed`` among its keys:
    the float64 judgment, ``judge``).

    ``engine``: ``"levels"`` (``tile``: None for no cap on a super-window's side, else a cap that
    splits the work into several) or ``"windows"`` (``tile`` defaults to ``DEFAULT_TILE``).
    ``content`` (h, w): an H x W ``content_canvas`` instead of tissue everywhere; ``margin``
    below ``MARGIN``: inexact on purpose (the check must then fail), windows only."""
    check_engine(engine, margin)
    tf.compat.v1.set_random_seed(seed)
    np.random.seed(seed)
    model = build_model(weights)
    if perturb_bn:
        perturb_batchnorm(model, seed)
    canvas = content_canvas(height, width, content, seed) if content else None
    image = canvas.dense() if canvas else synthetic_tissue(height, width, seed)
    _set_head(model, image, checkpoint, head, train_steps, seed)
    given = canvas if canvas else image
    streaming = _streaming(model, engine, tile, margin)
    errors, against_float64, logit, cam_diff = _compare(model, streaming, image, given, label)
    result = dict(
        engine=engine, height=height, width=width, content=list(content) if content else None,
        content_box=list(int(v) for v in canvas.box) if canvas else None,
        weights=str(weights), perturb_bn=perturb_bn, head=head, seed=seed,
        logit=logit, cam_max_abs_diff=cam_diff, gradient_tensors=len(errors) - len(OUTPUTS),
        against_float64=against_float64, criterion=criterion(),
        passed=against_float64.pop("passed"), **summary(errors))
    result.update(_levels_fields(streaming, given) if engine == "levels"
                  else _windows_fields(streaming))
    return result


def check_engine(engine, margin):
    """Raises ValueError for an unknown engine, or a margin given to the levels engine: levels
    has no margin to shrink (each level reads exactly its own reach), so the inexact check is
    the windows engine's alone."""
    if engine not in ENGINES:
        raise ValueError("engine must be one of {}, got {!r}".format(", ".join(ENGINES), engine))
    if engine == "levels" and margin is not None:
        raise ValueError("margin ({}) applies to the windows engine only: the levels engine "
                         "has no margin".format(margin))


def _streaming(model, engine, tile, margin):
    if engine == "levels":
        return LevelStreaming(model, tile=tile)
    return Streaming(model, tile=DEFAULT_TILE if tile is None else tile,
                     margin=MARGIN if margin is None else margin,
                     allow_inexact=margin is not None)


def _windows_fields(streaming):
    """What the windows engine computed: its tile and margin, its tiles, proxy and the share of
    the canvas's pixels that its windows read."""
    plan = streaming.last_plan
    return dict(tile=streaming.tile, margin=streaming.margin, tiles=len(plan.windows),
                proxy=[plan.proxy.height, plan.proxy.width] if plan.proxy else None,
                computed_pixel_ratio=round(plan.computed_pixel_ratio, 4))


def _levels_fields(streaming, given):
    """What the levels engine computed: its windows over all levels and super-windows, the proxy,
    and its planned forward MACs against the floor of the same canvas (as the engine saw it)."""
    plan = streaming.last_plan
    planned, floor = plan.macs(), floor_macs(as_canvas(given))
    return dict(tile=streaming.tile, windows=plan.windows, super_windows=len(plan.parts),
                proxy=[plan.proxy.height, plan.proxy.width], planned_flops=planned,
                floor_flops=floor, flops_ratio=round(planned / floor, 4) if floor else None)
