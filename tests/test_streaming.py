"""The streaming strategy: tile geometry, and exactness against the whole image (small sizes,
random weights). Tolerances as in the selfcheck: logit/CAM 1e-5, gradients 1e-4 relative
(max|a-b| / max|b| per tensor)."""
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tf.compat.v1.enable_v2_behavior()

from model import streaming  # noqa: E402
from model.resnet import OUTPUT_STRIDE, build_model  # noqa: E402
from reproduce import selfcheck  # noqa: E402


@pytest.mark.parametrize("length", [1, 31, 97, 320, 450, 517, 545, 1105, 4096, 8192, 21500])
@pytest.mark.parametrize("tile", [32, 64, 160, 1792])
def test_plan_axis_partitions_the_grid_with_exact_margins(length, tile):
    margin = streaming.MARGIN
    spans = streaming.plan_axis(length, tile, margin)
    cells = streaming.output_cells(length)
    assert cells == -(-length // 32)
    # interiors partition [0, cells) in order
    assert spans[0].cell_start == 0 and spans[-1].cell_stop == cells
    for a, b in zip(spans[:-1], spans[1:]):
        assert a.cell_stop == b.cell_start
    for s in spans:
        assert s.cell_stop > s.cell_start
        assert s.window_start % OUTPUT_STRIDE == 0           # windows on the output grid
        assert 0 <= s.window_start and s.window_stop <= length
        assert s.window_stop - s.window_start <= tile + 2 * margin
        # every side is an image edge or carries the full margin
        assert s.window_start == 0 or s.cell_start * 32 - s.window_start >= margin
        assert s.window_stop == length or s.window_stop - s.cell_stop * 32 >= margin
    # computed pixels: length + 2 margin (n - 1) when no window is clipped by the image
    total = sum(s.window_stop - s.window_start for s in spans)
    assert length <= total <= length + 2 * margin * (len(spans) - 1)


def test_plan_uses_the_fewest_tiles_and_reports_the_overlap():
    assert len(streaming.plan_axis(544, 32)) == 1                # 32 + 2*256 covers it
    assert len(streaming.plan_axis(545, 32)) == 2
    assert len(streaming.plan_axis(4096, 1792)) == 2
    assert streaming.computed_pixel_ratio(1000, 1000, 1792) == 1.0
    assert streaming.computed_pixel_ratio(4096, 4096, 1792) == pytest.approx((4608 / 4096.) ** 2)


def test_tile_for_memory_grows_with_budget_and_refuses_too_little():
    small, large = streaming.tile_for_memory(6), streaming.tile_for_memory(12)
    assert small % 32 == 0 and large > small
    assert streaming.tile_for_memory(12, training=False) > large
    with pytest.raises(ValueError):
        streaming.tile_for_memory(1.0)


@pytest.fixture(scope="module")
def model():
    tf.compat.v1.set_random_seed(0)
    m = build_model("none")
    selfcheck.perturb_batchnorm(m, seed=0)
    image = selfcheck.synthetic_tissue(97, 1105, seed=0)
    selfcheck.set_random_head(m, image, seed=0)
    return m


def test_feature_grid_is_ceil_of_size_over_32(model):
    for height, width in [(33, 65), (97, 161), (64, 96)]:
        f = model.backbone(tf.zeros([1, height, width, 3]), training=False)
        assert tuple(f.shape[1:3]) == (-(-height // 32), -(-width // 32))


def test_refuses_inexact_margin_and_bad_images(model):
    with pytest.raises(ValueError):
        streaming.Streaming(model, tile=64, margin=224)
    with pytest.raises(ValueError):
        streaming.Streaming(model, tile=48)
    s = streaming.Streaming(model, tile=64)
    with pytest.raises(ValueError):
        s.predict(np.zeros((64, 64, 3), np.float32))


@pytest.mark.parametrize("height,width", [(97, 1105)])
def test_streaming_equals_whole_image(model, height, width):
    image = selfcheck.synthetic_tissue(height, width, seed=1)
    s = streaming.Streaming(model, tile=64)
    assert len(s.tiles(height, width)) >= 8                  # several windows along the long axis
    reference = selfcheck.whole_image(model, image, 1.0)
    predicted = s.predict(image, cam=True)
    loss, probability, grads = s.gradients(image, 1.0)

    assert predicted["cam"].shape == (-(-height // 32), -(-width // 32))
    assert selfcheck.relative_error(predicted["logit"], reference["logit"]) <= 1e-5
    assert selfcheck.relative_error(predicted["cam"], reference["cam"]) <= 1e-5
    assert predicted["cam"].mean() == pytest.approx(predicted["logit"], rel=1e-5)
    assert selfcheck.relative_error(loss, reference["loss"]) <= 1e-5
    assert probability == pytest.approx(1 / (1 + np.exp(-reference["logit"])), rel=1e-5)
    assert len(grads) == len(model.trainable_variables)
    for g, r, v in zip(grads, reference["grads"], model.trainable_variables):
        assert tuple(g.shape) == tuple(v.shape)
        assert selfcheck.relative_error(g.numpy(), r) <= 1e-4, v.name


def test_inexact_margin_is_detectably_wrong(model):
    """Guards the test above: a margin below the receptive-field radius does change results."""
    image = selfcheck.synthetic_tissue(97, 1105, seed=1)
    s = streaming.Streaming(model, tile=64, margin=64, allow_inexact=True)
    reference = selfcheck.whole_image(model, image, 1.0)
    assert selfcheck.relative_error(s.predict(image, cam=True)["cam"], reference["cam"]) > 1e-3


def test_same_results_as_the_direct_strategy(model):
    """train/predict swap strategies unchanged: same loss, probability, grads and CAM as Direct."""
    from model.direct import Direct
    image = selfcheck.synthetic_tissue(97, 1105, seed=2)
    direct, s = Direct(model), streaming.Streaming(model, tile=64)
    d_loss, d_prob, d_grads = direct.gradients(image, 0.0)
    s_loss, s_prob, s_grads = s.gradients(image, 0.0)
    assert float(s_loss) == pytest.approx(float(d_loss), rel=1e-5)
    assert float(s_prob) == pytest.approx(float(d_prob), rel=1e-5)
    for a, b in zip(s_grads, d_grads):
        assert selfcheck.relative_error(a.numpy(), b.numpy()) <= 1e-4
    d_pred, s_pred = direct.predict(image, cam=True), s.predict(image, cam=True)
    assert s_pred["logit"] == pytest.approx(d_pred["logit"], rel=1e-5)
    assert selfcheck.relative_error(s_pred["cam"], d_pred["cam"]) <= 1e-5
    assert s.predict(image)["cam"] is None
