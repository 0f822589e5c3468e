"""Manifests for the public CAMELYON16/17 lymph-node cohorts from their official label files.

- CAMELYON16 test reference (``reference.csv``: ``Test_001,Tumor,IDC,Macro``, no header): every
  row is a test slide; label Tumor -> 1, Normal -> 0; size_category Macro -> macro, Micro -> micro,
  None -> negative; the third field goes to an extra column ``histology``. Training slides
  (``normal_NNN.tif``, ``tumor_NNN.tif``, labelled by their names) found under the slide folder
  may be added too (``include_train``), split into train/val with the seed.
- CAMELYON17 stage labels (``stage_labels.csv``: header ``patient,stage``): rows
  ``patient_NNN_node_M.tif,<negative|itc|micro|macro>`` are slides; rows ``patient_NNN.zip,pN..``
  are patients and are not slides (their pN stage only stratifies the split). size_category is
  the stage (the paper's own categories); label = 0 for negative, 1 for itc/micro/macro: the paper
  counts ITC slides among its positives (500 positive = 439 macro + 56 micro + 5 ITC).
  split: seeded and patient-level (all nodes of a patient in one split, so no patient is in two
  splits), stratified by the patient's pN stage; an extra column ``patient`` records it. These
  splits are our choice (docs/fidelity.md, row ``camelyon-split``).

A slide's file is looked for under the slide folder (recursively, case-insensitively, .tif or
.tiff): CAMELYON16 ships ``test_001.tif`` for ``Test_001``, CAMELYON17 ``centre_k/`` subfolders.

Lesion annotations (``add_foci``): the challenges' ASAP XML files, one per annotated slide and
named after it (``tumor_001.xml``, ``test_001.xml``, ``patient_004_node_4.xml``), are looked for
the same way (recursively, case-insensitively, .xml) under an annotation folder; each slide with
one gets its absolute path in the ``foci`` column (read by ``data.nodes.load_polygons``, see
``data.asap``), the others an empty ``foci``.
"""
import csv
import os
import re

import numpy as np
import pandas as pd

from data.errors import InputError
from data.files import atomic_write_text

SIZE_16 = {"macro": "macro", "micro": "micro", "none": "negative"}
STAGES_17 = ("negative", "itc", "micro", "macro")
COLUMNS = ["slide_id", "path", "label", "split", "size_category", "level"]
# Missing slide names shown in a message; the rest are in the .missing.txt file.
SHOW_MISSING = 5


class CamelyonError(InputError):
    """A label file that is not what it should be. Message names the file and line."""


def detect(labels_path):
    """16 or 17 from the label file's first line."""
    with open(labels_path, newline="") as f:
        first = next(csv.reader(f), [])
    if [c.strip().lower() for c in first[:2]] == ["patient", "stage"]:
        return 17
    if first and re.match(r"(?i)test_\d+$", first[0].strip()):
        return 16
    raise CamelyonError("{}: line 1 is neither a CAMELYON17 'patient,stage' header nor a "
                        "CAMELYON16 'Test_NNN,...' row".format(labels_path))


def find_files(folder, extensions):
    """{lower-case file stem: absolute path} of every file under ``folder`` (recursively) whose
    extension is one of ``extensions`` (lower case); the first in walk order wins a clash."""
    found = {}
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() in extensions:
                found.setdefault(stem.lower(), os.path.abspath(os.path.join(root, name)))
    return found


def find_slides(slides_dir):
    """{lower-case file stem: path} of every .tif/.tiff under ``slides_dir``."""
    return find_files(slides_dir, (".tif", ".tiff"))


def find_annotations(annotations_dir):
    """{lower-case file stem: path} of every ASAP .xml file under ``annotations_dir``."""
    return find_files(annotations_dir, (".xml",))


