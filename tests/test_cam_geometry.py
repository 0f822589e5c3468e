"""Where a CAM grid cell lies on the slide: measured on the backbone, then followed through
model.cam (upsampling, GeoJSON, TIFF, localisation) and through a slide file and back.

1. The network: the pixels that can change output cell j of ResNet-50 are measured, and their
   midpoint is the cell's centre (32 j).
2. model.cam uses that centre everywhere: a single hot grid cell j peaks on canvas pixel 32 j in
   the upsampled map, the GeoJSON, the TIFF and the localisation figures.
3. A focus drawn at a known level-0 position of a slide file whose level 0 is 0.2527 um/px (a
   whole slide, and a node crop whose box starts at level-0 (403, 327)) is read at 4 um/px,
   found on the image, given a CAM whose hot cell sits on it, exported, and comes back where it
   was drawn, to within one pixel at 4 um/px.
"""
import json
import os

import cv2
import numpy as np
import pandas as pd
import pytest

from model import cam

STRIDE = 32


# --------------------------------------------------------------------------- 1. the network

@pytest.fixture(scope="module")
def backbone(tiny_model):
    """The backbone of ResNet-50 with seeded random weights (conftest's ``tiny_model``)."""
    return tiny_model.backbone


def _thin_noise(count, length, axis, seed):
    """``count`` uint8 noise images, ``length`` px along ``axis`` and 64 px across it."""
    shape = (length, 64) if axis == 0 else (64, length)
    return np.random.RandomState(seed).randint(0, 256, (count,) + shape + (3,)).astype(np.uint8)


def _cell(features, b, j, axis):
    """Features of image ``b``'s cell j along ``axis`` (row 1 across it)."""
    return features[b, j, 1] if axis == 0 else features[b, 1, j]


