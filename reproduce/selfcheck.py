"""`python -m reproduce selfcheck`: the streaming strategy against the whole image.

Computes, on one image small enough to run whole, the logit, the CAM and the gradient of the BCE
loss for every trainable variable twice -- once on the whole image (Keras model + GradientTape,
independent of model/direct.py) and once with ``model.streaming.Streaming`` -- and prints JSON
with the maximum relative error of each, where for a tensor a (streaming) and b (whole image)

    relative error = max|a - b| / max(max|b|, 1e-30)

(one scale per tensor, so tiny entries of a tensor do not inflate it). Exits 1 when the logit or
the CAM is above 1e-5 or any gradient above 1e-4 (float32).

Weights: ``--weights`` is the backbone's initialisation (none|imagenet|path .h5). Random
initialisation leaves every BatchNorm at mean 0, variance 1, gamma 1, beta 0 -- an identity that
hides mistakes in how the frozen statistics are used -- so ``--perturb-bn`` draws random frozen
statistics and affine parameters (seeded). ``--head`` sets the dense layer: ``random`` (seeded,
with a non-zero bias) or ``trained``: the whole model first takes ``--train-steps`` Adam steps on
whole synthetic images, so the comparison runs at trained dense (and backbone) weights.
``--checkpoint`` loads full-model weights saved by ``model.save_weights``.

``--content hxw``: the image is an H x W canvas of uniform fill (``data.canvas.Canvas``) with h x w
of synthetic tissue inside it, placed off centre by the augmentation's translation and passed
through its flips, rotation and colour steps (``data.augment.apply_canvas``, seeded), so the
streaming side skips the cells that see only the fill (model/streaming.py, "Uniform cells") and
the comparison covers the proxy, its border rings and the tiles around the tissue. The JSON adds
``computed_pixel_ratio`` (input pixels computed / canvas pixels) and ``proxy`` (its size).
"""
import argparse
import json
import sys

from reproduce.errors import UserError

GRADIENT_TOLERANCE = 1e-4
OUTPUT_TOLERANCE = 1e-5


def add_arguments(parser):
    parser.add_argument("--size", type=int, default=512, help="square image side in px")
    parser.add_argument("--height", type=int, help="image height in px (overrides --size)")
    parser.add_argument("--width", type=int, help="image width in px (overrides --size)")
    parser.add_argument("--tile", type=int, default=96,
                        help="streaming middle-tile interior in px (multiple of 32); windows are "
                             "at most tile + 512 px, so an axis longer than that is split")
    parser.add_argument("--weights", default="none", help="backbone init: none|imagenet|PATH.h5")
    parser.add_argument("--checkpoint", default=None, help="full-model weights to load")
    parser.add_argument("--perturb-bn", action="store_true",
                        help="random frozen BatchNorm statistics and affine (seeded)")
    parser.add_argument("--head", choices=("random", "trained"), default="random",
                        help="dense weights: seeded random, or trained by --train-steps steps")
    parser.add_argument("--train-steps", type=int, default=3,
                        help="Adam steps on whole synthetic images for --head trained")
    parser.add_argument("--label", type=float, default=1.0, help="slide label for the loss")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--content", default=None, metavar="hxw",
                        help="uniform-fill canvas with h x w px of augmented tissue off centre "
                             "(streaming skips the fill-only cells)")
    # Hidden: a margin below the receptive-field radius, to show the check fails when inexact.
    parser.add_argument("--margin", type=int, default=None, help=argparse.SUPPRESS)


def synthetic_tissue(height, width, seed):
    """A structured RGB uint8 image: white background, pink tissue blobs, dark nuclei-like dots,
    one dense purple focus. Smooth random fields thresholded, all from ``seed``."""
    import numpy as np
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
    import numpy as np
    import tensorflow as tf
    rng = np.random.RandomState(seed + 1)
    for layer in _all_layers(model):
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype(np.float32),
                               rng.normal(0, 0.1, beta.shape).astype(np.float32),
                               rng.normal(0, 0.1, mean.shape).astype(np.float32),
                               rng.uniform(0.5, 2.0, var.shape).astype(np.float32)])