def add_foci(df, annotations_dir):
    """Fills ``df``'s ``foci`` column (added if absent) with the XML file of each slide found
    under ``annotations_dir`` (matched by slide_id, case-insensitively; '' when there is none).
    Returns the names of the XML files that match no slide of ``df``, sorted."""
    if not os.path.isdir(annotations_dir):
        raise CamelyonError("{}: no such folder (--annotations)".format(annotations_dir))
    found = find_annotations(annotations_dir)
    ids = df["slide_id"].astype(str).str.lower()
    df["foci"] = [found.get(i, "") for i in ids]
    matched = set(ids)
    return sorted(os.path.basename(p) for stem, p in found.items() if stem not in matched)


def _read_rows(path):
    with open(path, newline="") as f:
        return [[c.strip() for c in r] for r in csv.reader(f) if any(c.strip() for c in r)]


def camelyon16_rows(labels_path):
    out = []
    for n, r in enumerate(_read_rows(labels_path), 1):
        if len(r) < 2 or r[1].lower() not in ("tumor", "normal"):
            raise CamelyonError("{}: line {}: expected 'Test_NNN,Tumor|Normal,...', got {}".format(
                labels_path, n, ",".join(r)))
        label = 1 if r[1].lower() == "tumor" else 0
        size = SIZE_16.get(r[3].lower(), "") if len(r) > 3 else ""
        if size == "negative" and label == 1:
            size = ""  # a tumour slide without a size class: unknown, not negative
        out.append(dict(slide_id=r[0], label=label, split="test", size_category=size,
                        level="slide", histology=r[2] if len(r) > 2 else ""))
    return out


def camelyon17_rows(labels_path):
    """(slide rows, {patient: pN stage})."""
    rows, patients = [], {}
    for n, r in enumerate(_read_rows(labels_path)[1:], 2):
        if len(r) < 2:
            raise CamelyonError("{}: line {}: expected 'name,stage'".format(labels_path, n))
        name, stage = r[0], r[1].lower()
        if name.lower().endswith(".zip"):
            patients[name[:-4]] = r[1]
            continue
        m = re.match(r"(?i)(patient_\d+)_node_\d+\.tiff?$", name)
        if not m or stage not in STAGES_17:
            raise CamelyonError("{}: line {}: expected 'patient_NNN_node_M.tif,{}', got {}".format(
                labels_path, n, "|".join(STAGES_17), ",".join(r)))
        rows.append(dict(slide_id=os.path.splitext(name)[0], label=int(stage != "negative"),
                         split="", size_category=stage, level="slide", patient=m.group(1)))
    return rows, patients


def patient_split(patients, strata, seed, val_fraction, test_fraction):
    """{patient: split}: within each stratum, a seeded shuffle, then round(n*test) test,
    round(n*val) val, the rest train."""
    rng = np.random.RandomState(seed)
    out = {}
    for key in sorted(set(strata.values())):
        group = sorted(p for p in patients if strata[p] == key)
        rng.shuffle(group)
        n_test = int(round(len(group) * test_fraction))
        n_val = int(round(len(group) * val_fraction))
        for i, p in enumerate(group):
            out[p] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


