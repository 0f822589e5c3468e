"""docs/fidelity.md: the ledger is complete and well formed, every citation of it resolves, the
table's notes follow it, and nothing in the repository cites a document outside it."""
import csv
import os
import re

import numpy as np
import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEDGER = os.path.join(ROOT, "docs", "fidelity.md")
SOURCES = ("paper", "released code", "inferred")
# The rows the issue asks for (and the facts that the code once cited from outside the repo).
REQUIRED_ROWS = ("target-mpp", "resample", "head", "plateau-rule", "subgroup-negatives",
                 "node-crop-white", "cam-upsample", "wald-wilson", "camelyon-split", "unified",
                 "overall-auc", "receptive-field", "canvas", "centre-pad", "augmentation",
                 "augmentation-imgaug", "batch", "loss-optimiser", "schedule", "thresholds",
                 "synthetic-cohort", "test-slide", "peers", "direct-memory")
# "docs/fidelity.md, row `x`" (also across a wrapped comment line: "row\n  # x")
CITATION = re.compile(r"docs/fidelity\.md,?\s*(?:#\s*)?rows?\s*(?:#\s*)?`*([a-z0-9-]+)`*")
SKIP_DIRS = {".git", ".venv", "runs", "__pycache__", ".pytest_cache", "node_modules", "img"}
TEXT_EXT = (".py", ".md", ".yaml", ".yml", ".csv", ".sh", ".sbatch", ".txt", ".cfg", ".ini",
            ".toml", "Makefile", "Dockerfile")


def ledger_rows():
    """{row id: {"words", "value", "source", "where"}} from the ledger's tables."""
    rows = {}
    with open(LEDGER, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^\| `([a-z0-9-]+)` \|(.*)\|\s*$", line)
            if not m:
                continue
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", m.group(2))]
            assert len(cells) == 4, (m.group(1), cells)
            assert m.group(1) not in rows, "duplicate row " + m.group(1)
            rows[m.group(1)] = dict(zip(("words", "value", "source", "where"), cells))
    return rows


def repo_files():
    for base, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in files:
            if name.endswith(TEXT_EXT):
                path = os.path.join(base, name)
                yield os.path.relpath(path, ROOT), path


def test_ledger_rows_are_complete_and_sourced():
    rows = ledger_rows()
    missing = [r for r in REQUIRED_ROWS if r not in rows]
    assert not missing, missing
    for name, row in rows.items():
        assert row["words"] and row["value"] and row["where"], name
        assert row["source"].startswith(SOURCES), (name, row["source"])
    assert rows["subgroup-negatives"]["source"] == "inferred"
    assert rows["target-mpp"]["source"] == "inferred" and "22.5" in rows["target-mpp"]["words"]
    assert "97.75" in rows["wald-wilson"]["value"] and "97.54" in rows["wald-wilson"]["value"]


def test_ledger_locations_exist():
    for name, row in ledger_rows().items():
        for path in re.findall(r"`([\w./-]+\.(?:py|yaml|md|csv|txt))`", row["where"]):
            if "/" in path and not path.startswith("whole_slide_cnn/"):
                assert os.path.exists(os.path.join(ROOT, path)), (name, path)


def test_every_citation_names_a_row():
    rows = ledger_rows()
    cited = 0
    for rel, path in repo_files():
        if rel in (os.path.join("docs", "fidelity.md"), os.path.join("tests", "test_fidelity.py")):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        for row in CITATION.findall(text):
            cited += 1
            assert row in rows, "{} cites docs/fidelity.md row '{}', which does not exist".format(
                rel, row)
    assert cited >= 10


def test_nothing_cites_a_document_outside_the_repository():
    offenders = []
    for rel, path in repo_files():
        if rel == os.path.join("tests", "test_fidelity.py"):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for k, line in enumerate(f, 1):
                if re.search(r"\bSPEC\b|SPEC\.md", line):
                    offenders.append("{}:{}: {}".format(rel, k, line.strip()))
    assert not offenders, "\n".join(offenders)


def test_table_notes_follow_the_ledger(tmp_path):
    """A note that cites an inferred row says so; no note claims 'as in the paper'."""
    from reproduce.table import PAPER_VALUES, compute_rows, load_paper_values, render_markdown
    rows = ledger_rows()
    with open(PAPER_VALUES, newline="") as f:
        notes = [r["note"] for r in csv.DictReader(f) if r["note"]]
    for note in notes:
        assert "as in the paper" not in note
        for row in CITATION.findall(note):
            if rows[row]["source"] == "inferred":
                assert "inferred" in note or "probably" in note, note
    # the rendered table: subgroup rows are present, and their note says inferred
    rng = np.random.RandomState(0)
    y = np.r_[np.ones(12, int), np.zeros(12, int)]
    df = pd.DataFrame({"slide_id": ["s{}".format(i) for i in range(24)], "label": y,
                       "probability": np.clip(0.4 * y + rng.uniform(0, 0.6, 24), 0, 1),
                       "level": "slide",
                       "size_category": ["macro", "micro", "itc"] * 4 + ["negative"] * 12,
                       "subtype": ["classical"] * 12 + [""] * 12, "chemo": ""})
    paper = load_paper_values()
    table_rows, table_notes, _ = compute_rows(df, paper)
    md = render_markdown(table_rows, table_notes, paper, "t", "p.csv")
    assert "as in the paper" not in md
    line = next(l for l in md.splitlines() if l.startswith("- Subgroup AUC"))
    assert "inferred" in line and "subgroup-negatives" in line
    assert rows["subgroup-negatives"]["source"] == "inferred"
    # the overall AUC: both of the paper's numbers are shown
    overall = next(l for l in md.splitlines() if l.startswith("| Overall"))
    assert "0.9957" in overall and "(Discussion: 0.9967)" in overall
    macro = next(r for r in table_rows if r["group"] == "macro")
    assert "inferred" in macro["paper_note"]
