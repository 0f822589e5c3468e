"""`python -m reproduce synth --out DIR --slides N --seed S`: write a SYNTHETIC cohort.

Slides (openslide-readable Aperio-style pyramidal TIFFs), manifest.csv, tumour polygons
(foci/*.geojson) and node outlines (nodes/*.geojson); see data/synth.py. Not patient data.
"""
import os

from reproduce.errors import UserError


def add_arguments(parser):
    parser.add_argument("--out", required=True, help="cohort folder (created)")
    parser.add_argument("--slides", type=int, required=True, help="number of slides (>= 2)")
    parser.add_argument("--seed", type=int, default=0, help="everything follows from it")
    parser.add_argument("--mpp", type=float, default=2.0,
                        help="level-0 um/px written into the slides (default 2.0: cheap; "
                             "0.25 is a 40x scan, but ~64x the pixels)")
    parser.add_argument("--node-fraction", type=float, default=0.5,
                        help="share of test slides whose nodes also get node-level rows")
    parser.add_argument("--width-mm", type=float, default=5.5, help="slide width in mm")
    parser.add_argument("--height-mm", type=float, default=4.5, help="slide height in mm")
    parser.add_argument("--micro-min-mm", type=float, default=0.3,
                        help="smallest micrometastasis in mm (AJCC: > 0.2)")
    parser.add_argument("--compression", choices=("jpeg", "zlib"), default="jpeg")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: 2)")


def _check(args):
    if args.slides < 2:
        raise UserError("--slides: need at least 2, got {}".format(args.slides))
    if args.seed < 0:
        raise UserError("--seed: must be >= 0, got {}".format(args.seed))
    if not 0.05 <= args.mpp <= 16:
        raise UserError("--mpp: {} um/px is outside 0.05..16".format(args.mpp))
    if not 0.0 <= args.node_fraction <= 1.0:
        raise UserError("--node-fraction: must be in [0, 1], got {}".format(args.node_fraction))
    if args.width_mm < 4.0 or args.height_mm < 3.8:
        raise UserError("--width-mm/--height-mm: the slide must be at least 4.0 x 3.8 mm to hold "
                        "a node with a macrometastasis (> 2 mm), got {} x {}".format(
                            args.width_mm, args.height_mm))
    if not 0.2 <= args.micro_min_mm < 1.9:
        raise UserError("--micro-min-mm: must be in [0.2, 1.9), got {}".format(args.micro_min_mm))
    pixels = (args.width_mm * 1000 / args.mpp) * (args.height_mm * 1000 / args.mpp)
    if pixels > 1.2e8:
        raise UserError("--mpp {}: {:.0f} Mpx per slide is too large for this generator; use a "
                        "coarser --mpp or a smaller slide".format(args.mpp, pixels / 1e6))
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError("--out: {} exists and is not a folder".format(args.out))
    if args.workers is not None and args.workers < 1:
        raise UserError("--workers: must be >= 1, got {}".format(args.workers))


def run(args):
    _check(args)
    from data import synth
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        raise UserError("--out: cannot create {} ({})".format(args.out, e.strerror))
    manifest = synth.make_cohort(
        args.out, args.slides, args.seed, mpp=args.mpp, node_fraction=args.node_fraction,
        width_mm=args.width_mm, height_mm=args.height_mm, micro_min_mm=args.micro_min_mm,
        compression=args.compression, workers=args.workers)
    slides = manifest[manifest["level"] == "slide"]
    print("SYNTHETIC cohort: {} slides ({} positive), {} node rows -> {}".format(
        len(slides), int(slides["label"].sum()), len(manifest) - len(slides),
        os.path.join(args.out, "manifest.csv")))
    return 0