def _all_layers(model):
    import tensorflow as tf
    for layer in model.layers:
        if isinstance(layer, tf.keras.Model):
            for inner in _all_layers(layer):
                yield inner
        else:
            yield layer


def whole_image(model, image, label):
    """Reference on the whole image: dict(logit, cam, loss, grads) with grads for
    ``model.trainable_variables`` (BCE on the logit, GradientTape)."""
    import tensorflow as tf
    from model.resnet import cam_logits
    x = tf.constant(image[None], tf.float32)
    with tf.GradientTape() as tape:
        features = model.backbone(x, training=False)
        logit = model.head(tf.reduce_mean(features, axis=[1, 2]))[0, 0]
        loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.constant(label, tf.float32),
                                                       logits=logit)
    grads = tape.gradient(loss, model.trainable_variables)
    return dict(logit=float(logit.numpy()), loss=float(loss.numpy()),
                cam=cam_logits(model, features[0]).numpy(), grads=[g.numpy() for g in grads])


def relative_error(a, b):
    """max|a - b| / max(max|b|, 1e-30), in float64."""
    import numpy as np
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def set_random_head(model, image, seed):
    """A seeded dense layer of realistic magnitude: kernel c (n + 1), n ~ N(0, 1) (mixed signs,
    mostly positive, so GAP . w does not cancel to ~0 and hide errors), with c chosen so that
    GAP . w = 2 on ``image``; bias -1 (logit ~ 1, CAM cells of both signs)."""
    import numpy as np
    import tensorflow as tf
    gap = tf.reduce_mean(model.backbone(tf.constant(image[None], tf.float32), training=False),
                         axis=[1, 2])[0].numpy().astype(np.float64)
    direction = np.random.RandomState(seed + 2).standard_normal(gap.shape) + 1.0
    scale = 2.0 / max(abs(gap.dot(direction)), 1e-12)
    model.head.set_weights([(scale * direction)[:, None].astype(np.float32),
                            np.array([-1.0], np.float32)])


def train_whole(model, steps, height, width, seed):
    """``steps`` Adam steps (lr 1e-3, so a few steps move the weights) on whole synthetic images
    with alternating labels: gives the comparison trained dense weights."""
    import tensorflow as tf
    optimizer = tf.keras.optimizers.Adam(1e-3)
    for step in range(steps):
        image = synthetic_tissue(height, width, seed + 100 + step)
        grads = whole_image(model, image, float(step % 2))["grads"]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))


def parse_size(text, what="--content"):
    """'hxw' -> (h, w) positive ints; UserError naming ``what`` otherwise."""
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise UserError("{} must be HEIGHTxWIDTH in px (e.g. 2000x2400), got {!r}".format(
            what, text))
    if h < 1 or w < 1:
        raise UserError("{} must be positive, got {!r}".format(what, text))
    return h, w


