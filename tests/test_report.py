"""The reviewer's report (`reproduce report`, report/page.py): one self-contained HTML file.

The run folder is built from the real stages that need no training: ``reproduce table`` on
seeded predictions with a training log (table.csv, table.md, every figure), ``model.cam.export``
for each predicted row (the overlays ``predict --cam`` writes), the demo's own stamps
(``report.run.Runner``) and a copy of the demo config. The checks: every embedded image
decodes, nothing is fetched from anywhere, the numbers shown are table.csv's, the gallery is
complete and sorted, the provenance is this checkout's; and headless Chromium renders the page
with the table's text and a decoded CAM. The browser test does not skip: CI installs Chromium
(docker/install-system.sh), and a machine without it fails with the reason.
"""
import base64
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

from tests.conftest import tissue

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAMPED = ("synth", "prepare", "train", "predict", "table")
NOT_SHOWN = {"level", "group", "auc_variance", "threshold", "paper_note"}  # shown otherwise


class Page(HTMLParser):
    """Every tag with its attributes, all text, each ``<span data-col>`` as ((level, group) of
    its row, column, text), and the text of each ``<pre>``."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.values, self.text, self.pre = [], [], [], []
        self._row, self._col, self._buf = None, None, []
        self._pre, self._buf_pre = False, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "tr":
            self._row = (a.get("data-level"), a.get("data-group"))
        if tag == "span" and "data-col" in a:
            self._col, self._buf = a["data-col"], []
        if tag == "pre":
            self._pre, self._buf_pre = True, []

    def handle_endtag(self, tag):
        if tag == "span" and self._col is not None:
            self.values.append((self._row, self._col, "".join(self._buf).strip()))
            self._col = None
        if tag == "pre" and self._pre:
            self.pre.append("".join(self._buf_pre))
            self._pre = False

    def handle_data(self, data):
        self.text.append(data)
        if self._col is not None:
            self._buf.append(data)
        if self._pre:
            self._buf_pre.append(data)


def _parse(path):
    page = Page()
    with open(path, encoding="utf-8") as f:
        page.feed(f.read())
    return page


def _decode(uri):
    from PIL import Image
    m = re.match(r"^data:(image/[a-z]+);base64,(.*)$", uri, re.S)
    assert m, uri[:60]
    data = base64.b64decode(m.group(2), validate=True)
    im = Image.open(io.BytesIO(data))
    im.load()                      # decodes every pixel; a truncated image raises here
    return im


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _make_run(base, seed=11):
    """A run folder as the demo leaves it, from the real table, CAM export and stamp code."""
    import pandas as pd
    from model.cam import export
    from report.run import Runner
    rng = np.random.RandomState(seed)
    run = os.path.join(base, "run")
    cohort = os.path.join(run, "cohort")
    os.makedirs(cohort)
    rows = []
    sizes, subtypes = ("macro", "micro", "itc"), ("classical", "mucinous", "signet_poorly")
    for level, n in (("slide", 8), ("node", 6)):
        for i in range(n):
            label = int(i % 2 == 0)
            p = float(np.clip(rng.beta(4, 2) if label else rng.beta(2, 4), 0.0, 1.0))
            # an id with characters a file name cannot hold: the CAM is found by its stem
            sid = "S {}/{:02d}".format(level, i) if i == 1 else "{}-{:02d}".format(level, i)
            rows.append({"slide_id": sid, "probability": p, "label": label, "level": level,
                         "size_category": sizes[i // 2 % 3] if label else "negative",
                         "subtype": subtypes[i // 2 % 3] if label else "",
                         "chemo": str(i % 3 == 0 and 1 or 0)})
    pred = pd.DataFrame(rows)
    manifest = os.path.join(cohort, "manifest.csv")
    pred.assign(path="x.tiff", split="test").to_csv(manifest, index=False)
    with open(os.path.join(cohort, "cohort.json"), "w") as f:
        json.dump({"synthetic": True, "seed": seed}, f)
    predict = os.path.join(run, "predict")
    os.makedirs(predict)
    predictions = os.path.join(predict, "predictions.csv")
    pred.to_csv(predictions, index=False)
    log = os.path.join(run, "train_log.csv")
    epochs = np.arange(1, 5)
    pd.DataFrame({"epoch": epochs, "train_loss": 1.0 / epochs, "val_loss": 1.2 / epochs,
                  "train_accuracy": 1 - 0.3 / epochs,
                  "val_accuracy": 1 - 0.35 / epochs}).to_csv(log, index=False)
    made = subprocess.run([sys.executable, "-m", "reproduce", "table", "--predictions",
                           predictions, "--manifest", manifest, "--log", log, "--out",
                           os.path.join(run, "table"), "--title", "SYNTHETIC cohort"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=300)
    assert made.returncode == 0, made.stdout[-3000:]
    for k, r in enumerate(rows):
        image = tissue(64 + 2 * k, 96, seed=k)
        export(r["slide_id"], image, rng.randn(3, 3) * 2.0, 96, r["probability"],
               os.path.join(predict, "cam"), target_mpp=8.0, level0_mpp=1.0, label=r["label"])
    config = os.path.join(run, "demo.yaml")
    shutil.copyfile(os.path.join(ROOT, "configs", "demo.yaml"), config)
    runner = Runner(run)
    for stage in STAMPED:
        # a command that does nothing, stamped with the flags of the real stage's command line,
        # from which the report finds the config and the manifest
        flags = ["--config", config, "--manifest", manifest] if stage == "train" else []
        runner.stage(stage, [sys.executable, "-c", "pass"] + flags, always=True)
    return {"run": run, "manifest": manifest, "predictions": predictions, "config": config,
            "rows": rows}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The run folder and its report, written by the command line (config and manifest found
    through the run's stamps, as `reproduce report --run runs/demo` does)."""
    made = _make_run(str(tmp_path_factory.mktemp("report")))
    out = os.path.join(made["run"], "report.html")
    p = subprocess.run([sys.executable, "-m", "reproduce", "report", "--run", made["run"]],
                       cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:]
    assert "report: {}".format(out) in p.stdout
    made.update(html=out, page=_parse(out))
    return made


