"""Class activation maps (CAM, Zhou et al. 2016), as the paper uses them, and their export.

The paper's CAM: the head (the dense layer after global average pooling) applied at every
position of the last convolutional feature map F, i.e. for grid cell (i, j)

    cam_logit[i, j] = sum_k w_k F[i, j, k] + b          (pre-sigmoid, stride-32 grid)

so that mean(cam_logit) == the slide's logit (GAP and the dense layer are both linear). The
map shown is sigmoid(cam_logit), upsampled to the image with bicubic interpolation
(OpenCV's INTER_CUBIC, a = -0.75).

Geometry (all sizes in pixels; "image" = the prepared image at the config's target mpp). One
convention, used by the upsampling, the overlay, the GeoJSON regions, the TIFF and the
localisation figures alike:

* grid cell (i, j) is centred on canvas pixel (32 i, 32 j): that is where ResNet-50 centres the
  receptive field of its output (i, j), which spans canvas pixels [32 j - 241, 32 j + 241] per
  axis (483 px). Measured on the backbone itself by tests/test_cam_geometry.py (the midpoint of
  the pixels that can change a cell's features is 32 j), and the fact model/streaming.py's
  tiling rests on. So canvas pixel index p lies at grid coordinate g = p / 32 (cell centres at
  integers; ``canvas_to_grid``), and the map on the canvas is the bicubic curve through the cell
  values placed at their centres, the border cells replicated beyond the first and last centres;
* the released code (aetherAI/whole-slide-cnn) upsamples with ``cv2.resize(grid, (32 w, 32 h),
  interpolation=cv2.INTER_CUBIC)``, which aligns pixel *areas* (g = (p + 0.5) / 32 - 0.5): it
  draws cell j's value at canvas pixel 32 j + 15.5, i.e. 15.5 px right of and below where the
  network centres that cell: 35 um at 2.28 um/px, 0.5 mm at 32 um/px. This package draws it
  where the network computes it; ``upsample`` with offset -15.5 reproduces the released map;
* the canvas is the image centre-padded with white (or centre-cropped):
  canvas pixel = image pixel + offset, offset = ``image_offset(shape, canvas)`` (per axis
  ``data.augment.canvas_offset``, the pipeline's own);
* image pixel p (centre at physical (p + 0.5) * target_mpp um from the image origin) lies at
  level-0 pixel index (p + 0.5) * target_mpp / level0_mpp - 0.5 + origin, where origin is (0, 0)
  for a whole slide and the level-0 top-left of the node's bounding box for a node crop
  (``image_to_level0``). GeoJSON coordinates are continuous, as QuPath's and the ``foci`` and
  node annotations': level-0 pixel i spans [i, i + 1), so pixel index i is coordinate i + 0.5.

Exports per slide: a PNG overlay on a thumbnail, the high-CAM regions as a QuPath-compatible
GeoJSON FeatureCollection in level-0 pixel coordinates, and optionally the map as a TIFF.
``export_prediction`` and ``prediction_regions`` take ``model.inference.predict_slide``'s result
(``cam=True``) directly. Figures are drawn on a ``matplotlib.figure.Figure`` with the Agg canvas,
so the process's matplotlib backend is never changed.
"""
import json
import os

import numpy as np

from data.augment import canvas_offset
from data.files import atomic_path, atomic_write_text
from model.loss import sigmoid

OUTPUT_STRIDE = 32  # the ResNet-50 backbone's output stride (model.resnet.OUTPUT_STRIDE)
CLASSIFICATION = "Tumor (CAM)"


def image_offset(image_shape, canvas):
    """(top, left): where image pixel (0, 0) lands on the square canvas (centre pad or crop)."""
    return canvas_offset(int(image_shape[0]), canvas), canvas_offset(int(image_shape[1]), canvas)


def image_to_canvas(points_yx, offset):
    """Image pixel indices (y, x) -> canvas pixel indices: add the centre-padding offset."""
    return np.asarray(points_yx, dtype=np.float64) + np.asarray(offset, dtype=np.float64)


def canvas_to_grid(points_yx):
    """Canvas pixel indices -> CAM grid coordinates: p / 32, so cell j sits on canvas pixel 32 j,
    the centre of its receptive field (see the module docstring)."""
    return np.asarray(points_yx, dtype=np.float64) / OUTPUT_STRIDE


