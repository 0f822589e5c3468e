"""The paper-sized synthetic slide (`synth --paper-size`): read back through OpenSlide as an
Aperio slide with its mpp and every level, off-white noisy glass that `--glass-to-white 240`
turns white, 3-6 nodes of 2-10 mm, a manifest row and foci, the same bytes from the same seed.

Cheap: the slide is drawn at its full physical size (18 x 28 mm) but at 20 um/px (900 x 1400 px)
through the same code as at 2.28 um/px; the full-scale size is checked without drawing."""
import argparse
import filecmp
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
MPP = 20.0
SLIDE = "slides/SYNTH-PAPER.tiff"


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("paper"))
    manifest = synth.make_paper_slide(out, seed=1, mpp=MPP, size_category="micro")
    return out, manifest


def _slide_rgb(out, level=0):
    s = openslide.OpenSlide(os.path.join(out, SLIDE))
    image = np.asarray(s.read_region((0, 0), level, s.level_dimensions[level]))[..., :3]
    s.close()
    return image


def _polygons_px(path):
    with open(path) as f:
        features = json.load(f)["features"]
    return [np.asarray(feat["geometry"]["coordinates"][0], float) for feat in features]


def _mask(shape, polygons):
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(p).astype(np.int32) for p in polygons], 1)
    return mask


def test_full_size_is_18_by_28_mm_at_2_28_um_per_px_without_drawing(tmp_path):
    assert synth.paper_dimensions() == [(7895, 12281), (1973, 3070), (493, 767), (123, 191)]
    assert synth.paper_dimensions(18.0, 28.0, 2.28)[0] == (round(18000 / 2.28),
                                                          round(28000 / 2.28))
    assert synth.paper_dimensions(18.0, 28.0, MPP) == [(900, 1400), (225, 350)]
    # the flag alone asks for exactly that slide (checked, nothing written)
    from reproduce import synth as command
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "p"), "--paper-size"])
    command._check(args)
    assert (args.width_mm, args.height_mm, args.mpp) == (18.0, 28.0, 2.28)
    assert not os.path.exists(str(tmp_path / "p"))


def test_slide_opens_as_aperio_with_its_mpp_and_every_level(paper):
    out, _ = paper
    s = open_aperio(os.path.join(out, SLIDE), MPP)
    assert s.properties["aperio.Synthetic"] == "true"
    assert list(s.level_dimensions) == synth.paper_dimensions(18.0, 28.0, MPP)
    for k, (w, h) in enumerate(s.level_dimensions):
        region = np.asarray(s.read_region((0, 0), k, (w, h)))
        assert region.shape == (h, w, 4) and region[..., 3].min() == 255
        assert region[..., :3].min() < 150          # tissue shows at every level
    s.close()


def test_glass_is_off_white_not_uniform_and_turns_white_at_240(paper):
    from data.glass import glass_mask
    out, _ = paper
    image = _slide_rgb(out)
    nodes = _mask(image.shape[:2], _polygons_px(os.path.join(out, "nodes/SYNTH-PAPER.geojson")))
    away_um = cv2.distanceTransform(1 - nodes, cv2.DIST_L2, 3) * MPP
    bare = image[away_um > 500]                        # beyond the perinodal fat
    assert len(bare) > 0.5 * nodes.size
    mean, std = bare.mean(axis=0), bare.std(axis=0)
    assert np.all((mean > 235) & (mean < 248)), mean   # off-white, not 255
    assert np.all(std > 0.3), std                     # noisy, not one flat colour
    assert len(np.unique(bare.reshape(-1, 3), axis=0)) > 10
    glass = glass_mask(image, 240)
    assert glass[away_um > 500].mean() > 0.999         # --glass-to-white 240 whitens the glass
    assert not glass[nodes > 0].any()                  # and keeps every node


