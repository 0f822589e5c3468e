"""The direct strategy: one slide through the whole graph at once.

This is the original method's computation. The memory it needs grows with the image
(about 1.7 KB of host RAM per input pixel on the CPU), so it serves images that fit; the
`unified` strategy runs it on a GPU with oversubscribed CUDA unified memory, and the
`streaming` strategy (model/levels.py; model/streaming.py in TF1's graph mode) gives the same
numbers in parts.

Loss: binary cross-entropy of one slide from its logit z and label y,
    L = max(z, 0) - z*y + log(1 + exp(-|z|))
(tf.nn.sigmoid_cross_entropy_with_logits), which is stable for any z.
"""
import numpy as np
import tensorflow as tf

from data.canvas import Canvas, as_canvas
from model.loss import sigmoid
from model.resnet import cam_logits
from model.runner import numpy_function

_IMAGE = tf.TensorSpec([None, None, 3], tf.uint8)   # any H x W, RGB uint8
_LABEL = tf.TensorSpec([], tf.float32)


class Direct:
    """``gradients(image, label)`` and ``predict(image, cam=False)`` for one whole slide."""

    name = "direct"

    def __init__(self, model):
        self.model = model
        self._gradients = tf.function(self._gradients_graph, input_signature=[_IMAGE, _LABEL])
        self._forward = numpy_function(self._forward_graph, [_IMAGE])

    def _logit_and_features(self, image):
        # The Keras input is float32 holding 0..255; model.resnet.preprocess does the rest.
        features = self.model.backbone(tf.cast(image, tf.float32)[tf.newaxis], training=False)
        logit = self.model.head(tf.reduce_mean(features, axis=[1, 2]))[0, 0]   # GAP, Dense(1)
        return logit, features

    def _gradients_graph(self, image, label):
        with tf.GradientTape() as tape:
            logit, _ = self._logit_and_features(image)
            loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=label, logits=logit)
        grads = tape.gradient(loss, self.model.trainable_variables)
        return loss, tf.sigmoid(logit), grads

    def _forward_graph(self, image):
        logit, features = self._logit_and_features(image)
        return logit, cam_logits(self.model, features)[0]

    def gradients(self, image, label):
        """(loss, probability, grads): BCE of one slide, grads for model.trainable_variables."""
        loss, probability, grads = self._gradients(_dense(image), tf.cast(label, tf.float32))
        return loss, probability, grads

    def predict(self, image, cam=False):
        """dict(probability, logit, cam): cam is the pre-sigmoid CAM on the stride-32 grid."""
        logit, grid = self._forward(_dense(image))
        logit = float(logit)
        return dict(probability=sigmoid(logit), logit=logit, cam=grid if cam else None)


def _dense(image):
    """The whole canvas as a uint8 array (a tensor stays one): the direct strategy is the one
    that builds it."""
    if isinstance(image, (Canvas, dict)):
        image = as_canvas(image).dense()
    return image if tf.is_tensor(image) else np.asarray(image, np.uint8)
