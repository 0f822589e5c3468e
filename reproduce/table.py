"""`python -m reproduce table`: the paper's results, reproduced from a predictions CSV.

Reads the predictions (subgroup columns filled from ``--manifest``), the training log and the
CAM localisation CSV, then writes OUT/table.md and OUT/table.csv (``stats.table``: the rows,
their definitions and the paper's values) and the figures (``report.figures``), and prints the
Markdown table.
"""
import os
import sys

from reproduce.errors import UserError
from stats import table


def add_arguments(parser):
    parser.add_argument("--predictions", required=True, metavar="P.csv",
                        help="slide_id, probability, label [, level, size_category, subtype, "
                             "chemo]")
    parser.add_argument("--manifest", metavar="M.csv",
                        help="fills subgroup columns (level, size_category, subtype, chemo) "
                             "missing from the predictions, by slide_id")
    parser.add_argument("--log", metavar="train_log.csv",
                        help="epoch, train_loss, val_loss, train_accuracy, val_accuracy: adds "
                             "the learning curves (Fig. 1a, b)")
    parser.add_argument("--out", required=True, metavar="DIR", help="writes table.md, "
                        "table.csv and the figures here")
    parser.add_argument("--title", default="",
                        help="label for the title line, e.g. 'SYNTHETIC cohort'")
    parser.add_argument("--no-figures", action="store_true", help="tables only")
    parser.add_argument("--localisation", metavar="L.csv",
                        help="CAM localisation figures of `predict --cam` (default: "
                             "cam/localisation.csv beside the predictions, when present)")


def run(args):
    from report import figures
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError("--out {}: exists and is not a directory".format(args.out))
    df = table.load_predictions(args.predictions, args.manifest)
    log = figures.load_log(args.log) if args.log else None   # checked before any work
    md, cases = table.make_table(df, args.out, title=args.title, source=args.predictions,
                                 localisation=table.localisation_path(args.predictions,
                                                                      args.localisation))
    written = [] if args.no_figures else figures.write_figures(cases, args.out, log=log,
                                                               title=args.title)
    sys.stdout.write(md)
    print("wrote {} and {} figure(s) to {}".format("table.md, table.csv", len(written), args.out))
    return 0
