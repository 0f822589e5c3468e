"""A SYNTHETIC cohort of lymph-node whole-slide images: the embedded default of the package.

Nothing here is the paper's data. Every slide id starts with ``SYNTH-``, the slides say
``Synthetic = true`` in their description, and the cohort folder holds a README.txt saying so.

Each slide is an openslide-readable pyramidal Aperio-style TIFF (tiled pages written by
tifffile with ``metadata=None``, ImageDescription ``Aperio Image Library ...|AppMag = ..|MPP = ..``,
one page per level, downsample 4 per level). It shows lymph-node-like tissue on white glass:

* one main node (3-3.9 mm long) and 0-2 small satellite nodes (0.8-1.5 mm), each ovoid with
  a fibrous capsule, a lymphocyte-dense cortex with follicles (dark mantle, pale germinal
  centre), a paler medulla with a sinus network, and perinodal fat around it;
* on positive slides one tumour focus, its size (largest diameter, the maximum Feret diameter of
  its polygon) drawn from its category (AJCC/UICC): macro > 2 mm, micro 0.2-2 mm
  (default lower bound 0.3 mm so that it spans several pixels at ~8 um/px), ITC < 0.2 mm;
  its texture by subtype: ``classical`` (eosinophilic glands with lumina and dirty necrosis),
  ``mucinous`` (pale blue-grey mucin pools with floating cell clusters), ``signet_poorly``
  (diffuse single cells with clear cytoplasm in pale stroma); a desmoplastic rim around it.

Colours follow Beer-Lambert: RGB = 255 * 10^-(h * H + e * E) with hematoxylin and eosin
optical-density vectors H, E and per-pixel stain amounts h, e (Ruifrok & Johnston 2001); each
slide gets its own stain strength (+-15 %) so that colour alone does not mark a batch.
Tumour is pinker (more eosin, less hematoxylin) than lymphocytes at any resolution.

Outputs in the cohort folder (see :func:`make_cohort`): ``slides/*.tiff``, ``manifest.csv``,
``foci/<slide_id>.geojson`` (tumour polygons, level-0 pixels), ``nodes/<id>.geojson``
(QuPath-style node annotations for node-level rows), ``README.txt``, ``cohort.json``.

:func:`make_paper_slide` writes ONE slide of the paper's size instead (``SYNTH-PAPER``): an
18 x 28 mm scan at 2.28 um/px (7895 x 12281 px) holding 3-6 nodes of 2-10 mm, drawn by the same
node and focus renderer, each in a window around it, on off-white, slightly noisy glass (mean
about RGB 246/244/247, never below 240 before compression, so ``prepare --glass-to-white 240``
turns it white).
"""
import json
import multiprocessing
import os

import cv2
import numpy as np
import pandas as pd

from data.errors import InputError
from data.files import atomic_path, atomic_write_csv, atomic_write_text
from data.manifest import POSITIVE_SIZES as SIZE_CATEGORIES, SPLITS, SUBTYPES

MANIFEST_COLUMNS = ("slide_id", "path", "label", "split", "size_category", "subtype", "chemo",
                    "level", "annotation", "mpp", "foci")

# Optical densities (log10) per unit stain: hematoxylin and eosin, rows sum-normalised loosely
# after Ruifrok & Johnston (2001), softened so that unit amounts give plausible colours.
_H = np.array([0.55, 0.70, 0.33], np.float32)
_E = np.array([0.15, 0.85, 0.35], np.float32)
_TILE = 256
_FAT_MAX_UM = 320.0    # the perinodal fat reaches at most this far from a node's capsule


# --------------------------------------------------------------------------- geometry

def _blob(rng, n, amplitude, harmonics=(2, 3, 4, 5)):
    """A closed star-shaped unit outline, (n, 2), radius 1 modulated by low harmonics."""
    theta = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in harmonics:
        r += rng.uniform(0, amplitude) / k * 2 * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)


def _rotate(points, angle):
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def max_diameter(points):
    """Largest distance between two vertices (maximum Feret diameter), same units as points."""
    p = np.asarray(points, np.float64)
    d = p[:, None, :] - p[None, :, :]
    return float(np.sqrt((d ** 2).sum(-1).max()))


def _inside(polygon, points, margin=0.0):
    """True when every point lies inside `polygon` at least `margin` from its edge."""
    contour = polygon.astype(np.float32).reshape(-1, 1, 2)
    return all(cv2.pointPolygonTest(contour, (float(x), float(y)), True) >= margin
               for x, y in points)


def _node_polygon(rng, centre_um, a_um, b_um, angle):
    """Outline of an ovoid node in um: semi-axes a, b, rotated, gently irregular."""
    unit = _blob(rng, 96, 0.05) * np.array([a_um, b_um])
    return _rotate(unit, angle) + centre_um


def _layout_nodes(rng, width_um, height_um):
    """One main node plus 0-2 satellites; independent of the label (no shortcut to learn)."""
    margin = 150.0
    a = rng.uniform(1500, 1950)
    a = min(a, 0.44 * width_um)
    b = min(rng.uniform(1350, 1750), a, 0.44 * height_um)
    angle = rng.uniform(-0.35, 0.35)
    extent_x = abs(a * np.cos(angle)) + abs(b * np.sin(angle)) + margin
    extent_y = abs(a * np.sin(angle)) + abs(b * np.cos(angle)) + margin
    cx = rng.uniform(extent_x, max(extent_x, width_um - extent_x))
    cy = rng.uniform(extent_y, max(extent_y, height_um - extent_y))
    nodes = [dict(centre=np.array([cx, cy]), a=a, b=b, angle=angle,
                  polygon=_node_polygon(rng, np.array([cx, cy]), a, b, angle))]
    for _ in range(int(rng.choice([0, 1, 2], p=[0.35, 0.4, 0.25]))):
        for _try in range(60):
            sa = rng.uniform(400, 750)
            sb = rng.uniform(0.7, 1.0) * sa
            sangle = rng.uniform(0, np.pi)
            c = np.array([rng.uniform(sa + margin, width_um - sa - margin),
                          rng.uniform(sa + margin, height_um - sa - margin)])
            poly = _node_polygon(rng, c, sa, sb, sangle)
            grown = [(n["polygon"] - n["centre"]) * 1.12 + n["centre"] for n in nodes]
            if all(not _inside(g, poly[::4]) and not _inside(poly * 1.0, g[::4])
                   and _separated(g, poly) for g in grown):
                nodes.append(dict(centre=c, a=sa, b=sb, angle=sangle, polygon=poly))
                break
    return nodes


