"""`python -m reproduce prepare`: read every slide of a manifest once at the target mpp into a cache.

    python -m reproduce prepare --manifest M.csv --out CACHE [--target-mpp 2.28] [--split test]
    mpirun -np 4 python -m reproduce prepare ...      # rows spread over the MPI ranks

The manifest is validated first; every problem is printed and the exit status is 2. A rerun
skips rows already cached, so an interrupted run resumes. Layout: see ``data.cache``.
"""
import json
import sys

from reproduce.errors import UserError

# 40x NanoZoomer (0.228 µm/px) resized to 4x (1/10): the paper's input resolution.
DEFAULT_TARGET_MPP = 2.28


def add_arguments(parser):
    parser.add_argument("--manifest", required=True, help="manifest CSV (see data/manifest.py)")
    parser.add_argument("--out", required=True, help="cache folder (index.csv + one image per row)")
    parser.add_argument("--target-mpp", type=float, default=DEFAULT_TARGET_MPP,
                        help="µm per pixel of the cached images (default %(default)s: the "
                             "paper's 40x -> 4x)")
    parser.add_argument("--split", nargs="+", choices=("train", "val", "test"),
                        help="only these splits (the whole manifest is still validated)")
    parser.add_argument("--format", choices=("png", "npy"), default="png",
                        help="cache image format (default png: lossless, ~3-7x smaller)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    from data.cache import CacheError, PrepareError, prepare
    from data.manifest import ManifestError

    try:
        s = prepare(args.manifest, args.out, target_mpp=args.target_mpp, splits=args.split,
                    fmt=args.format, progress=not args.no_progress)
    except PrepareError as e:
        from data.cache import _mpi  # only rank 0 prints, the verdict is the same everywhere
        if _mpi()[1] == 0:
            for p in e.problems:
                print("{}: {}".format(args.manifest, p), file=sys.stderr)
        raise UserError("{} ({} problem(s) listed above; nothing was read)".format(
            args.manifest, len(e.problems)))
    except (ManifestError, CacheError) as e:
        raise UserError(str(e))
    if s["rank"] == 0:
        for f in s["failed"]:
            print("failed: {}".format(f), file=sys.stderr)
        print("prepare: {} rows, {} cached now ({}), {} already cached, {} failed; "
              "{:.1f} s, {:.1f} level-0 MP/s, {:.2f} output MP/s".format(
                  s["rows"], s["cached"],
                  " + ".join("rank {}: {}".format(r, n) for r, n in enumerate(s["per_rank"])),
                  s["skipped"], len(s["failed"]), s["seconds"], s["level0_megapixels_per_s"],
                  s["output_megapixels_per_s"]), file=sys.stderr)
        print(json.dumps({k: v for k, v in s.items() if k != "rank"}))
    return 1 if s["failed"] else 0
