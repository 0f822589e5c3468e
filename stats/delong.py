"""AUC with DeLong confidence intervals, and DeLong's paired test of two AUCs.

Notation (DeLong, DeLong & Clarke-Pearson 1988, Biometrics 44:837-845). Positives X_1..X_m,
negatives Y_1..Y_n, and the kernel psi(x, y) = 1 if x > y, 1/2 if x == y (a tie counts half),
0 otherwise. Then

    AUC   = 1/(m n) sum_i sum_j psi(X_i, Y_j)                     (Mann-Whitney)
    V10_i = 1/n sum_j psi(X_i, Y_j)        (structural component of positive i)
    V01_j = 1/m sum_i psi(X_i, Y_j)        (structural component of negative j)
    S10   = sample covariance of V10 (divisor m - 1), S01 likewise (divisor n - 1)
    Var(AUC) = S10 / m + S01 / n           (for k scores: covariance matrices of the same form)

The components are computed without the O(m n) double sum by the algorithm of Sun & Xu (2014,
"Fast implementation of DeLong's algorithm for comparing the areas under correlated receiver
operating characteristic curves", IEEE Signal Processing Letters 21:1389-1393): with midranks
(tied values share the mean of their ranks, so ties count half)

    Tz = midranks of all m + n scores,  Tx = midranks within the positives,
    Ty = midranks within the negatives,
    V10_i = (Tz_i - Tx_i) / n,   V01_j = 1 - (Tz_{m+j} - Ty_j) / m,
    AUC = (sum_i Tz_i - m (m + 1) / 2) / (m n),

which costs sorting, O((m + n) log(m + n)); here a single sort of all scores gives all three
midrank differences (see ``structural_components``).

Confidence interval: AUC -/+ z_{1 - alpha/2} sqrt(Var), the normal approximation, clipped to
[0, 1]. With fewer than two positives or two negatives the sample covariance is undefined and
the variance (and so the CI) is NaN.
"""
import collections
import time

import numpy as np
from scipy.special import ndtr, ndtri

AucCI = collections.namedtuple("AucCI", "auc lower upper variance")
AucCI.__doc__ = "AUC with its DeLong variance and (1 - alpha) normal-approximation CI in [0, 1]."

DelongTest = collections.namedtuple("DelongTest", "z p auc_a auc_b variance")
DelongTest.__doc__ = ("Paired DeLong test: z = (AUC_a - AUC_b) / sqrt(Var(AUC_a - AUC_b)), "
                      "p two-sided; variance is Var(AUC_a - AUC_b).")


def check_binary(y_true, *scores):
    """Validates labels and scores the way scikit-learn does at its door.

    Returns (y as a bool array, [score arrays as float64]). Raises ValueError for: empty input,
    mismatched lengths, NaN or infinite values, labels other than 0/1 (or False/True), and labels
    of one class only (an AUC needs both).
    """
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError("y_true must be 1-D, got shape {}".format(y.shape))
    if y.size == 0:
        raise ValueError("y_true is empty")
    if y.dtype.kind not in "biuf":
        raise ValueError("y_true must be numeric 0/1 labels, got dtype {}".format(y.dtype))
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise ValueError("y_true contains NaN or infinity")
    classes = np.unique(y)
    if not set(classes.tolist()) <= {0, 1}:
        raise ValueError("y_true must be binary 0/1; found labels {}".format(classes.tolist()))
    if classes.size < 2:
        raise ValueError("y_true has one class only ({}); the AUC needs positives and "
                         "negatives".format(int(classes[0])))
    out = []
    for k, s in enumerate(scores):
        s = np.asarray(s)
        if s.ndim != 1 or s.shape[0] != y.shape[0]:
            raise ValueError("score {} has shape {}; y_true has {} samples".format(
                k, s.shape, y.shape[0]))
        if s.dtype.kind not in "biuf":
            raise ValueError("score {} must be numeric, got dtype {}".format(k, s.dtype))
        s = s.astype(np.float64)
        if not np.all(np.isfinite(s)):
            raise ValueError("score {} contains NaN or infinity ({} values)".format(
                k, int(np.sum(~np.isfinite(s)))))
        out.append(s)
    return y.astype(bool), out


