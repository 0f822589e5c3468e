"""`python -m reproduce selfcheck`: the streaming strategy against the whole image, judged
against a float64 reference.

``--engine levels`` (the default, the design training uses: ``model.levels.LevelStreaming``;
``--tile`` caps a super-window's side, which splits the work) or ``--engine windows`` (the older
one-level design, ``model.streaming.Streaming``; ``--tile`` is its tile, 96 px by default). The
JSON names the engine; for levels it adds ``windows``, ``super_windows``, ``proxy`` and the
planned forward MACs against the floor (``planned_flops``, ``floor_flops``, ``flops_ratio``).

Computes the logit, the loss, the CAM and every gradient three ways on one image: streaming
(float32), the whole image in float32, and the whole image through a float64 copy of the same
network (same weights, frozen BatchNorm, CPU; its input is the same float32 preprocessed image,
cast to float64). Prints JSON with the maximum relative error of each tensor, max|a - b| /
max|b|:

- ``against_float64``: streaming's errors and the float32 whole image's own errors, both against
  float64 (logit, loss, CAM, the worst gradient and its tensor), and the ``limiting`` tensor;
- ``criterion``: passes when, for every tensor, streaming's error is at most ``factor`` (4) times
  the float32 whole image's error plus ``floor`` (1e-6); exits 1 otherwise;
- the top-level ``*_rel_error`` and ``gradient_*`` figures: streaming against the float32 whole
  image (float32 summation order alone moves a gradient by up to ~1e-4 on large images).

The check itself is ``model.selfcheck.check``.

``--weights`` is the backbone's initialisation (none|imagenet|path .h5); ``--perturb-bn`` draws
random frozen BatchNorm statistics and affine parameters (seeded), which random initialisation
leaves at an identity that hides mistakes. ``--head``: ``random`` (seeded, with a non-zero bias)
or ``trained`` (the whole model first takes ``--train-steps`` Adam steps on whole synthetic
images). ``--checkpoint`` loads full-model weights saved by ``model.save_weights``.

``--content hxw``: the image is an H x W canvas of uniform fill with h x w of augmented synthetic
tissue off centre, so the streaming side skips what sees only the fill; for windows the JSON adds
``computed_pixel_ratio`` (input pixels computed / canvas pixels) and ``proxy`` (its size).
"""
import argparse
import json
import os
import sys

from reproduce.args import parse_size
from reproduce.errors import UserError


def add_arguments(parser):
    parser.add_argument("--size", type=int, default=512, help="square image side in px")
    parser.add_argument("--height", type=int, help="image height in px (overrides --size)")
    parser.add_argument("--width", type=int, help="image width in px (overrides --size)")
    parser.add_argument("--engine", default="levels", metavar="levels|windows",
                        help="streaming design to check: levels (default, as training runs) or "
                             "the one-level windows")
    parser.add_argument("--tile", type=int, default=None,
                        help="px, multiple of 32. levels: caps a super-window's side (default: "
                             "no cap); windows: middle-tile interior (default 96; windows are at "
                             "most tile + 512 px, so an axis longer than that is split)")
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
    # Hidden: a margin below the receptive-field radius, to show the check fails when inexact
    # (--engine windows only).
    parser.add_argument("--margin", type=int, default=None, help=argparse.SUPPRESS)


def _checked(args):
    """(height, width, content) from the flags, or a UserError naming the flag."""
    height = args.height or args.size
    width = args.width or args.size
    if height < 1 or width < 1:
        raise UserError("--height/--width/--size must be positive, got {}x{}".format(height, width))
    if args.tile is not None and (args.tile < 32 or args.tile % 32):
        raise UserError("--tile must be a positive multiple of 32 px, got {}".format(args.tile))
    if args.engine not in ("levels", "windows"):
        raise UserError("--engine must be levels or windows, got {!r}".format(args.engine))
    if args.margin is not None and args.engine != "windows":
        raise UserError("--margin applies to --engine windows only (levels has no margin)")
    if args.margin is not None and (args.margin < 0 or args.margin % 32):
        raise UserError("--margin must be a non-negative multiple of 32 px")
    content = parse_size(args.content) if args.content else None
    if args.checkpoint and not os.path.exists(args.checkpoint) and not \
            os.path.exists(args.checkpoint + ".index"):
        raise UserError("--checkpoint {} does not exist".format(args.checkpoint))
    return height, width, content


def run(args):
    height, width, content = _checked(args)
    import tensorflow as tf
    tf.compat.v1.enable_v2_behavior()
    from model.resnet import WeightsError
    from model.selfcheck import check
    try:
        result = check(height, width, tile=args.tile, weights=args.weights,
                       checkpoint=args.checkpoint, perturb_bn=args.perturb_bn, head=args.head,
                       train_steps=args.train_steps, label=args.label, seed=args.seed,
                       margin=args.margin, content=content, engine=args.engine)
    except WeightsError as e:
        raise UserError(str(e))
    print(json.dumps(result, sort_keys=True))
    sys.stdout.flush()
    return 0 if result["passed"] else 1
