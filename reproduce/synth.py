"""`python -m reproduce synth --out DIR --slides N --seed S`: write a SYNTHETIC cohort.

Slides (openslide-readable Aperio-style pyramidal TIFFs), manifest.csv, tumour polygons
(foci/*.geojson) and node outlines (nodes/*.geojson); see data/synth.py. Not patient data.
`--paper-size` writes ONE slide of the paper's size instead: 18 x 28 mm at 2.28 um/px
(7895 x 12281 px), 3-6 nodes of 2-10 mm on off-white, slightly noisy glass.
"""
import os

from reproduce.errors import UserError


def add_arguments(parser):
    parser.add_argument("--out", required=True, help="cohort folder (created)")
    parser.add_argument("--slides", type=int,
                        help="number of slides (>= 2; required unless --paper-size)")
    parser.add_argument("--paper-size", action="store_true",
                        help="write ONE slide of the paper's size instead of a cohort: "
                             "18 x 28 mm at 2.28 um/px (7895 x 12281 px), 3-6 lymph nodes of "
                             "2-10 mm on off-white noisy glass, positive or not as the seed draws")
    parser.add_argument("--seed", type=int, default=0, help="everything follows from it")
    parser.add_argument("--mpp", type=float, help="level-0 um/px written into the slides "
                        "(default 2.0: cheap; 0.25 is a 40x scan, but ~64x the pixels; 2.28 "
                        "with --paper-size)")
    parser.add_argument("--node-fraction", type=float, help="share of test slides whose nodes "
                        "also get node-level rows (default 0.5)")
    for side, cohort, paper in (("width", 5.5, 18), ("height", 4.5, 28)):
        parser.add_argument("--{}-mm".format(side), type=float, help="slide {} in mm (default "
                            "{}; {} with --paper-size)".format(side, cohort, paper))
    parser.add_argument("--micro-min-mm", type=float, default=0.3,
                        help="smallest micrometastasis in mm (AJCC: > 0.2)")
    parser.add_argument("--compression", choices=("jpeg", "zlib"), default="jpeg")
    parser.add_argument("--workers", type=int, help="processes (default: 2)")


def _check(args):
    """Fills the options left out with the defaults of a cohort or of the paper-sized slide,
    then checks them (``data.synth.check_options``)."""
    from data import synth
    if args.paper_size:
        for flag, value in (("--slides", args.slides), ("--node-fraction", args.node_fraction),
                            ("--workers", args.workers)):
            if value is not None:
                raise UserError("{}: --paper-size writes one slide in one process; leave {} "
                                "out".format(flag, flag))
    defaults = synth.PAPER_DEFAULTS if args.paper_size else synth.COHORT_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    synth.check_options(args.seed, args.mpp, args.width_mm, args.height_mm, args.micro_min_mm,
                        args.paper_size, args.slides, args.node_fraction, args.workers)


def _make_dir(path):
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError("--out: {} exists and is not a folder".format(path))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError("--out: cannot create {} ({})".format(path, e.strerror))


def _run_paper(args, synth):
    manifest = synth.make_paper_slide(
        args.out, args.seed, mpp=args.mpp, width_mm=args.width_mm, height_mm=args.height_mm,
        micro_min_mm=args.micro_min_mm, compression=args.compression)
    row = manifest.iloc[0]
    width, height = synth.paper_dimensions(args.width_mm, args.height_mm, args.mpp)[0]
    tumour = "{} {}".format(row["size_category"], row["subtype"]) if row["label"] else "negative"
    print("SYNTHETIC paper-sized slide: {:g} x {:g} mm, {} x {} px at {:g} um/px, {} -> {}".format(
        args.width_mm, args.height_mm, width, height, args.mpp, tumour,
        os.path.join(args.out, row["path"])))
    return 0


def run(args):
    _check(args)
    from data import synth
    _make_dir(args.out)
    if args.paper_size:
        return _run_paper(args, synth)
    manifest = synth.make_cohort(
        args.out, args.slides, args.seed, mpp=args.mpp, node_fraction=args.node_fraction,
        width_mm=args.width_mm, height_mm=args.height_mm, micro_min_mm=args.micro_min_mm,
        compression=args.compression, workers=args.workers)
    slides = manifest[manifest["level"] == "slide"]
    print("SYNTHETIC cohort: {} slides ({} positive), {} node rows -> {}".format(
        len(slides), int(slides["label"].sum()), len(manifest) - len(slides),
        os.path.join(args.out, "manifest.csv")))
    return 0
