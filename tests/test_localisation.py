"""CAM localisation (stats/localisation.py, model.cam.localise): exact answers on constructed
cases, the outlines on the overlay, predict's localisation.csv and the table's line."""
import os

import cv2
import numpy as np
import pandas as pd
import pytest

from model import cam
from stats.localisation import coverage, fractions, summary


def _rect(x0, y0, x1, y1):
    """One polygon (a list with one ring) covering [x0, x1) x [y0, y1) in level-0 pixels."""
    return [np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)]


# --------------------------------------------------------------------------- known answers

def test_polygon_on_whole_cells_gives_exact_fractions():
    """6 x 8 map, 8 level-0 px per map pixel, corner at level-0 (100, 40). Lit: rows 1-3 x
    columns 2-5 (12 px); tumour: rows 2-4 x columns 4-6 (9 px); both: rows 2-3 x 4-5 (4 px)."""
    s, ox, oy = 8.0, 100.0, 40.0
    m = np.full((6, 8), 0.2)
    m[1:4, 2:6] = 0.9
    m[0, 0] = 0.5                                  # on the threshold: lit (>=), outside tumour
    tumour = [_rect(ox + 4 * s, oy + 2 * s, ox + 7 * s, oy + 5 * s)]
    got = fractions(m, tumour, s, (ox, oy), threshold=0.5)
    assert got.tumour_area == 9 * s * s
    assert got.cam_area == 13 * s * s and got.overlap_area == 4 * s * s
    assert got.tumour_covered == 4 / 9.0 and got.cam_in_tumour == 4 / 13.0
    # A higher threshold leaves nothing lit: the second fraction is undefined, not 0.
    none = fractions(m, tumour, s, (ox, oy), threshold=0.95)
    assert none.tumour_covered == 0.0 and np.isnan(none.cam_in_tumour)


def test_holes_unions_and_clipping_count_each_area_once():
    s = 4.0
    ring = _rect(0, 0, 6 * s, 6 * s)[0]
    hole = _rect(2 * s, 2 * s, 4 * s, 4 * s)[0]
    donut = [ring, hole[::-1]]                      # 36 - 4 = 32 px
    cov = coverage([donut], (8, 8), s)
    assert cov.sum() == 32 and cov[2:4, 2:4].sum() == 0
    # Two overlapping polygons: their union, 6 x 6 + 6 x 2 - overlap 2 x 2... = 44 px.
    other = _rect(4 * s, 0, 8 * s, 2 * s)
    assert coverage([_rect(0, 0, 6 * s, 6 * s), other], (8, 8), s).sum() == 36 + 4
    # `within` (a node outline) clips the tumour: only its left half stays.
    half = coverage([_rect(0, 0, 6 * s, 6 * s)], (8, 8), s, within=[_rect(0, 0, 3 * s, 8 * s)])
    assert half.sum() == 18
    # Polygons beyond the map are clipped to it.
    assert coverage([_rect(-10 * s, 6 * s, 3 * s, 20 * s)], (8, 8), s).sum() == 6


def test_partial_cells_within_one_fine_cell():
    """A triangle over half of one map pixel: share 0.5 up to the lattice's 1/(2k)."""
    for k in (4, 16):
        cov = coverage([[np.array([[0.0, 0.0], [32.0, 0.0], [0.0, 32.0]])]], (1, 1), 32.0,
                       supersample=k)
        assert abs(cov[0, 0] - 0.5) <= 0.5 / k + 1e-12


def test_overhanging_last_column_counts_only_the_image():
    """A map at downsample 2 of a 5-px-wide image: its last column is half image."""
    m = np.ones((2, 3))
    got = fractions(m, [_rect(0, 0, 100, 100)], 2.0, extent=(5.0, 4.0))
    assert got.cam_area == 5 * 4 and got.tumour_area == 5 * 4 and got.tumour_covered == 1.0


