"""The manifest: one CSV row per slide (or per single lymph node) of a cohort.

Required columns: ``slide_id, path, label (0/1), split (train/val/test)``.
Optional: ``size_category`` (macro/micro/itc/negative), ``subtype`` (classical/mucinous/
signet_poorly), ``chemo`` (0/1), ``level`` (slide/node; blank = slide), ``annotation`` (GeoJSON
polygon of one node, see ``data.nodes``), ``mpp`` (µm per level-0 pixel; overrides the file's),
``foci`` (GeoJSON of the row's tumour annotations in level-0 pixels, e.g. a QuPath export, or a CAMELYON ASAP XML file; used
only to outline the CAMs and measure their localisation, never in training).
Relative ``path``, ``annotation`` and ``foci`` resolve against the manifest's folder. Blank optional
cells mean "not known". Other columns are kept and passed through.

``validate`` opens every slide (OpenSlide) because whether a slide has an mpp, or is a slide at
all, can only be seen that way; it reports every problem at once.
"""
import os

import pandas as pd

from data.errors import InputError

REQUIRED = ("slide_id", "path", "label", "split")
OPTIONAL = ("size_category", "subtype", "chemo", "level", "annotation", "mpp", "foci")
SPLITS = ("train", "val", "test")
# The paper's subgroups, the one home of these names (synth, table and figures use them).
POSITIVE_SIZES = ("macro", "micro", "itc")     # metastasis size: macro, micro, isolated tumour cells
SIZE_CATEGORIES = POSITIVE_SIZES + ("negative",)
SUBTYPES = ("classical", "mucinous", "signet_poorly")
LEVELS = ("slide", "node")


class ManifestError(InputError):
    """The manifest file itself cannot be read as a CSV. Message names the file."""


def load_manifest(path):
    """The manifest as a DataFrame of stripped strings (blank cells are ''), in file order.

    Values are checked by ``validate``; ``coerce`` then gives typed columns.
    """
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        raise ManifestError("{}: no such manifest file".format(path))
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise ManifestError("{}: cannot read as CSV ({})".format(path, str(e).splitlines()[0]))
    df.columns = [str(c).strip() for c in df.columns]
    for c in df.columns:
        df[c] = df[c].astype(str).str.strip()
    return df


def resolve(base_dir, value):
    """A manifest path cell as an absolute path ('' stays '')."""
    if not value:
        return ""
    value = os.path.expanduser(value)
    return os.path.abspath(value if os.path.isabs(value) else os.path.join(base_dir, value))


def _is01(v):
    return v in ("0", "1", "0.0", "1.0")


def _mpp_value(v):
    """float mpp from a cell, None when blank; raises ValueError when not a positive number."""
    if v == "":
        return None
    x = float(v)
    if not x > 0:
        raise ValueError(v)
    return x


def validate(df, base_dir, open_slides=True):
    """Every problem of the manifest, as one line each (an empty list when it is fine).

    Lines name the data row (``row N`` = line N of the CSV, header = line 1) and the slide_id.
    With ``open_slides`` every slide is opened to check that OpenSlide reads it and that an mpp
    is known (from the file or the ``mpp`` column).
    """
    missing = [c for c in REQUIRED if c not in df.columns]
    problems = ["missing required column '{}' (columns are: {})".format(c, ", ".join(df.columns))
                for c in missing]
    if len(df) == 0:
        problems.append("no rows")
    if missing:
        return problems
    seen = _Seen()
    for i, row in df.iterrows():
        where = "row {} (slide_id '{}')".format(i + 2, row["slide_id"])
        problems += ["{}: {}".format(where, p)
                     for p in _row_problems(i, row, base_dir, seen, open_slides)]
    return problems


class _Seen(object):
    """What the rows before this one hold, for the checks across rows: the row of each slide_id,
    the (split, row) of each slide file, the row of each (slide file, annotation) pair."""

    def __init__(self):
        self.ids, self.split_of_path, self.entries = {}, {}, {}


def _row_problems(i, row, base_dir, seen, open_slides):
    """The problems of data row ``i`` (0-based), in the order of its columns, then its files."""
    problems = _id_problems(i, row, seen)
    problems += _value_problems(row)
    mpp, bad_mpp = _row_mpp(row)
    problems += bad_mpp
    problems += _geojson_problems(row, base_dir)
    path = resolve(base_dir, row["path"])
    if not path:
        return problems + ["empty path"]
    annotation = resolve(base_dir, row.get("annotation", ""))
    problems += _repeat_problems(i, row["split"], path, annotation, seen)
    return problems + _slide_problems(path, mpp, open_slides)


