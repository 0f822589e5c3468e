"""stats.roc and stats.subgroups: scikit-learn's ROC convention, and one table row's numbers."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

import stats


def _cases(seed, n_pos=30, n_neg=40):
    rng = np.random.RandomState(seed)
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    p = np.round(np.clip(rng.rand(n_pos + n_neg) * 0.6 + 0.4 * y, 0, 1), 1)   # many ties
    return y, p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_curve_is_scikit_learns(seed):
    y, p = _cases(seed)
    fpr, tpr, thresholds = stats.roc_curve(y, p)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, rtol=0, atol=1e-15)
    np.testing.assert_allclose(tpr, sk_tpr, rtol=0, atol=1e-15)
    # scikit-learn >= 1.3 starts at +inf; 1.0 at max(score) + 1: the same "nothing positive".
    assert thresholds[0] == np.inf and thresholds[0] > sk_thr[1]
    np.testing.assert_array_equal(thresholds[1:], sk_thr[1:])
    # tpr at a threshold t is the share of positives with score >= t
    for f, t, thr in zip(fpr[1:], tpr[1:], thresholds[1:]):
        assert t == np.mean(p[y == 1] >= thr) and f == np.mean(p[y == 0] >= thr)


def test_subgroup_is_its_positives_against_all_negatives():
    y = np.array([1, 1, 1, 1, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.2, 0.7, 0.3, 0.1, 0.6])
    size = np.array(["macro", "micro", "micro", "itc", "negative", "negative", "negative"])
    ys, ps = stats.subgroup_cases(y, p, size, "micro")
    np.testing.assert_array_equal(ys, [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(ps, [0.8, 0.2, 0.3, 0.1, 0.6])
    assert stats.subgroup_cases(y, p, size, "negative") is None   # no positive of that name
    assert stats.subgroup_cases(y, p, size, "classical") is None


def test_summarize_counts_auc_and_intervals():
    y, p = _cases(3)
    s = stats.summarize(y, p, 0.5)
    assert (s["n_pos"], s["n_neg"], s["n"]) == (30, 40, 70)
    assert s["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert s["auc_lower"] < s["auc"] < s["auc_upper"]
    correct = int(np.sum((p >= 0.5) == (y == 1)))
    assert s["correct"] == correct and s["accuracy"] == correct / 70.0
    assert s["wilson"] == stats.proportion_ci(correct, 70, method="wilson")
    assert s["wald"] == stats.proportion_ci(correct, 70, method="wald")
    assert s["detected"] == int(np.sum(p[y == 1] >= 0.5))
    assert s["sensitivity"] == s["detected"] / 30.0
    assert 0.0 <= s["p_vs_dummy"] < 0.05
    # One class only: no AUC, but an accuracy.
    one = stats.summarize(np.ones(5, int), np.full(5, 0.7), 0.5)
    assert np.isnan(one["auc"]) and np.isnan(one["p_vs_dummy"]) and one["accuracy"] == 1.0
