"""Statistics of the paper: AUC with DeLong 95% CIs (DeLong et al. 1988, computed by the fast
algorithm of Sun & Xu 2014), DeLong's paired test (against the dummy model that always outputs
0.5), and binomial proportion CIs (Wilson 1927, and the Wald interval the paper printed).

Imports numpy and scipy.special only, so it is quick to load (no TensorFlow).
"""
from stats.delong import AucCI, DelongTest, auc_ci, delong_test, roc_curve
from stats.proportion import proportion_ci

__all__ = ["AucCI", "DelongTest", "auc_ci", "delong_test", "roc_curve", "proportion_ci"]
