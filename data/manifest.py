"""The manifest: one CSV row per slide (or per single lymph node) of a cohort.

Required columns: ``slide_id, path, label (0/1), split (train/val/test)``.
Optional: ``size_category`` (macro/micro/itc/negative), ``subtype`` (classical/mucinous/
signet_poorly), ``chemo`` (0/1), ``level`` (slide/node; blank = slide), ``annotation`` (GeoJSON
polygon of one node, see ``data.nodes``), ``mpp`` (µm per level-0 pixel; overrides the file's),
``foci`` (GeoJSON of the row's tumour annotations in level-0 pixels, e.g. a QuPath export; used
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
    from data.slide import Slide, SlideError  # openslide only when validating

    problems = []
    missing = [c for c in REQUIRED if c not in df.columns]
    for c in missing:
        problems.append("missing required column '{}' (columns are: {})".format(
            c, ", ".join(df.columns)))
    if len(df) == 0:
        problems.append("no rows")
    if missing:
        return problems
    cols = set(df.columns)

    def where(i, row):
        return "row {} (slide_id '{}')".format(i + 2, row["slide_id"])

    seen_ids = {}
    split_of_path = {}
    entries = {}
    for i, row in df.iterrows():
        w = where(i, row)
        sid = row["slide_id"]
        if sid == "":
            problems.append("{}: empty slide_id".format(w))
        elif sid in seen_ids:
            problems.append("{}: duplicate slide_id (also row {})".format(w, seen_ids[sid] + 2))
        else:
            seen_ids[sid] = i
        label = row["label"]
        if not _is01(label):
            problems.append("{}: label '{}' is not 0 or 1".format(w, label))
        split = row["split"]
        if split not in SPLITS:
            problems.append("{}: split '{}' is not one of {}".format(w, split, "/".join(SPLITS)))
        size = row["size_category"] if "size_category" in cols else ""
        if size and size not in SIZE_CATEGORIES:
            problems.append("{}: size_category '{}' is not one of {}".format(
                w, size, "/".join(SIZE_CATEGORIES)))
        elif size and _is01(label) and (float(label) == 1) == (size == "negative"):
            problems.append("{}: label {} contradicts size_category '{}'".format(w, label, size))
        if "subtype" in cols and row["subtype"] and row["subtype"] not in SUBTYPES:
            problems.append("{}: subtype '{}' is not one of {}".format(
                w, row["subtype"], "/".join(SUBTYPES)))
        if "chemo" in cols and row["chemo"] and not _is01(row["chemo"]):
            problems.append("{}: chemo '{}' is not 0 or 1".format(w, row["chemo"]))
        if "level" in cols and row["level"] and row["level"] not in LEVELS:
            problems.append("{}: level '{}' is not one of {}".format(
                w, row["level"], "/".join(LEVELS)))
        mpp = None
        if "mpp" in cols:
            try:
                mpp = _mpp_value(row["mpp"])
            except ValueError:
                problems.append("{}: mpp '{}' is not a positive number".format(w, row["mpp"]))
        annotation = resolve(base_dir, row["annotation"]) if "annotation" in cols else ""
        foci = resolve(base_dir, row["foci"]) if "foci" in cols else ""
        for column, geojson in (("annotation", annotation), ("foci", foci)):
            if not geojson:
                continue
            if not os.path.isfile(geojson):
                problems.append("{}: {} file {} not found".format(w, column, geojson))
            else:
                from data.nodes import AnnotationError, load_polygons
                try:
                    load_polygons(geojson)
                except AnnotationError as e:
                    problems.append("{}: {}".format(w, e))
        path = resolve(base_dir, row["path"])
        if not path:
            problems.append("{}: empty path".format(w))
            continue
        real = os.path.realpath(path)
        if split in SPLITS:
            other = split_of_path.setdefault(real, (split, i))
            if other[0] != split:
                problems.append("{}: slide {} is in split '{}' and also in '{}' (row {})".format(
                    w, path, split, other[0], other[1] + 2))
        key = (real, annotation)
        if key in entries:
            problems.append("{}: same slide{} as row {}".format(
                w, " and annotation" if annotation else "", entries[key] + 2))
        else:
            entries[key] = i
        if not os.path.exists(path):
            problems.append("{}: slide file {} not found".format(w, path))
        elif open_slides:
            try:
                with Slide(path, mpp=mpp):
                    pass
            except SlideError as e:
                problems.append("{}: {}".format(w, e))
    return problems


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
