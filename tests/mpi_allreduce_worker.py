"""Run under `mpirun -np N`: each rank allreduces gradients it knows, and rank 0 prints them.

Rank r holds the 'gradients' g_k(r) = (k + 1) * (r + 1) * ones(shape_k), so the Horovod average is
(k + 1) * (N + 1) / 2 for every element: a value the test can check without trusting Horovod.
"""
import json

import numpy as np
import tensorflow as tf

tf.compat.v1.enable_v2_behavior()
import horovod  # noqa: E402
import horovod.tensorflow as hvd  # noqa: E402

hvd.init()
shapes = [(3, 3, 4, 8), (8,), (2048, 1)]
grads = [tf.constant((k + 1) * (hvd.rank() + 1) * np.ones(s, np.float32)) for k, s in enumerate(shapes)]
averaged = [hvd.allreduce(g, average=True).numpy() for g in grads]
summed = hvd.allreduce(tf.constant([float(hvd.rank() + 1)]), average=False).numpy()
if hvd.rank() == 0:
    print(json.dumps({
        "size": hvd.size(),
        "tensorflow": tf.__version__,
        "horovod": horovod.__version__,
        "averaged": [[float(a.min()), float(a.max())] for a in averaged],
        "summed": float(summed[0]),
    }))
