"""The paper's Table 1, reproduced from a predictions CSV: case sets, rows, checks and rendering.

For each level present (slide: threshold 0.5; node: threshold 0.3) the table has the rows
overall, macro / micro / ITC, classical / mucinous / signet-poorly, and the chemotherapy subset,
each with

    n+ / n-, AUC [DeLong 95% CI], p of the paired DeLong test against the dummy model that always
    outputs 0.5, accuracy at the threshold (positive when probability >= threshold) with its
    Wilson and Wald 95% CIs, and the paper's value beside it with the difference.

Subgroup AUC (size, subtype) = the subgroup's positives against ALL negatives of the level:
inferred, the paper does not say which negatives (docs/fidelity.md, row ``subgroup-negatives``);
accuracy of those rows is over the same cases. The chemo row is every case with
chemo = 1 (its own positives and negatives); the paper reports only its accuracy.

Where the predictions' CAMs were measured against tumour annotations (``predict --cam`` on a
manifest with a ``foci`` column writes cam/localisation.csv beside predictions.csv; see
stats/localisation.py), a localisation line per level is added: over the annotated positive
cases, the mean and median fraction of the tumour area with CAM >= the CAM threshold, and of the
CAM >= threshold area that lies in tumour (CSV rows with group ``localisation``, ``loc_*``
columns).

``make_table`` writes OUT/table.csv (one schema, ``CSV_COLUMNS``, which the HTML report reads
too) and OUT/table.md. The paper's values come from paper_values.csv beside this module; its
rows of level ``split`` (the paper's per-split slide counts) are not table rows
(``load_paper_splits``). Numbers and text only: the figures are ``report.figures``'.
"""
import csv
import io
import math
import os

import numpy as np

from data.errors import InputError
from data.files import atomic_write_text
from data.manifest import LEVELS, POSITIVE_SIZES as SIZE_GROUPS, SIZE_CATEGORIES
from data.manifest import SUBTYPES as SUBTYPE_GROUPS
from stats.localisation import summary
from stats.proportion import proportion_ci
from stats.subgroups import subgroup_cases, summarize

PAPER_VALUES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper_values.csv")
SPLIT_LEVEL = "split"   # paper_values.csv rows of the per-split counts, not table rows
THRESHOLDS = {"slide": 0.5, "node": 0.3}
LEVEL_NAMES = {"slide": "Slide level", "node": "Single-lymph-node level"}
GROUP_NAMES = {"overall": "Overall", "macro": "Macrometastasis", "micro": "Micrometastasis",
               "itc": "Isolated tumour cells", "classical": "Classical adenocarcinoma",
               "mucinous": "Mucinous adenocarcinoma",
               "signet_poorly": "Signet ring / poorly differentiated", "chemo": "Preoperative chemo",
               "localisation": "CAM localisation (annotated positives)"}
OPTIONAL = ("level", "size_category", "subtype", "chemo")
ALLOWED = {"level": LEVELS, "size_category": SIZE_CATEGORIES, "subtype": SUBTYPE_GROUPS,
           "chemo": ("0", "1")}
# table.csv: the columns of the paper's layout, then those of the localisation rows (group
# 'localisation'; blank on the others)
PAPER_COLUMNS = ["level", "group", "n_pos", "n_neg", "auc", "auc_lower", "auc_upper",
                 "auc_variance", "p_vs_dummy", "threshold", "accuracy_pct", "wilson_lower_pct",
                 "wilson_upper_pct", "wald_lower_pct", "wald_upper_pct", "sensitivity_pct",
                 "paper_auc", "paper_auc_lower", "paper_auc_upper", "auc_diff",
                 "paper_accuracy_pct", "paper_accuracy_pct_lower", "paper_accuracy_pct_upper",
                 "accuracy_diff_pct", "paper_note"]
LOC_COLUMNS = ["loc_cam_threshold", "loc_n", "loc_tumour_covered_pct_mean",
               "loc_tumour_covered_pct_median", "loc_n_cam", "loc_cam_in_tumour_pct_mean",
               "loc_cam_in_tumour_pct_median"]
