"""data.slide: reading slides at a physical mpp through OpenSlide."""
import os
import random
import shutil

import cv2
import numpy as np
import openslide
import pytest

import data
from data.slide import Slide, SlideError, composite_on_white, read_slide, slide_info
from tests.conftest import aperio_tiff, pyramid, tissue


def _level0(path):
    """The whole level 0 as RGB, straight from OpenSlide (the test's reference)."""
    s = openslide.OpenSlide(path)
    try:
        return np.asarray(s.read_region((0, 0), 0, s.dimensions))[..., :3]
    finally:
        s.close()


# -- the real CC0 Aperio slide -----------------------------------------------------------------
def test_cmu_size_from_mpp_arithmetic_and_vendor(cmu_small_region):
    info = slide_info(cmu_small_region)
    assert info["vendor"] == "aperio"
    assert (info["width"], info["height"]) == (2220, 2967)
    assert info["mpp_x"] == pytest.approx(0.499)
    image = read_slide(cmu_small_region, 2.0)
    # round(level0 * mpp / target) per axis: 2220*0.499/2 = 553.89 -> 554; 2967*0.499/2 -> 740
    want = (int(round(2967 * info["mpp_y"] / 2.0)), int(round(2220 * info["mpp_x"] / 2.0)))
    assert image.shape == want + (3,) and image.dtype == np.uint8


def test_cmu_equals_cv2_inter_area_and_strips_equal_one_read(cmu_small_region):
    one = read_slide(cmu_small_region, 2.0)
    # ~25 strips instead of one: the separable area filter makes them bit-identical (tolerance 0)
    strips = read_slide(cmu_small_region, 2.0, max_strip_pixels=2220 * 120)
    assert np.array_equal(one, strips)
    # against cv2.INTER_AREA of the whole level 0 in one go: within 1 grey level (rounding)
    ref = cv2.resize(_level0(cmu_small_region), (one.shape[1], one.shape[0]),
                     interpolation=cv2.INTER_AREA)
    assert np.abs(one.astype(int) - ref).max() <= 1


def test_cmu_outside_the_slide_is_white(cmu_small_region):
    # a box hanging 100 px (level 0) off the top-left corner: OpenSlide gives alpha 0 there
    part = read_slide(cmu_small_region, 0.998, region=(-100, -100, 400, 300))
    assert part.shape == (150, 200, 3)
    assert (part[:50] == 255).all() and (part[:, :50] == 255).all()
    inside = read_slide(cmu_small_region, 0.998, region=(0, 0, 300, 200))
    assert np.array_equal(part[50:, 50:], inside)  # the scanned part is the plain read
    assert inside.min() < 200  # and it is tissue, not white


# -- pyramids written here ---------------------------------------------------------------------
def test_level_choice_is_just_finer_than_target(tmp_path):
    # Each level gets its own flat colour, so the output shows which level was read.
    colours = [(200, 10, 10), (10, 200, 10), (10, 10, 200)]
    levels = [np.full((512 >> i, 640 >> i, 3), c, np.uint8) for i, c in enumerate(colours)]
    path = aperio_tiff(tmp_path / "levels.svs", levels, mpp=0.25)
    for target, level in [(0.25, 0), (0.4, 0), (0.5, 1), (0.8, 1), (1.0, 2), (3.0, 2)]:
        with Slide(path) as s:
            assert s.best_level(target) == level
        image = read_slide(path, target)
        assert image.shape == (int(round(512 * 0.25 / target)), int(round(640 * 0.25 / target)), 3)
        assert tuple(image[0, 0]) == colours[level], target


def test_pyramid_read_matches_inter_area_of_the_chosen_level(tmp_path):
    levels = pyramid(tissue(600, 800), 3)
    path = aperio_tiff(tmp_path / "p.svs", levels, mpp=0.25)
    image = read_slide(path, 0.7)  # downsample 2.8 -> level 1 (2x), then 1.4x by area
    assert image.shape == (214, 286, 3)
    ref = cv2.resize(levels[1], (286, 214), interpolation=cv2.INTER_AREA)
    assert np.abs(image.astype(int) - ref).max() <= 1
    assert np.array_equal(image, read_slide(path, 0.7, max_strip_pixels=400 * 7))
    # enlarging (finer than level 0): cv2.INTER_AREA's overlap weights too (cv2 in float, as
    # its uint8 path rounds weights to 11 bits): within rounding, 0.5 grey level
    up = read_slide(path, 0.2, region=(100, 100, 200, 160))
    ref = cv2.resize(levels[0][100:260, 100:300].astype(np.float32), (250, 200),
                     interpolation=cv2.INTER_AREA)
    assert up.shape == ref.shape
    assert np.abs(up - ref).max() <= 0.5 + 1e-3


