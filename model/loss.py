"""The head's output and loss, for one slide, in float64 on the host.

    probability = sigmoid(z),  z = the logit (GAP . w + b)
    L(z, y) = max(z, 0) - z y + log(1 + exp(-|z|))      (binary cross-entropy from the logit)

Both are written so that no exp() overflows for any z, as
``tf.nn.sigmoid_cross_entropy_with_logits`` does on the graph side.
"""
import math

import numpy as np


def sigmoid(z):
    """1 / (1 + exp(-z)), stable for any z. A Python float for a scalar, else float64 array."""
    if np.ndim(z) == 0:
        z = float(z)
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
    z = np.asarray(z, np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def bce(z, y):
    """Binary cross-entropy of label ``y`` (0/1) given the logit ``z``, stable for any z."""
    z, y = float(z), float(y)
    return max(z, 0.0) - z * y + math.log1p(math.exp(-abs(z)))
