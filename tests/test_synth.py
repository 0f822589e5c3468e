"""The synthetic cohort: openslide-readable slides with the right mpp, levels and physical size,
tumour foci of the right size category where the polygons say, a complete manifest."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest

openslide = pytest.importorskip("openslide")

from data import synth  # noqa: E402
from tests.conftest import check_synthetic_folder, open_aperio  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPP = 2.0
WIDTH_MM, HEIGHT_MM = 5.5, 4.5


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth"))
    manifest = synth.make_cohort(out, 20, seed=3, mpp=MPP, node_fraction=1.0,
                                 width_mm=WIDTH_MM, height_mm=HEIGHT_MM, progress=False)
    return out, manifest


def test_slides_open_as_aperio_with_mpp_levels_and_physical_size(cohort):
    out, manifest = cohort
    for path in manifest.loc[manifest["level"] == "slide", "path"]:
        s = open_aperio(os.path.join(out, path), MPP)
        w0, h0 = s.level_dimensions[0]
        # physical extent within one pixel of what was asked
        assert abs(w0 * MPP - WIDTH_MM * 1000) <= MPP and abs(h0 * MPP - HEIGHT_MM * 1000) <= MPP
        assert s.level_count == 3
        for k, (w, h) in enumerate(s.level_dimensions):
            assert (w, h) == (w0 // 4 ** k if k < 2 else (w0 // 4) // 4,
                              h0 // 4 ** k if k < 2 else (h0 // 4) // 4)
            region = np.asarray(s.read_region((0, 0), k, (min(w, 300), min(h, 300))))
            assert region.shape[2] == 4 and region[..., 3].min() == 255
        s.close()


def _polygon_px(path):
    with open(path) as f:
        fc = json.load(f)
    return [np.asarray(feat["geometry"]["coordinates"][0], float) for feat in fc["features"]]


def test_foci_sizes_fall_in_their_category_and_tumour_is_where_the_polygon_says(cohort):
    out, manifest = cohort
    limits_um = {"macro": (2000.0, np.inf), "micro": (200.0, 2000.0), "itc": (0.0, 200.0)}
    positives = manifest[(manifest["level"] == "slide") & (manifest["label"] == 1)]
    assert set(positives["size_category"]) == {"macro", "micro", "itc"}
    for _, row in positives.iterrows():
        polygons = _polygon_px(os.path.join(out, row["foci"]))
        largest_um = max(synth.max_diameter(p) for p in polygons) * MPP
        low, high = limits_um[row["size_category"]]
        assert low < largest_um <= high, (row["slide_id"], row["size_category"], largest_um)
        # pixels inside the polygon look different from the rest of the tissue
        s = openslide.OpenSlide(os.path.join(out, row["path"]))
        image = np.asarray(s.read_region((0, 0), 0, s.level_dimensions[0]))[..., :3]
        s.close()
        mask = np.zeros(image.shape[:2], np.uint8)
        cv2.fillPoly(mask, [np.round(p).astype(np.int32) for p in polygons], 1)
        tissue = image.min(axis=2) < 200
        inside = image[mask > 0].mean(axis=0)
        node = image[(mask == 0) & tissue].mean(axis=0)
        assert np.abs(inside - node).max() > 15, (row["slide_id"], inside, node)


def test_manifest_is_complete_balanced_and_valid(cohort):
    out, manifest = cohort
    on_disk = pd.read_csv(os.path.join(out, "manifest.csv"), keep_default_na=False)
    assert list(on_disk.columns) == list(synth.MANIFEST_COLUMNS)
    assert len(on_disk) == len(manifest) and on_disk["slide_id"].is_unique
    slides = on_disk[on_disk["level"] == "slide"]
    assert len(slides) == 20
    assert all(s.startswith("SYNTH-") for s in on_disk["slide_id"])
    for split, group in slides.groupby("split"):
        assert abs(int(group["label"].sum()) * 2 - len(group)) <= 1, split
    assert set(slides["split"]) == {"train", "val", "test"}
    for _, row in on_disk.iterrows():
        assert os.path.isfile(os.path.join(out, row["path"]))
        assert (row["size_category"] == "negative") == (row["label"] == 0)
        assert (row["subtype"] in synth.SUBTYPES) == (row["label"] == 1)
        assert row["mpp"] == MPP and row["chemo"] in (0, 1)
        if row["label"] == 1:
            assert os.path.isfile(os.path.join(out, row["foci"]))
    nodes = on_disk[on_disk["level"] == "node"]
    test_slides = slides[slides["split"] == "test"]
    assert len(nodes) >= len(test_slides) > 0          # node_fraction=1: every test slide
    assert set(nodes["split"]) == {"test"}
    for _, row in nodes.iterrows():
        polygon = _polygon_px(os.path.join(out, row["annotation"]))[0]
        parent = row["slide_id"].rsplit("-node", 1)[0]
        assert row["path"] == "slides/{}.tiff".format(parent)
        assert polygon.min() >= 0 and polygon[:, 0].max() < WIDTH_MM * 1000 / MPP
    # a positive slide has exactly one positive node row
    for sid in test_slides["slide_id"]:
        mine = nodes[nodes["slide_id"].str.startswith(sid + "-node")]
        assert int(mine["label"].sum()) == int(slides.set_index("slide_id").loc[sid, "label"])
    check_synthetic_folder(out)


def test_same_seed_same_slide_other_seed_other_slide():
    row = synth.plan_cohort(4, seed=5)[0]
    a, _, _ = synth.make_slide(row, 5, mpp=8.0)
    b, _, _ = synth.make_slide(row, 5, mpp=8.0)
    c, _, _ = synth.make_slide(row, 6, mpp=8.0)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_plan_mixes_sizes_and_balances_splits():
    plan = synth.plan_cohort(200, seed=0)
    positives = [r for r in plan if r["label"] == 1]
    counts = {c: sum(r["size_category"] == c for r in positives) for c in synth.SIZE_CATEGORIES}
    assert abs(counts["macro"] - 50) <= 2 and abs(counts["micro"] - 40) <= 2
    assert abs(counts["itc"] - 10) <= 2
    assert len(positives) == 100


def test_cli_bad_input_is_one_line_and_nonzero(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "reproduce", "synth", "--out", str(tmp_path / "c"), "--slides", "1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--slides" in lines[0] and "Traceback" not in result.stderr
