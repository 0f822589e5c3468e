"""model/: the frozen-BN ResNet-50, the direct strategy, strategy choice, GPU config, checkpoints."""
import numpy as np
import pytest
import tensorflow as tf

tf.compat.v1.enable_v2_behavior()

from model import checkpoint, gpu  # noqa: E402
from model.direct import Direct  # noqa: E402
from model.resnet import build_model  # noqa: E402
from model.strategy import make_strategy, resolve  # noqa: E402


@pytest.fixture(scope="module")
def model():
    tf.compat.v1.set_random_seed(1)
    return build_model("none")


def _image(seed, h=64, w=64):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)


def _bn_variables(model):
    return [v for v in model.variables
            if any(k in v.name for k in ("gamma", "beta", "moving_mean", "moving_variance"))]


def test_batchnorm_frozen_and_not_trainable(model):
    names = [v.name for v in model.trainable_variables]
    assert not any("_bn/" in n for n in names)
    # ResNet-50: 53 convolutions (kernel + bias) and the dense head (kernel + bias).
    assert len(names) == 53 * 2 + 2
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) < \
        sum(int(np.prod(v.shape)) for v in model.variables)


def test_training_step_leaves_batchnorm_unchanged(model):
    bn = _bn_variables(model)
    assert len(bn) == 53 * 4
    before = [v.numpy().copy() for v in bn]
    trainable_before = model.trainable_variables[0].numpy().copy()
    strategy = Direct(model)
    loss, probability, grads = strategy.gradients(_image(0), 1.0)
    optimizer = tf.keras.optimizers.Adam(1e-3)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, bn))
    assert not np.array_equal(trainable_before, model.trainable_variables[0].numpy())


def test_direct_loss_probability_and_cam(model):
    strategy = Direct(model)
    image = _image(1, 96, 160)          # not square: any H x W
    loss, probability, grads = strategy.gradients(image, 0.0)
    out = strategy.predict(image, cam=True)
    p = out["probability"]
    # BCE of a negative slide is -log(1 - sigmoid(z)) = softplus(z); predict and gradients agree.
    z = out["logit"]
    assert abs(float(probability) - p) < 1e-5
    assert abs(float(loss) - (max(z, 0.0) + np.log1p(np.exp(-abs(z))))) < 1e-4 * max(1.0, abs(z))
    assert len(grads) == len(model.trainable_variables)
    assert all(g.shape == v.shape for g, v in zip(grads, model.trainable_variables))
    assert out["cam"].shape == (3, 5)
    # The CAM's mean is the logit (GAP and the dense layer are linear).
    assert abs(out["cam"].mean() - out["logit"]) < 1e-4 * max(1.0, abs(out["logit"]))
    assert strategy.predict(image)["cam"] is None


def test_gradients_match_finite_difference_on_head(model):
    strategy = Direct(model)
    image, label = _image(2), 1.0
    _, _, grads = strategy.gradients(image, label)
    bias = model.head.bias
    g = float(grads[-1].numpy()[0])
    assert model.trainable_variables[-1] is bias or model.trainable_variables[-1].name == bias.name
    eps = 1e-2
    original = bias.numpy().copy()
    losses = []
    for d in (eps, -eps):
        bias.assign(original + d)
        losses.append(float(strategy.gradients(image, label)[0]))
    bias.assign(original)
    assert abs((losses[0] - losses[1]) / (2 * eps) - g) < 1e-3


def test_strategy_choice(model):
    assert resolve("auto") == "streaming"          # on a GPU too (tests/test_strategy.py)
    assert resolve("unified") == "unified"
    assert make_strategy("direct", model).name == "direct"
    assert make_strategy("unified", model).name == "unified"
    with pytest.raises(ValueError):
        make_strategy("bogus", model)


def test_streaming_plugs_in(model):
    image = _image(5, 96, 128)
    direct = Direct(model).predict(image)["logit"]
    levels = make_strategy("streaming", model, tile=64, memory_gb=4)
    windows = make_strategy("streaming", model, tile=64, engine="windows")
    assert type(levels).__name__ == "LevelStreaming" and type(windows).__name__ == "Streaming"
    for streaming in (levels, windows):
        assert streaming.predict(image)["logit"] == pytest.approx(direct, rel=1e-4, abs=1e-4)


