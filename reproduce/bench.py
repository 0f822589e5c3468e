"""`python -m reproduce bench`: time and peak memory of one whole-slide training step.

    python -m reproduce bench --size N --mode direct|streaming [--tile T] [--steps K] [--predict]
    python -m reproduce bench --size 21500 --content 2400x2000 [--plan-only] [--predict]
    python -m reproduce bench --delong N

One JSON line: size, height, width, mode, seconds_per_step, peak_rss_gb, tile, margin, tiles,
computed_pixel_ratio (pixels the windows compute / image pixels), megapixels_per_second,
seconds_per_megapixel, steps, loadavg (the machine's 1-minute load when the step started).

A step is what training does per slide: ``strategy.gradients(image, label)`` then Adam
(lr 1e-5) applying the gradients (``--predict``: ``strategy.predict(image, cam=True)`` instead).
The measurement runs in a fresh child Python (this command re-executes itself), and the parent
reads the child's peak resident set size from ``getrusage(RUSAGE_CHILDREN).ru_maxrss``, so each
figure holds only that step: the TF runtime, the model, Adam's slots, the uint8 image and the
step. Tracing happens first on a small image; ``seconds_per_step`` is the mean of the ``--steps``
timed steps. The image is a synthetic tissue patch repeated to size (the time does not depend on
content).

``--content hxw`` (streaming): the image is instead the paper's canvas (``--size``, square) holding
h x w px of that tissue, put there by the paper's augmentation (``data.augment.apply_canvas``,
drawn from ``--seed``; ``--rotate DEG`` fixes the angle), so the step skips the cells that see
only the fill. ``seconds_per_step`` then includes the augmentation, which is also reported alone
as ``augment_seconds``. ``--plan-only`` runs no network: it augments, plans and reports
``computed_pixels`` against ``full_canvas_pixels``, the plan that tiles every cell.
"""
import argparse
import json
import os
import resource
import subprocess
import sys

from data.files import atomic_write_text
from reproduce.errors import UserError


def add_arguments(parser):
    parser.add_argument("--size", type=int, help="square image side in px (the model's input)")
    parser.add_argument("--height", type=int, help="image height in px (overrides --size)")
    parser.add_argument("--width", type=int, help="image width in px (overrides --size)")
    parser.add_argument("--mode", choices=("direct", "streaming"), default="streaming")
    parser.add_argument("--tile", type=int, default=None,
                        help="streaming tile interior in px (multiple of 32); default: from "
                             "--memory-gb, else from this machine's memory, as in training")
    parser.add_argument("--memory-gb", type=float, default=None,
                        help="streaming: choose the tile for this memory budget")
    parser.add_argument("--steps", type=int, default=1, help="timed steps (after tracing)")
    parser.add_argument("--predict", action="store_true",
                        help="time prediction with CAM (forward only) instead of a training step")
    parser.add_argument("--content", default=None, metavar="hxw",
                        help="streaming on a --size canvas holding h x w px of augmented tissue")
    parser.add_argument("--seed", type=int, default=0, help="augmentation draw for --content")
    parser.add_argument("--rotate", type=float, default=None, metavar="DEG",
                        help="with --content: this rotation instead of the drawn one")
    parser.add_argument("--plan-only", action="store_true",
                        help="with --content: report the planner's computed pixels, no network")
    parser.add_argument("--delong", type=int, default=None, metavar="N",
                        help="instead: time stats.auc_ci (DeLong) on N scores")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    parser.add_argument("--progress", action="store_true", help="tqdm bar over streaming tiles")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)


def _emit(result, out):
    line = json.dumps(result, sort_keys=True)
    print(line)
    sys.stdout.flush()
    if out:
        atomic_write_text(out, line + "\n")