def image_to_level0(points_xy, target_mpp, level0_mpp, origin_xy=(0.0, 0.0)):
    """Image pixel indices (x, y) at target_mpp -> level-0 slide pixel indices (x, y).

    Pixel centres are matched physically: p0 = (p + 0.5) * target_mpp / level0_mpp - 0.5 + origin.
    """
    scale = float(target_mpp) / float(level0_mpp)
    pts = np.asarray(points_xy, dtype=np.float64)
    return (pts + 0.5) * scale - 0.5 + np.asarray(origin_xy, dtype=np.float64)


def level0_to_image(points_xy, target_mpp, level0_mpp, origin_xy=(0.0, 0.0)):
    """Inverse of ``image_to_level0``."""
    scale = float(target_mpp) / float(level0_mpp)
    pts = np.asarray(points_xy, dtype=np.float64) - np.asarray(origin_xy, dtype=np.float64)
    return (pts + 0.5) / scale - 0.5


def map_to_geojson(points_xy, downsample, target_mpp, level0_mpp, origin_xy=(0.0, 0.0)):
    """Pixel indices (x, y) of a map at ``target_mpp * downsample`` -> GeoJSON level-0
    coordinates (continuous, level-0 pixel i spanning [i, i + 1)): (q + 0.5) d s + origin, with
    s level-0 pixels per image pixel; the same point as ``image_to_level0`` gives, plus 0.5."""
    scale = float(target_mpp) / float(level0_mpp)
    pts = np.asarray(points_xy, dtype=np.float64)
    return (pts + 0.5) * (float(downsample) * scale) + np.asarray(origin_xy, dtype=np.float64)


def _cubic_weights(coords, n, a=-0.75):
    """(len(coords), n) matrix of bicubic (Keys, a = -0.75, as OpenCV) interpolation weights.

    Row r interpolates grid position ``coords[r]`` (cell centres at integers) from the four
    nearest cells; indices beyond the grid are clamped to its edge (replicated border).
    """
    coords = np.asarray(coords, dtype=np.float64)
    base = np.floor(coords)
    t = coords - base
    weights = np.zeros((len(coords), n), dtype=np.float64)
    rows = np.arange(len(coords))
    for tap in (-1, 0, 1, 2):
        x = np.abs(t - tap)
        k = np.where(x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                     np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0))
        idx = np.clip(base.astype(np.int64) + tap, 0, n - 1)
        np.add.at(weights, (rows, idx), k)
    return weights


def upsample(cam_prob, image_shape, offset, downsample=1):
    """Bicubic upsampling of a grid map to the image (not the canvas), float32 (h, w).

    ``cam_prob``: the map on the stride-32 grid (any values; the paper's is sigmoid(cam_logit)).
    ``image_shape``: (height, width) of the prepared image in pixels at target mpp.
    ``offset``: ``image_offset(...)`` of that image on the model's canvas.
    ``downsample``: output pixel u covers image pixels [u d, u d + d); 1 = full image size.

    Output pixel u samples grid coordinate g = c / 32 at canvas pixel c = (u + 0.5) d - 0.5 +
    offset (``canvas_to_grid``): cell j's value lands on canvas pixel 32 j. Bicubic is separable,
    so the result is Wy @ grid @ Wx^T with the (Keys, a = -0.75, as OpenCV's INTER_CUBIC) weight
    matrices, without ever building the whole canvas-sized map; with d = 1 it equals
    ``cv2.warpAffine`` of the grid by a factor 32 (INTER_CUBIC, replicated border). An offset
    of (-15.5, -15.5) on a 32 h x 32 w image gives the released code's ``cv2.resize(grid,
    (32 w, 32 h), interpolation=cv2.INTER_CUBIC)``. Results are clipped to the grid's range
    (bicubic overshoots).
    """
    grid = np.asarray(cam_prob, dtype=np.float64)
    d = float(downsample)
    h = max(1, int(np.ceil(image_shape[0] / d)))
    w = max(1, int(np.ceil(image_shape[1] / d)))
    oy, ox = offset
    gy = canvas_to_grid((np.arange(h) + 0.5) * d - 0.5 + oy)
    gx = canvas_to_grid((np.arange(w) + 0.5) * d - 0.5 + ox)
    out = _cubic_weights(gy, grid.shape[0]) @ grid @ _cubic_weights(gx, grid.shape[1]).T
    return np.clip(out, grid.min(), grid.max()).astype(np.float32)