def test_tiff_without_mpp_needs_the_override(tmp_path):
    img = tissue(256, 320)
    path = aperio_tiff(tmp_path / "nompp.svs", [img], mpp=None)
    with pytest.raises(SlideError) as e:
        read_slide(path, 1.0)
    assert "nompp.svs" in str(e.value) and "mpp" in str(e.value)
    image = read_slide(path, 1.0, mpp=0.5)
    assert image.shape == (128, 160, 3)
    assert np.abs(image.astype(int) - cv2.resize(img, (160, 128), interpolation=cv2.INTER_AREA)
                  ).max() <= 1


def test_png_is_not_a_slide(tmp_path):
    path = str(tmp_path / "photo.png")
    cv2.imwrite(path, np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(SlideError, match="photo.png: not a slide"):
        read_slide(path, 1.0)


def test_missing_empty_and_folder(tmp_path):
    with pytest.raises(SlideError, match="nothere.svs: no such file"):
        read_slide(str(tmp_path / "nothere.svs"), 1.0)
    (tmp_path / "empty.svs").write_bytes(b"")
    with pytest.raises(SlideError, match="empty.svs: empty file"):
        read_slide(str(tmp_path / "empty.svs"), 1.0)
    with pytest.raises(SlideError, match="not a regular file"):
        read_slide(str(tmp_path), 1.0)


def test_truncated_and_corrupt_tiffs(tmp_path):
    good = aperio_tiff(tmp_path / "good.svs", pyramid(tissue(512, 512), 2), mpp=0.25)
    size = os.path.getsize(good)
    truncated = str(tmp_path / "truncated.svs")
    shutil.copy(good, truncated)
    os.truncate(truncated, size // 2)
    with pytest.raises(SlideError, match="truncated.svs: .*truncated or corrupt"):
        read_slide(truncated, 0.25)
    # garbage over the tile data (the header and directories survive): fails when decoding
    corrupt = str(tmp_path / "corrupt.svs")
    raw = bytearray(open(good, "rb").read())
    rng = random.Random(0)
    for i in range(4096, size // 2, 5):
        raw[i] = rng.randrange(256)
    open(corrupt, "wb").write(bytes(raw))
    with pytest.raises(SlideError, match="corrupt.svs"):
        read_slide(corrupt, 0.25)


def test_bad_target_and_exports():
    assert data.read_slide is read_slide and data.SlideError is SlideError
    with pytest.raises(SlideError, match="target mpp"):
        from data.slide import _check_target
        _check_target("x.svs", 0)


def test_alpha_composited_onto_white():
    rgba = np.array([[[0, 0, 0, 0], [100, 50, 0, 255], [0, 0, 0, 128]]], np.uint8)
    rgb = composite_on_white(rgba)
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[0, 1].tolist() == [100, 50, 0]
    np.testing.assert_allclose(rgb[0, 2], 255 * (1 - 128 / 255.0), rtol=1e-6)


# -- single-node crops (data.nodes) ------------------------------------------------------------
def test_node_crop_is_box_at_target_mpp_and_white_outside(tmp_path):
    import json
    from data.nodes import AnnotationError, crop_node, load_polygons
    img = tissue(400, 480)
    path = aperio_tiff(tmp_path / "n.svs", [img], mpp=0.25)
    # a square node with a square hole, in level-0 pixels (QuPath FeatureCollection)
    outer = [[100, 80], [300, 80], [300, 280], [100, 280], [100, 80]]
    hole = [[180, 160], [220, 160], [220, 200], [180, 200], [180, 160]]
    gj = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
          "geometry": {"type": "Polygon", "coordinates": [outer, hole]}}]}
    (tmp_path / "n.geojson").write_text(json.dumps(gj))
    crop = crop_node(path, str(tmp_path / "n.geojson"), 0.5)
    assert crop.shape == (100, 100, 3)  # 200 level-0 px * 0.25 / 0.5
    box = read_slide(path, 0.5, region=(100, 80, 200, 200))
    # Output pixel (i, j) has its centre at level-0 (100 + 2j + 1, 80 + 2i + 1); the hole is
    # output [40, 60). Pixels within 1 output pixel of an edge may go either way (rasteriser).
    yy, xx = np.mgrid[0:100, 0:100]
    near_hole = (xx >= 39) & (xx <= 60) & (yy >= 39) & (yy <= 60)
    assert np.array_equal(crop[~near_hole], box[~near_hole])
    assert (crop[(xx > 40) & (xx < 59) & (yy > 40) & (yy < 59)] == 255).all()
    # a triangle as a MultiPolygon: pixels right of the diagonal x > y are white
    tri = {"type": "MultiPolygon", "coordinates": [[[[0, 0], [0, 200], [200, 200], [0, 0]]]]}
    (tmp_path / "t.geojson").write_text(json.dumps(tri))
    crop = crop_node(path, str(tmp_path / "t.geojson"), 0.5)
    assert (crop[xx > yy + 1] == 255).all()
    full = read_slide(path, 0.5, region=(0, 0, 200, 200))
    assert np.array_equal(crop[xx < yy - 1], full[xx < yy - 1])
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(AnnotationError, match="bad.geojson"):
        load_polygons(str(tmp_path / "bad.geojson"))