CSV_COLUMNS = PAPER_COLUMNS + LOC_COLUMNS
LOCALISATION_NAME = os.path.join("cam", "localisation.csv")   # beside predictions.csv
# the per-case CSV of ``predict --cam`` (model.inference.LOCALISATION_COLUMNS)
LOCALISATION_COLUMNS = ("slide_id", "level", "label", "threshold", "tumour_area", "cam_area",
                        "overlap_area", "tumour_covered", "cam_in_tumour")


class TableError(InputError):
    """A predictions, manifest or localisation CSV the table cannot be made from; the message
    names the file and, where one is at fault, the column and the first bad row."""


def make_table(df, out_dir, title="", source="", localisation=None):
    """Writes OUT/table.csv and OUT/table.md for the predictions ``df`` (``load_predictions``)
    and the localisation CSV at ``localisation`` (None: no localisation line).

    Returns (the Markdown text, the case sets [(level, group, y, p)] for the figures). Every
    input is read and checked before the folder is made or a file written.
    """
    loc_rows = []
    if localisation is not None:
        loc_rows = localisation_rows(load_localisation(localisation), df)
    paper = load_paper_values()
    rows, notes, cases = compute_rows(df, paper)
    md = render_markdown(rows, notes, paper, title, source, loc_rows, localisation)
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_text(os.path.join(out_dir, "table.csv"), render_csv(rows + loc_rows))
    atomic_write_text(os.path.join(out_dir, "table.md"), md)
    return md, cases


def localisation_path(predictions, explicit=None):
    """The localisation CSV to read: ``explicit`` when given, else cam/localisation.csv beside
    the predictions when that file exists, else None."""
    if explicit is not None:
        return explicit
    beside = os.path.join(os.path.dirname(os.path.abspath(predictions)), LOCALISATION_NAME)
    return beside if os.path.isfile(beside) else None


# ------------------------------------------------------------------------- reading and checks

def read_csv_file(path, what, error=None, **options):
    """``pandas.read_csv(path, **options)``, or one line of ``error`` (an InputError class;
    default TableError) naming ``what`` and the file when it is missing or not a CSV."""
    import pandas as pd
    error = error or TableError
    if not os.path.isfile(path):
        raise error("{} {}: no such file".format(what, path))
    try:
        return pd.read_csv(path, **options)
    except Exception as e:  # pandas raises several parser/encoding types
        raise error("{} {}: cannot read as CSV ({})".format(what, path, str(e).splitlines()[0]))


def _read_csv(path, what):
    """One of the table's input CSVs, every cell as text (blank: '')."""
    return read_csv_file(path, what, dtype=str, keep_default_na=False)


def _bad_rows(path, column, mask, values, expected):
    """TableError naming the column, the first offending row (1-based data row) and the
    count."""
    idx = np.flatnonzero(np.asarray(mask))
    if idx.size:
        first = int(idx[0])
        raise TableError("{}: column '{}' must be {}; row {} has {!r} ({} bad row{})".format(
            path, column, expected, first + 1, values[first], idx.size,
            "" if idx.size == 1 else "s"))


def _check_optional(df, path):
    """Normalises optional columns in place (lower-case, stripped; blank = unknown)."""
    for col in OPTIONAL:
        if col not in df.columns:
            continue
        v = df[col].astype(str).str.strip().str.lower()
        if col == "chemo":
            v = v.replace({"true": "1", "false": "0", "1.0": "1", "0.0": "0"})
        bad = (v != "") & ~v.isin(ALLOWED[col])
        _bad_rows(path, col, bad.values, df[col].values,
                  "blank or one of " + "|".join(ALLOWED[col]))
        df[col] = v