def cam_map(cam_logit, image_shape, canvas, downsample=1, offset=None):
    """The paper's displayed CAM: sigmoid(cam_logit) upsampled bicubically onto the image.

    ``offset``: the image's (top, left) on the canvas; default ``image_offset`` (centre pad).
    """
    if offset is None:
        offset = image_offset(image_shape, canvas)
    return upsample(sigmoid(cam_logit), image_shape, offset, downsample)


# --------------------------------------------------------------------------- GeoJSON regions

def regions(cam_image, threshold=0.5, downsample=1, target_mpp=1.0, level0_mpp=1.0,
            origin_xy=(0.0, 0.0), min_area_px=0):
    """High-CAM regions as QuPath annotation features in level-0 pixel coordinates.

    ``cam_image``: the upsampled map (``cam_map``), whose pixel u covers image pixels
    [u d, u d + d). Pixels >= ``threshold`` form regions (8-connected components); each
    becomes one Polygon (outer ring + holes, from cv2.findContours: rings through the centres
    of the region's edge pixels) with properties classification ``Tumor (CAM)``, ``cam_max``
    and ``cam_mean`` over the region and its area. Vertices are GeoJSON level-0 coordinates
    (``map_to_geojson``), the frame of QuPath and of the ``foci`` annotations.
    """
    import cv2
    mask = (np.asarray(cam_image) >= threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    features = []
    for k in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area < min_area_px:
            continue
        sub = (labels[y:y + h, x:x + w] == k).astype(np.uint8)
        values = np.asarray(cam_image)[y:y + h, x:x + w][sub > 0]
        # Pad by one so that contours touching the crop's edge stay closed and correct.
        found = cv2.findContours(np.pad(sub, 1), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        contours, hierarchy = found[-2], found[-1]
        rings = []
        for idx, contour in enumerate(contours):
            pts = contour[:, 0, :].astype(np.float64) - 1.0 + np.array([x, y])
            is_hole = hierarchy is not None and hierarchy[0][idx][3] >= 0
            if len(pts) < 3:
                if is_hole:
                    continue
                # A one- or two-pixel region: use its pixel bounding box (corners).
                x0, y0 = pts.min(axis=0) - 0.5
                x1, y1 = pts.max(axis=0) + 0.5
                pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
            ring = map_to_geojson(pts, downsample, target_mpp, level0_mpp, origin_xy)
            ring = [[round(float(a), 2), round(float(b), 2)] for a, b in ring]
            ring.append(ring[0])
            if is_hole:
                rings.append(ring)
            else:
                rings.insert(0, ring)
        if not rings:
            continue
        area_um2 = area * (downsample * target_mpp) ** 2
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": rings},
            "properties": {
                "objectType": "annotation",
                "classification": {"name": CLASSIFICATION, "color": [255, 0, 0]},
                "isLocked": False,
                "cam_max": round(float(values.max()), 6),
                "cam_mean": round(float(values.mean()), 6),
                "area_um2": round(float(area_um2), 1),
            },
        })
    return {"type": "FeatureCollection", "features": features}


# --------------------------------------------------------------------------- writers

def write_geojson(collection, path):
    return atomic_write_text(path, json.dumps(collection))


def thumbnail(image, max_side=1024):
    """The image shrunk (INTER_AREA) so that its longer side is at most ``max_side`` pixels."""
    import cv2
    h, w = image.shape[:2]
    factor = min(1.0, float(max_side) / max(h, w))
    if factor >= 1.0:
        return image
    return cv2.resize(image, (max(1, int(round(w * factor))), max(1, int(round(h * factor)))),
                      interpolation=cv2.INTER_AREA)