def test_unified_gpu_config():
    gib = 1024 ** 3
    config = gpu.session_config(host_ram_bytes=512 * gib, gpu_ram_bytes=32 * gib, local_rank=3,
                                threads=2, unified=True)
    g = config.gpu_options
    assert g.per_process_gpu_memory_fraction == pytest.approx(16.0)
    assert g.experimental.use_unified_memory
    assert g.allow_growth and g.visible_device_list == "3"
    assert config.intra_op_parallelism_threads == 2 and config.inter_op_parallelism_threads == 1
    assert config.allow_soft_placement
    # Not the unified strategy (the default), or unknown GPU memory: the default allocator.
    for plain in (gpu.session_config(512 * gib, 32 * gib, 0).gpu_options,
                  gpu.session_config(512 * gib, None, 0, unified=True).gpu_options):
        assert plain.per_process_gpu_memory_fraction == 0
        assert not plain.experimental.use_unified_memory
    with pytest.raises(ValueError):
        gpu.unified_memory_fraction(0, 32 * gib)


def test_checkpoint_roundtrip(model, tmp_path):
    path = str(tmp_path / "x.ckpt")
    optimizer = tf.keras.optimizers.Adam(1e-4)
    _, _, grads = Direct(model).gradients(_image(3), 1.0)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    checkpoint.save(path, model, {"epoch": 3}, optimizer)
    saved = [v.numpy().copy() for v in model.variables + optimizer.variables()]
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".tmp")]
    optimizer.apply_gradients(zip(grads, model.trainable_variables))   # move away
    state = checkpoint.restore(path, model, optimizer)
    assert state == {"epoch": 3}
    restored = [v.numpy() for v in model.variables + optimizer.variables()]
    assert all(np.array_equal(a, b) for a, b in zip(saved, restored))
    fresh = checkpoint.load_for_inference(path)
    assert all(np.array_equal(a, v.numpy())
               for a, v in zip(saved[:len(model.variables)], fresh.variables))
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load_for_inference(str(tmp_path / "missing.ckpt"))


def _keras_layers(backbone):
    """The layers of the Keras ResNet-50 inside the backbone, in order."""
    inner = [layer for layer in backbone.layers if isinstance(layer, tf.keras.Model)]
    assert len(inner) == 1
    return inner[0].layers


def test_layer_table_is_the_keras_models(model):
    """model.resnet.LAYERS: every convolution and the pooling of the built backbone, in its
    order, with its kernel, stride, zero padding and channels."""
    from model import resnet
    keras, previous = [], None
    for layer in _keras_layers(model.backbone):
        if isinstance(layer, tf.keras.layers.ZeroPadding2D):
            previous = layer.get_config()["padding"]
        elif isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.MaxPooling2D)):
            config = layer.get_config()
            conv = isinstance(layer, tf.keras.layers.Conv2D)
            kernel = config["kernel_size"] if conv else config["pool_size"]
            assert kernel[0] == kernel[1] and config["strides"][0] == config["strides"][1]
            if config["padding"] == "same":
                assert config["strides"][0] == 1
                pad = (kernel[0] - 1) // 2
            else:
                pad = previous[0][0] if previous else 0
                assert previous is None or previous[0] == previous[1] == (pad, pad)
            channels_in = int(layer.input_shape[-1])
            channels_out = config["filters"] if conv else channels_in
            keras.append((layer.name, "conv" if conv else "pool", kernel[0],
                          config["strides"][0], pad, channels_in, channels_out))
            previous = None
    table = [(l.name, l.kind, l.kernel, l.stride, l.pad, l.channels_in, l.channels_out)
             for l in resnet.LAYERS]
    assert table == keras and len(table) == 53 + 1       # 53 convolutions and the max pooling


def test_receptive_field_constants():
    from model import resnet
    assert (resnet.OUTPUT_STRIDE, resnet.RECEPTIVE_FIELD, resnet.RADIUS, resnet.MARGIN,
            resnet.FEATURES) == (32, 483, 241, 256, 2048)
    by_name = {layer.name: layer for layer in resnet.LAYERS}
    # radius after the first conv, and at the end of each stage
    assert [by_name[n].radius for n in ("conv1_conv", "conv2_block3_3_conv", "conv3_block4_3_conv",
                                        "conv4_block6_3_conv", "conv5_block3_3_conv")] == \
        [3, 17, 49, 145, 241]
    assert [by_name[n].jump for n in ("conv1_conv", "pool1_pool", "conv3_block1_1_conv",
                                      "conv5_block1_0_conv")] == [2, 4, 8, 32]
    assert by_name["conv2_block1_2_conv"].macs == 3 * 3 * 64 * 64
    assert by_name["pool1_pool"].macs == 0