def test_three_to_six_nodes_of_2_to_10_mm_drawn_where_their_outlines_say(paper):
    out, _ = paper
    outlines = _polygons_px(os.path.join(out, "nodes/SYNTH-PAPER.geojson"))
    assert 3 <= len(outlines) <= 6
    sizes_mm = [synth.max_diameter(p) * MPP / 1000 for p in outlines]
    assert all(2.0 - 1e-6 <= mm <= 10.0 + 1e-6 for mm in sizes_mm), sizes_mm
    with open(os.path.join(out, "cohort.json")) as f:
        assert json.load(f)["node_mm"] == pytest.approx(sizes_mm, abs=1e-3)
    # the slide shows one dark tissue region per outline, as large as the outline
    image = _slide_rgb(out)
    tissue = (image.min(axis=2) < 200).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(tissue)
    big = [k for k in range(1, count) if stats[k, cv2.CC_STAT_AREA] * (MPP / 1000) ** 2 > 1.0]
    assert len(big) == len(outlines)
    for outline, mm in zip(outlines, sizes_mm):
        inside = _mask(image.shape[:2], [outline]) > 0
        k = np.bincount(labels[inside]).argmax()
        assert k in big
        contours, _ = cv2.findContours((labels == k).astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        drawn_mm = synth.max_diameter(np.vstack(contours)[:, 0]) * MPP / 1000
        assert mm - 0.1 <= drawn_mm <= mm + 0.7, (mm, drawn_mm)   # + fat, at most 0.32 mm a side


def test_manifest_row_foci_and_synthetic_labels(paper):
    out, manifest = paper
    on_disk = pd.read_csv(os.path.join(out, "manifest.csv"), keep_default_na=False)
    assert list(on_disk.columns) == list(synth.MANIFEST_COLUMNS) and len(on_disk) == 1
    row = on_disk.iloc[0]
    assert (row["slide_id"], row["path"], row["level"]) == ("SYNTH-PAPER", SLIDE, "slide")
    assert (row["label"], row["size_category"], row["mpp"]) == (1, "micro", MPP)
    assert row["subtype"] in synth.SUBTYPES
    foci = _polygons_px(os.path.join(out, row["foci"]))
    assert len(foci) == 1
    assert 200.0 < synth.max_diameter(foci[0]) * MPP <= 2000.0
    outlines = _polygons_px(os.path.join(out, "nodes/SYNTH-PAPER.geojson"))
    contours = [o.astype(np.float32).reshape(-1, 1, 2) for o in outlines]
    assert any(all(cv2.pointPolygonTest(c, (float(x), float(y)), False) > 0 for x, y in foci[0])
               for c in contours)
    with open(os.path.join(out, "cohort.json")) as f:
        assert json.load(f)["synthetic"] is True
    check_synthetic_folder(out)


def test_same_seed_same_bytes_other_seed_other_slide(paper, tmp_path):
    out, _ = paper
    again, other = str(tmp_path / "again"), str(tmp_path / "other")
    synth.make_paper_slide(again, seed=1, mpp=MPP, size_category="micro")
    synth.make_paper_slide(other, seed=2, mpp=MPP, size_category="micro")
    for name in (SLIDE, "manifest.csv", "foci/SYNTH-PAPER.geojson",
                 "nodes/SYNTH-PAPER.geojson", "cohort.json", "README.txt"):
        assert filecmp.cmp(os.path.join(out, name), os.path.join(again, name), shallow=False)
    assert not filecmp.cmp(os.path.join(out, SLIDE), os.path.join(other, SLIDE), shallow=False)


def test_layouts_keep_their_count_sizes_gaps_and_edges_over_seeds():
    width_um, height_um = 18000.0, 28000.0
    for seed in range(12):
        rng = np.random.default_rng([seed, 3])
        nodes = synth._layout_paper_nodes(rng, width_um, height_um)
        assert 3 <= len(nodes) <= 6
        for k, node in enumerate(nodes):
            assert 2000.0 - 1e-6 <= synth.max_diameter(node["polygon"]) <= 10000.0 + 1e-6
            assert node["polygon"].min() >= synth._EDGE_UM - 1e-6
            assert np.all(node["polygon"].max(0) <= [width_um - synth._EDGE_UM,
                                                     height_um - synth._EDGE_UM])
            for other in nodes[k + 1:]:
                assert synth._apart(node["polygon"], other["polygon"], synth._NODE_GAP_UM)


def test_cli_paper_size_writes_one_slide_and_refuses_a_slide_count(tmp_path):
    def synth_cli(*extra):
        return subprocess.run(
            [sys.executable, "-m", "reproduce", "synth", "--out", str(tmp_path / "p"),
             "--paper-size"] + list(extra), cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, universal_newlines=True)

    refused = synth_cli("--slides", "3")
    assert refused.returncode != 0
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "--slides" in lines[0] and "Traceback" not in refused.stderr
    assert not os.path.exists(str(tmp_path / "p"))
    written = synth_cli("--mpp", "16", "--seed", "4", "--compression", "zlib")
    assert written.returncode == 0, written.stderr
    assert "SYNTHETIC paper-sized slide" in written.stdout
    s = openslide.OpenSlide(str(tmp_path / "p" / SLIDE))
    assert s.level_dimensions[0] == (1125, 1750) and float(s.properties["openslide.mpp-x"]) == 16
    s.close()
    assert len(pd.read_csv(str(tmp_path / "p" / "manifest.csv"))) == 1