def test_every_image_is_embedded_and_decodes_and_nothing_is_fetched(report):
    page = report["page"]
    images = [a for tag, a in page.tags if tag == "img"]
    assert images
    for a in images:
        im = _decode(a["src"])
        assert im.size[0] > 0 and im.size[1] > 0
    n = len(report["rows"])
    thumbs = [a for tag, a in page.tags if tag == "img" and a.get("class") == "cam-thumb"]
    full = [a for tag, a in page.tags if tag == "img" and a.get("class") == "cam-full"]
    assert len(thumbs) == n and len(full) == n
    cam_dir = os.path.join(os.path.dirname(report["predictions"]), "cam")
    on_disk = sorted(f for f in os.listdir(cam_dir) if f.endswith(".png"))
    assert len(on_disk) == n
    # the full-size overlays are the files themselves, byte for byte
    embedded = {base64.b64decode(a["src"].split(",", 1)[1]) for a in full}
    for name in on_disk:
        with open(os.path.join(cam_dir, name), "rb") as f:
            assert f.read() in embedded, name
    figures = [f for f in os.listdir(os.path.join(report["run"], "table"))
               if re.match(r"^fig\d\.png$", f)]
    shown = [a for tag, a in page.tags if tag == "img" and a.get("class") == "figure"]
    assert figures and len(shown) == len(figures)
    # no network: no external script, style sheet, font or link; in-page anchors only
    with open(report["html"], encoding="utf-8") as f:
        text = f.read()
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", text, re.I)
    assert not re.search(r"url\(\s*[\"']?\s*(https?:)?//", text, re.I)
    assert not re.search(r"@import", text)
    assert not any(tag in ("link", "script", "iframe", "object", "embed")
                   for tag, _ in page.tags)
    anchors = {a["id"] for _, a in page.tags if "id" in a}
    for tag, a in page.tags:
        if tag == "a":
            assert a["href"].startswith("#") and a["href"][1:] in anchors, a["href"]
        if "src" in a:
            assert a["src"].startswith("data:image/"), a["src"][:60]