def _check_required(df, path):
    """slide_id, probability and label present and valid; converts label to int and
    probability to float in place."""
    import pandas as pd
    for col in ("slide_id", "probability", "label"):
        if col not in df.columns:
            raise TableError("predictions {}: missing column '{}' (have: {})".format(
                path, col, ", ".join(df.columns)))
    if len(df) == 0:
        raise TableError("predictions {}: no rows".format(path))
    df["slide_id"] = df["slide_id"].str.strip()
    _bad_rows(path, "slide_id", (df["slide_id"] == "").values, df["slide_id"].values,
              "a non-empty id")
    label = pd.to_numeric(df["label"], errors="coerce")
    _bad_rows(path, "label", ~label.isin([0, 1]).values, df["label"].values, "0 or 1")
    prob = pd.to_numeric(df["probability"], errors="coerce")
    badp = ~(prob.between(0.0, 1.0).values & np.isfinite(prob.values))  # NaN fails between
    _bad_rows(path, "probability", badp, df["probability"].values, "a number in [0, 1]")
    df["label"] = label.astype(int)
    df["probability"] = prob.astype(float)


def load_predictions(path, manifest_path=None):
    """Reads and validates the predictions CSV (and fills subgroup columns from the manifest).

    Returns a DataFrame with slide_id (str), probability (float), label (int 0/1), level
    (slide|node), and the optional columns as normalised strings ('' where unknown).
    """
    df = _read_csv(path, "predictions")
    _check_required(df, path)
    _check_optional(df, path)
    if manifest_path:
        _fill_from_manifest(df, manifest_path)
    for col in OPTIONAL:
        if col not in df.columns:
            df[col] = ""
    df.loc[df["level"] == "", "level"] = "slide"  # the paper's default unit

    dup = df.duplicated(["slide_id", "level"], keep=False).values
    _bad_rows(path, "slide_id", dup, df["slide_id"].values, "unique within a level")
    pos = df["label"] == 1
    sc = df["size_category"]
    contra = (pos & (sc == "negative")) | (~pos & sc.isin(SIZE_GROUPS))
    _bad_rows(path + (" (with manifest)" if manifest_path else ""), "size_category",
              contra.values, sc.values, "consistent with label (negative iff label 0)")
    return df


def _fill_from_manifest(df, manifest_path):
    """Fills the optional columns the predictions lack (or leave blank) from the manifest, by
    slide_id."""
    man = _read_csv(manifest_path, "manifest")
    if "slide_id" not in man.columns:
        raise TableError("manifest {}: missing column 'slide_id'".format(manifest_path))
    man["slide_id"] = man["slide_id"].str.strip()
    _bad_rows(manifest_path, "slide_id", man["slide_id"].duplicated(keep=False).values,
              man["slide_id"].values, "unique")
    cols = [c for c in OPTIONAL if c in man.columns]
    man = man[["slide_id"] + cols].copy()
    _check_optional(man, manifest_path)
    lookup = man.set_index("slide_id")
    for col in cols:
        from_manifest = df["slide_id"].map(lookup[col]).fillna("")
        if col not in df.columns:
            df[col] = from_manifest
        else:  # keep what the predictions say; fill only its blanks
            df[col] = df[col].where(df[col] != "", from_manifest)


def load_localisation(path):
    """The per-case localisation CSV of ``predict --cam`` (model.inference.LOCALISATION_COLUMNS),
    checked: numbers where numbers belong (blank tumour_covered / cam_in_tumour = undefined),
    one CAM threshold for the whole file."""
    import pandas as pd
    loc = _read_csv(path, "localisation")
    for col in LOCALISATION_COLUMNS:
        if col not in loc.columns:
            raise TableError("localisation {}: missing column '{}' (have: {})".format(
                path, col, ", ".join(loc.columns)))
    loc["slide_id"] = loc["slide_id"].str.strip()
    loc["level"] = loc["level"].str.strip().str.lower().replace("", "slide")
    _bad_rows(path, "level", (~loc["level"].isin(LEVELS)).values, loc["level"].values,
              "one of " + "|".join(LEVELS))
    for col in LOCALISATION_COLUMNS[2:]:
        v = pd.to_numeric(loc[col], errors="coerce")
        blank_ok = col in ("tumour_covered", "cam_in_tumour")
        bad = ~np.isfinite(v.values) & ~(blank_ok & (loc[col].str.strip() == "").values)
        if col == "label":
            bad |= ~v.isin([0, 1]).values
        _bad_rows(path, col, bad, loc[col].values, "a number" if col != "label" else "0 or 1")
        loc[col] = v.astype(float)
    thresholds = sorted(set(loc["threshold"]))
    if len(thresholds) > 1:
        raise TableError("localisation {}: column 'threshold' must hold one CAM threshold for "
                         "every row, found {}".format(path, ", ".join(map(str, thresholds))))
    return loc


