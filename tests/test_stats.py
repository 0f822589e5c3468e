"""stats: fast DeLong against a slow O(m n) structural-components version written here,
AUC against scikit-learn, proportion CIs against the paper's printed intervals."""
import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

import stats
from scipy.stats import rankdata

from stats.delong import benchmark, structural_components


def slow_delong(y, scores):
    """DeLong 1988 by its definition: psi over every (positive, negative) pair."""
    y = np.asarray(y).astype(bool)
    comps = []
    for s in scores:
        s = np.asarray(s, dtype=float)
        x, z = s[y], s[~y]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        comps.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))
    m, n = int(y.sum()), int((~y).sum())
    k = len(scores)
    cov = np.zeros((k, k))
    for a in range(k):
        for b in range(k):
            s10 = np.sum((comps[a][1] - comps[a][1].mean()) * (comps[b][1] - comps[b][1].mean()))
            s01 = np.sum((comps[a][2] - comps[a][2].mean()) * (comps[b][2] - comps[b][2].mean()))
            cov[a, b] = s10 / (m - 1) / m + s01 / (n - 1) / n
    return np.array([c[0] for c in comps]), cov


def tied_case(seed, m, n, decimals):
    rng = np.random.RandomState(seed)
    y = np.r_[np.ones(m, int), np.zeros(n, int)]
    rng.shuffle(y)
    a = np.round(rng.standard_normal(m + n) * 0.7 + y, decimals)
    b = np.round(0.5 * a + rng.standard_normal(m + n) * 0.6 + 0.3 * y, decimals)
    return y, a, b


@pytest.mark.parametrize("seed,m,n,decimals", [(0, 30, 45, 1), (1, 7, 200, 0), (2, 120, 80, 3),
                                               (3, 2, 3, 0)])
def test_fast_delong_equals_slow_with_ties(seed, m, n, decimals):
    y, a, b = tied_case(seed, m, n, decimals)
    assert len(np.unique(a)) < len(a), "the case must contain ties"
    aucs, cov = slow_delong(y, [a, b])
    r = stats.auc_ci(y, a)
    assert r.auc == pytest.approx(roc_auc_score(y, a), rel=0, abs=1e-12)
    assert r.auc == pytest.approx(aucs[0], rel=0, abs=1e-12)
    assert r.variance == pytest.approx(cov[0, 0], rel=1e-12, abs=0)
    z = norm.ppf(0.975)
    half = z * np.sqrt(cov[0, 0])
    assert r.lower == pytest.approx(max(0.0, aucs[0] - half), rel=1e-12)
    assert r.upper == pytest.approx(min(1.0, aucs[0] + half), rel=1e-12)

    t = stats.delong_test(y, a, b)
    var_diff = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    assert t.variance == pytest.approx(var_diff, rel=1e-12)
    assert t.z == pytest.approx((aucs[0] - aucs[1]) / np.sqrt(var_diff), rel=1e-10)
    assert t.p == pytest.approx(2 * norm.sf(abs(t.z)), rel=1e-10)


def test_components_are_sun_xu_midrank_differences():
    y, a, _ = tied_case(4, 20, 30, 1)
    yb = y.astype(bool)
    tz, tx, ty = rankdata(a), rankdata(a[yb]), rankdata(a[~yb])  # midranks: ties share
    m, n = int(yb.sum()), int((~yb).sum())
    auc, v10, v01 = structural_components(yb, a)
    np.testing.assert_allclose(v10, (tz[yb] - tx) / n, rtol=0, atol=1e-15)
    np.testing.assert_allclose(v01, 1 - (tz[~yb] - ty) / m, rtol=0, atol=1e-15)
    assert auc == pytest.approx((tz[yb].sum() - m * (m + 1) / 2) / (m * n), abs=1e-15)


def test_ci_clipped_to_unit_interval_and_alpha_widens():
    y = np.r_[np.ones(6), np.zeros(6)]
    s = np.r_[0.9, 0.8, 0.7, 0.65, 0.6, 0.3, 0.5, 0.4, 0.35, 0.2, 0.1, 0.0]
    r95, r80 = stats.auc_ci(y, s), stats.auc_ci(y, s, alpha=0.2)
    assert 0.0 <= r95.lower < r95.auc <= r95.upper <= 1.0
    assert r95.upper == 1.0  # AUC near 1 with small n: the normal interval runs past 1
    assert r95.lower < r80.lower


def test_perfect_separation_has_zero_variance():
    y = np.r_[np.ones(5), np.zeros(5)]
    r = stats.auc_ci(y, np.r_[np.arange(5) + 10.0, np.arange(5)])
    assert (r.auc, r.variance, r.lower, r.upper) == (1.0, 0.0, 1.0, 1.0)


def test_constant_score_is_the_dummy_model():
    y, a, _ = tied_case(5, 40, 60, 2)
    dummy = np.full(y.shape, 0.5)
    r = stats.auc_ci(y, dummy)
    assert r.auc == 0.5 and r.variance == 0.0 and r.lower == 0.5 and r.upper == 0.5
    t = stats.delong_test(y, a, dummy)
    ra = stats.auc_ci(y, a)
    assert t.auc_b == 0.5
    assert t.variance == pytest.approx(ra.variance, rel=1e-12)
    assert t.z == pytest.approx((ra.auc - 0.5) / np.sqrt(ra.variance), rel=1e-12)
    assert t.p == pytest.approx(2 * norm.sf(abs(t.z)), rel=1e-10)
    # dummy against dummy: no difference, no variance
    t0 = stats.delong_test(y, dummy, dummy)
    assert (t0.z, t0.p) == (0.0, 1.0)