def _sensitivity(backbone, cells, length, axis, seed=0):
    """Per cell j in ``cells``: max over channels and the other axis of |d <F_j, v> / d pixel|,
    a profile along ``axis`` (v a random direction in feature space). It is the change of the
    cell's output per unit of brightening of each pixel: non-zero exactly on the pixels the
    cell sees. On noise, not a uniform background: on grey some ReLU paths to the field's far
    edge are dead everywhere, and the profile would end a few pixels early."""
    import tensorflow as tf
    image = tf.constant(_thin_noise(len(cells), length, axis, seed).astype(np.float32))
    v = tf.constant(np.random.RandomState(seed + 1).randn(2048).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(image)
        f = backbone(image, training=False)
        out = tf.add_n([tf.tensordot(_cell(f, b, j, axis), v, 1) for b, j in enumerate(cells)])
    g = np.abs(tape.gradient(out, image).numpy()).max(axis=3)
    return [g[b].max(axis=1 - axis) for b in range(len(cells))]


def _bright_pixel_changes(backbone, j, pixels, length, axis, seed=0):
    """Whether a white pixel at each position of ``pixels`` (along ``axis``, row 32 across)
    changes cell j's features at all (bit for bit), on the same noise image."""
    import tensorflow as tf
    base = _thin_noise(1, length, axis, seed)
    batch = np.repeat(base, len(pixels) + 1, axis=0)
    for k, p in enumerate(pixels, start=1):
        if axis == 0:
            batch[k, p, 32] = 255
        else:
            batch[k, 32, p] = 255
    f = backbone(tf.constant(batch.astype(np.float32)), training=False).numpy()
    ref = _cell(f, 0, j, axis)
    return [bool(np.any(_cell(f, k, j, axis) != ref)) for k in range(1, len(pixels) + 1)]


@pytest.mark.parametrize("axis", [0, 1])
def test_cell_centre_measured_on_the_backbone(backbone, axis):
    """Cells 8 and 9 of a 544 px axis (their fields fit inside it): the pixels that change a
    cell span 483 px, and their midpoint -- and the centre of mass of the squared
    sensitivity, a symmetry that does not depend on the support's last pixels -- is 32 j. A
    white pixel just outside the span leaves the cell's features unchanged bit for bit, one
    at the midpoint changes them. model.cam.canvas_to_grid puts cell j there."""
    length, cells = 544, (8, 9)
    for j, profile in zip(cells, _sensitivity(backbone, cells, length, axis)):
        seen = np.flatnonzero(profile > 0)
        first, last = int(seen[0]), int(seen[-1])
        assert 0 < first and last < length - 1, "the field reaches the image edge"
        assert len(seen) == last - first + 1 == 483
        centre = (first + last) / 2.0
        assert centre == STRIDE * j
        weight = profile.astype(np.float64) ** 2
        centre_of_mass = float((weight * np.arange(length)).sum() / weight.sum())
        assert abs(centre_of_mass - STRIDE * j) <= 3.0, centre_of_mass
        assert cam.canvas_to_grid(centre) == j
        changed = _bright_pixel_changes(backbone, j, (first - 1, last + 1, int(centre)),
                                        length, axis)
        assert changed == [False, False, True]


# --------------------------------------------------------------------------- 2. model.cam

def _hot_cell(canvas, i, j, hot=20.0, cold=-20.0):
    """A pre-sigmoid CAM grid of a ``canvas`` px canvas: cell (i, j) hot, the rest cold."""
    n = int(np.ceil(canvas / float(STRIDE)))
    grid = np.full((n, n), cold, np.float32)
    grid[i, j] = hot
    return grid


@pytest.mark.parametrize("shape,canvas,cell", [((150, 90), 224, (4, 3)),
                                                ((256, 256), 256, (0, 6)),
                                                ((301, 170), 288, (5, 2))])
def test_hot_cell_peaks_on_pixel_32j(shape, canvas, cell):
    """The upsampled map of a single hot cell (i, j) peaks on canvas pixel (32 i, 32 j), i.e.
    image pixel (32 i - top, 32 j - left), and is mirror-symmetric about it; at downsample 2
    the peak is within one map pixel. With d = 1 it is cv2.warpAffine's bicubic scaling."""
    i, j = cell
    top, left = cam.image_offset(shape, canvas)
    grid = _hot_cell(canvas, i, j)
    up = cam.cam_map(grid, shape, canvas)
    py, px = np.unravel_index(np.argmax(up), up.shape)
    assert (py, px) == (STRIDE * i - top, STRIDE * j - left)
    k = min(py, px, shape[0] - 1 - py, shape[1] - 1 - px, 24)
    if k > 0:
        win = up[py - k:py + k + 1, px - k:px + k + 1]
        np.testing.assert_allclose(win, win[::-1, ::-1], atol=1e-6)
    for d in (2, 3):
        coarse = cam.cam_map(grid, shape, canvas, downsample=d)
        qy, qx = np.unravel_index(np.argmax(coarse), coarse.shape)
        # Map pixel q covers image pixels [q d, q d + d): its centre is (q + 0.5) d - 0.5.
        assert abs((qy + 0.5) * d - 0.5 - py) <= d and abs((qx + 0.5) * d - 0.5 - px) <= d
    # The same map as OpenCV's affine bicubic scaling of the grid (canvas c -> grid c / 32).
    prob = 1.0 / (1.0 + np.exp(-grid.astype(np.float64)))
    scale = np.array([[1.0 / STRIDE, 0, left / float(STRIDE)],
                      [0, 1.0 / STRIDE, top / float(STRIDE)]])
    ref = cv2.warpAffine(prob.astype(np.float32), scale, (shape[1], shape[0]),
                         flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    ref = np.clip(ref, prob.min(), prob.max())
    assert np.abs(up - ref).max() <= 1e-4


def _ring_centroid(ring):
    """Area centroid (x, y) of a closed ring (shoelace)."""
    r = np.asarray(ring, np.float64)
    x, y = r[:-1, 0], r[:-1, 1]
    xn, yn = r[1:, 0], r[1:, 1]
    cross = x * yn - xn * y
    area = cross.sum() / 2.0
    return np.array([((x + xn) * cross).sum(), ((y + yn) * cross).sum()]) / (6.0 * area)


def _square(centre_xy, half):
    cx, cy = centre_xy
    return [np.array([[cx - half, cy - half], [cx + half, cy - half], [cx + half, cy + half],
                      [cx - half, cy + half]], np.float64)]


def test_geojson_tiff_and_localisation_follow_the_cell(tmp_path):
    """A hot cell's exports, at 2 um/px over a 0.5 um/px level 0 with a node-like origin: the
    GeoJSON region's centroid and the TIFF's peak are the level-0 point of canvas pixel
    (32 i, 32 j); a tumour square centred there holds all of the lit area, the same square
    15.5 px further right and down (the released code's cell centre) does not."""
    import tifffile
    shape, canvas, (i, j) = (160, 200), 256, (4, 3)
    target, level0, origin = 2.0, 0.5, (1000.0, 3000.0)
    s = target / level0
    top, left = cam.image_offset(shape, canvas)
    image = np.full(shape + (3,), 200, np.uint8)
    paths = cam.export("hot", image, _hot_cell(canvas, i, j), canvas, 0.9, str(tmp_path),
                       target, level0, origin, tiff=True)
    peak_image = np.array([STRIDE * j - left, STRIDE * i - top], np.float64)   # (x, y)
    expect = origin + (peak_image + 0.5) * s          # GeoJSON: level-0 pixel i is [i, i + 1)
    with open(paths["geojson"]) as f:
        features = json.load(f)["features"]
    assert len(features) == 1
    np.testing.assert_allclose(_ring_centroid(features[0]["geometry"]["coordinates"][0]),
                               expect, atol=0.02)
    with tifffile.TiffFile(paths["tiff"]) as t:
        tiff, note = t.pages[0].asarray(), json.loads(t.pages[0].description)
    py, px = np.unravel_index(np.argmax(tiff), tiff.shape)
    index = (np.array([px, py]) + 0.5) * note["level0_per_pixel"] - 0.5 + note["level0_origin_xy"]
    np.testing.assert_allclose(index + 0.5, expect, atol=1e-9)
    # The lit blob reaches under 20 image px from its centre.
    lit = np.argwhere(cam.cam_map(_hot_cell(canvas, i, j), shape, canvas) >= 0.5)
    assert np.abs(lit - peak_image[::-1]).max() < 20
    here = cam.localise(cam.cam_map(_hot_cell(canvas, i, j), shape, canvas), shape,
                        [_square(expect, 20 * s)], target, level0, origin)
    assert here.cam_in_tumour == 1.0 and 0 < here.tumour_covered < 1
    released = cam.localise(cam.cam_map(_hot_cell(canvas, i, j), shape, canvas), shape,
                            [_square(expect + 15.5 * s, 20 * s)], target, level0, origin)
    assert released.cam_in_tumour < 0.8


def test_released_convention_is_the_same_map_15_5_px_away():
    """cv2.resize(grid, INTER_CUBIC), the released code's upsampling, is ``upsample`` with
    the image placed at canvas pixel -15.5: its cell j sits on pixel 32 j + 15.5."""
    grid = np.random.RandomState(5).rand(4, 6).astype(np.float32)
    released = np.clip(cv2.resize(grid, (6 * STRIDE, 4 * STRIDE), interpolation=cv2.INTER_CUBIC),
                       grid.min(), grid.max())
    ours = cam.upsample(grid, (4 * STRIDE, 6 * STRIDE), (0, 0))
    shifted = cam.upsample(grid, (4 * STRIDE, 6 * STRIDE), (-15.5, -15.5))
    assert np.abs(shifted - released).max() <= 1e-5
    assert np.abs(ours - released).max() > 0.05


# --------------------------------------------------------------------------- 3. a slide file

LEVEL0_MPP, TARGET_MPP, CANVAS = 0.2527, 4.0, 256
SLIDE_WH = (4000, 3000)
NODE_CENTRE, NODE_AXES = (2013.4, 1517.7), (1610.3, 1190.6)   # box from level-0 (403, 327)
TISSUE, FOCUS = (235, 190, 210), (70, 30, 110)
FOCUS_RADIUS = 30 * TARGET_MPP / LEVEL0_MPP                    # 30 px at 4 um/px


def _ellipse_ring(centre, axes, n=256):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([centre[0] + axes[0] * np.cos(t), centre[1] + axes[1] * np.sin(t)], axis=1)


def _inside_ellipse(centre, axes):
    """Level-0 pixels (centres at i + 0.5) inside the ellipse, (H, W) bool."""
    w, h = SLIDE_WH
    dx = ((np.arange(w, dtype=np.float32) + 0.5 - centre[0]) / axes[0]) ** 2
    dy = ((np.arange(h, dtype=np.float32) + 0.5 - centre[1]) / axes[1]) ** 2
    return dy[:, None] + dx[None, :] <= 1.0


def _geojson(path, ring):
    ring = [[float(x), float(y)] for x, y in ring] + [[float(ring[0][0]), float(ring[0][1])]]
    with open(path, "w") as f:
        json.dump({"type": "FeatureCollection", "features": [{
            "type": "Feature", "properties": {},
            "geometry": {"type": "Polygon", "coordinates": [ring]}}]}, f)


def _focus_centre(node_box_xy, image_shape):
    """Where to draw the focus, level-0 (x, y), by hand: on canvas pixel (128, 128), i.e.
    image pixel (128 - top, 128 - left), whose centre is (p + 0.5) x 4 / 0.2527 level-0 px
    from the image's level-0 corner."""
    top, left = ((CANVAS - n) // 2 for n in image_shape)
    per_px = TARGET_MPP / LEVEL0_MPP
    return (node_box_xy[0] + (128 - left + 0.5) * per_px,
            node_box_xy[1] + (128 - top + 0.5) * per_px)


def _write_slide(folder, focus_xy):
    from data.synth import write_aperio_tiff
    rgb = np.full(SLIDE_WH[::-1] + (3,), 255, np.uint8)
    rgb[_inside_ellipse(NODE_CENTRE, NODE_AXES)] = TISSUE
    rgb[_inside_ellipse(focus_xy, (FOCUS_RADIUS, FOCUS_RADIUS))] = FOCUS
    path = os.path.join(folder, "slide.svs")
    write_aperio_tiff(path, rgb, LEVEL0_MPP, compression="zlib")
    return path


def _locate_focus(image):
    """Centre (x, y) in image pixel indices of the focus colour, partial pixels weighted."""
    lum = image.astype(np.float64).mean(axis=2)
    weight = np.clip((np.mean(TISSUE) - lum) / (np.mean(TISSUE) - np.mean(FOCUS)), 0, 1)
    ys, xs = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    return np.array([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()


@pytest.mark.parametrize("level", ["slide", "node"])
def test_focus_round_trips_through_a_slide_file(tmp_path, level):
    """Drawn on level 0 (0.2527 um/px, a tiled Aperio TIFF read through OpenSlide), read at
    4 um/px as predict reads a manifest row (data.rows: the whole slide, or the node's crop
    with its level-0 origin), found on the image, given a CAM whose hot cell is the cell
    nearest to it, exported: the GeoJSON region, the TIFF peak and the localisation put it
    back where it was drawn, within one pixel at 4 um/px (15.8 level-0 px)."""
    from data.rows import level0_mpp_of, node_origin, read_prepared, tumour_polygons
    from data.slide import slide_info
    folder = str(tmp_path)
    node_box = (403, 327) if level == "node" else (0, 0)
    sizes = {"slide": (190, 253), "node": (150, 203)}      # round(level-0 size x mpp / 4)
    focus_xy = np.array(_focus_centre(node_box, sizes[level]))
    slide = _write_slide(folder, focus_xy)
    assert slide_info(slide)["mpp_x"] == LEVEL0_MPP
    _geojson(os.path.join(folder, "node.geojson"), _ellipse_ring(NODE_CENTRE, NODE_AXES))
    _geojson(os.path.join(folder, "focus.geojson"),
             _ellipse_ring(focus_xy, (FOCUS_RADIUS, FOCUS_RADIUS), 128))
    row = pd.Series({"slide_id": "s", "path": "slide.svs", "label": 1, "split": "test",
                     "level": level, "annotation": "node.geojson" if level == "node" else "",
                     "mpp": "", "foci": "focus.geojson"})

    image = read_prepared(row, folder, TARGET_MPP)
    origin = node_origin(row, folder)
    level0 = level0_mpp_of(row, folder)
    assert image.shape[:2] == sizes[level] and origin == node_box
    top, left = cam.image_offset(image.shape, CANVAS)

    # On the image the focus is where the geometry says, within the reader's rounding of the
    # output size (under half a pixel over the whole image).
    found = _locate_focus(image)
    per_px = TARGET_MPP / level0
    np.testing.assert_allclose(found, (focus_xy - origin) / per_px - 0.5, atol=0.5)
    # The planted response: the cell whose centre (32 i, 32 j) is nearest to the focus.
    j, i = (int(round(v)) for v in cam.canvas_to_grid(found + (left, top)))
    assert (i, j) == (4, 4)

    tumour, within = tumour_polygons(row, folder)
    paths = cam.export("s", image, _hot_cell(CANVAS, i, j), CANVAS, 0.9,
                       os.path.join(folder, "cam"), TARGET_MPP, level0, origin, tiff=True,
                       tumour=tumour, within=within)
    with open(paths["geojson"]) as f:
        features = json.load(f)["features"]
    assert len(features) == 1
    back = _ring_centroid(features[0]["geometry"]["coordinates"][0])
    assert np.abs(back - focus_xy).max() <= per_px, (back, focus_xy)
    import tifffile
    with tifffile.TiffFile(paths["tiff"]) as t:
        tiff, note = t.pages[0].asarray(), json.loads(t.pages[0].description)
    py, px = np.unravel_index(np.argmax(tiff), tiff.shape)
    peak = (np.array([px, py]) + 0.5) * note["level0_per_pixel"] + note["level0_origin_xy"]
    assert np.abs(peak - focus_xy).max() <= per_px, (peak, focus_xy)
    # Every lit pixel lies on the focus (radius 30 px; the lit blob reaches under 20).
    loc = paths["localisation"]
    assert loc.cam_in_tumour == 1.0 and 0.2 < loc.tumour_covered < 0.6