def _id_problems(i, row, seen):
    """An empty slide_id, or one an earlier row has."""
    sid = row["slide_id"]
    if sid == "":
        return ["empty slide_id"]
    if sid in seen.ids:
        return ["duplicate slide_id (also row {})".format(seen.ids[sid] + 2)]
    seen.ids[sid] = i
    return []


def _value_problems(row):
    """Values outside their column's vocabulary: label, split, size_category (and a label that
    contradicts it), subtype, chemo, level."""
    problems = []
    label, split = row["label"], row["split"]
    if not _is01(label):
        problems.append("label '{}' is not 0 or 1".format(label))
    if split not in SPLITS:
        problems.append("split '{}' is not one of {}".format(split, "/".join(SPLITS)))
    size = row.get("size_category", "")
    if size and size not in SIZE_CATEGORIES:
        problems.append("size_category '{}' is not one of {}".format(
            size, "/".join(SIZE_CATEGORIES)))
    elif size and _is01(label) and (float(label) == 1) == (size == "negative"):
        problems.append("label {} contradicts size_category '{}'".format(label, size))
    subtype, chemo, level = row.get("subtype", ""), row.get("chemo", ""), row.get("level", "")
    if subtype and subtype not in SUBTYPES:
        problems.append("subtype '{}' is not one of {}".format(subtype, "/".join(SUBTYPES)))
    if chemo and not _is01(chemo):
        problems.append("chemo '{}' is not 0 or 1".format(chemo))
    if level and level not in LEVELS:
        problems.append("level '{}' is not one of {}".format(level, "/".join(LEVELS)))
    return problems


def _row_mpp(row):
    """(the ``mpp`` override or None, its problems): a value that is not a positive number."""
    try:
        return _mpp_value(row.get("mpp", "")), []
    except ValueError:
        return None, ["mpp '{}' is not a positive number".format(row["mpp"])]


def _geojson_problems(row, base_dir):
    """An ``annotation`` or ``foci`` file that is missing or holds no usable polygon."""
    problems = []
    for column in ("annotation", "foci"):
        geojson = resolve(base_dir, row.get(column, ""))
        if not geojson:
            continue
        if not os.path.isfile(geojson):
            problems.append("{} file {} not found".format(column, geojson))
            continue
        from data.nodes import AnnotationError, load_polygons
        try:
            load_polygons(geojson)
        except AnnotationError as e:
            problems.append(str(e))
    return problems


def _repeat_problems(i, split, path, annotation, seen):
    """One slide file in two splits (a leak between training and test), or the same slide (and
    annotation) in two rows."""
    problems = []
    real = os.path.realpath(path)
    if split in SPLITS:
        other = seen.split_of_path.setdefault(real, (split, i))
        if other[0] != split:
            problems.append("slide {} is in split '{}' and also in '{}' (row {})".format(
                path, split, other[0], other[1] + 2))
    key = (real, annotation)
    if key in seen.entries:
        problems.append("same slide{} as row {}".format(
            " and annotation" if annotation else "", seen.entries[key] + 2))
    else:
        seen.entries[key] = i
    return problems


def _slide_problems(path, mpp, open_slides):
    """A slide file that is missing or, with ``open_slides``, that OpenSlide cannot read or
    whose mpp is unknown."""
    if not os.path.exists(path):
        return ["slide file {} not found".format(path)]
    if not open_slides:
        return []
    from data.slide import Slide, SlideError  # openslide only when validating
    try:
        with Slide(path, mpp=mpp):
            pass
    except SlideError as e:
        return [str(e)]
    return []


def coerce(df, base_dir):
    """Typed copy of a validated manifest: absolute ``path``/``annotation``/``foci``, int
    ``label``, ``level`` filled with 'slide', ``chemo`` as nullable Int64, ``mpp`` as float (NaN
    blank)."""
    out = df.copy()
    out["path"] = [resolve(base_dir, p) for p in out["path"]]
    for column in ("annotation", "foci"):
        if column in out.columns:
            out[column] = [resolve(base_dir, p) for p in out[column]]
    out["label"] = out["label"].astype(float).astype(int)
    if "level" in out.columns:
        out["level"] = out["level"].replace("", "slide")
    if "chemo" in out.columns:
        out["chemo"] = pd.to_numeric(out["chemo"], errors="coerce").astype("Int64")
    if "mpp" in out.columns:
        out["mpp"] = pd.to_numeric(out["mpp"], errors="coerce")
    return out