def structural_components(y_true, score):
    """(AUC, V10, V01) of one score in O(N log N); inputs already checked (y_true bool).

    Sun & Xu's identities Tz_i - Tx_i = #(negatives below X_i) + 1/2 #(negatives tied with X_i),
    and likewise for negatives, are evaluated from ONE sort of all scores: walking the runs of
    equal values in order, cumulative counts of positives and negatives give every midrank
    difference at once. V10 and V01 keep the cases' input order, so that components of two
    scores on the same cases line up for their covariance.
    """
    total = score.shape[0]
    order = np.argsort(score)
    s, y = score[order], y_true[order]
    new_run = np.empty(total, dtype=bool)
    new_run[0] = True
    np.not_equal(s[1:], s[:-1], out=new_run[1:])
    starts = np.flatnonzero(new_run)
    run = np.cumsum(new_run) - 1                     # run index of each sorted case
    pos_in = np.add.reduceat(y.astype(np.int64), starts)
    neg_in = np.diff(np.r_[starts, total]) - pos_in
    m = int(pos_in.sum())
    n = total - m
    # positive: (negatives below + half the tied negatives) / n = (Tz - Tx) / n
    v10_run = (np.cumsum(neg_in) - 0.5 * neg_in) / n
    # negative: (positives above + half the tied positives) / m = 1 - (Tz - Ty) / m
    v01_run = 1.0 - (np.cumsum(pos_in) - 0.5 * pos_in) / m
    comp = np.empty(total, dtype=np.float64)
    comp[order] = np.where(y, v10_run[run], v01_run[run])
    v10, v01 = comp[y_true], comp[~y_true]
    return float(v10.mean()), v10, v01  # AUC = mean of V10 (Mann-Whitney)


def _covariance(y_true, scores):
    """AUCs and their DeLong covariance matrix S10/m + S01/n (NaN when m < 2 or n < 2)."""
    parts = [structural_components(y_true, s) for s in scores]
    aucs = np.array([p[0] for p in parts])
    v10 = np.stack([p[1] for p in parts])
    v01 = np.stack([p[2] for p in parts])
    m, n = v10.shape[1], v01.shape[1]
    k = len(scores)
    if m < 2 or n < 2:
        return aucs, np.full((k, k), np.nan)
    d10 = v10 - v10.mean(axis=1, keepdims=True)
    d01 = v01 - v01.mean(axis=1, keepdims=True)
    s10 = d10 @ d10.T / (m - 1)
    s01 = d01 @ d01.T / (n - 1)
    return aucs, s10 / m + s01 / n


def auc_ci(y_true, y_score, alpha=0.05):
    """AUC with DeLong's variance and a (1 - alpha) CI: AUC -/+ z_{1-alpha/2} sqrt(Var),
    clipped to [0, 1] (DeLong et al. 1988; variance by Sun & Xu 2014, O(n log n)).

    Returns AucCI(auc, lower, upper, variance). Ties count half. Raises ValueError on bad input
    (see ``check_binary``) or alpha outside (0, 1).
    """
    _check_alpha(alpha)
    y, (s,) = check_binary(y_true, y_score)
    aucs, cov = _covariance(y, [s])
    auc, var = float(aucs[0]), float(cov[0, 0])
    if not np.isfinite(var):
        return AucCI(auc, np.nan, np.nan, var)
    half = float(ndtri(1.0 - alpha / 2.0)) * np.sqrt(max(var, 0.0))  # var may be -1e-18
    return AucCI(auc, max(0.0, auc - half), min(1.0, auc + half), var)


def delong_test(y_true, score_a, score_b):
    """Paired two-sided DeLong test of AUC_a == AUC_b on the same cases (DeLong et al. 1988).

        Var(AUC_a - AUC_b) = Var_a + Var_b - 2 Cov_ab   (structural components, Sun & Xu 2014)
        z = (AUC_a - AUC_b) / sqrt(Var(AUC_a - AUC_b)),   p = 2 Phi(-|z|)

    A constant score_b (the paper's dummy model that always outputs 0.5) has AUC 1/2 and zero
    variance and covariance, so the test reduces to z = (AUC_a - 1/2) / sqrt(Var_a). When the
    difference has zero variance, z is 0 (p = 1) for equal AUCs and +/-inf (p = 0) otherwise.
    """
    y, (a, b) = check_binary(y_true, score_a, score_b)
    aucs, cov = _covariance(y, [a, b])
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    if not np.isfinite(var):
        z = np.nan
    elif var <= 0.0:  # both curves degenerate in the same way: no spread to scale by
        z = 0.0 if diff == 0.0 else np.copysign(np.inf, diff)
    else:
        z = diff / np.sqrt(var)
    p = np.nan if np.isnan(z) else float(2.0 * ndtr(-abs(z)))
    return DelongTest(float(z), min(p, 1.0), float(aucs[0]), float(aucs[1]), var)


def _check_alpha(alpha):
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must lie in (0, 1), got {!r}".format(alpha))


def benchmark(n, seed=0):
    """Times ``auc_ci`` on n scores (half positive, with ties) and returns a dict:
    n, seconds (best of 3 runs), auc, variance. For ``python -m reproduce bench --delong N``."""
    n = int(n)
    if n < 4:
        raise ValueError("benchmark needs n >= 4, got {}".format(n))
    rng = np.random.RandomState(seed)
    y = np.zeros(n, dtype=np.int64)
    y[: n // 2] = 1
    # rounding to 1e-4 makes many ties, the expensive case for midranks
    score = np.round(1.0 / (1.0 + np.exp(-(rng.standard_normal(n) + 1.5 * y))), 4)
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        r = auc_ci(y, score)
        best = min(best, time.perf_counter() - t0)
    return {"n": n, "seconds": best, "auc": r.auc, "variance": r.variance}