def _separated(p, q):
    """No vertex of either polygon inside the other (enough for these convex-ish outlines)."""
    cp, cq = p.astype(np.float32).reshape(-1, 1, 2), q.astype(np.float32).reshape(-1, 1, 2)
    return (all(cv2.pointPolygonTest(cp, (float(x), float(y)), False) < 0 for x, y in q)
            and all(cv2.pointPolygonTest(cq, (float(x), float(y)), False) < 0 for x, y in p))


def size_range_um(category, micro_min_mm=0.3, node_minor_um=None):
    """(low, high) of the focus' largest diameter in um for a size category.

    AJCC/UICC: ITC <= 0.2 mm, micro > 0.2 and <= 2 mm, macro > 2 mm. Bounds are kept inside
    the category with a margin, and a macro focus must fit its node.
    """
    if category == "macro":
        high = 2650.0 if node_minor_um is None else min(2650.0, 2 * node_minor_um * 0.85)
        return 2080.0, max(2100.0, high)
    if category == "micro":
        return max(210.0, 1000.0 * micro_min_mm), 1900.0
    if category == "itc":
        return 60.0, 180.0
    raise ValueError("unknown size category {!r}".format(category))


def _place_focus(rng, node, diameter_um):
    """A tumour outline (um) of the given largest diameter inside the node, or None."""
    for _try in range(300):
        shape = _blob(rng, 64, 0.35) * np.array([1.0, rng.uniform(0.65, 1.0)])
        shape = _rotate(shape, rng.uniform(0, np.pi))
        shape *= diameter_um / max_diameter(shape)
        # centre drawn within the node's ellipse, shrunk so that big foci can still fit
        room = max(0.0, 1.0 - 0.5 * diameter_um / node["b"])
        r, t = np.sqrt(rng.uniform(0, 1)) * room, rng.uniform(0, 2 * np.pi)
        offset = _rotate(np.array([[node["a"] * r * np.cos(t), node["b"] * r * np.sin(t)]]),
                         node["angle"])[0]
        focus = shape + node["centre"] + offset
        if _inside(node["polygon"], focus, margin=40.0):
            return focus
    return None


# --------------------------------------------------------------------------- texture

def _noise(rng, shape, cell_px, stretch=1.0):
    """Smooth noise in about [0, 1]: a coarse random grid, bicubically resized."""
    gh = max(2, int(shape[0] / cell_px) + 2)
    gw = max(2, int(shape[1] / (cell_px * stretch)) + 2)
    grid = rng.random((gh, gw), dtype=np.float32)
    return cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _lines(noise, width):
    """A network of thin lines where the smooth noise crosses 0.5 (sinuses, fat membranes)."""
    lines = np.abs(noise - np.float32(0.5))
    lines *= np.float32(-1.0 / width)
    lines += np.float32(1.0)
    return np.maximum(lines, 0, out=lines)


def _fill(shape, polygon_px):
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(polygon_px * 16).astype(np.int32).reshape(-1, 1, 2)], 1,
                 lineType=cv2.LINE_8, shift=4)
    return mask


