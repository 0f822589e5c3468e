"""How many canvas cells streaming skips, with and without ``prepare --glass-to-white``.

    .venv/bin/python scripts/glass_skip.py SLIDE [SLIDE ...] --threshold 240 --canvas 21500 1024
    .venv/bin/python scripts/glass_skip.py --manifest M.csv --threshold 240 --canvas 21500 4096

(slides first: ``--canvas`` takes every number after it). Figures: docs/benchmarks.md, "Glass to
white (prepare --glass-to-white)".

Each slide (or each whole-slide row of a manifest) is read as ``prepare`` reads it (OpenSlide,
``--target-mpp``, area filter), once as it is and once with its glass made white
(``data.glass.glass_to_white``, what ``prepare --glass-to-white T`` caches), and centre-placed on
each canvas as training and prediction place it (``data.canvas.place``). The planner of the
streaming strategy (``model.streaming.plan``) then says which output cells (32 px each) are
tiled; a skipped cell is one that no window computes (the proxy stands for it). Printed per slide
and canvas: the skipped fraction = 1 - tiled cells / all cells, without and with the flag, the
tiled cells with the flag over those without (the share of the work left), and ``all-white``:
the fraction of cells whose receptive field (483 px) sees only white after the whitening, i.e.
what a planner that skipped every such cell, not only those outside the content box, would
skip. Then the mean and range over the slides.
"""
import argparse
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.canvas import place  # noqa: E402
from data.glass import GlassError, check_threshold, glass_to_white  # noqa: E402

TILE = 1792   # px: model/streaming.py's default interior tile when this was written


def skipped_fraction(canvas, tile=TILE):
    """1 - (cells that the streaming plan of ``canvas`` tiles) / (all its output cells)."""
    from model import streaming
    p = streaming.plan(canvas, tile)
    tiled = sum((r.cell_stop - r.cell_start) * (c.cell_stop - c.cell_start)
                for r, c in p.windows)
    cells = streaming.output_cells(p.height) * streaming.output_cells(p.width)
    return 1.0 - tiled / float(cells)


def all_fill_fraction(canvas):
    """Fraction of the output cells whose receptive field holds only the fill colour."""
    from model import streaming
    from model.resnet import OUTPUT_STRIDE, RADIUS
    height, width = canvas.shape
    rows, cols = streaming.output_cells(height), streaming.output_cells(width)
    if canvas.empty:
        return 1.0
    other = np.any(canvas.content != canvas.fill, axis=2)
    total = np.zeros((other.shape[0] + 1, other.shape[1] + 1), np.int64)
    total[1:, 1:] = other.cumsum(0).cumsum(1)
    top, bottom, left, right = canvas.box
    reach = RADIUS

    def bounds(n, origin, size):
        centre = OUTPUT_STRIDE * np.arange(n)
        return (np.clip(centre - reach - origin, 0, size),
                np.clip(centre + reach + 1 - origin, 0, size))
    r0, r1 = bounds(rows, top, bottom - top)
    c0, c1 = bounds(cols, left, right - left)
    seen = (total[r1][:, c1] - total[r0][:, c1] - total[r1][:, c0] + total[r0][:, c0]) > 0
    return 1.0 - seen.sum() / float(rows * cols)


def measure(image, threshold, canvases, tile=TILE):
    """{canvas: (skipped without, skipped with, all-white with)} for one image at the target
    mpp."""
    white = glass_to_white(image, threshold)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # a canvas smaller than the slide: centre-crop
        for side in canvases:
            before, after = place(image, side), place(white, side)
            out[side] = (skipped_fraction(before, tile), skipped_fraction(after, tile),
                         all_fill_fraction(after))
    return out


def _left(without, with_):
    """Tiled cells with the flag over tiled cells without (1 when nothing is skipped)."""
    return (1.0 - with_) / (1.0 - without) if without < 1 else float("nan")


def _slides(args):
    if not args.manifest:
        return [(os.path.basename(p), p, None) for p in args.slides]
    from data.manifest import coerce, load_manifest
    base = os.path.dirname(os.path.abspath(args.manifest))
    rows = coerce(load_manifest(args.manifest), base)
    if "level" in rows.columns:
        rows = rows[rows["level"].fillna("slide").replace("", "slide") == "slide"]
    mpp = rows["mpp"] if "mpp" in rows.columns else [None] * len(rows)
    return [(s, p, None if m is None or m != m else float(m))
            for s, p, m in zip(rows["slide_id"], rows["path"], mpp)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("slides", nargs="*", help="slide files")
    parser.add_argument("--manifest", help="a manifest instead: its whole-slide rows")
    parser.add_argument("--threshold", required=True, help="the --glass-to-white threshold")
    parser.add_argument("--canvas", type=int, nargs="+", default=[21500], help="canvas sides, px")
    parser.add_argument("--target-mpp", type=float, default=2.28)
    parser.add_argument("--tile", type=int, default=TILE)
    args = parser.parse_args(argv)
    try:
        threshold = check_threshold(args.threshold, "--threshold")
    except GlassError as e:
        parser.error(str(e))
    if threshold is None or not (args.slides or args.manifest):
        parser.error("give a threshold and slides (or --manifest)")
    from data.slide import read_slide
    from tqdm import tqdm
    results = []
    for slide_id, path, mpp in tqdm(_slides(args), unit="slide", file=sys.stderr):
        image = read_slide(path, args.target_mpp, mpp=mpp)
        results.append((slide_id, image.shape[:2], measure(image, threshold, args.canvas,
                                                           args.tile)))
    print("| slide | px at {} um/px | canvas | skipped without | skipped with --glass-to-white "
          "{} | tiled with / without | all-white cells with |".format(args.target_mpp, threshold))
    print("|---|---|---|---|---|---|---|")
    for slide_id, (h, w), figures in results:
        for side, (a, b, c) in figures.items():
            print("| {} | {} x {} | {} | {:.4f} | {:.4f} | {:.3f} | {:.4f} |".format(
                slide_id, h, w, side, a, b, _left(a, b), c))
    if len(results) > 1:
        for side in args.canvas:
            columns = [np.array([f[side][k] for _, _, f in results]) for k in range(3)]
            columns.insert(2, np.array([_left(a, b) for a, b in zip(*columns[:2])]))
            for name, v in zip(("skipped without", "skipped with", "tiled with / without",
                                "all-white with"), columns):
                print("canvas {}: {}: mean {:.4f}, range {:.4f}-{:.4f} ({} slides)".format(
                    side, name, v.mean(), v.min(), v.max(), len(v)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