def _decimals(text):
    return len(text.split(".", 1)[1]) if "." in text else 0


def test_the_numbers_shown_are_table_csv(report):
    rows = _read_csv(os.path.join(report["run"], "table", "table.csv"))
    shown = {}
    for (level, group), col, text in report["page"].values:
        shown.setdefault((level, group, col), []).append(text)
    assert shown
    checked = 0
    for r in rows:
        for col, raw in r.items():
            if col in NOT_SHOWN or raw.strip() == "":
                continue
            texts = shown.get((r["level"], r["group"], col))
            assert texts, "{} {} {} = {} is not in the report".format(
                r["level"], r["group"], col, raw)
            for text in texts:
                v = float(raw)
                if text.startswith("<"):            # p < 0.0001
                    assert v < float(text[1:]), (col, text, raw)
                else:
                    tol = 0.5 * 10 ** -_decimals(text) + 1e-12
                    assert abs(float(text) - v) <= tol, (r["level"], r["group"], col, text, raw)
                checked += 1
    # ... and nothing is shown that the CSV does not hold
    keys = {(r["level"], r["group"], c) for r in rows for c, v in r.items() if v.strip()}
    assert set(shown) <= keys, set(shown) - keys
    assert checked >= 10 * len(rows)


def test_the_table_notes_and_the_difference_colours(report):
    page = report["page"]
    text = " ".join(page.text)
    with open(os.path.join(report["run"], "table", "table.md")) as f:
        md = f.read()
    notes = md.split("\nNotes:", 1)[1]
    first = re.search(r"^- (.{30})", notes, re.M).group(1)
    assert first.replace("`", "") in text.replace("`", "")
    diffs = [a for tag, a in page.tags if tag == "td" and a.get("class") == "diff"
             and "background:rgba" in a.get("style", "")]
    rows = _read_csv(os.path.join(report["run"], "table", "table.csv"))
    n_diffs = sum(1 for r in rows for c in ("auc_diff", "accuracy_diff_pct") if r.get(c))
    assert n_diffs and len(diffs) == n_diffs
    # negative differences are red, positive green
    for (tag, a), value in zip([t for t in page.tags if t[0] == "td" and
                                t[1].get("class") == "diff" and "style" in t[1]],
                               [v for v in page.values if v[1] in ("auc_diff",
                                                                   "accuracy_diff_pct")]):
        red = "rgba(207,34,46" in a["style"]
        assert red == (float(value[2]) < 0), (a["style"], value)
    with open(report["html"], encoding="utf-8") as f:
        title = re.search(r"<h1>(.*?)</h1>", f.read(), re.S).group(1)
    assert "SYNTHETIC" in title


def test_the_gallery_is_sorted_and_labelled_from_the_predictions(report):
    figs = [a for tag, a in report["page"].tags if tag == "figure" and "data-slide" in a]
    by_id = {r["slide_id"]: r for r in report["rows"]}
    assert sorted(a["data-slide"] for a in figs) == sorted(by_id)
    probs = [float(a["data-probability"]) for a in figs]
    assert probs == sorted(probs, reverse=True)
    for a in figs:
        r = by_id[a["data-slide"]]
        assert float(a["data-probability"]) == pytest.approx(r["probability"], abs=1e-12)
        assert int(a["data-label"]) == r["label"]