def localisation_rows(loc, df):
    """One table row per level (group 'localisation') over the annotated positive cases of the
    predictions (label 1, tumour area > 0 in the image): n, mean and median of the tumour area
    with CAM >= threshold (%) and, over the cases with any CAM >= threshold, of the lit area
    that lies in tumour (%)."""
    nan = float("nan")
    keep = set(zip(df["slide_id"], df["level"]))
    rows = []
    for level in ("slide", "node"):
        sel = loc[(loc["level"] == level) & (loc["label"] == 1) & (loc["tumour_area"] > 0)]
        sel = sel[[(s, level) in keep for s in sel["slide_id"]]]
        if len(sel) == 0:
            continue
        n, covered_mean, covered_median = summary(sel["tumour_covered"])
        n_cam, inside_mean, inside_median = summary(sel["cam_in_tumour"])
        row = dict.fromkeys(CSV_COLUMNS, nan)
        row.update(level=level, group="localisation", n_pos=n, paper_note="",
                   loc_cam_threshold=float(sel["threshold"].iloc[0]), loc_n=n,
                   loc_tumour_covered_pct_mean=100 * covered_mean,
                   loc_tumour_covered_pct_median=100 * covered_median, loc_n_cam=n_cam,
                   loc_cam_in_tumour_pct_mean=100 * inside_mean,
                   loc_cam_in_tumour_pct_median=100 * inside_median)
        rows.append(row)
    return rows


def _paper_records(path):
    """paper_values.csv as a list of dicts (blank cells None)."""
    import pandas as pd
    t = pd.read_csv(path, dtype={"level": str, "group": str, "note": str})
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in t.to_dict("records")]


def load_paper_values(path=PAPER_VALUES):
    """The paper's reported values of the table's rows: {(level, group): dict of the CSV's
    columns} (the per-split counts are left out: ``load_paper_splits``)."""
    return {(r["level"], r["group"]): r for r in _paper_records(path)
            if r["level"] != SPLIT_LEVEL}


def load_paper_splits(path=PAPER_VALUES):
    """The paper's slide counts per split (Datasets): {split: (n_pos, n_neg, n)}, split one of
    train, val, test."""
    return {r["group"]: (int(r["n_pos"]), int(r["n_neg"]), int(r["n"]))
            for r in _paper_records(path) if r["level"] == SPLIT_LEVEL}


# ----------------------------------------------------------------------------- computing

def _subgroup_sets(level, d, y, p, notes):
    """The size and subtype rows of one level (positives of the group against ALL negatives);
    a note for each column or group that gives no row."""
    sets = []
    for col, groups in (("size_category", SIZE_GROUPS), ("subtype", SUBTYPE_GROUPS)):
        if (d[col] == "").all():
            notes.append("{}: no {} column/values; its rows are omitted.".format(
                LEVEL_NAMES[level], col))
            continue
        for g in groups:
            cases = subgroup_cases(y, p, d[col].values, g)  # vs ALL negatives
            if cases is None:
                notes.append("{}: no positive case with {} = {}; row skipped.".format(
                    LEVEL_NAMES[level], col, g))
                continue
            sets.append((level, g) + cases)
    return sets


def _chemo_sets(level, d, y, p, notes):
    """The chemo row of one level (every case with chemo = 1), or a note why there is none."""
    if (d["chemo"] == "").all():
        notes.append("{}: no chemo column/values; the chemo row is omitted.".format(
            LEVEL_NAMES[level]))
        return []
    sel = d["chemo"].values == "1"
    if not sel.any():
        notes.append("{}: no case with chemo = 1; row skipped.".format(LEVEL_NAMES[level]))
        return []
    return [(level, "chemo", y[sel], p[sel])]


