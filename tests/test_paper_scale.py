"""`reproduce demo --paper-scale`: configs/paper.yaml end to end, here on a reduced canvas.

The full run (21,500 px canvas, about 30 min on 2 cores) is measured by hand (README, "The
paper's protocol at full scale"); this runs the same command with ``--canvas 256`` so that a
training step is seconds: the synthetic slides are still rendered and prepared at the paper's
2.28 um/px (and centre-cropped to the canvas), trained on 2 mpirun ranks with the paper's
augmentation, predicted with CAMs, tabulated and timed.
"""
import json
import math
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from model import paper_config
from report.stages import STAGES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CANVAS = 256


def _demo(*args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "reproduce", "demo"] + list(args), cwd=ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=timeout)


def _flat(path):
    with open(path) as f:
        return paper_config.flatten(yaml.safe_load(f))


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun (OpenMPI) not installed")
def test_paper_scale_end_to_end_on_a_reduced_canvas(tmp_path):
    out = str(tmp_path / "paper")
    # 8 slides: 4 train (2 per rank), 2 val, 2 test (one of each class)
    p = _demo("--paper-scale", "--canvas", str(CANVAS), "--slides", "8", "--out", out)
    assert p.returncode == 0, p.stdout[-4000:]

    # every stage ran (stamped) and was timed, with its peak memory
    for stage in STAGES:
        assert os.path.isfile(os.path.join(out, ".stamps", stage + ".json")), stage
    with open(os.path.join(out, "timings.json")) as f:
        timings = json.load(f)
    assert [s["stage"] for s in timings["stages"]] == list(STAGES)
    for s in timings["stages"]:
        assert s["seconds"] > 0 and not s["skipped"], s
        assert s["largest_gb"] > 0, s
    train = next(s for s in timings["stages"] if s["stage"] == "train")
    ranks = [gb for label, gb in train["per_process"] if label == "train"]
    assert len(ranks) == 2 and train["largest_gb"] >= max(ranks) - 0.05, train
    assert train["cpu_seconds"] > 0 and train["together_gb"] >= max(ranks), train
    assert "[demo] paper scale: stage timings" in p.stdout

    # the config that ran is paper.yaml but for the documented keys
    paper, ran = _flat(paper_config.PAPER_CONFIG), _flat(os.path.join(out, "paper-scale.yaml"))
    changed = {k for k in set(paper) | set(ran) if paper.get(k) != ran.get(k)}
    assert changed <= set(paper_config.CHANGES)
    assert ran["model.weights"] == "none"
    assert ran["train.iterations_per_epoch"] == 1 and ran["train.max_epochs"] == 1
    assert ran["data.canvas"] == CANVAS
    assert ran["data.translate_px"] == round(paper["data.translate_px"] * CANVAS /
                                             paper["data.canvas"])
    assert ran["train.augment"] is True and ran["train.batch_size"] == paper["train.batch_size"]
    with open(os.path.join(out, "paper-scale.diff")) as f:
        diff = f.read()
    assert "-  weights: imagenet" in diff and "+  weights: none" in diff

    # auto resolved to streaming, in the plan printed up front and in the ranks themselves
    assert timings["memory_plan"]["strategy"] == "streaming"
    assert timings["memory_plan"]["train"]["processes"] == 2
    assert "strategy streaming" in p.stdout and "streaming: in levels" in p.stdout

    # full-resolution synthetic slides at the paper's mpp, prepared at it
    manifest = pd.read_csv(os.path.join(out, "cohort", "manifest.csv"))
    assert (manifest["mpp"] == paper["data.target_mpp"]).all()
    test = manifest[manifest["split"] == "test"]
    assert set(test["label"]) == {0, 1}

    # predictions with CAMs and a table with numbers
    pred = pd.read_csv(os.path.join(out, "predict", "predictions.csv"))
    assert list(pred["slide_id"]) == list(test["slide_id"])
    assert pred["probability"].between(0, 1).all()
    assert [f for f in os.listdir(os.path.join(out, "predict", "cam")) if f.endswith(".png")]
    table = pd.read_csv(os.path.join(out, "table", "table.csv"))
    overall = table[(table["level"] == "slide") & (table["group"] == "overall")].iloc[0]
    assert overall["n_pos"] >= 1 and overall["n_neg"] >= 1
    assert 0.0 <= overall["auc"] <= 1.0 and math.isfinite(overall["accuracy_pct"])


@pytest.mark.parametrize("args, names", [
    (["--paper-scale", "--iterations", "0"], "--iterations"),
    (["--paper-scale", "--iterations", "89"], "--iterations"),
    (["--paper-scale", "--epochs", "0"], "--epochs"),
    (["--paper-scale", "--canvas", "100"], "--canvas"),
    (["--paper-scale", "--canvas", "30000"], "--canvas"),
    (["--paper-scale", "--slides", "6"], "use --slides 8"),   # 6: no positive test slide
    (["--paper-scale", "--config", "configs/demo.yaml"], "--config"),
    (["--paper-scale", "--predictions", "p.csv"], "--predictions"),
    (["--canvas", "512"], "--canvas: only with --paper-scale"),
])
def test_paper_scale_bad_flags_are_one_line(tmp_path, capsys, args, names):
    from reproduce.__main__ import main
    assert main(["demo", "--out", str(tmp_path / "x")] + args) == 2
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], lines
    assert not os.path.exists(str(tmp_path / "x" / "paper-scale.yaml"))