def test_the_provenance_is_this_checkout_and_these_inputs(report):
    page = report["page"]
    text = " ".join(page.text)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, stdout=subprocess.PIPE,
                          universal_newlines=True)
    if head.returncode == 0:
        assert head.stdout.strip() in text
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT,
                               stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()
        assert ("(clean)" not in text) == bool(dirty)
    with open(report["manifest"], "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() in text
    with open(report["config"]) as f:
        assert f.read() in page.pre
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        pins = re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", f.read(), re.M)
    packages = [a for tag, a in page.tags if tag == "table" and a.get("class") == "packages"]
    assert packages and pins
    for name, version in pins:
        assert name in text and version in text
    import numpy
    assert numpy.__version__ in text                      # an installed version, read back
    for stage in STAMPED:
        with open(os.path.join(report["run"], ".stamps", stage + ".json")) as f:
            stamp = json.load(f)
        assert stamp["finished"] in text
    assert re.search(r"logical cores\s+{}\s".format(os.cpu_count()), text)


def test_own_cohort_title_and_rows_beyond_the_papers_layout(report, tmp_path):
    """Without the synthetic generator's cohort.json the title names the user's manifest; a row
    group and a column the report does not know (another stage's) are shown from the CSV."""
    from report import page as rep
    run = tmp_path / "run"
    shutil.copytree(os.path.join(report["run"], "table"), str(run / "table"))
    manifest = tmp_path / "mine.csv"
    shutil.copyfile(report["manifest"], str(manifest))
    path = str(run / "table" / "table.csv")
    rows = _read_csv(path)
    columns = list(rows[0]) + ["extra_score_pct"]
    rng = np.random.RandomState(3)
    added = {"level": "node", "group": "something_new", "n_pos": "3",
             "extra_score_pct": repr(float(rng.uniform(0, 100)))}
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows + [added]:
            w.writerow(r)
    out = str(tmp_path / "r.html")
    summary = rep.build(str(run), out, manifest=str(manifest),
                        predictions=report["predictions"])
    assert summary["cohort"] == "own" and "mine.csv" in summary["title"]
    page = _parse(out)
    assert "SYNTHETIC" not in " ".join(page.text)
    got = [t for (lvl, grp), col, t in page.values
           if (lvl, grp, col) == ("node", "something_new", "extra_score_pct")]
    assert got and abs(float(got[0]) - float(added["extra_score_pct"])) <= 0.005


def test_a_run_without_a_table_is_one_line_and_exit_2(tmp_path):
    p = subprocess.run([sys.executable, "-m", "reproduce", "report", "--run", str(tmp_path)],
                       cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, timeout=120)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "table.csv" in lines[0], p.stderr


PROBE = """<script>
addEventListener('load', function () {
  var t = document.querySelector('img.cam-thumb'), r = t.getBoundingClientRect();
  var out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({natural: [t.naturalWidth, t.naturalHeight],
    box: [r.width, r.height], complete: t.complete, text: document.body.innerText});
  document.body.appendChild(out);
});
</script></body>"""


def test_chromium_renders_the_table_and_a_cam(report, tmp_path):
    """Headless Chromium: a screenshot that is not blank, the table's numbers in the rendered
    text, and a CAM thumbnail decoded to its embedded size and laid out on the page. A probe
    script added to a copy of the report reads what the browser computed."""
    from PIL import Image
    from report import browser
    try:
        browser.find_chromium()
    except browser.BrowserError as e:
        pytest.fail("the report's browser test needs Chromium: {}".format(e))
    shot = str(tmp_path / "report.png")
    browser.screenshot(report["html"], shot, width=1200, height=1600)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (1600, 1200)
    assert pixels.std() > 10.0 and (pixels < 128).mean() > 0.005   # text and figures drawn

    with open(report["html"], encoding="utf-8") as f:
        page = f.read()
    probe = str(tmp_path / "probe.html")
    with open(probe, "w", encoding="utf-8") as f:
        f.write(page.replace("</body>", PROBE, 1))
    dom = browser.dump_dom(probe, width=1200, height=1600)
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert m, dom[-2000:]
    import html
    seen = json.loads(html.unescape(m.group(1)))
    first = [a for tag, a in report["page"].tags if tag == "img" and a.get("class") ==
             "cam-thumb"][0]
    assert seen["complete"] and seen["natural"] == list(_decode(first["src"]).size)
    assert seen["box"][0] > 0 and seen["box"][1] > 0
    rows = _read_csv(os.path.join(report["run"], "table", "table.csv"))
    overall = [r for r in rows if r["group"] == "overall"]
    assert overall
    for r in overall:
        assert "{:.4f}".format(float(r["auc"])) in seen["text"]
        assert "{:.2f}".format(float(r["accuracy_pct"])) in seen["text"]
    assert "Paper vs reproduction" in seen["text"] and "CAM gallery" in seen["text"]