def build_manifest(labels_path, slides_dir, which=None, seed=0, val_fraction=0.2,
                   test_fraction=0.2, include_train=True, mpp=None, keep_missing=False):
    """(manifest DataFrame, list of slide_ids whose file is missing).

    Missing slides are left out of the DataFrame (``path`` would not exist), unless
    ``keep_missing``: then their path is ``slides_dir/<slide_id>.tif``.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise CamelyonError("--val-fraction and --test-fraction must be in [0, 1) with a sum "
                            "below 1")
    if not os.path.isfile(labels_path):
        raise CamelyonError("{}: no such label file".format(labels_path))
    which = which or detect(labels_path)
    found = find_slides(slides_dir) if os.path.isdir(slides_dir) else {}
    if which == 16:
        rows = camelyon16_rows(labels_path)
        if include_train:
            train = []
            for stem in sorted(found):
                m = re.match(r"(normal|tumor)_\d+$", stem)
                if m:
                    train.append(dict(slide_id=stem, label=int(m.group(1) == "tumor"),
                                      split="train", size_category="" if m.group(1) == "tumor"
                                      else "negative", level="slide", histology=""))
            if train:
                ids = [r["slide_id"] for r in train]
                split = patient_split(ids, {i: r["label"] for i, r in zip(ids, train)}, seed,
                                      val_fraction, 0.0)
                for r in train:
                    r["split"] = split[r["slide_id"]]
            rows = train + rows
    elif which == 17:
        rows, stages = camelyon17_rows(labels_path)
        names = sorted({r["patient"] for r in rows})
        worst = {}
        for r in rows:  # stratum: the pN stage, else the patient's worst node
            rank = STAGES_17.index(r["size_category"])
            worst[r["patient"]] = max(worst.get(r["patient"], 0), rank)
        strata = {p: stages.get(p, STAGES_17[worst[p]]) for p in names}
        split = patient_split(names, strata, seed, val_fraction, test_fraction)
        for r in rows:
            r["split"] = split[r["patient"]]
    else:
        raise CamelyonError("--which must be 16 or 17, got {}".format(which))
    missing, kept = [], []
    for r in rows:
        path = found.get(r["slide_id"].lower())
        if path is None:
            missing.append(r["slide_id"])
            if not keep_missing:
                continue
            path = os.path.join(os.path.abspath(slides_dir), r["slide_id"] + ".tif")
        r["path"] = path
        if mpp is not None:
            r["mpp"] = mpp
        kept.append(r)
    extra = [c for c in ("histology", "patient", "mpp") if any(c in r for r in rows)
             and (c != "mpp" or mpp is not None)]
    df = pd.DataFrame(kept, columns=COLUMNS + extra)
    return df, missing


# --------------------------------------------------------------------------- what is missing

def missing_list_path(out):
    """The file beside the manifest ``out`` that lists every missing slide."""
    return os.path.splitext(out)[0] + ".missing.txt"


def _first_names(names):
    """The first SHOW_MISSING names, comma-separated, and 'and N more' for the rest."""
    more = len(names) - SHOW_MISSING
    return ", ".join(names[:SHOW_MISSING]) + (" and {} more".format(more) if more > 0 else "")


def missing_message(missing, labels, slides, list_path):
    """One line: the count, the first SHOW_MISSING names, and the file with all of them."""
    return "{} slide(s) of {} not found under {}: {}; full list in {}".format(
        len(missing), labels, slides, _first_names(missing), list_path)


def unmatched_message(unmatched, annotations):
    """One warning line: the XML files under ``annotations`` that match no manifest slide."""
    return "warning: {} annotation file(s) under {} match no slide of the manifest: {}".format(
        len(unmatched), annotations, _first_names(unmatched))


def write_missing_list(out, missing, labels, slides):
    """Lists the ``missing`` slides, one name a line, beside the manifest ``out``
    (``missing_list_path``; the CAMELYON16 reference names 130 test slides, the CAMELYON17 labels
    500 nodes: too many for one line) and returns ``missing_message``; with none missing, removes
    an older run's list (it would be stale) and returns None."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    list_path = missing_list_path(out)
    if missing:
        atomic_write_text(list_path, "".join(name + "\n" for name in missing))
        return missing_message(missing, labels, slides, list_path)
    if os.path.isfile(list_path):
        os.remove(list_path)
    return None


def summary_line(df, out, missing, keep_missing):
    """The manifest written to ``out`` in one line: slides per split and class, the missing
    ones and the tumour outlines found."""
    counts = df.groupby(["split", "label"]).size().to_dict() if len(df) else {}
    return "{}: {} slides ({}){}{}".format(
        out, len(df), ", ".join("{} {}: {}".format(s, "pos" if l else "neg", n)
                                for (s, l), n in sorted(counts.items())),
        "; {} missing {}".format(len(missing), "kept" if keep_missing else "left out")
        if missing else "",
        "; tumour outlines for {}".format(int((df["foci"] != "").sum()))
        if "foci" in df.columns else "")
