"""Single lymph nodes: crop one node of a slide with a QuPath-style GeoJSON polygon.

The paper tested 538 single-node images cropped by hand from the test slides. Here a polygon
(GeoJSON ``Feature``, ``FeatureCollection``, a list of features as QuPath exports, or a bare
``Polygon``/``MultiPolygon``; coordinates in level-0 pixels, x right, y down) marks the node. The
crop is the polygons' bounding box read at the target mpp; every pixel whose centre lies outside
the polygons (or inside a hole) becomes white, like the canvas padding (the paper does not say:
docs/fidelity.md, row ``node-crop-white``). All polygons of the file together form the node.

``load_polygons`` also reads the CAMELYON challenges' ASAP XML lesion annotations (a file ending
in .xml or starting with '<'): their tumour outlines minus their cut-out groups (``data.asap``),
so that a manifest's ``foci`` column (tumour outlines) takes either format.
"""
import json

import cv2
import numpy as np

from data.errors import AnnotationError
from data.slide import Slide, SlideError

_SHIFT = 4  # cv2.fillPoly fractional bits: vertices placed to 1/16 of an output pixel


def load_polygons(path):
    """List of polygons, each a list of rings (exterior first, then holes), each ring an (N, 2)
    float64 array of level-0 pixel coordinates, from a GeoJSON file or, when ``path`` ends in
    .xml or its content starts with '<', an ASAP XML file (``data.asap.load_asap``)."""
    from data import asap
    if asap.is_asap_file(path):
        return asap.load_asap(path)
    return load_geojson(path)


def load_geojson(geojson_path):
    """``load_polygons`` of a GeoJSON file."""
    try:
        with open(geojson_path) as f:
            obj = json.load(f)
    except (OSError, ValueError) as e:
        raise AnnotationError("{}: cannot read GeoJSON ({})".format(geojson_path, e))
    polygons = []
    _collect(obj, polygons, geojson_path)
    if not polygons:
        raise AnnotationError("{}: no Polygon or MultiPolygon in the GeoJSON".format(geojson_path))
    return polygons


def _collect(obj, out, path):
    if isinstance(obj, list):
        for o in obj:
            _collect(o, out, path)
        return
    if not isinstance(obj, dict):
        return
    kind = obj.get("type")
    if kind == "FeatureCollection":
        _collect(obj.get("features", []), out, path)
    elif kind == "Feature":
        _collect(obj.get("geometry"), out, path)
    elif kind == "GeometryCollection":
        _collect(obj.get("geometries", []), out, path)
    elif kind == "Polygon":
        out.append(_rings(obj.get("coordinates"), path))
    elif kind == "MultiPolygon":
        for poly in obj.get("coordinates") or []:
            out.append(_rings(poly, path))


def _rings(coords, path):
    try:
        rings = [np.asarray(r, dtype=np.float64)[:, :2] for r in coords]
    except (TypeError, ValueError, IndexError) as e:
        raise AnnotationError("{}: malformed polygon coordinates ({})".format(path, e))
    if not rings or any(r.ndim != 2 or len(r) < 3 or not np.isfinite(r).all() for r in rings):
        raise AnnotationError("{}: a polygon ring needs at least 3 finite points".format(path))
    return rings


def bounding_box(polygons):
    """(x, y, w, h) in whole level-0 pixels enclosing every exterior ring."""
    pts = np.concatenate([p[0] for p in polygons])
    x0, y0 = np.floor(pts.min(axis=0))
    x1, y1 = np.ceil(pts.max(axis=0))
    return (int(x0), int(y0), max(1, int(x1 - x0)), max(1, int(y1 - y0)))


def polygon_mask(polygons, box, out_size):
    """uint8 mask (H, W), 1 inside the node, at the crop's resolution.

    A level-0 point u maps to output coordinate (u - box_origin) * out_size / box_size; cv2 puts
    integer coordinates at pixel centres, hence the -0.5.
    """
    x0, y0, w0, h0 = box
    out_w, out_h = out_size
    sx, sy = out_w / float(w0), out_h / float(h0)
    mask = np.zeros((out_h, out_w), np.uint8)
    scale = float(1 << _SHIFT)
    for poly in polygons:
        for k, ring in enumerate(poly):
            px = ((ring[:, 0] - x0) * sx - 0.5) * scale
            py = ((ring[:, 1] - y0) * sy - 0.5) * scale
            pts = np.round(np.stack([px, py], axis=1)).astype(np.int32)
            # exterior paints the node, holes are cut out again
            cv2.fillPoly(mask, [pts], 1 if k == 0 else 0, lineType=cv2.LINE_8, shift=_SHIFT)
    return mask


def crop_polygons(slide, polygons, target_mpp, **read_options):
    """The node of ``polygons`` from an open ``data.slide.Slide``: RGB uint8 (H, W, 3) of the
    polygons' bounding box at ``target_mpp``, white outside the polygons."""
    box = bounding_box(polygons)
    w, h = slide.dimensions
    if box[0] >= w or box[1] >= h or box[0] + box[2] <= 0 or box[1] + box[3] <= 0:
        raise SlideError(slide.path, "annotation box {} lies outside the slide ({}x{} px)".format(
            box, w, h))
    image = slide.read(target_mpp, region=box, **read_options)
    mask = polygon_mask(polygons, box, (image.shape[1], image.shape[0]))
    image[mask == 0] = 255
    return image


def crop_node(slide_path, geojson_path, target_mpp, mpp=None, **read_options):
    """RGB uint8 (H, W, 3) of one node at ``target_mpp``: the bounding box of the file's
    polygons, white outside them. Raises SlideError (slide) or AnnotationError (annotation)."""
    polygons = load_polygons(geojson_path)
    with Slide(slide_path, mpp=mpp) as s:
        return crop_polygons(s, polygons, target_mpp, **read_options)


def area_um2(polygons, mpp):
    """Area of the node in µm² (shoelace; holes subtracted), for reports."""
    total = 0.0
    for poly in polygons:
        for k, ring in enumerate(poly):
            x, y = ring[:, 0], ring[:, 1]
            a = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
            total += a if k == 0 else -a
    return total * mpp[0] * mpp[1]
