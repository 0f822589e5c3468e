"""`python -m reproduce report`: the reviewer's report of a run, one self-contained HTML file.

Reads a run folder as ``reproduce demo`` leaves it (table/, predict/, .stamps/) and writes
RUN/report.html (report/page.py): the paper-vs-reproduction table, the figures, a gallery of
the CAMs and the run's provenance, every image embedded, nothing fetched. The demo runs it as its
last stage. ``--screenshot PNG`` also renders the page with headless Chromium (report/browser.py).
"""
import sys

from report.run import quoted
from reproduce.errors import UserError


def add_arguments(parser):
    parser.add_argument("--run", default="runs/demo", metavar="DIR",
                        help="the run folder (reproduce demo --out) (default: %(default)s)")
    parser.add_argument("--out", metavar="FILE.html",
                        help="where to write the report (default: RUN/report.html)")
    parser.add_argument("--config", metavar="C.yaml",
                        help="the training config to quote (default: the one the run's stamps "
                             "name)")
    parser.add_argument("--manifest", metavar="M.csv",
                        help="the cohort manifest (default: the one the run's stamps name)")
    parser.add_argument("--predictions", metavar="P.csv",
                        help="predictions for the CAM gallery, CAMs in its folder's cam/ "
                             "(default: the one the run's stamps name, else "
                             "RUN/predict/predictions.csv)")
    parser.add_argument("--screenshot", metavar="PNG",
                        help="also save a screenshot of the page (needs Chromium)")
    parser.add_argument("--screenshot-size", default="1400x1800", metavar="WxH",
                        help="screenshot size in CSS pixels (default: %(default)s)")


def _size(text):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError("--screenshot-size must be WIDTHxHEIGHT, e.g. 1400x1800; got {!r}"
                        .format(text))
    if w < 100 or h < 100:
        raise UserError("--screenshot-size {}: at least 100x100".format(text))
    return w, h


def run(args):
    import os
    from report import page
    size = _size(args.screenshot_size) if args.screenshot else None
    out = args.out or os.path.join(args.run, "report.html")
    if os.path.isdir(out):
        raise UserError("--out {}: is a folder; give the HTML file's path".format(out))
    command = quoted(["python", "-m", "reproduce"] + sys.argv[1:])
    summary = page.build(args.run, out, config=args.config, manifest=args.manifest,
                         predictions=args.predictions, command=command, progress=True)
    print("report: {} ({:.1f} MB; {} cohort; {} CAM(s){})".format(
        summary["path"], summary["bytes"] / 1e6, summary["cohort"], summary["cams"],
        "; {} row(s) without a CAM".format(len(summary["missing_cams"]))
        if summary["missing_cams"] else ""))
    if args.screenshot:
        from report.browser import screenshot
        screenshot(out, args.screenshot, *size)
        print("screenshot: {}".format(args.screenshot))
    return 0
