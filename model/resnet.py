"""The paper's network: Keras ResNet-50 with frozen BatchNorm, global average pooling and a
single sigmoid unit, and the geometry of its layers.

The model keeps its two halves separate, because the streaming strategy needs them apart:

    backbone:  uint8 RGB image -> feature map F (H/32 x W/32 x 2048), a fixed function of its
               input because every BatchNorm runs on its inference statistics
    head:      Dense(1) on the GAP of F -> logit;  probability = sigmoid(logit)

The CAM of the paper is the head applied at every position of F (see ``cam_logits``); its mean
equals the logit, since GAP and the dense layer are both linear.

Geometry. ``LAYERS`` lists the backbone's convolutions and its pooling in the Keras model's order
(keras_applications' ResNet-50, as TF 1.15 builds it: checked against the built model's layer
configs by tests/test_model.py), each with its kernel, stride, zero padding and channels, and the
receptive field and cumulative stride of its output. The constants the strategies rely on come
from its last layer: ``OUTPUT_STRIDE`` (32 px), ``RECEPTIVE_FIELD`` (483 px), ``RADIUS`` (241 px)
and ``FEATURES`` (2,048); ``MARGIN`` (256 px) is the radius rounded up to the stride, the least
margin that keeps streamed windows exact (model/streaming.py).

TensorFlow is imported by the functions that build or run the network, so that the geometry is
importable without it (``model.strategy`` plans memory before any TensorFlow work).
"""
import collections
import os

from data.errors import InputError

# ImageNet means in BGR order: the "caffe" preprocessing that Keras' ResNet-50 weights expect.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

# Bottleneck stages of ResNet-50: (stage, blocks, width, stride of the first block). Each block is
# 1x1 (width, the block's stride) -> 3x3 'same' (width) -> 1x1 (4 width), plus a 1x1 projection
# shortcut (4 width, the block's stride) in the first block of a stage.
_STAGES = ((2, 3, 64, 1), (3, 4, 128, 2), (4, 6, 256, 2), (5, 3, 512, 2))


class Layer(collections.namedtuple(
        "Layer", "name kind kernel stride pad channels_in channels_out field jump")):
    """One convolution or pooling of the backbone (per axis; every kernel is square):

    ``kind`` 'conv' or 'pool'; ``kernel`` and ``stride`` in positions of its input; ``pad``: zero
    padding on each side of its input (``ZeroPadding2D`` before a 'valid' layer, or 'same');
    ``field``: input px that one of its output positions sees (receptive field); ``jump``: input
    px between neighbouring output positions (the cumulative stride)."""
    __slots__ = ()

    @property
    def radius(self):
        """Input px the receptive field reaches on either side of a position's centre."""
        return (self.field - 1) // 2

    @property
    def macs(self):
        """Multiply-accumulates of one output position (a convolution; 0 for the pooling)."""
        if self.kind != "conv":
            return 0
        return self.kernel * self.kernel * self.channels_in * self.channels_out


def _after(source, name, kernel, stride, channels, pad=None, kind="conv"):
    """The layer ``name`` applied to the output of ``source``; ``pad`` defaults to 'same'."""
    return Layer(name, kind, kernel, stride, (kernel - 1) // 2 if pad is None else pad,
                 source.channels_out, channels, source.field + (kernel - 1) * source.jump,
                 source.jump * stride)


def _layer_table():
    """The backbone's convolutions and pooling in the Keras model's order (see ``Layer``)."""
    image = Layer("image", "input", 1, 1, 0, 3, 3, 1, 1)
    x = _after(image, "conv1_conv", 7, 2, 64, pad=3)
    layers = [x]
    x = _after(x, "pool1_pool", 3, 2, 64, pad=1, kind="pool")
    layers.append(x)
    for stage, blocks, width, first_stride in _STAGES:
        for block in range(1, blocks + 1):
            name = "conv{}_block{}_".format(stage, block)
            stride = first_stride if block == 1 else 1
            y = _after(x, name + "1_conv", 1, stride, width)
            z = _after(y, name + "2_conv", 3, 1, width)
            layers.extend((y, z))
            if block == 1:      # the projection shortcut, at the depth Keras orders it
                layers.append(_after(x, name + "0_conv", 1, stride, 4 * width))
            # the block's output: the shortcut's field is smaller, the sum's is this one's
            x = _after(z, name + "3_conv", 1, 1, 4 * width)
            layers.append(x)
    return tuple(layers)


LAYERS = _layer_table()
OUTPUT_STRIDE = LAYERS[-1].jump                   # 32 px per output cell
RECEPTIVE_FIELD = LAYERS[-1].field                # 483 px
RADIUS = LAYERS[-1].radius                        # 241 px on either side of a cell's centre
MARGIN = -(-RADIUS // OUTPUT_STRIDE) * OUTPUT_STRIDE   # 256 px: the smallest exact margin
FEATURES = LAYERS[-1].channels_out                # 2,048 channels of F


class WeightsError(InputError):
    """The requested initial weights cannot be had (offline, or a bad path)."""


def preprocess(images):
    """uint8 (or float) RGB in [0, 255] -> float32 BGR minus the ImageNet means (Keras 'caffe')."""
    import tensorflow as tf
    x = tf.cast(images, tf.float32)[..., ::-1]
    return x - tf.constant(_CAFFE_MEAN_BGR, dtype=tf.float32)


def freeze_batchnorm(model):
    """Makes every BatchNormalization layer untrainable (gamma, beta and statistics fixed).

    Callers must also run the backbone with ``training=False`` so that the layers normalise
    with their moving statistics: that is what makes the network a fixed function of its input.
    """
    import tensorflow as tf
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
    import tensorflow as tf
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
    import tensorflow as tf
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
    import tensorflow as tf
    kernel, bias = model.head.kernel, model.head.bias
    return tf.tensordot(features, kernel[:, 0], axes=[[-1], [0]]) + bias[0]
