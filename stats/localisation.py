"""Does the heat fall on the tumour? Two area fractions of a CAM against tumour annotations.

For one slide or node with tumour polygons (the synthetic cohort's ``foci`` GeoJSON, or a user's
QuPath export; level-0 pixel coordinates) and its displayed CAM, at a threshold t:

    tumour_covered = area(tumour AND CAM >= t) / area(tumour)   "how much tumour is lit"
    cam_in_tumour  = area(tumour AND CAM >= t) / area(CAM >= t)  "how much of the lit area is tumour"

The CAM is the map the overlay PNG draws and the GeoJSON regions outline (model/cam.py):
sigmoid(cam_logit) upsampled bicubically onto the prepared image, so its values are
probabilities in [0, 1], the same scale for every slide (not rescaled to each slide's maximum).
The default t = 0.5 is the export's ``--cam-threshold``: the colour threshold of the overlay and
the GeoJSON regions' threshold.

Areas are measured in level-0 pixels, so the map and the polygons meet in one frame: map pixel
(r, c) covers the level-0 square [ox + c s, ox + (c + 1) s) x [oy + r s, oy + (r + 1) s), with s
level-0 pixels per map pixel and (ox, oy) the level-0 corner of the image (a node crop's bounding
box; (0, 0) for a whole slide). Polygon coordinates follow GeoJSON/QuPath: level-0 pixel i spans
[i, i + 1). Each map pixel's share of tumour is found by rasterising the polygons on a finer
lattice (``supersample`` x ``supersample`` points per map pixel, a point is inside by the
even-odd rule on the polygon's rings, so holes are holes). The result is exact when the polygon
edges lie on that lattice; otherwise the error is below one fine cell along the outline.

Imports numpy only.
"""
import math

import numpy as np

DEFAULT_THRESHOLD = 0.5


