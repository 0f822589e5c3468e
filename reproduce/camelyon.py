"""`python -m reproduce camelyon`: a manifest for CAMELYON16/17 from their official label files.

    python -m reproduce camelyon --labels reference.csv --slides DIR --out manifest.csv
    python -m reproduce camelyon --labels stage_labels.csv --slides DIR --out m.csv --which 17
    python -m reproduce camelyon --labels stage_labels.csv --slides DIR --out m.csv \
        --annotations lesion_annotations/

Splits, labels, size categories and the lesion annotations (``--annotations DIR``: the ASAP XML
file named after each slide fills its ``foci``; XML files that match no slide are named in one
warning line): ``data.camelyon``. Slides missing under DIR are left out (``--keep-missing``
keeps them; with ``--strict`` they are an error); the message gives their count and the first
few names, and ``<out stem>.missing.txt`` beside the manifest lists them all.
"""
import os
import sys

from reproduce.errors import UserError


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
    parser.add_argument("--annotations", metavar="DIR",
                        help="folder of the lesion annotations (ASAP XML, <slide_id>.xml): "
                             "fills the manifest's foci column")


def run(args):
    from data.files import atomic_write_csv
    from data import camelyon

    if not os.path.isdir(args.slides):
        raise UserError("{}: no such folder (--slides)".format(args.slides))
    try:
        df, missing = camelyon.build_manifest(
            args.labels, args.slides, which=args.which, seed=args.seed,
            val_fraction=args.val_fraction, test_fraction=args.test_fraction,
            include_train=not args.no_train, mpp=args.mpp, keep_missing=args.keep_missing)
    except OSError as e:
        raise UserError(str(e))
    if args.annotations is not None:
        unmatched = camelyon.add_foci(df, args.annotations)
        if unmatched:
            print(camelyon.unmatched_message(unmatched, args.annotations), file=sys.stderr)
    message = camelyon.write_missing_list(args.out, missing, args.labels, args.slides)
    if message and args.strict:
        raise UserError(message + " (--strict)")
    if message:
        print(message, file=sys.stderr)
    atomic_write_csv(df, args.out)
    print(camelyon.summary_line(df, args.out, missing, args.keep_missing))
    return 0
