"""The streaming strategy: tile geometry, and exactness against the whole image (small sizes,
random weights). Tolerances as in the selfcheck: logit/CAM 1e-5, gradients 1e-4 relative
(max|a-b| / max|b| per tensor)."""
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tf.compat.v1.enable_v2_behavior()

from model import streaming  # noqa: E402
from model import selfcheck  # noqa: E402
from model.resnet import MARGIN, OUTPUT_STRIDE  # noqa: E402
from tests.conftest import perturbed_model  # noqa: E402


@pytest.mark.parametrize("length", [1, 31, 97, 320, 450, 517, 545, 1105, 4096, 8192, 21500])
@pytest.mark.parametrize("tile", [32, 64, 160, 1792])
def test_plan_axis_partitions_the_grid_with_exact_margins(length, tile):
    margin = MARGIN
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


@pytest.fixture(scope="module")
def model():
    return perturbed_model(selfcheck.synthetic_tissue(97, 1105, seed=0))


def test_feature_grid_is_ceil_of_size_over_32(model):
    for height, width in [(33, 65), (97, 161), (64, 96)]:
        f = model.backbone(tf.zeros([1, height, width, 3]), training=False)
        assert tuple(f.shape[1:3]) == (-(-height // 32), -(-width // 32))


def test_refuses_inexact_margin_and_bad_images(model):
    with pytest.raises(ValueError):
        streaming.Streaming(model, tile=64, margin=224)
    with pytest.raises(ValueError):
        streaming.Streaming(model, tile=48)
    with pytest.raises(TypeError):      # the tile is chosen by model.strategy, and given
        streaming.Streaming(model)
    s = streaming.Streaming(model, tile=64)
    with pytest.raises(ValueError):
        s.predict(np.zeros((64, 64, 3), np.float32))


@pytest.mark.parametrize("height,width", [(330, 1105)])
def test_streaming_equals_whole_image(model, height, width):
    """Noise everywhere: no pixel is exactly the fill, so nothing is skipped, and it is exact."""
    image = selfcheck.synthetic_tissue(height, width, seed=1)
    s = streaming.Streaming(model, tile=32)
    plan = s.plan(image)
    assert plan.proxy is None and len(plan.windows) >= 2      # every cell tiled, in windows
    assert sum((r.cell_stop - r.cell_start) * (c.cell_stop - c.cell_start)
               for r, c in plan.windows) == streaming.grid_size(height, width)
    reference = selfcheck.whole_image(model, image, 1.0)
    predicted = s.predict(image, cam=True)
    loss, probability, grads = s.gradients(image, 1.0)

    assert predicted["cam"].shape == (-(-height // 32), -(-width // 32))
    _assert_equal_to_whole(model, predicted, loss, grads, reference)
    assert probability == pytest.approx(1 / (1 + np.exp(-reference["logit"])), rel=1e-5)
    assert len(grads) == len(model.trainable_variables)
    for g, v in zip(grads, model.trainable_variables):
        assert tuple(g.shape) == tuple(v.shape)


def _assert_equal_to_whole(model, predicted, loss, grads, reference):
    """Streaming's prediction and gradients against the whole image's (``reference``): logit,
    CAM and loss within 1e-5 relative, the CAM's mean the logit, every gradient within 1e-4."""
    assert selfcheck.relative_error(predicted["logit"], reference["logit"]) <= 1e-5
    assert selfcheck.relative_error(predicted["cam"], reference["cam"]) <= 1e-5
    assert predicted["cam"].mean() == pytest.approx(predicted["logit"], rel=1e-5)
    assert selfcheck.relative_error(loss, reference["loss"]) <= 1e-5
    for g, r, v in zip(grads, reference["grads"], model.trainable_variables):
        assert selfcheck.relative_error(g.numpy(), r) <= 1e-4, v.name


def _signature_of(length, cell):
    """The receptive field of a cell cut by the image edges, as pixel offsets (brute force)."""
    centre = 32 * cell
    return (max(0, centre - 241) - (centre - 241), (centre + 241) - min(length - 1, centre + 241),
            centre if centre - 241 < 0 else None, length - 1 - centre if centre + 241 >= length
            else None)


@pytest.mark.parametrize("length", [1, 33, 480, 545, 1000, 1111, 4096, 21500])
def test_proxy_axis_has_every_cell_with_the_same_edges(length):
    proxy, mapping = streaming.proxy_axis(length)
    assert proxy % 32 == length % 32 and proxy <= length
    assert proxy <= max(length, 32 * 17 + 32)                   # short: 8 + 1 + 8 cells at most
    assert mapping.shape == (streaming.output_cells(length),)
    for cell, k in enumerate(mapping):
        assert _signature_of(length, cell) == _signature_of(proxy, k), (cell, k)


def test_plan_follows_the_content_and_skips_nothing_without_uniform_fill():
    from data.canvas import Canvas
    rng = np.random.default_rng(0)
    tissue = rng.integers(0, 255, (2000, 2400, 3), dtype=np.uint8)
    canvas = Canvas(tissue, (9000, 8000), (250, 251, 252), (21500, 21500))
    plan = streaming.plan(canvas, 1792)
    full = streaming.plan(canvas, 1792, skip_uniform=False)
    assert full.proxy is None and full.computed_pixel_ratio > 1.0
    assert plan.proxy is not None and plan.computed_pixel_ratio < 0.035
    # the tiles cover the cells whose field touches the content, and only those
    (r0, r1), (c0, c1) = streaming.content_cells(canvas.box, 21500, 21500)
    assert min(r.cell_start for r, _ in plan.windows) == r0 == -(-(9000 - 241) // 32)
    assert max(r.cell_stop for r, _ in plan.windows) == r1 == (10999 + 241) // 32 + 1
    assert (c0, c1) == (-(-(8000 - 241) // 32), (10399 + 241) // 32 + 1)
    tiled = sum((r.cell_stop - r.cell_start) * (c.cell_stop - c.cell_start)
                for r, c in plan.windows)
    assert tiled + plan.proxy.counts.sum() == streaming.grid_size(21500, 21500)
    # nothing placed: the proxy alone; noise as background: nothing to skip
    empty = streaming.plan(Canvas(tissue[:0], (0, 0), (255,) * 3, (21500, 21500)), 1792)
    assert empty.windows == [] and empty.proxy.counts.sum() == 672 * 672
    noisy = Canvas.from_dense(rng.integers(0, 255, (700, 900, 3), dtype=np.uint8))
    assert noisy.box == (0, 700, 0, 900) and streaming.plan(noisy, 96).proxy is None


def test_skipping_uniform_cells_equals_the_whole_image(model):
    """Tissue near a corner of a canvas of one (non-white) fill colour: the tiles around the
    tissue plus the proxy for the rest -- interior cells and all four border rings -- give the
    whole image's logit, CAM and every gradient."""
    from data.canvas import Canvas
    tissue = selfcheck.synthetic_tissue(150, 120, seed=3)
    canvas = Canvas(tissue, (690, 35), (235, 228, 241), (900, 1063))
    s = streaming.Streaming(model, tile=256)
    plan = s.plan(canvas)
    assert plan.proxy is not None and plan.computed_pixel_ratio < 1.0
    reference = selfcheck.whole_image(model, canvas.dense(), 0.0)
    predicted = s.predict(canvas, cam=True)
    loss, probability, grads = s.gradients(canvas.as_element(), 0.0)   # the pipeline's form
    _assert_equal_to_whole(model, predicted, loss, grads, reference)
    # the proxy's cells really differ at the edges: a single interior value would be wrong
    proxy_cam = predicted["cam"][:3, -3:]
    assert np.ptp(proxy_cam) > 1e-3


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
