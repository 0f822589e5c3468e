"""The paper's network: Keras ResNet-50 with frozen BatchNorm, global average pooling and a
single sigmoid unit.

The model keeps its two halves separate, because the streaming strategy needs them apart:

    backbone:  uint8 RGB image -> feature map F (H/32 x W/32 x 2048), a fixed function of its
               input because every BatchNorm runs on its inference statistics
    head:      Dense(1) on the GAP of F -> logit;  probability = sigmoid(logit)

The CAM of the paper is the head applied at every position of F (see ``cam_logits``); its mean
equals the logit, since GAP and the dense layer are both linear.
"""
import os

import tensorflow as tf

from data.errors import InputError

# ImageNet means in BGR order: the "caffe" preprocessing that Keras' ResNet-50 weights expect.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
OUTPUT_STRIDE = 32
FEATURES = 2048


class WeightsError(InputError):
    """The requested initial weights cannot be had (offline, or a bad path)."""


def preprocess(images):
    """uint8 (or float) RGB in [0, 255] -> float32 BGR minus the ImageNet means (Keras 'caffe')."""
    x = tf.cast(images, tf.float32)[..., ::-1]
    return x - tf.constant(_CAFFE_MEAN_BGR, dtype=tf.float32)


def freeze_batchnorm(model):
    """Makes every BatchNormalization layer untrainable (gamma, beta and statistics fixed).

    Callers must also run the backbone with ``training=False`` so that the layers normalise
    with their moving statistics: that is what makes the network a fixed function of its input.
    """
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.trainable = False
        elif isinstance(layer, tf.keras.Model):
            freeze_batchnorm(layer)
    return model


def _keras_weights(weights):
    """Maps the package's `weights` setting to what Keras takes, failing early with a clear reason."""
    if weights in (None, "none"):
        return None, None
    if weights == "imagenet":
        name = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
        cached = os.path.join(os.path.expanduser("~"), ".keras", "models", name)
        if not os.path.exists(cached):
            # Keras would try to download; on an offline machine that fails deep inside urllib.
            import socket
            try:
                socket.create_connection(("storage.googleapis.com", 443), timeout=5).close()
            except OSError:
                raise WeightsError(
                    "weights: imagenet needs {} in the Keras cache, and the download is not "
                    "reachable from here; pass a local .h5 path (weights: /path/{}) or "
                    "weights: none".format(cached, name))
        return "imagenet", None
    path = os.path.expanduser(str(weights))
    if not os.path.isfile(path):
        raise WeightsError("weights: {} is neither 'imagenet', 'none' nor an existing .h5 file"
                           .format(weights))
    return None, path


def build_backbone(weights="none"):
    """Keras ResNet-50 without its top, BatchNorm frozen, on uint8 RGB input of any size."""
    keras_weights, path = _keras_weights(weights)
    base = tf.keras.applications.ResNet50(include_top=False, weights=keras_weights,
                                          input_shape=(None, None, 3))
    if path is not None:
        base.load_weights(path, by_name=True)
    freeze_batchnorm(base)
    image = tf.keras.Input((None, None, 3), name="image")
    features = base(preprocess(image), training=False)
    return tf.keras.Model(image, features, name="backbone")


def build_model(weights="none"):
    """The whole-slide classifier: image -> probability, with ``.backbone`` and ``.head``.

    ``weights``: "imagenet" (Keras cache or download), "none", or the path of a local .h5 with
    ResNet-50 weights (loaded by layer name, so a notop file works).
    """
    backbone = build_backbone(weights)
    head = tf.keras.layers.Dense(1, name="head")
    image = tf.keras.Input((None, None, 3), name="image")
    features = backbone(image)
    logit = head(tf.keras.layers.GlobalAveragePooling2D(name="gap")(features))
    probability = tf.keras.layers.Activation("sigmoid", name="probability")(logit)
    model = tf.keras.Model(image, probability, name="whole_slide_resnet50")
    model.backbone, model.head = backbone, head
    return model


def cam_logits(model, features):
    """The class activation map before the sigmoid: head(F) at every position, (..., h, w)."""
    kernel, bias = model.head.kernel, model.head.bias
    return tf.tensordot(features, kernel[:, 0], axes=[[-1], [0]]) + bias[0]