def _disk_kernel(radius_px):
    r = max(1, int(round(radius_px)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _render(rng, nodes, foci, shape, mpp):
    """The whole slide as RGB uint8 (level-0 grid): its stains, then a per-slide strength."""
    h, e = _stains(rng, nodes, foci, shape, mpp)
    strength = rng.uniform(0.85, 1.15, size=2)
    rgb = _transmission(h, e, strength)
    rgb *= np.float32(255.0)
    return rgb.astype(np.uint8)    # od >= 0, so 0 < rgb <= 255


def _stains(rng, nodes, foci, shape, mpp, background_e=0.012):
    """Stain amounts h, e (float32, `shape`) of the nodes, their perinodal fat and the foci.

    Geometry is in um from the grid's top-left corner; ``background_e`` is the eosin of what
    no node, fat or focus covers (a faint pink on the cohort's slides, 0 where glass is drawn
    separately).
    """
    um = 1.0 / mpp  # pixels per micrometre
    hgt, wid = shape
    h = np.full(shape, 0.0, np.float32)
    e = np.full(shape, background_e, np.float32)
    grain = rng.random(shape, dtype=np.float32) - 0.5
    tissue = np.zeros(shape, np.uint8)
    for n in nodes:
        tissue |= _fill(shape, n["polygon"] * um)

    # perinodal fat: a membrane network within ~250 um of the capsule
    outside = cv2.distanceTransform(1 - tissue, cv2.DIST_L2, 3) / um
    fat = (outside > 0) & (outside < rng.uniform(180, _FAT_MAX_UM))
    membranes = _lines(_noise(rng, shape, 70 * um), 0.045)
    e[fat] += 0.42 * membranes[fat] + 0.02
    h[fat] += 0.05 * membranes[fat]

    depth = cv2.distanceTransform(tissue, cv2.DIST_L2, 3) / um   # um from the capsule
    texture = _noise(rng, shape, 120 * um)
    sinus = _lines(_noise(rng, shape, 90 * um, stretch=2.0), 0.07)
    for n in nodes:
        cx, cy = n["centre"] * um
        x0, y0 = np.floor(n["polygon"].min(0) * um).astype(int)
        x1, y1 = np.ceil(n["polygon"].max(0) * um).astype(int) + 1
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(wid, x1), min(hgt, y1)
        ys, xs = np.ogrid[y0:y1, x0:x1]
        dx, dy = xs.astype(np.float32) - cx, ys.astype(np.float32) - cy
        c, s = np.float32(np.cos(n["angle"])), np.float32(np.sin(n["angle"]))
        rr = np.sqrt(((c * dx + s * dy) / np.float32(n["a"] * um)) ** 2
                     + ((c * dy - s * dx) / np.float32(n["b"] * um)) ** 2)
        win = (slice(y0, y1), slice(x0, x1))
        inside = tissue[win] > 0
        d = depth[win]
        hw, ew = h[win], e[win]
        # cortex: dense lymphocytes; medulla: paler cords with a sinus network
        medulla = np.clip((0.6 - rr) / 0.25, 0, 1)
        lymph_h = 0.50 + 0.12 * texture[win] + 0.30 * grain[win] - 0.28 * medulla * sinus[win]
        lymph_e = 0.18 + 0.05 * texture[win] + 0.10 * medulla * sinus[win]
        # follicles in the outer cortex: a dark mantle, a pale germinal centre
        for _ in range(max(2, int(rng.poisson(2 * np.pi * n["a"] / 700.0)))):
            t, rf = rng.uniform(0, 2 * np.pi), rng.uniform(0.68, 0.84)
            radius = rng.uniform(120, 240) * min(1.0, n["b"] / 900.0) * um
            p = _rotate(np.array([[n["a"] * rf * np.cos(t), n["b"] * rf * np.sin(t)]]),
                        n["angle"])[0] * um + [cx - x0, cy - y0]
            fx0, fy0 = max(0, int(p[0] - radius) - 1), max(0, int(p[1] - radius) - 1)
            fx1, fy1 = int(p[0] + radius) + 2, int(p[1] + radius) + 2
            fy, fx = np.ogrid[fy0:fy1, fx0:fx1]
            dist = np.hypot((fx - p[0]).astype(np.float32), (fy - p[1]).astype(np.float32))
            dist /= np.float32(radius)
            centre = np.clip((0.7 - dist) / 0.15, 0, 1)
            mantle = np.clip((1.0 - dist) / 0.15, 0, 1) * (1 - centre)
            fh, fe = lymph_h[fy0:fy1, fx0:fx1], lymph_e[fy0:fy1, fx0:fx1]
            fh += (0.16 * mantle - 0.18 * centre)[:fh.shape[0], :fh.shape[1]]
            fe -= (0.03 * centre)[:fe.shape[0], :fe.shape[1]]
        capsule = np.clip((45.0 - d) / 15.0, 0, 1)
        streak = _lines(_noise(rng, d.shape, 40 * um, stretch=0.3), 0.2)
        hw[inside] = ((1 - capsule) * lymph_h + capsule * (0.10 + 0.05 * streak))[inside]
        ew[inside] = ((1 - capsule) * lymph_e + capsule * (0.55 + 0.15 * streak))[inside]

    for focus in foci:
        _render_focus(rng, h, e, grain, tissue, focus, um)
    return h, e


def _transmission(h, e, strength):
    """Share of light (float32 (H, W, 3), 0-1) that stain amounts h, e let through, by
    Beer-Lambert with the per-slide stain strengths ``strength`` (hematoxylin, eosin)."""
    strength_h, strength_e = strength
    od = (np.maximum(h, 0) * strength_h)[..., None] * _H + \
         (np.maximum(e, 0) * strength_e)[..., None] * _E
    od *= np.float32(-np.log(10.0))
    return np.exp(od, out=od)


def _render_focus(rng, h, e, grain, tissue, focus, um):
    """Draws one tumour focus into the stain maps, in its bounding box (plus a margin)."""
    poly = focus["polygon_um"] * um
    pad = int(60 * um) + 2
    x0, y0 = np.maximum(np.floor(poly.min(0)).astype(int) - pad, 0)
    x1, y1 = np.ceil(poly.max(0)).astype(int) + pad
    x1, y1 = min(h.shape[1], x1), min(h.shape[0], y1)
    win = (slice(y0, y1), slice(x0, x1))
    shape = (y1 - y0, x1 - x0)
    local = poly - [x0, y0]
    mask = _fill(shape, local) > 0
    inside_node = tissue[win] > 0
    hw, ew, g = h[win], e[win], grain[win]

    # desmoplastic rim: pink fibrous stroma around the tumour
    rim = cv2.dilate(mask.astype(np.uint8), _disk_kernel(rng.uniform(20, 40) * um)) > 0
    rim &= ~mask & inside_node
    hw[rim] = 0.14 + 0.08 * g[rim]
    ew[rim] = 0.55 + 0.10 * g[rim]

    subtype = focus["subtype"]
    area_um2 = mask.sum() / um ** 2
    layer = np.zeros(shape, np.uint8)     # 1 = lumen / vacuole / pool, 2 = dark nuclei ring
    if focus["size_category"] == "itc" or subtype == "classical":
        base_h, base_e = (0.40, 0.62) if subtype == "classical" else (0.45, 0.60)
        hw[mask] = base_h + 0.35 * g[mask]
        ew[mask] = base_e + 0.10 * g[mask]
        n = int(area_um2 / 110.0 ** 2) if focus["size_category"] != "itc" else 0
        debris = np.zeros(shape, np.uint8)
        for _ in range(n):
            cx, cy = rng.uniform(0, shape[1]), rng.uniform(0, shape[0])
            r = rng.uniform(18, 45) * um
            cv2.circle(layer, (int(cx), int(cy)), int(r + 12 * um), 2, -1)
            cv2.circle(layer, (int(cx), int(cy)), max(1, int(r)), 1, -1)
            if rng.random() < 0.3:   # "dirty" necrosis in the lumen
                cv2.circle(debris, (int(cx), int(cy)), max(1, int(0.6 * r)), 1, -1)
        ring, lumen = (layer == 2) & mask, (layer == 1) & mask
        hw[ring] += 0.30
        hw[lumen], ew[lumen] = 0.04, 0.10
        dirty = lumen & (debris > 0)
        hw[dirty], ew[dirty] = 0.22 + 0.3 * g[dirty], 0.45
    elif subtype == "mucinous":
        hw[mask] = 0.17 + 0.04 * g[mask]
        ew[mask] = 0.05 + 0.03 * g[mask]
        septa = _lines(_noise(rng, shape, 150 * um), 0.03) > 0.5
        for _ in range(int(area_um2 / 85.0 ** 2)):
            cx, cy = rng.uniform(0, shape[1]), rng.uniform(0, shape[0])
            axes = (max(1, int(rng.uniform(8, 28) * um)), max(1, int(rng.uniform(6, 20) * um)))
            cv2.ellipse(layer, (int(cx), int(cy)), axes, rng.uniform(0, 180), 0, 360, 2, -1)
        cells = (layer == 2) & mask
        hw[cells], ew[cells] = 0.55 + 0.3 * g[cells], 0.55
        sep = septa & mask & ~cells
        hw[sep], ew[sep] = 0.10, 0.45
    elif subtype == "signet_poorly":
        hw[mask] = 0.20 + 0.10 * g[mask]
        ew[mask] = 0.42 + 0.08 * g[mask]
        nuclei = np.zeros(shape, np.uint8)
        for _ in range(int(area_um2 / 24.0 ** 2)):
            cx, cy = rng.uniform(0, shape[1]), rng.uniform(0, shape[0])
            r = max(1, int(rng.uniform(6, 9) * um))
            cv2.circle(layer, (int(cx), int(cy)), r, 1, -1)
            a = rng.uniform(0, 2 * np.pi)
            cv2.circle(nuclei, (int(cx + 0.8 * r * np.cos(a)), int(cy + 0.8 * r * np.sin(a))),
                       max(1, r // 2), 1, -1)
        vac = (layer == 1) & mask
        hw[vac], ew[vac] = 0.10, 0.12
        nuc = (nuclei > 0) & mask
        hw[nuc], ew[nuc] = 0.85, 0.25
    else:
        raise ValueError("unknown subtype {!r}".format(subtype))


# --------------------------------------------------------------------------- files

def aperio_description(width, height, mpp, level_of=None):
    """ImageDescription that OpenSlide parses as Aperio: first line, then |key = value pairs."""
    head = "Aperio Image Library SYNTHETIC (wsi-micromet-repro data.synth)\r\n"
    size = "{}x{} [0,0 {}x{}] ({}x{})".format(width, height, width, height, _TILE, _TILE)
    if level_of is not None:
        size = "{}x{} -> {}x{}".format(level_of[0], level_of[1], width, height)
    magnification = 10.0 / mpp    # 40x at 0.25 um/px
    return "{}{} |AppMag = {:g}|MPP = {:g}|Synthetic = true".format(head, size, magnification, mpp)


def slide_shape(width_mm, height_mm, mpp):
    """(height, width) in level-0 pixels of a width_mm x height_mm slide at mpp um/px."""
    return int(round(1000.0 * height_mm / mpp)), int(round(1000.0 * width_mm / mpp))


def level_dimensions(width, height, factor=4, min_size=64):
    """[(width, height), ...] of the pyramid levels that :func:`pyramid` writes, level 0 first:
    each level a `factor` downsample of the previous while its shorter side is >= min_size."""
    dims = [(width, height)]
    while min(dims[-1]) // factor >= min_size:
        dims.append((dims[-1][0] // factor, dims[-1][1] // factor))
    return dims


def pyramid(rgb, factor=4, min_size=64):
    """Level 0 and its downsamples by `factor` (area averaging) while at least min_size px."""
    levels = [rgb]
    for size in level_dimensions(rgb.shape[1], rgb.shape[0], factor, min_size)[1:]:
        levels.append(cv2.resize(levels[-1], size, interpolation=cv2.INTER_AREA))
    return levels


def write_aperio_tiff(path, rgb, mpp, compression="jpeg", quality=90, edge_tiles=False):
    """Writes an openslide-readable Aperio-style pyramidal TIFF atomically (temp + rename).

    The tiles along the right and bottom edges reach past the image. By default tifffile fills
    that padding; the version pinned here zeroes only a partial tile's corner and keeps the
    rest of its buffer, uninitialised memory when a level's first tile is partial, so such a
    file's bytes (and, with JPEG, the pixels near that level's edges) can differ between runs.
    `edge_tiles` pads with the image's last column and row instead (:func:`_edge_padded_tiles`):
    the same image gives the same bytes. Readers never show the padding either way.
    """
    import tifffile
    codec = ("jpeg", quality) if compression == "jpeg" else compression
    levels = pyramid(rgb)
    h0, w0 = rgb.shape[:2]
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=rgb.nbytes > 2 ** 31) as tw:
        for i, level in enumerate(levels):
            desc = aperio_description(level.shape[1], level.shape[0], mpp,
                                      None if i == 0 else (w0, h0))
            # tiles from an iterator need the page's shape and dtype; an array must go alone
            data = dict(data=_edge_padded_tiles(level), shape=level.shape, dtype=level.dtype) \
                if edge_tiles else dict(data=level)
            tw.write(**data, tile=(_TILE, _TILE), photometric="rgb", compression=codec,
                     description=desc, metadata=None)


def _edge_padded_tiles(level):
    """The _TILE x _TILE tiles of `level` in row-major order, those along the right and bottom
    edges padded by repeating the last column and row: reproducible, and a JPEG block that
    straddles the edge does not ring into the last pixels (dark padding would turn pale glass
    there darker than glass, which `--glass-to-white` would then keep)."""
    height, width = level.shape[:2]
    for y in range(0, height, _TILE):
        for x in range(0, width, _TILE):
            tile = level[y:y + _TILE, x:x + _TILE]
            short = (_TILE - tile.shape[0], _TILE - tile.shape[1])
            if any(short):
                tile = np.pad(tile, ((0, short[0]), (0, short[1]), (0, 0)), mode="edge")
            yield np.ascontiguousarray(tile)


def _write_json(path, obj):
    atomic_write_text(path, json.dumps(obj))


def _write_foci(path, foci, mpp):
    """The tumour polygons of one slide as GeoJSON, level-0 pixels, one feature per focus."""
    _write_json(path, {"type": "FeatureCollection", "features": [
        _feature(f["polygon_um"] / mpp, dict(
            classification={"name": "Tumor"}, synthetic=True,
            size_category=f["size_category"], subtype=f["subtype"], node=f["node"],
            max_diameter_um=round(f["max_diameter_um"], 1))) for f in foci]})


def _feature(polygon_px, properties):
    ring = [[round(float(x), 2), round(float(y), 2)] for x, y in polygon_px]
    ring.append(ring[0])
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": dict(objectType="annotation", **properties)}


# --------------------------------------------------------------------------- cohort

def plan_cohort(slides, seed, split_fractions=(0.6, 0.2, 0.2), size_mix=(0.5, 0.4, 0.1),
                subtype_mix=(0.6, 0.2, 0.2), chemo_fraction=0.15):
    """Labels, splits, size categories, subtypes and chemo of every slide (seeded).

    Each split gets round(n * fraction) slides (the rest to train), half of them positive
    (the odd one negative). Size categories (macro, micro, itc by `size_mix`) and subtypes
    (`subtype_mix`) are counted over all positives with largest-remainder rounding, then dealt
    evenly over the splits (so each split holds about the same mix), then shuffled in each split.
    """
    rng = np.random.default_rng([seed, 0])
    counts = [int(round(slides * f)) for f in split_fractions[1:]]
    counts.insert(0, slides - sum(counts))
    positives = dict(zip(SPLITS, [n // 2 for n in counts]))
    sizes = _split_allocate(positives, size_mix, SIZE_CATEGORIES)
    subtypes = _split_allocate(positives, subtype_mix, SUBTYPES)
    plan = []
    for split, n in zip(SPLITS, counts):
        rng.shuffle(sizes[split])
        rng.shuffle(subtypes[split])
        rows = [dict(label=1, split=split, size_category=a, subtype=b)
                for a, b in zip(sizes[split], subtypes[split])]
        rows += [dict(label=0, split=split, size_category="negative", subtype="")
                 for _ in range(n - len(rows))]
        rng.shuffle(rows)
        plan.extend(rows)
    for i, row in enumerate(plan):
        row["slide_id"] = "SYNTH-{:04d}".format(i + 1)
        row["chemo"] = int(rng.random() < chemo_fraction)
        row["index"] = i
    return plan


def _split_allocate(per_split, fractions, names):
    """{split: [name, ...]}: each split's share of `fractions`, rounded so that the totals are
    the cohort's largest-remainder counts; leftover units go to the largest remainders, the
    test split first on ties (a rare category in a small cohort goes where it is evaluated)."""
    share = np.asarray(fractions, float) / np.sum(fractions)
    total = sum(per_split.values())
    raw_total = share * total
    quota = np.floor(raw_total).astype(int)
    for i in np.argsort(-(raw_total - quota), kind="stable")[:total - quota.sum()]:
        quota[i] += 1
    priority = {split: k for k, split in enumerate(reversed(SPLITS))}
    counts, candidates = {}, []
    for split, p in per_split.items():
        raw = share * p
        counts[split] = np.floor(raw).astype(int)
        candidates += [(-(raw[i] - counts[split][i]), priority[split], i, split)
                       for i in range(len(names))]
    left = quota - sum(counts.values())
    for _, _, i, split in sorted(candidates):
        if counts[split].sum() < per_split[split] and left[i] > 0:
            counts[split][i] += 1
            left[i] -= 1
    for split, p in per_split.items():   # any split still short takes what is left
        while counts[split].sum() < p:
            i = int(np.argmax(left)) if left.max() > 0 else int(np.argmax(share))
            counts[split][i] += 1
            left[i] -= 1
    return {split: [name for name, c in zip(names, counts[split]) for _ in range(c)]
            for split in per_split}


def make_slide(row, seed, mpp=2.0, width_mm=5.5, height_mm=4.5, micro_min_mm=0.3):
    """Renders one slide of the plan: (rgb uint8 level 0, nodes, foci); geometry in um."""
    rng = np.random.default_rng([seed, 1, row["index"]])
    width_um, height_um = 1000.0 * width_mm, 1000.0 * height_mm
    shape = slide_shape(width_mm, height_mm, mpp)
    nodes = _layout_nodes(rng, width_um, height_um)
    foci = []
    if row["label"] == 1:
        category = row["size_category"]
        # macro needs the main node; smaller foci go into any node that holds them
        k = 0 if category == "macro" else int(rng.integers(len(nodes)))
        for attempt in range(20):
            low, high = size_range_um(category, micro_min_mm, nodes[k]["b"])
            diameter = rng.uniform(low, high)
            polygon = _place_focus(rng, nodes[k], diameter)
            if polygon is not None:
                break
            k = 0
        if polygon is None:
            raise RuntimeError("could not place a {} focus in {}".format(category, row["slide_id"]))
        foci.append(dict(polygon_um=polygon, node=k, size_category=category,
                         subtype=row["subtype"], max_diameter_um=max_diameter(polygon)))
    rgb = _render(rng, nodes, foci, shape, mpp)
    return rgb, nodes, foci


def _build_one(job):
    row, seed, out_dir, options = job
    mpp = options["mpp"]
    rgb, nodes, foci = make_slide(row, seed, mpp, options["width_mm"], options["height_mm"],
                                  options["micro_min_mm"])
    write_aperio_tiff(os.path.join(out_dir, "slides", row["slide_id"] + ".tiff"), rgb, mpp,
                      options["compression"])
    if foci:
        _write_foci(os.path.join(out_dir, "foci", row["slide_id"] + ".geojson"), foci, mpp)
    node_rows = []
    if row["with_nodes"]:
        for k, n in enumerate(nodes):
            node_id = "{}-node{}".format(row["slide_id"], k + 1)
            # what a pathologist would draw: a loose outline just outside the capsule
            outline = (n["polygon"] - n["centre"]) * 1.06 + n["centre"]
            _write_json(os.path.join(out_dir, "nodes", node_id + ".geojson"), {
                "type": "FeatureCollection", "features": [_feature(outline / mpp, dict(
                    classification={"name": "Lymph node"}, synthetic=True, node=k + 1))]})
            mine = [f for f in foci if f["node"] == k]
            node_rows.append(dict(
                slide_id=node_id, path=row["path"], label=int(bool(mine)), split=row["split"],
                size_category=mine[0]["size_category"] if mine else "negative",
                subtype=mine[0]["subtype"] if mine else "", chemo=row["chemo"], level="node",
                annotation="nodes/{}.geojson".format(node_id), mpp=mpp,
                foci=row["foci"] if mine else ""))
    return row["index"], node_rows


def make_cohort(out_dir, slides, seed, mpp=2.0, node_fraction=0.5, width_mm=5.5, height_mm=4.5,
                micro_min_mm=0.3, split_fractions=(0.6, 0.2, 0.2), size_mix=(0.5, 0.4, 0.1),
                subtype_mix=(0.6, 0.2, 0.2), chemo_fraction=0.15, compression="jpeg",
                workers=None, progress=True):
    """Writes a synthetic cohort into `out_dir`; returns its manifest (also manifest.csv).

    slides: number of slides; seed: everything is a function of it. mpp: level-0 um/px of the
    written slides (coarse by default so that a demo cohort takes about a minute: 2.0 um/px
    and 5.5 x 4.5 mm give 2750 x 2250 px, 688 x 563 px at 8 um/px). node_fraction: the share
    of test slides whose nodes also get node-level rows (``level=node``, a GeoJSON outline in
    ``annotation``). Columns: see MANIFEST_COLUMNS; ``foci`` is the tumour GeoJSON of a
    positive row (level-0 pixels). Paths are relative to `out_dir`.
    """
    if slides < 2:
        raise ValueError("slides must be at least 2, got {}".format(slides))
    for sub in ("slides", "foci", "nodes"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    plan = plan_cohort(slides, seed, split_fractions, size_mix, subtype_mix, chemo_fraction)
    node_rng = np.random.default_rng([seed, 2])
    for row in plan:
        row.update(path="slides/{}.tiff".format(row["slide_id"]), level="slide", annotation="",
                   mpp=mpp, foci="foci/{}.geojson".format(row["slide_id"]) if row["label"] else "")
        row["with_nodes"] = bool(row["split"] == "test" and node_rng.random() < node_fraction)
    options = dict(mpp=mpp, width_mm=width_mm, height_mm=height_mm, micro_min_mm=micro_min_mm,
                   compression=compression)
    jobs = [(row, seed, out_dir, options) for row in plan]
    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    node_rows = {}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), desc="synth slides", unit="slide")
    if workers == 1:
        results = map(_build_one, jobs)
        pool = None
    else:
        pool = multiprocessing.get_context("fork").Pool(workers)
        results = pool.imap_unordered(_build_one, jobs)
    try:
        for index, rows in results:
            node_rows[index] = rows
            if bar is not None:
                bar.update(1)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        if bar is not None:
            bar.close()
    records = []
    for row in plan:
        records.append({c: row[c] for c in MANIFEST_COLUMNS})
        records.extend(node_rows[row["index"]])
    manifest = pd.DataFrame.from_records(records, columns=list(MANIFEST_COLUMNS))
    path = os.path.join(out_dir, "manifest.csv")
    atomic_write_csv(manifest, path)
    parameters = dict(synthetic=True, slides=slides, seed=seed, mpp=mpp,
                      node_fraction=node_fraction, width_mm=width_mm, height_mm=height_mm,
                      micro_min_mm=micro_min_mm, split_fractions=list(split_fractions),
                      size_mix=list(size_mix), subtype_mix=list(subtype_mix),
                      chemo_fraction=chemo_fraction, compression=compression)
    _write_json(os.path.join(out_dir, "cohort.json"), parameters)
    with open(os.path.join(out_dir, "README.txt"), "w") as f:
        f.write(_README.format(**parameters, rows=len(manifest)))
    return manifest



# --------------------------------------------------------------------------- paper-sized slide

PAPER_WIDTH_MM, PAPER_HEIGHT_MM = 18.0, 28.0   # the scanned rectangle of one lymph-node slide
PAPER_MPP = 2.28            # the paper's 4x (configs/paper.yaml, data.target_mpp)
PAPER_NODES = (3, 6)        # how many nodes it holds, both ends included
PAPER_NODE_MM = (2.0, 10.0)  # a node's largest diameter (maximum Feret diameter), mm
PAPER_MIN_MM = 12.0         # the shorter side that still holds a 10 mm node with its fat
PAPER_SLIDE_ID = "SYNTH-PAPER"
GLASS_RGB = (246.0, 244.0, 247.0)   # mean colour of the bare glass (a faint lilac tint)
GLASS_NOISE = 1.2           # per-pixel noise of the glass, RGB units (standard deviation) ...
GLASS_NOISE_CLIP = 2.0      # ... cut at this many deviations, so that glass stays >= 240
GLASS_SHADING = 1.0         # slow illumination drift across the glass, +- RGB units
_NODE_GAP_UM = 2 * _FAT_MAX_UM + 100.0   # between two node outlines: their fat never meets
_EDGE_UM = _FAT_MAX_UM + 200.0           # between a node outline and the slide's edge
_GLASS_STRIP = 256          # rows of glass drawn at a time (part of the seed's draw order)


def paper_dimensions(width_mm=PAPER_WIDTH_MM, height_mm=PAPER_HEIGHT_MM, mpp=PAPER_MPP):
    """[(width, height), ...] in pixels of every pyramid level of the paper-sized slide, level 0
    first, without drawing it (18 x 28 mm at 2.28 um/px: 7895 x 12281 px at level 0)."""
    height, width = slide_shape(width_mm, height_mm, mpp)
    return level_dimensions(width, height)


def paper_slide(seed, mpp=PAPER_MPP, width_mm=PAPER_WIDTH_MM, height_mm=PAPER_HEIGHT_MM,
                size_category=None, subtype=None, micro_min_mm=0.3):
    """Renders the paper-sized slide: (rgb uint8 level 0, size_category, subtype, nodes, foci).

    3-6 lymph nodes of 2-10 mm (largest diameter), each with its perinodal fat, on off-white,
    slightly noisy glass. The seed decides everything; ``size_category`` ('negative', 'macro',
    'micro', 'itc') and ``subtype`` override the seed's draw of them and nothing else. A
    positive slide has one focus, in its widest node when macro, else in a node drawn at random.
    Memory: the slide's RGB plus the float maps of one node's window at a time.
    """
    rng = np.random.default_rng([seed, 3])
    category, subtype = _paper_label(rng, size_category, subtype)
    nodes = _layout_paper_nodes(rng, 1000.0 * width_mm, 1000.0 * height_mm)
    foci = []
    if category != "negative":
        foci.append(_paper_focus(rng, nodes, category, subtype, micro_min_mm))
    strength = rng.uniform(0.85, 1.15, size=2)
    rgb = _glass(rng, slide_shape(width_mm, height_mm, mpp), mpp)
    for k, node in enumerate(nodes):
        mine = [f for f in foci if f["node"] == k]
        _draw_node(np.random.default_rng([seed, 4, k]), rgb, node, mine, mpp, strength)
    return rgb, category, subtype, nodes, foci


def _paper_label(rng, size_category, subtype, positive_share=0.5,
                 size_mix=(0.5, 0.4, 0.1), subtype_mix=(0.6, 0.2, 0.2)):
    """(size_category, subtype) of the paper-sized slide: drawn from the seed (half positive,
    then the cohort's size and subtype mix) unless given; always drawn, so that giving them
    leaves the rest of the slide as the seed draws it."""
    positive = rng.random() < positive_share
    drawn_size = SIZE_CATEGORIES[int(rng.choice(len(SIZE_CATEGORIES),
                                                p=np.divide(size_mix, np.sum(size_mix))))]
    drawn_subtype = SUBTYPES[int(rng.choice(len(SUBTYPES),
                                            p=np.divide(subtype_mix, np.sum(subtype_mix))))]
    if size_category is None:
        size_category = drawn_size if positive else "negative"
    if size_category == "negative":
        return size_category, ""
    if size_category not in SIZE_CATEGORIES:
        raise ValueError("unknown size category {!r}".format(size_category))
    subtype = drawn_subtype if subtype is None else subtype
    if subtype not in SUBTYPES:
        raise ValueError("unknown subtype {!r}".format(subtype))
    return size_category, subtype


def _layout_paper_nodes(rng, width_um, height_um, count=PAPER_NODES, length_mm=PAPER_NODE_MM):
    """`count` (low, high) nodes with largest diameters drawn in `length_mm`, placed largest
    first, each _NODE_GAP_UM from the others and _EDGE_UM from the slide's edge. A node that
    finds no room shrinks by steps of 15 % (not below the shortest length) and only then is left
    out; fewer than count[0] nodes is an error (a slide too small for them)."""
    wanted = int(rng.integers(count[0], count[1] + 1))
    shortest = 1000.0 * length_mm[0]
    nodes = []
    for length in np.sort(rng.uniform(*length_mm, size=wanted))[::-1] * 1000.0:
        node = _place_paper_node(rng, nodes, length, width_um, height_um)
        while node is None and length > shortest:
            length = max(shortest, 0.85 * length)
            node = _place_paper_node(rng, nodes, length, width_um, height_um)
        if node is not None:
            nodes.append(node)
    if len(nodes) < count[0]:
        raise RuntimeError("only {} of at least {} nodes fit a {:g} x {:g} mm slide".format(
            len(nodes), count[0], width_um / 1000, height_um / 1000))
    return nodes


def _place_paper_node(rng, nodes, length_um, width_um, height_um, tries=100):
    """An ovoid node of largest diameter `length_um` (minor/major 0.55-0.85, any angle) at a
    random free place, or None when `tries` draws find none."""
    for _try in range(tries):
        ratio, angle = rng.uniform(0.55, 0.85), rng.uniform(0, np.pi)
        unit = _node_polygon(rng, np.zeros(2), 1.0, ratio, angle)
        scale = length_um / max_diameter(unit)
        outline = unit * scale
        low = _EDGE_UM - outline.min(0)
        high = np.array([width_um, height_um]) - _EDGE_UM - outline.max(0)
        if np.any(high < low):
            continue
        centre = rng.uniform(low, high)
        polygon = outline + centre
        if all(_apart(polygon, n["polygon"], _NODE_GAP_UM) for n in nodes):
            return dict(centre=centre, a=scale, b=scale * ratio, angle=angle, polygon=polygon)
    return None


def _apart(p, q, gap):
    """True when the outlines p and q (convex-ish polygons) are at least `gap` apart: the
    shortest distance between two disjoint polygons runs from a vertex of one to the other."""
    for a, b in ((p, q), (q, p)):
        contour = b.astype(np.float32).reshape(-1, 1, 2)
        if any(cv2.pointPolygonTest(contour, (float(x), float(y)), True) > -gap for x, y in a):
            return False
    return True


def _paper_focus(rng, nodes, category, subtype, micro_min_mm):
    """The slide's one tumour focus: in the widest node when macro, else in a random node."""
    k = int(np.argmax([n["b"] for n in nodes])) if category == "macro" \
        else int(rng.integers(len(nodes)))
    low, high = size_range_um(category, micro_min_mm, nodes[k]["b"])
    for _attempt in range(20):
        polygon = _place_focus(rng, nodes[k], rng.uniform(low, high))
        if polygon is not None:
            return dict(polygon_um=polygon, node=k, size_category=category, subtype=subtype,
                        max_diameter_um=max_diameter(polygon))
    raise RuntimeError("could not place a {} focus in node {}".format(category, k + 1))


def _glass(rng, shape, mpp):
    """Bare glass as a scanner sees it (uint8 RGB, `shape`): GLASS_RGB, a slow shading of at
    most +-GLASS_SHADING (three plane waves of 6-20 mm) and clipped per-pixel noise. Drawn in
    strips of rows, so its only large array is the result."""
    height, width = shape
    waves = [(GLASS_SHADING / 3 * rng.uniform(0.5, 1.0), rng.uniform(0, np.pi),
              rng.uniform(6000.0, 20000.0), rng.uniform(0, 2 * np.pi)) for _ in range(3)]
    x_um = (np.arange(width) + 0.5) * mpp
    base = np.asarray(GLASS_RGB, np.float32)
    rgb = np.empty((height, width, 3), np.uint8)
    for r0 in range(0, height, _GLASS_STRIP):
        r1 = min(height, r0 + _GLASS_STRIP)
        y_um = ((np.arange(r0, r1) + 0.5) * mpp)[:, None]
        shade = np.zeros((r1 - r0, width))
        for amplitude, direction, wavelength, phase in waves:
            along = x_um * np.cos(direction) + y_um * np.sin(direction)
            shade += amplitude * np.cos(2 * np.pi * along / wavelength + phase)
        noise = rng.standard_normal((r1 - r0, width, 3), dtype=np.float32)
        np.clip(noise, -GLASS_NOISE_CLIP, GLASS_NOISE_CLIP, out=noise)
        noise *= np.float32(GLASS_NOISE)
        noise += shade.astype(np.float32)[..., None]
        noise += base
        rgb[r0:r1] = np.rint(noise, out=noise)
    return rgb


def _draw_node(rng, rgb, node, foci, mpp, strength):
    """Draws one node, its perinodal fat and its foci onto the glass of `rgb`, in a window
    around the node (the float maps are the window's, not the slide's). The tissue lets through
    a share of the glass' light (Beer-Lambert), so the glass tints it as on a scan; where no
    stain lies the share is exactly 1 and the glass is left as it is."""
    height, width = rgb.shape[:2]
    pad = _FAT_MAX_UM + 4 * mpp
    x0, y0 = np.maximum(np.floor((node["polygon"].min(0) - pad) / mpp).astype(int), 0)
    x1, y1 = np.ceil((node["polygon"].max(0) + pad) / mpp).astype(int)
    x1, y1 = min(width, x1), min(height, y1)
    origin = np.array([x0, y0], float) * mpp
    local = dict(node, centre=node["centre"] - origin, polygon=node["polygon"] - origin)
    local_foci = [dict(f, polygon_um=f["polygon_um"] - origin) for f in foci]
    h, e = _stains(rng, [local], local_foci, (y1 - y0, x1 - x0), mpp, background_e=0.0)
    light = _transmission(h, e, strength)
    del h, e
    window = rgb[y0:y1, x0:x1]
    light *= window
    window[...] = np.rint(light, out=light)


def make_paper_slide(out_dir, seed, mpp=PAPER_MPP, width_mm=PAPER_WIDTH_MM,
                     height_mm=PAPER_HEIGHT_MM, size_category=None, subtype=None,
                     micro_min_mm=0.3, compression="jpeg"):
    """Writes ONE synthetic lymph-node slide of the paper's size into `out_dir`; returns its
    manifest (one row, split 'test'; also manifest.csv).

    The slide (see :func:`paper_slide`) is ``slides/SYNTH-PAPER.tiff``, the same Aperio-style
    pyramid as a cohort's slides; ``foci/SYNTH-PAPER.geojson`` holds its tumour polygon when
    positive, ``nodes/SYNTH-PAPER.geojson`` the outline of every node (level-0 pixels, with its
    largest diameter in mm); README.txt and cohort.json say that it is synthetic.
    """
    for sub in ("slides", "foci", "nodes"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    rgb, category, subtype, nodes, foci = paper_slide(
        seed, mpp, width_mm, height_mm, size_category, subtype, micro_min_mm)
    sid = PAPER_SLIDE_ID
    height, width = rgb.shape[:2]
    write_aperio_tiff(os.path.join(out_dir, "slides", sid + ".tiff"), rgb, mpp, compression,
                      edge_tiles=True)
    del rgb
    if foci:
        _write_foci(os.path.join(out_dir, "foci", sid + ".geojson"), foci, mpp)
    node_mm = [round(max_diameter(n["polygon"]) / 1000.0, 3) for n in nodes]
    _write_json(os.path.join(out_dir, "nodes", sid + ".geojson"), {
        "type": "FeatureCollection", "features": [_feature(n["polygon"] / mpp, dict(
            classification={"name": "Lymph node"}, synthetic=True, node=k + 1,
            max_diameter_mm=mm)) for k, (n, mm) in enumerate(zip(nodes, node_mm))]})
    row = dict(slide_id=sid, path="slides/{}.tiff".format(sid), label=int(bool(foci)),
               split="test", size_category=category, subtype=subtype, chemo=0, level="slide",
               annotation="", mpp=mpp, foci="foci/{}.geojson".format(sid) if foci else "")
    manifest = pd.DataFrame.from_records([row], columns=list(MANIFEST_COLUMNS))
    atomic_write_csv(manifest, os.path.join(out_dir, "manifest.csv"))
    parameters = dict(synthetic=True, paper_size=True, slides=1, seed=seed, mpp=mpp,
                      width_mm=width_mm, height_mm=height_mm, width_px=width, height_px=height,
                      size_category=category, subtype=subtype, micro_min_mm=micro_min_mm,
                      node_mm=node_mm, compression=compression)
    _write_json(os.path.join(out_dir, "cohort.json"), parameters)
    atomic_write_text(os.path.join(out_dir, "README.txt"), _PAPER_README.format(
        **parameters, nodes=len(nodes), node_range="{:.1f}-{:.1f}".format(min(node_mm),
                                                                        max(node_mm))))
    return manifest


# --------------------------------------------------------------------------- the options

class SynthError(InputError):
    """An option of the generator that cannot make a slide; the message names its flag."""


COHORT_DEFAULTS = dict(mpp=2.0, width_mm=5.5, height_mm=4.5, node_fraction=0.5)
PAPER_DEFAULTS = dict(mpp=PAPER_MPP, width_mm=PAPER_WIDTH_MM, height_mm=PAPER_HEIGHT_MM)
MAX_PIXELS = 1.2e8          # level-0 pixels of one slide that this generator renders


def _require(ok, message):
    """A SynthError with ``message`` unless ``ok``."""
    if not ok:
        raise SynthError(message)


def _check_cohort_options(slides, node_fraction, width_mm, height_mm, workers):
    _require(slides is not None,
             "--slides: required (the number of slides, >= 2), unless --paper-size")
    _require(slides >= 2, "--slides: need at least 2, got {}".format(slides))
    _require(0.0 <= node_fraction <= 1.0,
             "--node-fraction: must be in [0, 1], got {}".format(node_fraction))
    _require(not (width_mm < 4.0 or height_mm < 3.8),
             "--width-mm/--height-mm: the slide must be at least 4.0 x 3.8 mm to hold a node "
             "with a macrometastasis (> 2 mm), got {} x {}".format(width_mm, height_mm))
    _require(workers is None or workers >= 1, "--workers: must be >= 1, got {}".format(workers))


def check_options(seed, mpp, width_mm, height_mm, micro_min_mm, paper_size=False, slides=None,
                  node_fraction=0.5, workers=None):
    """The options of ``make_cohort`` (or, ``paper_size``, of ``make_paper_slide``) before
    anything is written: a SynthError naming the flag of the first one out of range."""
    if paper_size:
        _require(not min(width_mm, height_mm) < PAPER_MIN_MM,
                 "--width-mm/--height-mm: a --paper-size slide must be at least {:g} mm on each "
                 "side to hold its nodes of up to 10 mm, got {} x {}".format(
                     PAPER_MIN_MM, width_mm, height_mm))
    else:
        _check_cohort_options(slides, node_fraction, width_mm, height_mm, workers)
    _require(seed >= 0, "--seed: must be >= 0, got {}".format(seed))
    _require(0.05 <= mpp <= 16, "--mpp: {} um/px is outside 0.05..16".format(mpp))
    _require(0.2 <= micro_min_mm < 1.9,
             "--micro-min-mm: must be in [0.2, 1.9), got {}".format(micro_min_mm))
    pixels = (width_mm * 1000 / mpp) * (height_mm * 1000 / mpp)
    _require(not pixels > MAX_PIXELS, "--mpp {}: {:.0f} Mpx per slide is too large for this "
             "generator; use a coarser --mpp or a smaller slide".format(mpp, pixels / 1e6))


_README = """SYNTHETIC COHORT - NOT PATIENT DATA, NOT THE PAPER'S DATA

Written by `python -m reproduce synth` (data/synth.py) of the reproduction package for
"Identification of nodal micrometastasis in colorectal cancer using deep learning on
annotation-free whole-slide images" (Modern Pathology, 2021). Every image here is drawn by a
program: lymph-node-like tissue and, on positive slides, one tumour focus of a chosen size.
Results on it test the software; they say nothing about the method's accuracy on real slides.

slides: {slides}, seed: {seed}, level-0 mpp: {mpp} um/px, slide {width_mm} x {height_mm} mm,
micro lower bound {micro_min_mm} mm, node-level rows for {node_fraction} of the test slides;
manifest.csv: {rows} rows (slide and node level).

slides/*.tiff        Aperio-style pyramidal TIFF (openslide-readable, MPP in the description)
manifest.csv         slide_id, path, label, split, size_category, subtype, chemo, level,
                     annotation, mpp, foci
foci/*.geojson       tumour polygons of positive slides, level-0 pixel coordinates
nodes/*.geojson      QuPath-style outline of one node per node-level row, level-0 pixels
cohort.json          the generator's parameters
"""


_PAPER_README = """SYNTHETIC SLIDE - NOT PATIENT DATA, NOT THE PAPER'S DATA

Written by `python -m reproduce synth --paper-size` (data/synth.py) of the reproduction package
for "Identification of nodal micrometastasis in colorectal cancer using deep learning on
annotation-free whole-slide images" (Modern Pathology, 2021). One slide of the paper's size,
drawn by a program: {nodes} lymph-node-like nodes ({node_range} mm) with their perinodal fat on
off-white, slightly noisy glass; tumour: {size_category} {subtype}. It exists to measure what the
software costs on a slide of that size; it says nothing about the method's accuracy.

seed: {seed}, level-0 mpp: {mpp} um/px, slide {width_mm} x {height_mm} mm,
{width_px} x {height_px} px at level 0.

slides/SYNTH-PAPER.tiff   Aperio-style pyramidal TIFF (openslide-readable, MPP in the description)
manifest.csv              one row: slide_id, path, label, split, size_category, subtype, chemo,
                          level, annotation, mpp, foci
foci/SYNTH-PAPER.geojson  the tumour polygon of a positive slide, level-0 pixel coordinates
nodes/SYNTH-PAPER.geojson the outline of every node (largest diameter in mm), level-0 pixels
cohort.json               the generator's parameters
"""
