"""`python -m reproduce prepare`: read every slide of a manifest once at the target mpp into a cache.

    python -m reproduce prepare --manifest M.csv --out CACHE [--target-mpp 2.28] [--split test]
    python -m reproduce prepare --config configs/paper.yaml --manifest M.csv   # cache, mpp and
                                                     # filter from data.cache/target_mpp/resample
    mpirun -np 4 python -m reproduce prepare ...      # rows spread over the MPI ranks
    python -m reproduce prepare ... --glass-to-white 240   # opt-in, NOT the paper's: near-white
                                                     # glass becomes pure white (data/glass.py)

A flag given on the command line wins over the config. The manifest is validated first; every
problem is printed and the exit status is 2. A rerun skips rows already cached with the same
target mpp, resampling filter and glass threshold, so an interrupted run resumes. Layout: see
``data.cache``.
"""
import json
import sys

from reproduce.errors import UserError

# 40x NanoZoomer (0.228 µm/px) resized to 4x (1/10): the paper's input resolution
# (docs/fidelity.md, row ``target-mpp``).
DEFAULT_TARGET_MPP = 2.28
# The paper names no filter: the exact area filter (docs/fidelity.md, row ``resample``).
DEFAULT_RESAMPLE = "area"


def add_arguments(parser):
    parser.add_argument("--config", help="run config (YAML): data.manifest, data.cache, "
                                         "data.target_mpp and data.resample are the defaults")
    parser.add_argument("--manifest", help="manifest CSV (see data/manifest.py); default: the "
                                           "config's data.manifest")
    parser.add_argument("--out", help="cache folder (index.csv + one image per row); default: "
                                      "the config's data.cache")
    parser.add_argument("--target-mpp", type=float,
                        help="µm per pixel of the cached images (default: the config's "
                             "data.target_mpp, else {}: the paper's 40x -> 4x)".format(
                                 DEFAULT_TARGET_MPP))
    parser.add_argument("--resample", choices=("area", "cubic"),
                        help="resampling filter: area (exact box filter; the default) or cubic "
                             "(cv2.INTER_CUBIC of the level read, as the released code); default: "
                             "the config's data.resample, else area")
    parser.add_argument("--glass-to-white", metavar="T",
                        help="DEPARTS FROM THE PAPER (which feeds the slide as scanned): make "
                             "glass (every channel >= T, an integer 1-255, e.g. 240; kept where "
                             "a 5x5 px opening keeps it, so pale specks in tissue stay) pure white "
                             "so that streaming skips it like the padding. Default: the config's "
                             "data.glass_to_white, else off ('off' turns it off); the cache "
                             "records it and re-reads on a change (docs/fidelity.md, row "
                             "glass-to-white)")
    parser.add_argument("--split", nargs="+", choices=("train", "val", "test"),
                        help="only these splits (the whole manifest is still validated)")
    parser.add_argument("--format", choices=("png", "npy"), default="png",
                        help="cache image format (default png: lossless, ~3-7x smaller)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def settings(args):
    """(manifest, cache folder, target mpp, resample, glass threshold or None) from the flags,
    then the config, then the defaults. UserError when the manifest or the cache folder is given
    by neither; GlassError (one line) for a bad --glass-to-white."""
    data = {}
    if args.config:
        from model.config import load_config
        data = load_config(args.config, overrides={"data.manifest": args.manifest,
                                                   "data.cache": args.out})["data"]
    manifest = args.manifest or data.get("manifest")
    out = args.out or data.get("cache")
    if not manifest:
        raise UserError("give --manifest (or --config with data.manifest)")
    if not out:
        raise UserError("give --out (or --config with data.cache)")
    target_mpp = args.target_mpp if args.target_mpp is not None else data.get(
        "target_mpp", DEFAULT_TARGET_MPP)
    resample = args.resample or data.get("resample", DEFAULT_RESAMPLE)
    from data.glass import check_threshold
    glass = data.get("glass_to_white") if args.glass_to_white is None else \
        check_threshold(args.glass_to_white)
    return manifest, out, target_mpp, resample, glass


def run(args):
    from data.cache import PrepareError, prepare

    manifest, out, target_mpp, resample, glass = settings(args)
    try:
        s = prepare(manifest, out, target_mpp=target_mpp, splits=args.split, fmt=args.format,
                    progress=not args.no_progress, resample=resample, glass_to_white=glass)
    except PrepareError as e:
        from data.mpi import communicator  # only rank 0 prints: the same verdict on every rank
        if communicator()[1] == 0:
            for p in e.problems:
                print("{}: {}".format(manifest, p), file=sys.stderr)
        raise UserError("{} ({} problem(s) listed above; nothing was read)".format(
            manifest, len(e.problems)))
    if s["rank"] == 0:
        for f in s["failed"]:
            print("failed: {}".format(f), file=sys.stderr)
        print("prepare: {} rows, {} cached now ({}), {} already cached, {} failed; "
              "{:.1f} s, {:.1f} level-0 MP/s, {:.2f} output MP/s".format(
                  s["rows"], s["cached"],
                  " + ".join("rank {}: {}".format(r, n) for r, n in enumerate(s["per_rank"])),
                  s["skipped"], len(s["failed"]), s["seconds"], s["level0_megapixels_per_s"],
                  s["output_megapixels_per_s"]), file=sys.stderr)
        print(json.dumps(dict({k: v for k, v in s.items() if k != "rank"}, resample=resample,
                              target_mpp=float(target_mpp), glass_to_white=glass)))
    return 1 if s["failed"] else 0
