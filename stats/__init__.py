"""Statistics of the paper: AUC with DeLong 95% CIs (DeLong et al. 1988, computed by the fast
algorithm of Sun & Xu 2014), DeLong's paired test (against the dummy model that always outputs
0.5), binomial proportion CIs (Wilson 1927, and the Wald interval the paper printed), the ROC
curve (scikit-learn's convention) and the table rows of subgroups (stats.subgroups); the
paper's Table 1 from a predictions CSV is ``stats.table``. Numbers only: the figures and the
HTML report are the ``report`` package's, which imports this one (never the reverse).

Imports numpy and scipy.special only, so it is quick to load (no TensorFlow).
"""
from stats.delong import AucCI, DelongTest, auc_ci, delong_test
from stats.proportion import proportion_ci
from stats.roc import roc_curve
from stats.subgroups import subgroup_cases, summarize

__all__ = ["AucCI", "DelongTest", "auc_ci", "delong_test", "roc_curve", "proportion_ci",
           "subgroup_cases", "summarize"]