def _image(height, width):
    import numpy as np
    from reproduce.selfcheck import synthetic_tissue
    patch = synthetic_tissue(512, 512, seed=0)
    reps = (-(-height // 512), -(-width // 512), 1)
    return np.ascontiguousarray(np.tile(patch, reps)[:height, :width])


def content_step(size, content, seed, rotate=None):
    """(tissue image, augmentation parameters) of a --content benchmark on a --size canvas."""
    import numpy as np
    from data import augment
    params = augment.sample_params(np.random.default_rng(seed),
                                   translate_px=round(500 * size / 21500))
    if rotate is not None:
        params = params._replace(rotate_deg=float(rotate))
    return _image(*content), params


def streaming_tile(tile, memory_gb, height, width, predict=False):
    """The streaming tile as training and prediction choose it (``model.strategy.choose_tile``:
    --tile, else --memory-gb, else this machine's memory); its line goes to stderr."""
    from model.strategy import choose_tile
    choice = choose_tile(tile, memory_gb, canvas=max(height, width), training=not predict,
                         names=("--tile", "--memory-gb"))
    print(choice.line(), file=sys.stderr, flush=True)
    return choice.tile


def plan_only(size, content, seed, rotate=None, tile=None, memory_gb=None):
    """The planner's figures for a --content canvas, without a network."""
    import time
    from data import augment
    from model import streaming
    tile = streaming_tile(tile, memory_gb, size, size)
    tissue, params = content_step(size, content, seed, rotate)
    start = time.perf_counter()
    canvas = augment.apply_canvas(tissue, params, size)
    seconds = time.perf_counter() - start
    plan = streaming.plan(canvas, tile)
    full = streaming.plan(canvas, tile, skip_uniform=False)
    return dict(height=size, width=size, content=list(content), mode="plan", tile=tile,
                rotate_deg=round(params.rotate_deg, 3), content_box=[int(v) for v in canvas.box],
                augment_seconds=round(seconds, 3), tiles=len(plan.windows),
                proxy=[plan.proxy.height, plan.proxy.width] if plan.proxy else None,
                computed_pixels=int(plan.computed_pixels),
                computed_pixel_ratio=round(plan.computed_pixel_ratio, 5),
                full_canvas_pixels=int(full.computed_pixels),
                computed_vs_full_canvas=round(plan.computed_pixels / float(full.computed_pixels), 5))


def measure(height, width, mode, tile=None, memory_gb=None, steps=1, predict=False,
            progress=False, content=None, seed=0, rotate=None):
    """Runs in this process; returns the result dict without peak_rss_gb."""
    import time
    import numpy as np
    import tensorflow as tf
    tf.compat.v1.enable_v2_behavior()
    from model.resnet import build_model
    model = build_model("none")
    result = dict(height=height, width=width, mode=mode, predict=predict, steps=steps)
    if mode == "streaming":
        from model.streaming import Streaming
        strategy = Streaming(model, tile=streaming_tile(tile, memory_gb, height, width, predict),
                             progress=progress)
        result.update(tile=strategy.tile, margin=strategy.margin)
        warm = (strategy.margin + 64, strategy.margin + 64)
    else:
        from model.direct import Direct
        strategy = Direct(model)
        result.update(tile=None, margin=None, tiles=1, computed_pixel_ratio=1.0)
        warm = (64, 64)
    optimizer = tf.keras.optimizers.Adam(1e-5)
    augment_times = []

    def step(image):
        if content:     # the augmentation is part of the step: it makes the canvas
            from data.augment import apply_canvas
            start = time.perf_counter()
            image = apply_canvas(image[0], image[1], height)
            augment_times.append(time.perf_counter() - start)
        if predict:
            strategy.predict(image, cam=True)
            return
        _, _, grads = strategy.gradients(image, 1.0)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    if content:
        image = content_step(height, content, seed, rotate)
        result.update(content=list(content), rotate_deg=round(image[1].rotate_deg, 3))
        content, warm_image = None, _image(*warm)
        step(warm_image)         # traces the graphs and creates Adam's slots
        content = result["content"]
    else:
        step(_image(*warm))      # traces the graphs and creates Adam's slots
        image = _image(height, width)
    result["loadavg"] = round(os.getloadavg()[0], 2)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(image)
        times.append(time.perf_counter() - start)
    if mode == "streaming":
        plan = strategy.last_plan
        result.update(tiles=len(plan.windows), computed_pixel_ratio=round(
            plan.computed_pixel_ratio, 5), proxy=[plan.proxy.height, plan.proxy.width]
            if plan.proxy else None)
    if augment_times:
        result["augment_seconds"] = round(float(np.mean(augment_times)), 3)
    seconds = float(np.mean(times))
    megapixels = height * width / 1e6
    result.update(seconds_per_step=round(seconds, 3), step_seconds=[round(t, 3) for t in times],
                  megapixels_per_second=round(megapixels / seconds, 5),
                  seconds_per_megapixel=round(seconds / megapixels, 4))
    return result


def run(args):
    if args.delong is not None:
        if args.delong < 4:
            raise UserError("--delong needs N >= 4, got {}".format(args.delong))
        from stats.delong import benchmark
        _emit(dict(benchmark(args.delong), mode="delong"), args.out)
        return 0
    height = args.height or args.size
    width = args.width or args.size
    if not height or not width or height < 1 or width < 1:
        raise UserError("give --size N (or --height and --width), positive pixels")
    if args.tile is not None and (args.tile < 32 or args.tile % 32):
        raise UserError("--tile must be a positive multiple of 32 px, got {}".format(args.tile))
    if args.steps < 1:
        raise UserError("--steps must be at least 1")
    if args.mode == "streaming" and args.tile is not None and args.memory_gb is not None:
        raise UserError("--tile and --memory-gb: give one (the tile is chosen from the memory)")
    if args.mode == "streaming" and args.memory_gb is not None:
        from model.streaming import tile_for_memory
        try:
            tile_for_memory(args.memory_gb, training=not args.predict)
        except ValueError as e:
            raise UserError("--memory-gb: {}".format(e))
    content = None
    if args.content:
        from reproduce.selfcheck import parse_size
        content = parse_size(args.content)
        if height != width:
            raise UserError("--content needs a square canvas: give --size N")
        if args.mode != "streaming":
            raise UserError("--content is for --mode streaming (the direct baseline is "
                            "--height h --width w --mode direct)")
        if content[0] > height or content[1] > width:
            raise UserError("--content {} does not fit the {} px canvas".format(args.content,
                                                                                height))
    elif args.plan_only or args.rotate is not None:
        raise UserError("--plan-only and --rotate need --content hxw")
    if args.child:
        if args.plan_only:
            result = plan_only(height, content, args.seed, args.rotate, args.tile,
                               args.memory_gb)
        else:
            result = measure(height, width, args.mode, args.tile, args.memory_gb, args.steps,
                             args.predict, args.progress, content, args.seed, args.rotate)
        print(json.dumps(result))
        return 0
    # The measurement in a fresh Python: its ru_maxrss is that step's peak alone.
    argv = [sys.executable, "-m", "reproduce"] + sys.argv[sys.argv.index("bench"):] + ["--child"]
    argv = [a for i, a in enumerate(argv) if not (a == "--out" or (i and argv[i - 1] == "--out"))]
    child = subprocess.run(argv, stdout=subprocess.PIPE, universal_newlines=True)
    if child.returncode != 0:
        print("error: the benchmark child exited with status {}".format(child.returncode),
              file=sys.stderr)
        return child.returncode or 1
    result = json.loads(child.stdout.strip().splitlines()[-1])
    # Linux reports ru_maxrss in KiB
    result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                                  * 1024 / 1e9, 3)
    result["size"] = height if height == width else "{}x{}".format(height, width)
    _emit(result, args.out)
    return 0
