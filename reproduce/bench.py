"""`python -m reproduce bench`: time and peak memory of one whole-slide training step.

    python -m reproduce bench --size N --mode direct|streaming|windows [--tile T] [--steps K] [--predict]
    python -m reproduce bench --size 21500 --content 2400x2000 [--plan-only [--draws N]] [--predict]
    python -m reproduce bench --content SLIDE --config C.yaml [--plan-only [--draws N]]
    python -m reproduce bench --delong N

One JSON line: size, height, width, mode, seconds_per_step, peak_rss_gb, tile, margin, tiles,
computed_pixel_ratio (pixels the windows compute / image pixels), megapixels_per_second,
seconds_per_megapixel, steps, step_seconds, steady_seconds_per_step (with --steps 2 or more: the
mean of the steps after the first, which also pays for its memory's first touch), loadavg (the
machine's 1-minute load when the step started), allocator ("tcmalloc" when the step ran on
TCMalloc, as `python -m reproduce` arranges: see reproduce/__main__.py; else "system").

The measurement (``model.bench``) runs in a fresh child Python (this command re-executes
itself), and the parent reads the child's peak resident set size from
``getrusage(RUSAGE_CHILDREN).ru_maxrss``, so each figure holds only that step: the TF runtime,
the model, Adam's slots, the uint8 image and the step. ``--content hxw`` (streaming): the paper's
``--size`` canvas holding h x w px of augmented tissue (drawn from ``--seed``; ``--rotate DEG``
fixes the angle), the augmentation timed as part of the step. ``--content SLIDE`` holds a slide
file instead, read as training sees it under ``--config``: its ``data.target_mpp``,
``data.resample`` and ``data.glass_to_white`` (as ``prepare`` applies it), on its
``data.canvas`` with its ``data.translate_px`` (centred when ``train.augment`` is false).

``--plan-only`` runs no network and reports the planner's ``computed_pixels`` against
``full_canvas_pixels``, and the plan's cost against the least that an exact step can cost:
``floor_flops`` (each convolution's output positions whose receptive field touches a non-fill
pixel), ``planned_flops`` (every position the plan's windows and proxy compute) and
``flops_ratio`` = planned / floor, with ``floor_seconds`` and ``plan_seconds``. Both counts are
forward multiply-accumulates (model/flops.py); the backward of a computed position costs about
twice its forward in either count. ``--draws N`` reports instead ``ratio_mean``, ``ratio_min``
and ``ratio_max`` of that ratio over the augmentation draws ``--seed`` .. ``--seed + N - 1``.
"""
import argparse
import json
import os
import re
import resource
import subprocess
import sys

from data.files import atomic_write_text
from reproduce.args import parse_size
from reproduce.errors import UserError


def add_arguments(parser):
    parser.add_argument("--size", type=int, help="square image side in px (the model's input)")
    parser.add_argument("--height", type=int, help="image height in px (overrides --size)")
    parser.add_argument("--width", type=int, help="image width in px (overrides --size)")
    parser.add_argument("--mode", choices=("direct", "streaming", "windows"), default="streaming",
                        help="streaming: in levels, as training runs (default); windows: the "
                             "one-level design (every window runs the whole network with a "
                             "256 px margin), for comparison; direct: the whole image at once")
    parser.add_argument("--tile", type=int, default=None,
                        help="windows: the tile interior in px (multiple of 32; default: from "
                             "--memory-gb, else from this machine's memory); streaming: caps a "
                             "super-window's side in px of output cells")
    parser.add_argument("--memory-gb", type=float, default=None,
                        help="the memory budget of a step (streaming: its kept activations, "
                             "less 1.5 GB for the runtime; windows: chooses the tile)")
    parser.add_argument("--steps", type=int, default=1, help="timed steps (after tracing)")
    parser.add_argument("--predict", action="store_true",
                        help="time prediction with CAM (forward only) instead of a training step")
    parser.add_argument("--content", default=None, metavar="hxw|SLIDE",
                        help="streaming on a --size canvas holding h x w px of augmented tissue, "
                             "or a slide file read and placed as training does under --config")
    parser.add_argument("--config", default=None, metavar="C.yaml",
                        help="with --content SLIDE: the run config whose target mpp, filter, "
                             "glass threshold, canvas and augmentation read and place the slide")
    parser.add_argument("--seed", type=int, default=0, help="augmentation draw for --content")
    parser.add_argument("--rotate", type=float, default=None, metavar="DEG",
                        help="with --content: this rotation instead of the drawn one")
    parser.add_argument("--plan-only", action="store_true",
                        help="with --content: no network; the planner's computed pixels, and "
                             "floor_flops (the least an exact step computes) against "
                             "planned_flops (what the plan computes): forward MACs, the backward "
                             "of a computed position costs about twice its forward in either")
    parser.add_argument("--draws", type=int, default=None, metavar="N",
                        help="with --plan-only: ratio_mean, ratio_min and ratio_max of "
                             "planned_flops / floor_flops over draws --seed .. --seed + N - 1")
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


