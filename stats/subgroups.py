"""The statistics of one row of the paper's tables: a set of cases, overall or a subgroup.

Subgroup (metastasis size, histological subtype): the subgroup's positives against ALL
negatives of the same set (slide or node level), so that its AUC asks "does the model rank this
kind of metastasis above the negatives". This pairing is inferred: the paper reports subgroup
AUCs without saying which negatives they were compared with (docs/fidelity.md).

For one set of labels y (0/1) and probabilities p, at a threshold t (positive when p >= t):

    n+ = #{y = 1},  n- = #{y = 0}
    AUC [DeLong CI]  and  p of the paired DeLong test against the dummy model p = 0.5,
                     both when n+ > 0 and n- > 0 (stats.delong)
    accuracy = correct / n,  correct = #{(p >= t) == y},  n = n+ + n-,
                     with its Wilson and Wald CIs (stats.proportion)
    sensitivity = detected / n+,  detected = #{y = 1 and p >= t}
"""
import numpy as np

from stats.delong import auc_ci, delong_test
from stats.proportion import proportion_ci


def subgroup_cases(y, p, values, group):
    """(y, p) of ``group``: the positives whose ``values`` equal it, and ALL negatives; None
    when the group has no positive. ``values``: one label per case (size or subtype)."""
    y, p, values = np.asarray(y), np.asarray(p), np.asarray(values)
    chosen = (y == 1) & (values == group)
    if not chosen.any():
        return None
    keep = chosen | (y == 0)
    return y[keep], p[keep]


def summarize(y, p, threshold, alpha=0.05):
    """The row's statistics as a dict (NaN where not defined):

    n_pos, n_neg, auc, auc_lower, auc_upper, auc_variance, p_vs_dummy, correct, n, accuracy,
    wilson (lower, upper), wald (lower, upper), detected, sensitivity.
    """
    y, p = np.asarray(y), np.asarray(p)
    nan = float("nan")
    n_pos, n_neg = int(np.sum(y == 1)), int(np.sum(y == 0))
    out = dict(n_pos=n_pos, n_neg=n_neg, auc=nan, auc_lower=nan, auc_upper=nan,
               auc_variance=nan, p_vs_dummy=nan)
    if n_pos and n_neg:
        ci = auc_ci(y, p, alpha)
        test = delong_test(y, p, np.full(len(y), 0.5))
        out.update(auc=ci.auc, auc_lower=ci.lower, auc_upper=ci.upper, auc_variance=ci.variance,
                   p_vs_dummy=test.p)
    correct = int(np.sum((p >= threshold).astype(int) == y))
    n = n_pos + n_neg
    detected = int(np.sum(p[y == 1] >= threshold))
    out.update(correct=correct, n=n, accuracy=correct / n if n else nan,
               wilson=proportion_ci(correct, n, alpha, method="wilson"),
               wald=proportion_ci(correct, n, alpha, method="wald"),
               detected=detected, sensitivity=detected / n_pos if n_pos else nan)
    return out
