"""The ROC curve, in scikit-learn's convention: ``fpr, tpr, thresholds = roc_curve(y, score)``.

One point per distinct score, from the highest down: at threshold t a case is called positive
when score >= t, so

    tpr(t) = #{positives with score >= t} / #positives,  fpr(t) = #{negatives ...} / #negatives.

The curve starts at (0, 0) with threshold +inf (nothing called positive; scikit-learn >= 1.3
sets ``thresholds[0] = np.inf`` too) and ends at (1, 1) at the lowest score. Cases with tied
scores move together, so a tie is a diagonal step and the trapezoidal area under the curve is
the Mann-Whitney AUC with ties counted half (stats.delong). Every threshold is kept, as
scikit-learn's ``roc_curve(..., drop_intermediate=False)``.
"""
import numpy as np

from stats.delong import check_binary


def roc_curve(y_true, y_score):
    """(fpr, tpr, thresholds): float64 arrays of equal length, thresholds decreasing."""
    y, (s,) = check_binary(y_true, y_score)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.shape[0] - 1]  # last index of each run
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]], np.r_[np.inf, s[last]]