def _size(args):
    """(height, width) from --size or --height/--width."""
    height = args.height or args.size
    width = args.width or args.size
    if not height or not width or height < 1 or width < 1:
        raise UserError("give --size N (or --height and --width), positive pixels")
    return height, width


def _check_step(args):
    """Refuses --tile, --steps and --memory-gb values that cannot make a step."""
    if args.tile is not None and (args.tile < 32 or args.tile % 32):
        raise UserError("--tile must be a positive multiple of 32 px, got {}".format(args.tile))
    if args.steps < 1:
        raise UserError("--steps must be at least 1")
    if args.mode == "windows" and args.tile is not None and args.memory_gb is not None:
        raise UserError("--tile and --memory-gb: give one (the tile is chosen from the memory)")
    if args.memory_gb is not None and args.memory_gb <= 1.5:
        raise UserError("--memory-gb must leave room beyond the runtime's 1.5 GB, got {:g}"
                        .format(args.memory_gb))
    if args.mode == "windows" and args.memory_gb is not None:
        from model.strategy import tile_for_memory
        try:
            tile_for_memory(args.memory_gb, training=not args.predict)
        except ValueError as e:
            raise UserError("--memory-gb: {}".format(e))


_SIZE = re.compile(r"^\s*\d+\s*[xX]\s*\d+\s*$")


def _slide(args):
    """--content's slide file, or None when --content is hxw (or absent); the slide is opened
    once here so that a file OpenSlide cannot read fails as one line."""
    if not args.content or _SIZE.match(args.content):
        return None
    if not os.path.isfile(args.content):
        raise UserError("--content: {} is neither HEIGHTxWIDTH in px nor a slide file".format(
            args.content))
    if not args.config:
        raise UserError("--content {}: a slide needs --config (its target mpp, glass threshold "
                        "and canvas)".format(args.content))
    from data.slide import slide_info
    slide_info(args.content)
    return args.content


def _slide_canvas(args):
    """The canvas side of --config, which --size (or --height/--width) may repeat but not
    change; --rotate needs a config that augments."""
    from model.config import load_config
    cfg = load_config(args.config)
    canvas = cfg["data"]["canvas"]
    if args.rotate is not None and not cfg["train"]["augment"]:
        raise UserError("--rotate: {} does not augment (train.augment: false), the slide is "
                        "centred on the canvas".format(args.config))
    for name, value in (("--size", args.size), ("--height", args.height),
                        ("--width", args.width)):
        if value is not None and value != canvas:
            raise UserError("{} {} differs from data.canvas {} of {}: leave it out with "
                            "--content SLIDE".format(name, value, canvas, args.config))
    return canvas, canvas


def _content(args, height, width, slide):
    """--content as (h, w) on a square canvas it fits, the slide's path, or None; --plan-only,
    --rotate and --draws need it."""
    if args.config and not slide:
        raise UserError("--config is for --content SLIDE (a slide file)")
    if args.draws is not None and (args.draws < 1 or not args.plan_only):
        raise UserError("--draws needs --plan-only and N >= 1, got {}".format(args.draws))
    if not args.content:
        if args.plan_only or args.rotate is not None:
            raise UserError("--plan-only and --rotate need --content hxw (or a slide file)")
        return None
    content = slide or parse_size(args.content)
    if height != width:
        raise UserError("--content needs a square canvas: give --size N")
    if args.mode == "direct":
        raise UserError("--content is for --mode streaming or windows (the direct baseline is "
                        "--height h --width w --mode direct)")
    if not slide and (content[0] > height or content[1] > width):
        raise UserError("--content {} does not fit the {} px canvas".format(args.content, height))
    return content


def _child(args, height, width, content):
    """The measurement itself, in this (child) process: its JSON line on stdout."""
    from model import bench
    if args.plan_only:
        result = bench.plan_only(height, content, args.seed, args.rotate, args.tile,
                                 args.memory_gb, args.draws, args.config)
    else:
        result = bench.measure(height, width, args.mode, args.tile, args.memory_gb, args.steps,
                               args.predict, args.progress, content, args.seed, args.rotate,
                               args.config)
    print(json.dumps(result))
    return 0


def _parent(args, height, width):
    """Runs this command again as a fresh child Python, whose ru_maxrss is that step's peak
    alone, and emits its result with the peak and the size."""
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


def run(args):
    if args.delong is not None:
        if args.delong < 4:
            raise UserError("--delong needs N >= 4, got {}".format(args.delong))
        from stats.delong import benchmark
        _emit(dict(benchmark(args.delong), mode="delong"), args.out)
        return 0
    slide = _slide(args)
    height, width = _slide_canvas(args) if slide else _size(args)
    _check_step(args)
    content = _content(args, height, width, slide)
    if args.child:
        return _child(args, height, width, content)
    return _parent(args, height, width)