@pytest.mark.parametrize("downsample", [1, 2])
def test_cam_geometry_to_level0_is_exact_on_a_lit_half_plane(downsample):
    """model.cam.localise through the real map: a CAM grid lit from grid column 3 on
    (+-20 logits, so the bicubic map is 0.5 exactly midway between the centres of cells 2 and
    3, canvas columns 64 and 96: on canvas column 80), an image of 160 x 200 px centre-padded
    on a 256 canvas (offset 28 columns: the lit part starts at image column 52), 2 um/px over
    a 0.5 um/px slide (4 level-0 px per image px), a node-like origin. The tumour covers image
    columns [32, 80) x rows [16, 64)."""
    canvas, h, w, target, level0, origin = 256, 160, 200, 2.0, 0.5, (1000.0, 3000.0)
    grid = np.full((8, 8), -20.0)
    grid[:, 3:] = 20.0
    top, left = cam.image_offset((h, w), canvas)
    assert (top, left) == (48, 28)
    boundary = 80 - left                            # first lit image column: 52
    cam_image = cam.cam_map(grid, (h, w), canvas, downsample)
    q = 4.0                                         # level-0 px per image px
    x0, x1, y0, y1 = 32, 80, 16, 64
    tumour = [_rect(origin[0] + x0 * q, origin[1] + y0 * q, origin[0] + x1 * q,
                    origin[1] + y1 * q)]
    got = cam.localise(cam_image, (h, w), tumour, target, level0, origin, 0.5, downsample)
    lit_cols = w - boundary
    assert got.tumour_area == (x1 - x0) * (y1 - y0) * q * q
    assert got.cam_area == lit_cols * h * q * q
    assert got.overlap_area == (x1 - boundary) * (y1 - y0) * q * q
    assert got.tumour_covered == pytest.approx((x1 - boundary) / float(x1 - x0), abs=1e-12)
    assert got.cam_in_tumour == pytest.approx((x1 - boundary) * (y1 - y0) /
                                              float(lit_cols * h), abs=1e-12)


def test_summary_skips_undefined():
    assert summary([0.2, float("nan"), 0.6, 1.0]) == (3, pytest.approx(0.6), 0.6)
    n, mean, median = summary([float("nan")])
    assert n == 0 and np.isnan(mean) and np.isnan(median)


# --------------------------------------------------------------------------- the overlay

def test_overlay_draws_the_tumour_outline(tmp_path):
    """A grey image, no heat: the outline adds white (and black) pixels where the polygon
    lies on the thumbnail, and nothing elsewhere."""
    image = np.full((120, 160, 3), 128, np.uint8)
    heat = np.zeros((120, 160), np.float32)
    a = cv2.imread(cam.write_overlay(image, heat, str(tmp_path / "a.png"), "t"))
    ring = np.array([[40.0, 30.0], [120.0, 30.0], [120.0, 90.0], [40.0, 90.0]])
    b = cv2.imread(cam.write_overlay(image, heat, str(tmp_path / "b.png"), "t",
                                     outlines=[ring]))
    assert a.shape == b.shape
    changed = np.any(a != b, axis=2)
    assert changed.any()
    # On the image (grey in a), the outline is white and black.
    grey = np.all(np.abs(a.astype(int) - 128) <= 2, axis=2)
    assert np.all(b[changed & grey] >= 250, axis=1).any()
    assert np.all(b[changed & grey] <= 5, axis=1).any()


def test_export_outlines_and_measures(tmp_path):
    image = np.full((100, 140, 3), 200, np.uint8)
    logit = np.full((4, 5), -20.0, np.float32)
    tumour = [_rect(10, 10, 60, 40)]
    paths = cam.export("s1", image, logit, 160, 0.1, str(tmp_path), 2.0, 0.5, tumour=tumour)
    loc = paths["localisation"]
    assert loc.tumour_area == 50 * 30 and loc.cam_area == 0 and loc.tumour_covered == 0
    assert np.isnan(loc.cam_in_tumour)
    assert cam.export("s2", image, logit, 160, 0.1, str(tmp_path), 2.0, 0.5)[
        "localisation"] is None


# --------------------------------------------------------------------------- the table

def _predictions_and_localisation(tmp_path):
    pred = pd.DataFrame({"slide_id": ["a", "b", "c", "d", "a-n1", "e"],
                         "probability": [0.9, 0.8, 0.3, 0.2, 0.7, 0.6],
                         "label": [1, 1, 1, 0, 1, 0],
                         "level": ["slide"] * 4 + ["node", "slide"]})
    folder = tmp_path / "predict"
    (folder / "cam").mkdir(parents=True)
    pred.to_csv(str(folder / "predictions.csv"), index=False)
    loc = pd.DataFrame({
        "slide_id": ["a", "b", "c", "a-n1", "zz"], "level": ["slide"] * 3 + ["node", "slide"],
        "label": [1, 1, 1, 1, 1], "threshold": [0.5] * 5,
        "tumour_area": [100.0, 50.0, 20.0, 100.0, 10.0], "cam_area": [80.0, 0.0, 40.0, 10.0, 1],
        "overlap_area": [60.0, 0.0, 10.0, 10.0, 1.0],
        "tumour_covered": [0.6, 0.0, 0.5, 0.1, 0.1], "cam_in_tumour": [0.75, "", 0.25, 1.0, 1]})
    loc.to_csv(str(folder / "cam" / "localisation.csv"), index=False)
    return folder