def case_sets(df):
    """[(level, group, y, p)] in the paper's order, and notes for rows that cannot be made."""
    sets, notes = [], []
    for level in ("slide", "node"):
        d = df[df["level"] == level]
        if len(d) == 0:
            continue
        y, p = d["label"].values, d["probability"].values
        sets.append((level, "overall", y, p))
        sets += _subgroup_sets(level, d, y, p, notes)
        sets += _chemo_sets(level, d, y, p, notes)
    return sets, notes


def compute_row(level, group, y, p, paper=None):
    """One row of the table as a dict with the CSV_COLUMNS keys (NaN where not defined):
    stats.summarize's statistics, in percent, beside the paper's values."""
    nan = float("nan")
    thr = THRESHOLDS[level]
    s = summarize(y, p, thr)
    n_pos, n_neg, wil, wald = s["n_pos"], s["n_neg"], s["wilson"], s["wald"]
    row = dict.fromkeys(CSV_COLUMNS, nan)
    row.update(level=level, group=group, n_pos=n_pos, n_neg=n_neg, threshold=thr,
               paper_note="")
    row.update({k: s[k] for k in ("auc", "auc_lower", "auc_upper", "auc_variance",
                                  "p_vs_dummy")})
    row.update(accuracy_pct=100.0 * s["correct"] / s["n"], wilson_lower_pct=100 * wil[0],
               wilson_upper_pct=100 * wil[1], wald_lower_pct=100 * wald[0],
               wald_upper_pct=100 * wald[1])
    if n_pos:
        row["sensitivity_pct"] = 100.0 * s["detected"] / n_pos
    ref = (paper or {}).get((level, group))
    if ref:
        _add_paper_values(row, ref)
    return row


def _add_paper_values(row, ref):
    """The paper's values of the row, the differences and the paper's note, in place."""
    for ours, theirs in (("paper_auc", "auc"), ("paper_auc_lower", "auc_lower"),
                         ("paper_auc_upper", "auc_upper"),
                         ("paper_accuracy_pct", "accuracy_pct"),
                         ("paper_accuracy_pct_lower", "accuracy_pct_lower"),
                         ("paper_accuracy_pct_upper", "accuracy_pct_upper")):
        if ref.get(theirs) is not None:
            row[ours] = float(ref[theirs])
    row["auc_diff"] = row["auc"] - row["paper_auc"]
    row["accuracy_diff_pct"] = row["accuracy_pct"] - row["paper_accuracy_pct"]
    row["paper_note"] = ref.get("note") or ""


def compute_rows(df, paper):
    """(rows, notes, case sets) for the whole predictions table."""
    sets, notes = case_sets(df)
    rows = [compute_row(level, group, y, p, paper) for level, group, y, p in sets]
    for r in rows:
        if math.isnan(r["auc"]) and r["group"] != "chemo":
            notes.append("{} {}: one class only ({} positive, {} negative); AUC not "
                         "defined.".format(LEVEL_NAMES[r["level"]], r["group"], r["n_pos"],
                                           r["n_neg"]))
        elif math.isnan(r["auc_lower"]) and not math.isnan(r["auc"]):
            notes.append("{} {}: fewer than 2 positives or negatives; DeLong variance "
                         "undefined, AUC without CI or p.".format(LEVEL_NAMES[r["level"]],
                                                                 r["group"]))
    return rows, notes, sets


