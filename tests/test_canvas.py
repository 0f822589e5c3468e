"""data.canvas and data.augment.apply_canvas: the canvas as fill + content equals the dense
canvas pixel for pixel, and is never built whole."""
import tracemalloc
import warnings

import numpy as np
import pytest

from data import augment as A
from data.canvas import Canvas, as_canvas, place
from tests.conftest import block_noise


@pytest.mark.parametrize("space", list(A.BRIGHTNESS_SPACES))
def test_augmented_canvas_equals_the_dense_augmentation(space):
    """Random rotation, translation, flips and every colour step, in all six brightness spaces,
    on canvases of other sizes than the image, larger and smaller (centre-cropped): equal."""
    rng = np.random.default_rng(list(A.BRIGHTNESS_SPACES).index(space))
    for _ in range(12):
        canvas = int(rng.integers(40, 260))
        h, w = int(rng.integers(3, canvas + 30)), int(rng.integers(3, canvas + 30))
        image = block_noise(h, w, int(rng.integers(1 << 30)))
        p = A.sample_params(rng, translate_px=canvas // 6)._replace(brightness_space=space)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dense = A.apply(image, p, canvas)
            placed = A.apply_canvas(image, p, canvas)
        assert np.array_equal(placed.dense(), dense), (canvas, h, w, p)
        top, bottom, left, right = placed.box
        outside = np.ones(dense.shape[:2], bool)
        outside[top:bottom, left:right] = False
        assert (dense[outside] == placed.fill).all()          # the fill is uniform
        assert (placed.fill == A.fill_colour(p)).all()


def test_the_geometry_alone_is_bit_equal_including_the_bicubic_edges():
    rng = np.random.default_rng(7)
    for _ in range(30):
        canvas = int(rng.integers(64, 300))
        image = block_noise(int(rng.integers(8, canvas)), int(rng.integers(8, canvas)), 1)
        p = A.sample_params(rng, translate_px=canvas // 5)
        dense = A.apply(image, p, canvas, stages=())
        placed = A.apply_canvas(image, p, canvas, stages=())
        assert (placed.fill == 255).all()
        assert np.array_equal(placed.dense(), dense)
        # bicubic overshoot at the tissue's edge is kept: the box is no tighter than non-white
        rows = np.flatnonzero((dense != 255).any(axis=(1, 2)))
        assert placed.box[0] == rows[0] and placed.box[1] == rows[-1] + 1


def test_colour_depends_on_the_colour_alone():
    """OpenCV's SIMD and scalar loops round differently; colour_ must not: every pixel of an
    image equals the colour map of all 2^24 colours at its colour, whatever its position."""
    p = A.sample_params(5)._replace(brightness_space="HSV")
    index = np.arange(1 << 24, dtype=np.uint32)
    table = np.stack([index >> 16, (index >> 8) & 255, index & 255], -1).astype(np.uint8)
    table = A.colour_(table.reshape(4096, 4096, 3), p).reshape(-1, 3)
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (3, 67), (37, 101), (64, 1)]:
        image = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
        key = (image[..., 0].astype(np.uint32) << 16) | (image[..., 1].astype(np.uint32) << 8) \
            | image[..., 2]
        assert np.array_equal(A.colour_(image.copy(), p), table[key]), shape
    row = np.full((1, 67, 3), 255, np.uint8)                 # a row end: scalar loop in OpenCV
    assert (A.colour_(row, p) == A.fill_colour(p)).all()


def test_place_is_pad_to_canvas_and_windows_are_parts_of_it():
    image = block_noise(30, 50, 2)
    placed = place(image, 64)
    assert placed.offset == (17, 7) and placed.shape == (64, 64)
    dense = A.pad_to_canvas(image, 64)
    assert np.array_equal(placed.dense(), dense)
    assert np.array_equal(placed.window(10, 40, 0, 20), dense[10:40, 0:20])
    assert np.array_equal(placed.crop(5, 9, 40, 50).dense(), dense[5:45, 9:59])
    assert np.array_equal(as_canvas(placed.as_element()).dense(), dense)
    again = Canvas.from_dense(dense)
    assert again.box == (17, 47, 7, 57) and np.array_equal(again.dense(), dense)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        big = block_noise(80, 70, 3)
        assert np.array_equal(place(big, 64).dense(), A.pad_to_canvas(big, 64))
    with pytest.raises(ValueError):
        place(big, 64, fail_if_larger=True)
    with pytest.raises(ValueError):
        Canvas(image, (40, 0), (255,) * 3, (64, 64))          # content outside the canvas


def test_a_paper_sized_canvas_is_never_built():
    """21,500^2 px would be 1.39 GB; the augmented canvas of a small node takes a few MB."""
    image = block_noise(300, 240, 4)
    p = A.sample_params(9, translate_px=500)
    tracemalloc.start()
    placed = A.apply_canvas(image, p, 21500)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert placed.shape == (21500, 21500)
    assert placed.content.shape[0] <= 400 and placed.content.shape[1] <= 400
    assert peak < 60e6, peak
    # the same pixels as the dense augmentation, around the content
    top, bottom, left, right = placed.box
    window = placed.window(top - 5, bottom + 5, left - 5, right + 5)
    assert (window[:5] == placed.fill).all() and (window[-5:] == placed.fill).all()