def test_table_localisation_line_from_predicts_csv(tmp_path, capsys):
    from reproduce.__main__ import main
    folder = _predictions_and_localisation(tmp_path)
    out = tmp_path / "table"
    assert main(["table", "--predictions", str(folder / "predictions.csv"), "--out", str(out),
                 "--no-figures"]) == 0
    t = pd.read_csv(str(out / "table.csv"))
    row = t[(t["group"] == "localisation") & (t["level"] == "slide")].iloc[0]
    # Slides a, b, c (zz is not among the predictions): covered 60, 0, 50 %; lit area in
    # tumour defined for a and c only: 75, 25 %.
    assert row["loc_n"] == 3 and row["loc_n_cam"] == 2 and row["loc_cam_threshold"] == 0.5
    assert row["loc_tumour_covered_pct_mean"] == pytest.approx(110 / 3.0)
    assert row["loc_tumour_covered_pct_median"] == pytest.approx(50.0)
    assert row["loc_cam_in_tumour_pct_mean"] == pytest.approx(50.0)
    node = t[(t["group"] == "localisation") & (t["level"] == "node")].iloc[0]
    assert node["loc_n"] == 1 and node["loc_tumour_covered_pct_mean"] == pytest.approx(10.0)
    md = (out / "table.md").read_text()
    assert "CAM localisation against tumour annotations (CAM threshold 0.5)" in md
    assert "| Slide level | 3 | 36.7 (50.0) | 2 | 50.0 (50.0) |" in md
    assert "- CAM localisation (from" in md          # the notes define it
    # The AUC rows are untouched by the extra rows.
    assert set(t[t["group"] != "localisation"]["group"]) >= {"overall"}
    assert t[t["group"] == "overall"]["loc_n"].isna().all()


def test_table_without_localisation_has_no_line(tmp_path):
    from reproduce.__main__ import main
    folder = _predictions_and_localisation(tmp_path)
    os.remove(str(folder / "cam" / "localisation.csv"))
    out = tmp_path / "table"
    assert main(["table", "--predictions", str(folder / "predictions.csv"), "--out", str(out),
                 "--no-figures"]) == 0
    assert "localisation" not in set(pd.read_csv(str(out / "table.csv"))["group"])
    assert "CAM localisation" not in (out / "table.md").read_text()


def test_bad_localisation_file_is_one_line(tmp_path, capsys):
    from reproduce.__main__ import main
    folder = _predictions_and_localisation(tmp_path)
    path = folder / "cam" / "localisation.csv"
    loc = pd.read_csv(str(path))
    loc.loc[2, "threshold"] = 0.3
    loc.to_csv(str(path), index=False)
    code = main(["table", "--predictions", str(folder / "predictions.csv"), "--out",
                 str(tmp_path / "t"), "--no-figures"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "localisation.csv" in err[0] and "threshold" in err[0]
    loc.drop(columns="cam_area").to_csv(str(path), index=False)
    code = main(["table", "--predictions", str(folder / "predictions.csv"), "--out",
                 str(tmp_path / "t"), "--no-figures"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "'cam_area'" in err[0]


def test_manifest_checks_the_foci_column(tmp_path):
    """`foci` is validated like `annotation`: a missing or polygon-less file is a problem line
    naming the row; a good one passes, and coerce resolves it."""
    import json
    from data.manifest import coerce, load_manifest, validate
    good = tmp_path / "t.geojson"
    good.write_text(json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9]]]}))
    (tmp_path / "empty.geojson").write_text("{}")
    (tmp_path / "manifest.csv").write_text(
        "slide_id,path,label,split,foci\n"
        "a,s.svs,1,test,t.geojson\n"
        "b,s2.svs,1,test,missing.geojson\n"
        "c,s3.svs,1,test,empty.geojson\n"
        "d,s4.svs,0,test,\n")
    df = load_manifest(str(tmp_path / "manifest.csv"))
    problems = [p for p in validate(df, str(tmp_path), open_slides=False)
                if ": slide file " not in p]            # the slides are not made here
    assert len(problems) == 2, problems
    assert problems[0].startswith("row 3 ") and "foci file" in problems[0]
    assert problems[1].startswith("row 4 ") and "no Polygon" in problems[1]
    assert coerce(df, str(tmp_path))["foci"][0] == str(good)