def paper_ci_check(paper):
    """Which binomial CI reproduces the paper's printed accuracy CIs (to 2 decimals of %).

    Returns (lines, matching): a line per printed CI, e.g. 'slide overall 985/1000: printed
    97.75-99.25; Wald 97.75-99.25 (matches); Wilson 97.54-99.09 (differs)', and the list of
    methods ('Wald', 'Wilson') that match every printed CI.
    """
    lines, matching = [], ["Wald", "Wilson"]
    for (level, group), ref in sorted(paper.items()):
        if ref.get("accuracy_pct_lower") is None or ref.get("n") is None:
            continue
        n = int(ref["n"])
        k = int(round(float(ref["accuracy_pct"]) * n / 100.0))
        printed = (round(float(ref["accuracy_pct_lower"]), 2),
                   round(float(ref["accuracy_pct_upper"]), 2))
        parts = []
        for name in ("Wald", "Wilson"):
            ci = tuple(round(100 * v, 2) for v in proportion_ci(k, n, method=name.lower()))
            if ci != printed and name in matching:
                matching.remove(name)
            parts.append("{} {:.2f}-{:.2f} ({})".format(
                name, ci[0], ci[1], "matches" if ci == printed else "differs"))
        lines.append("{} {} {}/{}: printed {:.2f}-{:.2f}; {}".format(
            level, group, k, n, printed[0], printed[1], "; ".join(parts)))
    return lines, (matching if lines else [])


# ----------------------------------------------------------------------------- rendering

def _f(v, fmt):
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _p(v):
    if math.isnan(v):
        return ""
    return "<0.0001" if v < 1e-4 else "{:.4f}".format(v)


def _ci(v, lo, hi, fmt):
    if math.isnan(v):
        return ""
    if math.isnan(lo):
        return fmt.format(v)
    return (fmt + " [" + fmt + "-" + fmt + "]").format(v, lo, hi)


def _discussion_auc(paper, level, group):
    """' (Discussion: 0.9967)' where the paper prints another AUC for the row elsewhere
    (docs/fidelity.md, row overall-auc), else ''."""
    alt = (paper.get((level, group)) or {}).get("auc_discussion")
    return "" if alt is None else " (Discussion: {:.4f})".format(float(alt))


def render_localisation(loc_rows):
    """The Markdown section of the localisation rows (at least one), with its definitions."""
    t = loc_rows[0]["loc_cam_threshold"]
    out = ["## CAM localisation against tumour annotations (CAM threshold {:g})".format(t), "",
           "| Level | n annotated positives | Tumour area with CAM >= {0:g}, % mean (median) | "
           "n with CAM >= {0:g} | CAM >= {0:g} area in tumour, % mean (median) |".format(t),
           "|---|---|---|---|---|"]
    for r in loc_rows:
        out.append("| {} | {} | {} ({}) | {} | {} ({}) |".format(
            LEVEL_NAMES[r["level"]], r["loc_n"], _f(r["loc_tumour_covered_pct_mean"], "{:.1f}"),
            _f(r["loc_tumour_covered_pct_median"], "{:.1f}"), r["loc_n_cam"],
            _f(r["loc_cam_in_tumour_pct_mean"], "{:.1f}"),
            _f(r["loc_cam_in_tumour_pct_median"], "{:.1f}")))
    out.append("")
    return out


def localisation_note(loc_rows, source):
    """The Notes bullet that defines the localisation line (``loc_rows``: at least one)."""
    t = loc_rows[0]["loc_cam_threshold"]
    return ["- CAM localisation (from `{}`): per annotated positive case (a `foci` GeoJSON of "
            "tumour polygons in the manifest; clipped to the node outline for node crops), the "
            "displayed CAM -- sigmoid of the pre-sigmoid grid, bicubically upsampled onto the "
            "prepared image, so values are probabilities in [0, 1], not rescaled per slide -- "
            "is thresholded at {t:g} (`predict --cam-threshold`, the overlay's and the GeoJSON "
            "regions' threshold). Two areas are measured in level-0 slide pixels: the share of "
            "the tumour area where CAM >= {t:g}, and the share of the CAM >= {t:g} area that "
            "lies in tumour (defined only where some CAM >= {t:g}; 'n with CAM >= {t:g}' counts "
            "those cases). Mean and median over the cases. The paper shows CAMs but does not "
            "measure them: these rows have no paper value (stats/localisation.py).".format(
                source, t=t)]