def write_overlay(image, cam_image, path, title, low=0.5, max_side=1024, outlines=None):
    """PNG: the CAM in heat colours over a thumbnail; values <= ``low`` transparent; colour bar.

    Opacity rises linearly from 0 at ``low`` to 0.7 at 1, so the tissue stays visible.
    ``outlines``: tumour annotation rings ((N, 2) x, y arrays in image pixels, pixel i spanning
    [i, i + 1)), drawn white with a black edge: jet has no white, and the black edge keeps the
    line visible on white glass.
    """
    import cv2
    import matplotlib.cm
    import matplotlib.colors
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    thumb = thumbnail(np.asarray(image), max_side)
    th, tw = thumb.shape[:2]
    heat = cv2.resize(np.asarray(cam_image, dtype=np.float32), (tw, th),
                      interpolation=cv2.INTER_LINEAR)
    cmap = matplotlib.cm.get_cmap("jet")
    rgba = cmap(np.clip(heat, 0.0, 1.0))
    rgba[..., 3] = 0.7 * np.clip((heat - low) / max(1e-6, 1.0 - low), 0.0, 1.0)
    fig_w = 6.0
    fig_h = max(2.5, fig_w * th / float(tw) * 0.9)
    fig = Figure(figsize=(fig_w + 1.2, fig_h), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(thumb)
    ax.imshow(rgba)
    if outlines:
        from matplotlib import patheffects
        from matplotlib.lines import Line2D
        ih, iw = np.asarray(image).shape[:2]
        fx, fy = tw / float(iw), th / float(ih)
        edge = [patheffects.Stroke(linewidth=2.6, foreground="black"), patheffects.Normal()]
        for ring in outlines:
            r = np.asarray(ring, np.float64)
            r = np.concatenate([r, r[:1]])
            # imshow puts pixel j's centre at j: a continuous coordinate c is at c - 0.5.
            ax.plot(r[:, 0] * fx - 0.5, r[:, 1] * fy - 0.5, color="white", linewidth=1.2,
                    path_effects=edge, scalex=False, scaley=False)
        handle = Line2D([], [], color="white", linewidth=1.2, path_effects=edge)
        ax.legend([handle], ["tumour annotation"], loc="lower right", fontsize=7,
                  framealpha=0.8, facecolor="0.6")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    mappable = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0.0, 1.0), cmap=cmap)
    mappable.set_array([])
    bar = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("CAM (sigmoid)", fontsize=8)

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path


def write_tiff(cam_image, path, target_mpp, level0_mpp, downsample=1, origin_xy=(0.0, 0.0)):
    """The upsampled map as a float32 TIFF at target_mpp * downsample, with resolution tags
    (pixels per centimetre) and a JSON description of how to reach level-0 coordinates."""
    import tifffile
    mpp = float(target_mpp) * downsample
    note = {
        "content": "sigmoid CAM (synthetic or real cohort), float32 in [0, 1]",
        "mpp": mpp,
        "level0_mpp": float(level0_mpp),
        "level0_per_pixel": mpp / float(level0_mpp),
        "level0_origin_xy": [float(origin_xy[0]), float(origin_xy[1])],
        "mapping": "level0 pixel index = (p + 0.5) * level0_per_pixel - 0.5 + origin, "
                   "p a pixel index of this map",
    }
    per_cm = 1e4 / mpp

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.asarray(cam_image, dtype=np.float32), metadata=None,
                         description=json.dumps(note), resolution=(per_cm, per_cm, "CENTIMETER"))
    return path


def localise(cam_image, image_shape, tumour, target_mpp, level0_mpp, origin_xy=(0.0, 0.0),
             threshold=0.5, downsample=1, within=None):
    """``stats.localisation.fractions`` of a displayed CAM (``cam_map`` at ``downsample``) of a
    prepared image of ``image_shape`` (h, w) against ``tumour`` polygons in level-0 pixels
    (``data.nodes.load_polygons``' format), bounded by ``within`` (a node's outline) if given."""
    from stats.localisation import fractions
    scale = float(target_mpp) / float(level0_mpp)   # level-0 pixels per image pixel
    h, w = int(image_shape[0]), int(image_shape[1])
    return fractions(cam_image, tumour, scale * downsample, origin_xy, threshold,
                     extent=(w * scale, h * scale), within=within)


def _image_rings(polygons, target_mpp, level0_mpp, origin_xy):
    """Every ring of level-0 ``polygons`` in image pixels (continuous: pixel i spans [i, i+1))."""
    scale = float(target_mpp) / float(level0_mpp)
    origin = np.asarray(origin_xy, np.float64)
    return [(np.asarray(ring, np.float64)[:, :2] - origin) / scale
            for poly in polygons for ring in poly]


