"""The paper's figures as PNG files, drawn without touching matplotlib's global state.

Each figure is a ``matplotlib.figure.Figure`` printed by its own ``FigureCanvasAgg``: no pyplot,
no ``matplotlib.use``, so a notebook's backend stays what its user chose (only the command line,
``reproduce.__main__``, selects a backend).

    fig1a / fig1b   learning curves: loss / accuracy per epoch (train and validation), from the
                    training log CSV (epoch, train_loss, val_loss, train_accuracy, val_accuracy);
                    a marker at each epoch, so that a run of one epoch shows its points
    fig1c / fig1d   ROC, slide level / single-lymph-node level
    fig2a-c, d-f    slide level: macro, micro, ITC; classical, mucinous, signet/poorly
    fig3a-c, d-f    node level, likewise

Each panel is written alone (figNx.png) and the panels of a figure together (figN.png). A
subgroup panel is the subgroup's positives against all negatives of its level. Only panels the
data supports are drawn; a composite marks missing ones 'not in data'.
"""
import os

import numpy as np

from data.errors import InputError
from data.files import atomic_path
from data.manifest import POSITIVE_SIZES, SUBTYPES
from stats.delong import auc_ci
from stats.roc import roc_curve
from stats.table import read_csv_file

LOG_COLUMNS = ("epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy")
_TITLES = {"overall": "all", "macro": "macrometastasis", "micro": "micrometastasis",
           "itc": "isolated tumour cells", "classical": "classical adenocarcinoma",
           "mucinous": "mucinous adenocarcinoma",
           "signet_poorly": "signet ring / poorly diff."}
# panel name -> (level, group), in the paper's order
ROC_PANELS = {"fig1c": ("slide", "overall"), "fig1d": ("node", "overall")}
for _fig, _level in (("fig2", "slide"), ("fig3", "node")):
    for _letter, _group in zip("abcdef", POSITIVE_SIZES + SUBTYPES):
        ROC_PANELS[_fig + _letter] = (_level, _group)
LAYOUT = {"fig1": (2, 2, ("fig1a", "fig1b", "fig1c", "fig1d")),
          "fig2": (2, 3, tuple("fig2" + c for c in "abcdef")),
          "fig3": (2, 3, tuple("fig3" + c for c in "abcdef"))}


class LogError(InputError):
    """A training log CSV that cannot be drawn. Message names the file and the column."""


def _figure(figsize):
    """A Figure with its own Agg canvas (nothing registered with pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def load_log(path):
    """Reads and checks the training log CSV; returns a DataFrame sorted by epoch."""
    import pandas as pd
    log = read_csv_file(path, "log", LogError)
    for col in LOG_COLUMNS:
        if col not in log.columns:
            raise LogError("log {}: missing column '{}' (have: {})".format(
                path, col, ", ".join(map(str, log.columns))))
        raw = log[col]
        num = pd.to_numeric(raw, errors="coerce")
        bad = np.flatnonzero((num.isna() & raw.notna()).values | (
            num.isna().values if col == "epoch" else False))
        if bad.size:
            raise LogError("log {}: column '{}' must be numeric; row {} has {!r} ({} bad "
                            "row{})".format(path, col, bad[0] + 1, raw.values[bad[0]],
                                            bad.size, "" if bad.size == 1 else "s"))
        log[col] = num
    if len(log) == 0:
        raise LogError("log {}: no rows".format(path))
    return log.sort_values("epoch").reset_index(drop=True)


def _draw_roc(ax, level, group, y, p):
    fpr, tpr = roc_curve(y, p)[:2]
    ci = auc_ci(y, p)
    label = "AUC {:.4f}".format(ci.auc)
    if np.isfinite(ci.lower):
        label += " (95% CI {:.4f}-{:.4f})".format(ci.lower, ci.upper)
    else:
        label += " (no CI: < 2 of a class)"
    ax.plot(fpr, tpr, color="tab:blue", lw=1.8, label=label)
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="chance")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("Sensitivity")
    ax.set_title("{} level: {} (n+={}, n-={})".format(
        level.capitalize(), _TITLES[group], int(np.sum(y == 1)), int(np.sum(y == 0))),
        fontsize=9)
    ax.legend(loc="lower right", fontsize=8)


def _draw_curve(ax, log, what):
    """One learning curve per split, with a marker at each epoch: a run of one epoch is a point,
    which a line alone would not show."""
    for split, style in (("train", "o-"), ("val", "s--")):
        ax.plot(log["epoch"], log["{}_{}".format(split, what)], style, markersize=4,
                label="training" if split == "train" else "validation")
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Loss (binary cross-entropy)" if what == "loss" else "Accuracy")
    ax.set_title("Learning curve: " + what, fontsize=9)
    ax.legend(fontsize=8)


def _save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def write_figures(cases, out_dir, log=None, title=""):
    """Writes every supported panel and composite; returns the written paths.

    ``cases``: [(level, group, y, p)], e.g. from the table's case sets; ``log``: a DataFrame
    from ``load_log`` or None.
    """
    by_key = {(level, group): (y, p) for level, group, y, p in cases
              if np.any(y == 1) and np.any(y == 0)}
    draw = {}
    for name, key in ROC_PANELS.items():
        if key in by_key:
            draw[name] = (lambda ax, key=key: _draw_roc(ax, key[0], key[1], *by_key[key]))
    if log is not None:
        draw["fig1a"] = lambda ax: _draw_curve(ax, log, "loss")
        draw["fig1b"] = lambda ax: _draw_curve(ax, log, "accuracy")
    suffix = " - " + title if title else ""
    written = []
    for name in sorted(draw):
        fig = _figure((5, 5))
        ax = fig.subplots()
        draw[name](ax)
        fig.suptitle(name + suffix, fontsize=9)
        path = os.path.join(out_dir, name + ".png")
        _save(fig, path)
        written.append(path)
    for fig_name, (rows, cols, panels) in LAYOUT.items():
        if not any(p in draw for p in panels):
            continue
        fig = _figure((4.6 * cols, 4.6 * rows))
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, panel in zip(axes.ravel(), panels):
            if panel in draw:
                draw[panel](ax)
            else:
                ax.text(0.5, 0.5, "not in data", ha="center", va="center", color="grey")
                ax.set_xticks([])
                ax.set_yticks([])
            ax.text(-0.12, 1.04, panel[-1], transform=ax.transAxes, fontsize=13,
                    fontweight="bold")
        fig.suptitle(fig_name + suffix)
        fig.tight_layout()
        path = os.path.join(out_dir, fig_name + ".png")
        _save(fig, path)
        written.append(path)
    return written
