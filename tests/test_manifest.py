"""data.manifest: loading, and validation that reports every problem at once."""
import json

import cv2
import numpy as np
import pytest

from data.manifest import ManifestError, coerce, load_manifest, validate
from tests.conftest import aperio_tiff, tissue


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("slides")
    img = tissue(128, 160)
    aperio_tiff(d / "a.svs", [img], mpp=0.25)
    aperio_tiff(d / "b.svs", [img], mpp=0.25)
    aperio_tiff(d / "c.svs", [img], mpp=0.25)
    aperio_tiff(d / "nompp.svs", [img], mpp=None)
    cv2.imwrite(str(d / "photo.png"), np.zeros((8, 8, 3), np.uint8))
    poly = {"type": "Feature", "geometry": {"type": "Polygon",
                                            "coordinates": [[[10, 10], [100, 10], [50, 90]]]}}
    (d / "node.geojson").write_text(json.dumps(poly))
    (d / "empty.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    return d


def _write(folder, text):
    path = folder / "manifest.csv"
    path.write_text(text)
    return str(path)


def test_good_manifest_has_no_problems_and_coerces(slides):
    path = _write(slides, "slide_id,path,label,split,size_category,subtype,chemo,level,"
                          "annotation,mpp\n"
                          "a,a.svs,1,train,macro,classical,0,slide,,\n"
                          "b,b.svs,0,val,negative,,,,,\n"
                          "c,c.svs,1,test,micro,mucinous,1,node,node.geojson,\n"
                          "c2,c.svs,1,test,itc,signet_poorly,1,node,,\n"
                          "n,nompp.svs,0,test,,,,,,0.5\n")
    df = load_manifest(path)
    assert validate(df, str(slides)) == []
    typed = coerce(df, str(slides))
    assert typed["label"].tolist() == [1, 0, 1, 1, 0]
    assert typed["path"][0] == str(slides / "a.svs")  # relative to the manifest's folder
    assert typed["annotation"][2] == str(slides / "node.geojson")
    assert typed["level"].tolist() == ["slide", "slide", "node", "node", "slide"]
    assert typed["chemo"].isna().tolist() == [False, True, False, False, True]
    assert typed["mpp"][4] == 0.5


def test_every_problem_is_reported_at_once(slides):
    path = _write(slides, "slide_id,path,label,split,size_category,subtype,chemo,level,"
                          "annotation,mpp\n"
                          "a,a.svs,2,train,,,,,,\n"                     # 2 label
                          "a,b.svs,1,train,macro,,,,,\n"                # 3 duplicate id
                          "x,a.svs,0,test,,,,,,\n"                      # 4 a in train and test
                          "m,missing.svs,0,train,,,,,,\n"               # 5 file missing
                          "p,photo.png,0,train,,,,,,\n"                 # 6 not a slide
                          "q,nompp.svs,0,train,,,,,,\n"                 # 7 no mpp, no override
                          "r,c.svs,1,holdout,,,,,,\n"                   # 8 bad split
                          "s,c.svs,1,train,huge,squamous,2,tile,,\n"    # 9 size, subtype, chemo, level
                          "t,c.svs,1,train,,,,node,nope.geojson,\n"     # 10 annotation missing
                          "u,c.svs,1,train,,,,node,empty.geojson,-1\n"  # 11 no polygon, bad mpp
                          "v,c.svs,0,train,micro,,,,,\n")               # 12 label vs size
    problems = validate(load_manifest(path), str(slides))
    text = "\n".join(problems)
    expected = [
        ("row 2", "label '2'"), ("row 3", "duplicate slide_id"), ("row 4", "also in 'train'"),
        ("row 5", "not found"), ("row 6", "not a slide"), ("row 7", "no mpp"),
        ("row 8", "split 'holdout'"), ("row 9", "size_category 'huge'"),
        ("row 9", "subtype 'squamous'"), ("row 9", "chemo '2'"), ("row 9", "level 'tile'"),
        ("row 10", "annotation file"), ("row 11", "no Polygon"), ("row 11", "mpp '-1'"),
        ("row 12", "contradicts size_category"),
    ]
    for row, what in expected:
        assert any(p.startswith(row + " ") and what in p for p in problems), (row, what, text)
    assert "photo.png" in text and "nompp.svs" in text and "missing.svs" in text


def test_missing_columns_and_unreadable_csv(tmp_path):
    path = _write(tmp_path, "slide_id,file,class\nx,y,1\n")
    problems = validate(load_manifest(path), str(tmp_path))
    assert sum("missing required column" in p for p in problems) == 3
    with pytest.raises(ManifestError, match="nothere.csv"):
        load_manifest(str(tmp_path / "nothere.csv"))


def test_rows_of_a_split_and_their_cells(slides):
    """data.rows: a split's rows in manifest order, blank cells as the default, a node row's
    crop origin from its outline (a whole slide's is (0, 0))."""
    from data.rows import RowsError, cell, level0_mpp_of, node_origin, select_rows
    path = _write(slides, "slide_id,path,label,split,level,annotation,mpp\n"
                          "a,a.svs,1,train,,,\n"
                          "c,c.svs,1,test,node,node.geojson,0.5\n"
                          "b,b.svs,0,test,slide,,\n")
    df = load_manifest(path)
    test = select_rows(df, "test")
    assert list(test["slide_id"]) == ["c", "b"] and list(test.index) == [0, 1]
    assert len(select_rows(df, "all")) == 3
    with pytest.raises(RowsError, match="split == 'val'"):
        select_rows(df, "val")
    node, whole = test.iloc[0], test.iloc[1]
    assert cell(whole, "annotation") is None and cell(whole, "subtype", "") == ""
    assert cell(node, "level", "slide") == "node" and cell(df.iloc[0], "level", "slide") == "slide"
    assert node_origin(node, str(slides)) == (10.0, 10.0)
    assert node_origin(whole, str(slides)) == (0.0, 0.0)
    assert level0_mpp_of(node, str(slides)) == 0.5
    assert level0_mpp_of(whole, str(slides)) == pytest.approx(0.25)