def _level_section(level, rows, paper):
    """The Markdown heading and table of one level's rows."""
    out = ["## {} (threshold {})".format(LEVEL_NAMES[level], THRESHOLDS[level]), "",
           "| Group | n+/n- | AUC [95% CI, DeLong] | p vs dummy | Paper AUC [95% CI] | "
           "dAUC | Accuracy % | Wilson 95% CI | Wald 95% CI | Paper accuracy % [CI] | "
           "dAcc (pp) | Sensitivity % |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append("| {} | {}/{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            GROUP_NAMES[r["group"]], r["n_pos"], r["n_neg"],
            _ci(r["auc"], r["auc_lower"], r["auc_upper"], "{:.4f}"), _p(r["p_vs_dummy"]),
            _ci(r["paper_auc"], r["paper_auc_lower"], r["paper_auc_upper"], "{:.4f}") +
            _discussion_auc(paper, level, r["group"]),
            _f(r["auc_diff"], "{:+.4f}"), _f(r["accuracy_pct"], "{:.2f}"),
            _f(r["wilson_lower_pct"], "{:.2f}") + "-" + _f(r["wilson_upper_pct"], "{:.2f}"),
            _f(r["wald_lower_pct"], "{:.2f}") + "-" + _f(r["wald_upper_pct"], "{:.2f}"),
            _ci(r["paper_accuracy_pct"], r["paper_accuracy_pct_lower"],
                r["paper_accuracy_pct_upper"], "{:.2f}"),
            _f(r["accuracy_diff_pct"], "{:+.2f}"), _f(r["sensitivity_pct"], "{:.2f}")))
    out.append("")
    return out


def _notes_section(notes, paper, loc_rows, loc_source):
    """The Notes: the definitions, the paper-CI check, the localisation line's definition, the
    paper's own note on its overall AUC, then the notes of rows that could not be made."""
    checks, matching = paper_ci_check(paper)
    out = ["Notes:", "",
           "- Subgroup AUC (size, subtype) = that subgroup's positives against ALL negatives of "
           "the same level: inferred, the paper does not say which negatives (docs/fidelity.md, "
           "row `subgroup-negatives`); n+/n-, accuracy and sensitivity of those rows are "
           "over the same cases.",
           "- Chemo row = every case with preoperative chemo(radio)therapy (its own positives "
           "and negatives); the paper reports its accuracy only.",
           "- AUC CI: DeLong (1988) variance by Sun & Xu (2014), normal approximation clipped "
           "to [0, 1]. p vs dummy: paired two-sided DeLong test against a model that always "
           "outputs 0.5.",
           "- Accuracy: positive when probability >= threshold (the tie rule is inferred: "
           "docs/fidelity.md, row `thresholds`). The paper names Wilson's "
           "method for its accuracy CIs; the interval that reproduces its printed CIs (to 2 "
           "decimals of %) is: {}. Both are given above.".format(" and ".join(matching) or "neither")]
    out += ["  - " + line for line in checks]
    out += localisation_note(loc_rows, loc_source) if loc_rows else []
    out += ["- Paper: " + ref["note"] for key, ref in sorted(paper.items())
            if ref.get("note") and key[1] == "overall" and "0.9967" in ref["note"]]
    out += ["- " + n for n in notes]
    return out


def render_markdown(rows, notes, paper, title, source, loc_rows=None, loc_source=None):
    """table.md: the title, one table per level, the localisation section and the notes."""
    head = "Reproduction of the paper's results"
    out = ["# {}{}".format(head, " - " + title if title else ""), "",
           "Predictions: `{}`. Paper: Modern Pathology 2021, whole-slide ResNet-50, nodal "
           "micrometastasis in colorectal cancer.".format(source), ""]
    for level in ("slide", "node"):
        lr = [r for r in rows if r["level"] == level]
        if lr:
            out += _level_section(level, lr, paper)
    out += render_localisation(loc_rows) if loc_rows else []
    out += _notes_section(notes, paper, loc_rows, loc_source)
    out.append("")
    return "\n".join(out)


def render_csv(rows):
    """table.csv: the CSV_COLUMNS header, then one line per row (NaN blank, floats as repr)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else
                        (repr(v) if isinstance(v, float) else v)) for k, v in r.items()})
    return buf.getvalue()