def export(slide_id, image, cam_logit, canvas, probability, out_dir, target_mpp, level0_mpp,
           origin_xy=(0.0, 0.0), threshold=0.5, downsample=1, tiff=False, label=None,
           offset=None, tumour=None, within=None):
    """All CAM outputs of one slide under ``out_dir``; returns {kind: path}, the region count
    and, with ``tumour``, its ``localisation`` (else None).

    ``image``: the prepared image (h, w, 3) at target_mpp, the one that was put on the canvas.
    ``cam_logit``: the pre-sigmoid grid from ``strategy.predict(canvas_image, cam=True)``.
    ``offset``: the image's (top, left) on the canvas (default: centre-padded, ``image_offset``).
    ``tumour``: annotated tumour polygons in level-0 pixels (``data.nodes.load_polygons``),
    outlined on the PNG and measured against the CAM at ``threshold`` (``localise``);
    ``within``: the node's outline for a node crop (tumour outside it is not in the image).
    """
    cam_image = cam_map(cam_logit, image.shape[:2], canvas, downsample, offset)
    title = "{}  p = {:.3f}".format(slide_id, probability)
    if label is not None:
        title += "  (label {})".format(int(label))
    found, outlines = None, None
    if tumour:
        found = localise(cam_image, image.shape[:2], tumour, target_mpp, level0_mpp, origin_xy,
                         threshold, downsample, within)
        outlines = _image_rings(tumour, target_mpp, level0_mpp, origin_xy)

        def pct(v):
            return "n/a" if np.isnan(v) else "{:.0f}%".format(100 * v)
        title += "\ntumour with CAM >= {:g}: {};  CAM >= {:g} in tumour: {}".format(
            threshold, pct(found["tumour_covered"]), threshold, pct(found["cam_in_tumour"]))
    from data.files import file_stem
    safe = file_stem(slide_id)
    paths = {
        "png": write_overlay(image, cam_image, os.path.join(out_dir, safe + ".png"), title,
                             low=threshold, outlines=outlines),
        "localisation": found,
    }
    collection = regions(cam_image, threshold, downsample, target_mpp, level0_mpp, origin_xy)
    paths["geojson"] = write_geojson(collection, os.path.join(out_dir, safe + ".geojson"))
    if tiff:
        paths["tiff"] = write_tiff(cam_image, os.path.join(out_dir, safe + ".tif"), target_mpp,
                                   level0_mpp, downsample, origin_xy)
    paths["regions"] = len(collection["features"])
    return paths


def _with_cam(prediction):
    if getattr(prediction, "cam", None) is None:
        raise ValueError("the prediction has no CAM: call predict_slide(..., cam=True)")
    return prediction


def prediction_map(prediction, downsample=1):
    """The displayed CAM (sigmoid, bicubic) of a ``predict_slide(..., cam=True)`` result, on its
    prepared image at ``target_mpp * downsample`` µm per pixel."""
    p = _with_cam(prediction)
    return cam_map(p.cam, p.image_shape, p.canvas, downsample, p.offset)


def prediction_regions(prediction, threshold=0.5, downsample=1, min_area_px=0):
    """``regions`` of a ``predict_slide(..., cam=True)`` result: GeoJSON in level-0 pixels."""
    p = _with_cam(prediction)
    return regions(prediction_map(p, downsample), threshold, downsample, p.target_mpp,
                   p.level0_mpp, p.origin_xy, min_area_px)


def prediction_localisation(prediction, tumour, threshold=0.5, downsample=1, within=None):
    """``localise`` of a ``predict_slide(..., cam=True)`` result against ``tumour`` polygons
    (level-0 pixels, e.g. ``data.nodes.load_polygons("foci/x.geojson")``)."""
    p = _with_cam(prediction)
    return localise(prediction_map(p, downsample), p.image_shape, tumour, p.target_mpp,
                    p.level0_mpp, p.origin_xy, threshold, downsample, within)


def export_prediction(prediction, out_dir, name="slide", threshold=0.5, downsample=1,
                      tiff=False, label=None, tumour=None, within=None):
    """``export`` of a ``predict_slide(..., cam=True)`` result: PNG overlay (with the outlines
    of ``tumour``, level-0 polygons, when given), level-0 GeoJSON (and TIFF) named ``name``
    under ``out_dir``; returns {kind: path}, the region count and the localisation."""
    p = _with_cam(prediction)
    return export(name, p.image, p.cam, p.canvas, p.probability, out_dir, p.target_mpp,
                  p.level0_mpp, p.origin_xy, threshold, downsample, tiff, label, p.offset,
                  tumour, within)