class Localisation(dict):
    """The figures of one case (a dict, so that it writes straight to a CSV row):
    ``threshold``, ``tumour_area``, ``cam_area``, ``overlap_area`` (level-0 px^2),
    ``tumour_covered`` and ``cam_in_tumour`` (fractions; NaN where the denominator is 0)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name)


def _ratio(a, b):
    return float(a) / float(b) if b > 0 else float("nan")


def _fill_rings(rings, shape, row0=0, col0=0):
    """Boolean (h, w) mask of the lattice points inside ``rings`` by the even-odd rule.

    ``rings``: list of (N, 2) arrays (x, y) in lattice units, where lattice point (i, j) sits at
    (col0 + j + 0.5, row0 + i + 0.5). Half-open crossings (an edge counts for y0 <= y < y1) and
    half-open spans (x_a <= x < x_b) make abutting polygons share no point.
    """
    h, w = shape
    mask = np.zeros((h, w), bool)
    edges = []
    for ring in rings:
        r = np.asarray(ring, np.float64)
        if len(r) >= 2 and np.allclose(r[0], r[-1]):
            r = r[:-1]
        if len(r) < 3:
            continue
        edges.append(np.concatenate([r, np.roll(r, -1, axis=0)], axis=1))
    if not edges or h == 0 or w == 0:
        return mask
    e = np.concatenate(edges)
    e = e[e[:, 1] != e[:, 3]]                       # horizontal edges cross no row
    x0, y0, x1, y1 = e.T
    ys = row0 + np.arange(h) + 0.5
    diff = np.zeros((h, w + 1), np.int32)
    # Rows in blocks, so that rows x edges stays a few million numbers for long outlines.
    step = max(1, 4000000 // max(1, len(e)))
    for start in range(0, h, step):
        y = ys[start:start + step, None]
        cross = (np.minimum(y0, y1) <= y) & (y < np.maximum(y0, y1))
        with np.errstate(divide="ignore", invalid="ignore"):
            x = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        x = np.sort(np.where(cross, x, np.inf), axis=1)       # crossings first, in x order
        x = x[:, :2 * (int(cross.sum(axis=1).max()) // 2 + 1)]
        for k in range(0, x.shape[1] - 1, 2):
            a, b = x[:, k], x[:, k + 1]
            rows = np.flatnonzero(np.isfinite(a) & np.isfinite(b))
            if rows.size == 0:
                continue
            # Lattice points with col0 + j + 0.5 in [a, b): j from ceil(a - col0 - 0.5).
            ja = np.clip(np.ceil(a[rows] - col0 - 0.5), 0, w).astype(np.int64)
            jb = np.clip(np.ceil(b[rows] - col0 - 0.5), 0, w).astype(np.int64)
            np.add.at(diff, (start + rows, ja), 1)
            np.add.at(diff, (start + rows, jb), -1)
    mask |= np.cumsum(diff, axis=1)[:, :w] > 0
    return mask


def coverage(polygons, shape, pixel_size, origin_xy=(0.0, 0.0), supersample=4, within=None):
    """Float (h, w): the share of each map pixel that lies inside ``polygons`` (and, when given,
    inside ``within`` too, e.g. the node's outline for a node crop).

    ``polygons``/``within``: lists of polygons, each a list of rings ((N, 2) x, y arrays) in
    level-0 pixels (``data.nodes.load_polygons``' format); several polygons form their union.
    ``pixel_size``: level-0 pixels per map pixel; ``origin_xy``: level-0 (x, y) of the map's
    top-left corner.
    """
    h, w = int(shape[0]), int(shape[1])
    k = int(supersample)
    if k < 1:
        raise ValueError("supersample must be >= 1, got {}".format(supersample))
    scale = k / float(pixel_size)
    ox, oy = float(origin_xy[0]), float(origin_xy[1])

    def lattice(poly):
        return [(np.asarray(r, np.float64)[:, :2] - (ox, oy)) * scale for r in poly]

    def union(polys, window):
        r0, r1, c0, c1 = window
        m = np.zeros((r1 - r0, c1 - c0), bool)
        for poly in polys:
            m |= _fill_rings(lattice(poly), m.shape, r0, c0)
        return m

    out = np.zeros((h, w), np.float64)
    if not polygons:
        return out
    pts = np.concatenate([(np.asarray(p[0], np.float64)[:, :2] - (ox, oy)) * scale
                          for p in polygons])
    # Only the polygons' bounding box is rasterised, widened to whole map pixels.
    c0 = int(np.clip(math.floor(pts[:, 0].min() / k), 0, w)) * k
    c1 = int(np.clip(math.ceil(pts[:, 0].max() / k), 0, w)) * k
    r0 = int(np.clip(math.floor(pts[:, 1].min() / k), 0, h)) * k
    r1 = int(np.clip(math.ceil(pts[:, 1].max() / k), 0, h)) * k
    if c1 <= c0 or r1 <= r0:
        return out
    fine = union(polygons, (r0, r1, c0, c1))
    if within is not None:
        fine &= union(within, (r0, r1, c0, c1))
    blocks = fine.reshape((r1 - r0) // k, k, (c1 - c0) // k, k).mean(axis=(1, 3))
    out[r0 // k:r1 // k, c0 // k:c1 // k] = blocks
    return out


def fractions(cam_image, polygons, pixel_size, origin_xy=(0.0, 0.0), threshold=DEFAULT_THRESHOLD,
              extent=None, within=None, supersample=4):
    """The ``Localisation`` of one map against its tumour polygons (see the module's docstring).

    ``cam_image``: (h, w) map of CAM values in [0, 1] (``model.cam.cam_map``); pixels >=
    ``threshold`` count as lit. ``pixel_size``, ``origin_xy``: the map's level-0 geometry
    (``coverage``). ``extent``: (width, height) in level-0 pixels of the part of the map that is
    image (a map at a coarser ``downsample`` overhangs the image on its last row and column);
    default the whole map. ``within``: polygons that bound the tumour (a node's outline).
    """
    cam = np.asarray(cam_image, np.float64)
    if cam.ndim != 2:
        raise ValueError("cam_image must be 2-D, got shape {}".format(cam.shape))
    h, w = cam.shape
    s = float(pixel_size)
    if not s > 0:
        raise ValueError("pixel_size must be positive, got {}".format(pixel_size))
    # Share of each map row/column that lies on the image (1 except an overhanging last one).
    if extent is None:
        col_w, row_w = np.ones(w), np.ones(h)
    else:
        col_w = np.clip(float(extent[0]) / s - np.arange(w), 0.0, 1.0)
        row_w = np.clip(float(extent[1]) / s - np.arange(h), 0.0, 1.0)
    on_image = np.outer(row_w, col_w)
    tumour = np.minimum(coverage(polygons, (h, w), s, origin_xy, supersample, within), on_image)
    lit = cam >= float(threshold)
    pixel_area = s * s
    tumour_area = float(tumour.sum()) * pixel_area
    cam_area = float(on_image[lit].sum()) * pixel_area
    overlap = float(tumour[lit].sum()) * pixel_area
    return Localisation(threshold=float(threshold), tumour_area=tumour_area, cam_area=cam_area,
                        overlap_area=overlap, tumour_covered=_ratio(overlap, tumour_area),
                        cam_in_tumour=_ratio(overlap, cam_area))


def summary(values):
    """(n, mean, median) of the finite values (NaN mean and median when there are none)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if v.size == 0:
        return 0, float("nan"), float("nan")
    return int(v.size), float(v.mean()), float(np.median(v))
