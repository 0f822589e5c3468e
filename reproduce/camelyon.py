"""`python -m reproduce camelyon`: a manifest for CAMELYON16/17 from their official label files.

    python -m reproduce camelyon --labels reference.csv --slides DIR --out manifest.csv
    python -m reproduce camelyon --labels stage_labels.csv --slides DIR --out m.csv --which 17

CAMELYON16 test slides go to 'test' (training slides normal_/tumor_NNN.tif found under DIR are
added to train/val); CAMELYON17 nodes get a seeded patient-level split stratified by pN stage.
Label and size-category conventions: see ``data.camelyon``. Slides missing under DIR are left
out (``--keep-missing`` keeps them), and are an error with ``--strict``. The message gives their
count and the first few names; the full list, one name a line, goes to ``<out stem>.missing.txt``
beside the manifest (the CAMELYON16 reference names 130 test slides, the CAMELYON17 labels
500 nodes: too many for one line).
"""
import os
import sys

from reproduce.errors import UserError

# Missing slide names shown in the message; the rest are in the .missing.txt file.
SHOW_MISSING = 5


def missing_list_path(out):
    """The file beside the manifest ``out`` that lists every missing slide."""
    return os.path.splitext(out)[0] + ".missing.txt"


def missing_message(missing, labels, slides, list_path):
    """One line: the count, the first SHOW_MISSING names, and the file with all of them."""
    shown = ", ".join(missing[:SHOW_MISSING])
    more = len(missing) - SHOW_MISSING
    return "{} slide(s) of {} not found under {}: {}{}; full list in {}".format(
        len(missing), labels, slides, shown,
        " and {} more".format(more) if more > 0 else "", list_path)


def add_arguments(parser):
    parser.add_argument("--labels", required=True,
                        help="CAMELYON16 test reference CSV or CAMELYON17 stage_labels CSV")
    parser.add_argument("--slides", required=True, help="folder holding the .tif slides")
    parser.add_argument("--out", required=True, help="manifest CSV to write")
    parser.add_argument("--which", type=int, choices=(16, 17),
                        help="which challenge (default: detected from the label file)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share of patients (17) / training slides (16) in val (default 0.2)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="share of patients in test, CAMELYON17 only (default 0.2)")
    parser.add_argument("--no-train", action="store_true",
                        help="CAMELYON16: only the test slides of the reference file")
    parser.add_argument("--mpp", type=float,
                        help="fill the manifest's mpp column (if the files lack an mpp)")
    parser.add_argument("--keep-missing", action="store_true",
                        help="keep rows whose slide is missing (path DIR/<name>.tif)")
    parser.add_argument("--strict", action="store_true", help="a missing slide is an error")


def run(args):
    from data.files import atomic_write_csv, atomic_write_text
    from data.camelyon import build_manifest

    if not (0 <= args.val_fraction < 1 and 0 <= args.test_fraction < 1
            and args.val_fraction + args.test_fraction < 1):
        raise UserError("--val-fraction and --test-fraction must be in [0, 1) with a sum below 1")
    if not os.path.isdir(args.slides):
        raise UserError("{}: no such folder (--slides)".format(args.slides))
    try:
        df, missing = build_manifest(args.labels, args.slides, which=args.which, seed=args.seed,
                                     val_fraction=args.val_fraction,
                                     test_fraction=args.test_fraction,
                                     include_train=not args.no_train, mpp=args.mpp,
                                     keep_missing=args.keep_missing)
    except OSError as e:
        raise UserError(str(e))
    folder = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(folder, exist_ok=True)
    list_path = missing_list_path(args.out)
    if missing:
        atomic_write_text(list_path, "".join(name + "\n" for name in missing))
        message = missing_message(missing, args.labels, args.slides, list_path)
        if args.strict:
            raise UserError(message + " (--strict)")
        print(message, file=sys.stderr)
    elif os.path.isfile(list_path):
        os.remove(list_path)        # an older run's list would be stale
    atomic_write_csv(df, args.out)
    counts = df.groupby(["split", "label"]).size().to_dict() if len(df) else {}
    print("{}: {} slides ({}){}".format(
        args.out, len(df), ", ".join("{} {}: {}".format(s, "pos" if l else "neg", n)
                                     for (s, l), n in sorted(counts.items())),
        "; {} missing {}".format(len(missing), "kept" if args.keep_missing else "left out")
        if missing else ""))
    return 0
