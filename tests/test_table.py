"""`python -m reproduce table`: rows, subgroup definitions, paper values, bad input, figures."""
import csv
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import stats
from reproduce.__main__ import main
from stats.table import load_paper_values, paper_ci_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_predictions(seed=0, with_itc=True):
    """Slide and node rows with subgroups; probabilities rounded so that ties occur."""
    rng = np.random.RandomState(seed)
    rows = []
    for level, n_pos, n_neg in (("slide", 24, 30), ("node", 15, 25)):
        sizes = ["macro", "micro", "itc"] if with_itc else ["macro", "micro"]
        for i in range(n_pos + n_neg):
            pos = i < n_pos
            size = sizes[i % len(sizes)] if pos else "negative"
            shift = {"macro": 2.5, "micro": 1.5, "itc": 0.3, "negative": 0.0}[size]
            prob = round(1 / (1 + np.exp(-(rng.randn() + shift - 1.0))), 2)
            rows.append({"slide_id": "{}{:03d}".format(level[0], i), "probability": prob,
                         "label": int(pos), "level": level, "size_category": size,
                         "subtype": ["classical", "mucinous", "signet_poorly"][i % 3]
                         if pos else "", "chemo": int(i % 5 == 0)})
    return pd.DataFrame(rows)


def run_table(tmp_path, df, *extra, name="pred.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    out = tmp_path / "out"
    code = main(["table", "--predictions", str(path), "--out", str(out), *extra])
    return code, out


def read_rows(out):
    with open(str(out / "table.csv")) as f:
        return {(r["level"], r["group"]): r for r in csv.DictReader(f)}


def test_rows_subgroups_and_paper_values(tmp_path, capsys):
    df = make_predictions()
    code, out = run_table(tmp_path, df, "--no-figures", "--title", "SYNTHETIC cohort")
    assert code == 0
    rows = read_rows(out)
    paper = load_paper_values()
    groups = ["overall", "macro", "micro", "itc", "classical", "mucinous", "signet_poorly",
              "chemo"]
    assert list(rows) == [(lv, g) for lv in ("slide", "node") for g in groups]
    for (level, group), r in rows.items():
        d = df[df.level == level]
        if group == "overall":
            sub = d
        elif group == "chemo":
            sub = d[d.chemo == 1]
        else:  # subgroup positives against ALL negatives of the level
            col = "size_category" if group in ("macro", "micro", "itc") else "subtype"
            sub = d[(d.label == 0) | (d[col] == group)]
        y, p = sub.label.values, sub.probability.values
        assert (int(r["n_pos"]), int(r["n_neg"])) == (int(y.sum()), int((1 - y).sum()))
        assert float(r["auc"]) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        ci = stats.auc_ci(y, p)
        assert float(r["auc_lower"]) == pytest.approx(ci.lower, abs=1e-12)
        assert float(r["p_vs_dummy"]) == pytest.approx(
            stats.delong_test(y, p, np.full(len(y), 0.5)).p, rel=1e-9, abs=1e-300)
        thr = 0.5 if level == "slide" else 0.3
        acc = np.mean((p >= thr) == y)
        assert float(r["accuracy_pct"]) == pytest.approx(100 * acc, abs=1e-9)
        k = int(round(acc * len(y)))
        wald = stats.proportion_ci(k, len(y), method="wald")
        assert float(r["wald_lower_pct"]) == pytest.approx(100 * wald[0], abs=1e-9)
        ref = paper[(level, group)]
        if ref["auc"] is not None:
            assert float(r["paper_auc"]) == ref["auc"]
            assert float(r["auc_diff"]) == pytest.approx(float(r["auc"]) - ref["auc"],
                                                         abs=1e-12)
        if ref["accuracy_pct"] is not None:
            assert float(r["accuracy_diff_pct"]) == pytest.approx(
                float(r["accuracy_pct"]) - ref["accuracy_pct"], abs=1e-9)
    md = (out / "table.md").read_text()
    assert md.splitlines()[0].endswith("SYNTHETIC cohort")
    assert "0.9967" in md  # the paper's 0.9957 vs 0.9967 slip is carried
    assert "Wald 97.75-99.25 (matches)" in md and "Wilson 97.54-99.09 (differs)" in md
    assert "ALL negatives" in md
    assert md in capsys.readouterr().out


def test_paper_values_file_holds_the_papers_numbers():
    paper = load_paper_values()
    assert paper[("slide", "overall")]["auc"] == 0.9957
    assert (paper[("slide", "overall")]["auc_lower"], paper[("slide", "overall")]["auc_upper"]) \
        == (0.9935, 0.9999)
    assert paper[("node", "overall")]["accuracy_pct"] == 97.58
    assert paper[("slide", "itc")]["auc"] == 0.7828 and paper[("node", "itc")]["auc"] == 0.7844
    assert paper[("slide", "chemo")]["accuracy_pct"] == 98.31
    assert paper[("slide", "chemo")]["auc"] is None
    lines, matching = paper_ci_check(paper)
    assert matching == ["Wald"]
    assert len(lines) == 2 and all("Wald" in s and "(matches)" in s.split("Wilson")[0]
                                   for s in lines)


def test_paper_split_counts_are_not_table_rows():
    """The paper's per-split slide counts (Datasets) are kept beside its values, out of the
    table: no row of level 'split' reaches the table or the CI check."""
    from stats.table import load_paper_splits
    assert load_paper_splits() == {"train": (973, 990, 1963), "val": (116, 103, 219),
                                   "test": (500, 500, 1000)}
    paper = load_paper_values()
    assert not any(level == "split" for level, _ in paper)
    assert load_paper_splits()["test"][2] == paper[("slide", "overall")]["n"]


def test_table_errors_are_input_errors_not_value_errors():
    from data.errors import InputError
    from stats.table import TableError
    assert issubclass(TableError, InputError) and not issubclass(TableError, ValueError)


def test_empty_subgroup_skipped_and_one_class_chemo(tmp_path):
    df = make_predictions(1, with_itc=False)
    df.loc[(df.chemo == 1), "label"] = 1  # chemo subset all positive: accuracy only
    df.loc[(df.chemo == 1), "size_category"] = "macro"
    df.loc[(df.chemo == 1) & (df.subtype == ""), "subtype"] = "classical"
    code, out = run_table(tmp_path, df, "--no-figures")
    assert code == 0
    rows = read_rows(out)
    assert ("slide", "itc") not in rows and ("node", "itc") not in rows
    md = (out / "table.md").read_text()
    assert "no positive case with size_category = itc; row skipped" in md
    chemo = rows[("slide", "chemo")]
    assert chemo["auc"] == "" and chemo["n_neg"] == "0" and float(chemo["accuracy_pct"]) > 0


def test_missing_level_means_slide_and_manifest_fills_columns(tmp_path):
    df = make_predictions(2)
    df = df[df.level == "slide"]
    manifest = df[["slide_id", "size_category", "subtype", "chemo"]].copy()
    manifest["path"] = manifest.slide_id + ".svs"
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    bare = df[["slide_id", "probability", "label"]]
    code, out = run_table(tmp_path, bare, "--no-figures", "--manifest",
                          str(tmp_path / "manifest.csv"))
    assert code == 0
    rows = read_rows(out)
    assert ("slide", "micro") in rows and ("slide", "chemo") in rows
    assert not any(level == "node" for level, _ in rows)
    code, out_full = run_table(tmp_path, df.drop(columns="level"), "--no-figures",
                               name="full.csv")
    full = read_rows(out_full)
    assert rows == full


@pytest.mark.parametrize("mutate,words", [
    (lambda d: d.drop(columns="label"), ["'label'", "missing"]),
    (lambda d: d.assign(label=d.label.where(d.index % 7 != 3, 2)), ["'label'", "row 4", "bad rows"]),
    (lambda d: d.assign(probability=d.probability.where(d.index != 5, 1.5)),
     ["'probability'", "row 6", "1 bad row"]),
    (lambda d: d.assign(probability=d.probability.where(d.index != 0, np.nan)),
     ["'probability'", "row 1"]),
    (lambda d: d.assign(level=d.level.where(d.index != 2, "patch")), ["'level'", "row 3"]),
    (lambda d: d.assign(size_category=d.size_category.where(d.index != 1, "huge")),
     ["'size_category'", "row 2"]),
])
def test_bad_input_names_column_and_row(tmp_path, capsys, mutate, words):
    code, out = run_table(tmp_path, mutate(make_predictions()), "--no-figures")
    err = capsys.readouterr().err
    assert code == 2 and not (out / "table.md").exists()
    assert len(err.strip().splitlines()) == 1
    for w in words:
        assert w in err


def test_cli_error_has_no_traceback(tmp_path):
    make_predictions().drop(columns="probability").to_csv(tmp_path / "p.csv", index=False)
    r = subprocess.run([sys.executable, "-m", "reproduce", "table", "--predictions",
                        str(tmp_path / "p.csv"), "--out", str(tmp_path / "o")],
                       cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "'probability'" in r.stderr


def test_figures_only_supported_panels(tmp_path):
    df = make_predictions(3)
    df = df[df.level == "slide"]
    log = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.7, 0.5, 0.4],
                        "val_loss": [0.72, 0.6, 0.55], "train_accuracy": [0.5, 0.7, 0.8],
                        "val_accuracy": [0.5, 0.65, 0.7]})
    log.to_csv(tmp_path / "log.csv", index=False)
    code, out = run_table(tmp_path, df, "--log", str(tmp_path / "log.csv"))
    assert code == 0
    pngs = sorted(f for f in os.listdir(str(out)) if f.endswith(".png"))
    assert pngs == sorted(["fig1.png", "fig1a.png", "fig1b.png", "fig1c.png", "fig2.png"] +
                          ["fig2{}.png".format(c) for c in "abcdef"])
    for f in pngs:
        with open(str(out / f), "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_log_is_a_user_error(tmp_path, capsys):
    pd.DataFrame({"epoch": [1], "train_loss": [0.5]}).to_csv(tmp_path / "log.csv", index=False)
    code, _ = run_table(tmp_path, make_predictions(), "--log", str(tmp_path / "log.csv"))
    assert code == 2 and "'val_loss'" in capsys.readouterr().err