def content_canvas(height, width, content, seed):
    """An H x W ``Canvas``: ``content`` (h, w) px of synthetic tissue on a square canvas of
    max(H, W), translated off centre by a fifth of it, with seeded flips, rotation and colour
    steps of the paper's ranges (data.augment), centre-cropped to H x W."""
    import numpy as np
    from data import augment
    side = max(height, width)
    tissue = synthetic_tissue(content[0], content[1], seed)
    params = augment.sample_params(np.random.default_rng([seed, 1]))._replace(
        translate_x_px=side // 5, translate_y_px=-(side // 6))
    placed = augment.apply_canvas(tissue, params, side, fail_if_larger=False)
    return placed.crop((side - height) // 2, (side - width) // 2, height, width)


def check(height, width, tile=None, weights="none", checkpoint=None, perturb_bn=False,
          head="random", train_steps=3, label=1.0, seed=0, margin=None, content=None):
    """Runs both computations; returns the JSON-able result dict (``passed`` among its keys)."""
    import numpy as np
    import tensorflow as tf
    from model.resnet import build_model
    from model.streaming import MARGIN, Streaming
    tf.compat.v1.set_random_seed(seed)
    np.random.seed(seed)
    model = build_model(weights)
    if perturb_bn:
        perturb_batchnorm(model, seed)
    canvas = content_canvas(height, width, content, seed) if content else None
    image = canvas.dense() if canvas else synthetic_tissue(height, width, seed)
    if checkpoint:
        model.load_weights(checkpoint)
    else:
        set_random_head(model, image, seed)
    if head == "trained":
        train_whole(model, train_steps, height, width, seed)
    if tile is None:
        tile = 96
    streaming = Streaming(model, tile=tile, margin=MARGIN if margin is None else margin,
                          allow_inexact=margin is not None)
    reference = whole_image(model, image, label)
    given = canvas if canvas else image
    predicted = streaming.predict(given, cam=True)
    loss, probability, grads = streaming.gradients(given, label)
    plan = streaming.last_plan
    names = [v.name for v in model.trainable_variables]
    errors = {n: relative_error(g.numpy(), r) for n, g, r in zip(names, grads, reference["grads"])}
    worst = max(errors, key=errors.get)
    result = dict(
        height=height, width=width, tile=tile, margin=streaming.margin,
        content=list(content) if content else None,
        content_box=list(int(v) for v in canvas.box) if canvas else None,
        tiles=len(plan.windows),
        proxy=[plan.proxy.height, plan.proxy.width] if plan.proxy else None,
        computed_pixel_ratio=round(plan.computed_pixel_ratio, 4),
        weights=str(weights), perturb_bn=perturb_bn, head=head, seed=seed,
        logit=reference["logit"],
        logit_rel_error=relative_error(predicted["logit"], reference["logit"]),
        cam_rel_error=relative_error(predicted["cam"], reference["cam"]),
        loss_rel_error=relative_error(loss, reference["loss"]),
        gradient_max_rel_error=errors[worst], gradient_worst_tensor=worst,
        gradient_tensors=len(errors),
        cam_max_abs_diff=float(np.max(np.abs(predicted["cam"] - reference["cam"]))),
        tolerance=dict(logit=OUTPUT_TOLERANCE, cam=OUTPUT_TOLERANCE,
                       gradients=GRADIENT_TOLERANCE),
    )
    result["passed"] = bool(result["logit_rel_error"] <= OUTPUT_TOLERANCE
                            and result["cam_rel_error"] <= OUTPUT_TOLERANCE
                            and result["loss_rel_error"] <= OUTPUT_TOLERANCE
                            and errors[worst] <= GRADIENT_TOLERANCE)
    return result


def run(args):
    height = args.height or args.size
    width = args.width or args.size
    if height < 1 or width < 1:
        raise UserError("--height/--width/--size must be positive, got {}x{}".format(height, width))
    if args.tile is not None and (args.tile < 32 or args.tile % 32):
        raise UserError("--tile must be a positive multiple of 32 px, got {}".format(args.tile))
    if args.margin is not None and (args.margin < 0 or args.margin % 32):
        raise UserError("--margin must be a non-negative multiple of 32 px")
    content = parse_size(args.content) if args.content else None
    if args.checkpoint and not __import__("os").path.exists(args.checkpoint) and not \
            __import__("os").path.exists(args.checkpoint + ".index"):
        raise UserError("--checkpoint {} does not exist".format(args.checkpoint))
    import tensorflow as tf
    tf.compat.v1.enable_v2_behavior()
    from model.resnet import WeightsError
    try:
        result = check(height, width, tile=args.tile, weights=args.weights,
                       checkpoint=args.checkpoint, perturb_bn=args.perturb_bn, head=args.head,
                       train_steps=args.train_steps, label=args.label, seed=args.seed,
                       margin=args.margin, content=content)
    except WeightsError as e:
        raise UserError(str(e))
    print(json.dumps(result, sort_keys=True))
    sys.stdout.flush()
    return 0 if result["passed"] else 1
