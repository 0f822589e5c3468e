"""Binomial proportion confidence intervals: Wilson (1927) and Wald.

For k successes in n trials, p = k / n and z = z_{1 - alpha/2} (1.959964 for alpha = 0.05):

    Wald:    p -/+ z sqrt(p (1 - p) / n), clipped to [0, 1]
    Wilson:  (p + z^2/(2n) -/+ z sqrt(p (1 - p)/n + z^2/(4 n^2))) / (1 + z^2/n)
             (E. B. Wilson, "Probable inference, the law of succession, and statistical
             inference", JASA 22:209-212, 1927), always inside [0, 1].

The paper says its accuracy CIs are Wilson's, but the intervals it prints are Wald's:
985/1000 -> 97.75-99.25% and 525/538 -> 96.29-98.88% (Wilson gives 97.54-99.09% for 985/1000).
"""
import numbers

import numpy as np
from scipy.special import ndtri

METHODS = ("wilson", "wald")


def proportion_ci(k, n, alpha=0.05, method="wilson"):
    """(lower, upper) of the (1 - alpha) CI of the proportion k/n by ``method`` (wilson|wald).

    Raises ValueError unless k and n are integers with 0 <= k <= n, n >= 1, alpha in (0, 1).
    """
    for name, v in (("k", k), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError("{} must be an integer count, got {!r}".format(name, v))
    k, n = int(k), int(n)
    if n < 1:
        raise ValueError("n must be >= 1, got {}".format(n))
    if not 0 <= k <= n:
        raise ValueError("k must lie in [0, n] = [0, {}], got {}".format(n, k))
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must lie in (0, 1), got {!r}".format(alpha))
    if method not in METHODS:
        raise ValueError("method must be one of {}, got {!r}".format("|".join(METHODS), method))
    z = float(ndtri(1.0 - alpha / 2.0))
    p = k / n
    if method == "wald":
        half = z * np.sqrt(p * (1.0 - p) / n)
        return max(0.0, p - half), min(1.0, p + half)
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z * np.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