# -- the resampling filter (docs/fidelity.md, row resample) ------------------------------------
def _level_rgb(path, level):
    """A whole pyramid level as RGB composited on white, straight from OpenSlide."""
    s = openslide.OpenSlide(path)
    try:
        rgba = np.asarray(s.read_region((0, 0), level, s.level_dimensions[level]))
    finally:
        s.close()
    return np.rint(composite_on_white(rgba)).astype(np.uint8)


def test_cmu_cubic_is_cv2_inter_cubic_and_differs_from_area(cmu_small_region):
    area = read_slide(cmu_small_region, 2.0)
    cubic = read_slide(cmu_small_region, 2.0, resample="cubic")
    assert cubic.shape == area.shape and cubic.dtype == np.uint8
    ref = cv2.resize(_level_rgb(cmu_small_region, 0), (area.shape[1], area.shape[0]),
                     interpolation=cv2.INTER_CUBIC)
    assert np.array_equal(cubic, ref)
    # the two filters are not the same image: cubic samples 4 taps, area averages ~16 px
    diff = np.abs(area.astype(int) - cubic)
    assert diff.max() > 10 and diff.mean() > 0.5
    # both see the same tissue: close on average
    assert diff.mean() < 10


def test_cubic_reads_the_same_level_as_area_and_resizes_it(tmp_path):
    path = aperio_tiff(tmp_path / "p.svs", pyramid(tissue(512, 640, seed=3), 3), mpp=0.25)
    with Slide(path) as s:
        level = s.best_level(1.3)             # wanted downsample 5.2: level 2 (4x)
        assert level == 2
        size = s.output_size(1.3)
        cubic = s.read(1.3, resample="cubic", max_strip_pixels=160 * 20)   # level read in strips
    ref = cv2.resize(_level_rgb(path, 2), size, interpolation=cv2.INTER_CUBIC)
    assert np.array_equal(cubic, ref)
    area = read_slide(path, 1.3)
    assert area.shape == cubic.shape and not np.array_equal(area, cubic)


def test_cubic_region_box_and_bad_filter(tmp_path):
    path = aperio_tiff(tmp_path / "r.svs", pyramid(tissue(512, 640, seed=4), 2), mpp=0.25)
    # a box on whole pixels of the level read (level 1 for 0.7 um/px): cv2.resize of that crop
    box = (64, 32, 320, 240)                          # level 1: (32, 16, 160, 120)
    part = read_slide(path, 0.7, region=box, resample="cubic")
    crop = _level_rgb(path, 1)[16:16 + 120, 32:32 + 160]
    assert np.array_equal(part, cv2.resize(crop, (114, 86), interpolation=cv2.INTER_CUBIC))
    # a box at half a pixel of level 1 (41 / 2): warpAffine with the same kernel; same size as
    # the area read and the same picture within a few grey levels on smooth tissue
    odd = (41, 33, 300, 200)
    cubic = read_slide(path, 1.0, region=odd, resample="cubic")
    area = read_slide(path, 1.0, region=odd)
    assert cubic.shape == area.shape == (50, 75, 3)
    assert np.abs(cubic.astype(int) - area).mean() < 4 and not np.array_equal(cubic, area)
    with pytest.raises(SlideError, match="r.svs: resample must be one of area/cubic"):
        read_slide(path, 1.0, resample="lanczos")