def test_single_positive_gives_nan_variance():
    r = stats.auc_ci([1, 0, 0, 0], [0.9, 0.1, 0.95, 0.2])
    assert r.auc == pytest.approx(2 / 3)
    assert np.isnan(r.variance) and np.isnan(r.lower) and np.isnan(r.upper)


@pytest.mark.parametrize("y,s,match", [
    ([1, 1, 1], [0.1, 0.2, 0.3], "one class"),
    ([0, 1, 2], [0.1, 0.2, 0.3], "binary"),
    ([0, 1, np.nan], [0.1, 0.2, 0.3], "NaN"),
    ([0, 1, 1], [0.1, np.nan, 0.3], "NaN"),
    ([0, 1, 1], [0.1, 0.2], "shape"),
    ([], [], "empty"),
    (["a", "b"], [0.1, 0.2], "numeric"),
])
def test_validation_errors(y, s, match):
    with pytest.raises(ValueError, match=match):
        stats.auc_ci(y, s)


def test_delong_test_validates_both_scores():
    with pytest.raises(ValueError, match="score 1"):
        stats.delong_test([0, 1, 1, 0], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3])


def test_roc_curve_area_equals_auc():
    y, a, _ = tied_case(7, 25, 35, 1)
    fpr, tpr, _ = stats.roc_curve(y, a)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    # trapezoids over the ROC points (diagonal steps at ties) give the Mann-Whitney AUC
    assert np.trapz(tpr, fpr) == pytest.approx(stats.auc_ci(y, a).auc, abs=1e-12)


def pct(ci):
    return tuple(round(100 * v, 2) for v in ci)


def test_paper_accuracy_cis_are_wald_not_wilson():
    assert pct(stats.proportion_ci(985, 1000, method="wald")) == (97.75, 99.25)
    assert pct(stats.proportion_ci(525, 538, method="wald")) == (96.29, 98.88)
    assert pct(stats.proportion_ci(985, 1000, method="wilson")) == (97.54, 99.09)
    assert pct(stats.proportion_ci(985, 1000)) != (97.75, 99.25)


def test_wilson_formula_and_edges():
    k, n, z = 7, 20, norm.ppf(0.975)
    p = k / n
    centre = (k + z * z / 2) / (n + z * z)
    half = z * np.sqrt(n) / (n + z * z) * np.sqrt(p * (1 - p) + z * z / (4 * n))
    lo, hi = stats.proportion_ci(k, n)
    assert lo == pytest.approx(centre - half, rel=1e-12)
    assert hi == pytest.approx(centre + half, rel=1e-12)
    lo0, hi0 = stats.proportion_ci(0, 10)
    assert lo0 == 0.0 and hi0 > 0.0  # Wilson stays informative at k = 0; Wald collapses
    assert stats.proportion_ci(0, 10, method="wald") == (0.0, 0.0)
    assert stats.proportion_ci(10, 10, method="wald") == (1.0, 1.0)


@pytest.mark.parametrize("args,kw,match", [
    ((11, 10), {}, r"\[0, n\]"), ((-1, 10), {}, r"\[0, n\]"), ((1, 0), {}, "n must"),
    ((1.5, 10), {}, "integer"), ((1, 10), {"method": "exact"}, "method"),
    ((1, 10), {"alpha": 1.0}, "alpha"),
])
def test_proportion_validation(args, kw, match):
    with pytest.raises(ValueError, match=match):
        stats.proportion_ci(*args, **kw)


def _benchmark_case(n, seed=0):
    """The scores ``benchmark`` times, as its docstring states them: half positive, sigmoid of
    N(0, 1) + 1.5 y, rounded to 1e-4 (many ties)."""
    rng = np.random.RandomState(seed)
    y = np.zeros(n, dtype=np.int64)
    y[: n // 2] = 1
    return y, np.round(1.0 / (1.0 + np.exp(-(rng.standard_normal(n) + 1.5 * y))), 4)


def test_large_tied_case_equals_sklearn_and_midrank_variance():
    # The speed itself is measured by `reproduce bench --delong N`; here: the fast path is
    # right at a size where only the O(n log n) algorithm is practical, with heavy ties.
    n = 200000
    y, s = _benchmark_case(n)
    assert len(np.unique(s)) < n // 10
    r = stats.auc_ci(y, s)
    assert r.auc == pytest.approx(roc_auc_score(y, s), rel=0, abs=1e-12)
    yb = y.astype(bool)
    tz, tx, ty = rankdata(s), rankdata(s[yb]), rankdata(s[~yb])
    m, k = int(yb.sum()), int((~yb).sum())
    v10, v01 = (tz[yb] - tx) / k, 1 - (tz[~yb] - ty) / m
    assert r.variance == pytest.approx(v10.var(ddof=1) / m + v01.var(ddof=1) / k, rel=1e-9)
    # and the benchmark reports that same case
    b = benchmark(n)
    assert (b["n"], b["auc"], b["variance"]) == (n, r.auc, r.variance) and b["seconds"] > 0
