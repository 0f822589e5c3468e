"""report.figures: the paper's figure panels, drawn without changing matplotlib's backend."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import sys
import matplotlib
matplotlib.use("svg")          # the caller's choice (a notebook's inline backend, say)
import numpy as np
import pandas as pd
from report.figures import write_figures
rng = np.random.RandomState(0)
y = np.r_[np.ones(20, int), np.zeros(30, int)]
p = np.clip(0.3 * y + rng.uniform(0, 0.7, 50), 0, 1)
log = pd.DataFrame({"epoch": [1, 2], "train_loss": [0.7, 0.5], "val_loss": [0.7, 0.6],
                    "train_accuracy": [0.5, 0.7], "val_accuracy": [0.5, 0.6]})
written = write_figures([("slide", "overall", y, p), ("slide", "micro", y, p)], sys.argv[1],
                        log=log, title="t")
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules, len(written))
"""


def test_figures_leave_the_callers_backend_alone(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    out = subprocess.check_output([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT,
                                  env=env, universal_newlines=True, timeout=300)
    backend, pyplot, n = out.split()
    assert (backend, pyplot) == ("svg", "False")
    pngs = sorted(f for f in os.listdir(str(tmp_path)) if f.endswith(".png"))
    assert pngs == ["fig1.png", "fig1a.png", "fig1b.png", "fig1c.png", "fig2.png", "fig2b.png"]
    assert int(n) == len(pngs)
    for f in pngs:
        with open(str(tmp_path / f), "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_learning_curves_mark_each_epoch():
    """A run of one epoch (as ``demo --paper-scale`` makes) draws a visible point on each
    learning curve: the lines carry markers, not only a line between epochs."""
    import pandas as pd
    from report.figures import _draw_curve, _figure
    log = pd.DataFrame({"epoch": [1], "train_loss": [0.7], "val_loss": [0.6],
                        "train_accuracy": [0.5], "val_accuracy": [0.55]})
    for what in ("loss", "accuracy"):
        ax = _figure((3, 3)).subplots()
        _draw_curve(ax, log, what)
        lines = ax.get_lines()
        assert len(lines) == 2
        for line in lines:
            assert line.get_marker() not in (None, "None", "", " "), line.get_label()
            assert line.get_markersize() > 0
