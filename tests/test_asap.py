"""data.asap: the CAMELYON challenges' ASAP XML lesion annotations as tumour polygons.

The XML files are written here in the challenges' layout (root <ASAP_Annotations>, one
<Annotation Type="Polygon" PartOfGroup=..> per outline with <Coordinate Order X Y>, then
<AnnotationGroups>): CAMELYON16 groups "_0"/"_1" tumour and "_2" cut-outs, CAMELYON17
"metastases" and "normal".
"""
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from data.asap import group_roles, read_outlines
from data.nodes import AnnotationError, area_um2, load_polygons
from stats.localisation import coverage


def square(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def asap_xml(outlines, groups=("_0", "_1", "_2"), subgroups=()):
    """An ASAP annotation file as the challenges ship it. ``outlines``: (group, points) or
    (group, points, type); ``subgroups``: (name, parent group) declared under AnnotationGroups."""
    lines = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "\t<Annotations>"]
    for k, outline in enumerate(outlines):
        group, points = outline[:2]
        kind = outline[2] if len(outline) > 2 else "Polygon"
        lines.append('\t\t<Annotation Name="Annotation {}" Type="{}" PartOfGroup="{}" '
                     'Color="#F4FA58">'.format(k, kind, group))
        lines.append("\t\t\t<Coordinates>")
        for i, (x, y) in enumerate(points):
            lines.append('\t\t\t\t<Coordinate Order="{}" X="{}" Y="{}" />'.format(i, x, y))
        lines += ["\t\t\t</Coordinates>", "\t\t</Annotation>"]
    lines += ["\t</Annotations>", "\t<AnnotationGroups>"]
    for name, parent in [(g, "None") for g in groups] + list(subgroups):
        lines += ['\t\t<Group Name="{}" PartOfGroup="{}" Color="#ff0000">'.format(name, parent),
                  "\t\t\t<Attributes />", "\t\t</Group>"]
    lines += ["\t</AnnotationGroups>", "</ASAP_Annotations>", ""]
    return "\n".join(lines)


def write(tmp_path, name, outlines, **kw):
    path = tmp_path / name
    path.write_text(asap_xml(outlines, **kw))
    return str(path)


def exact_area(polygons, size=200):
    """Tumour area in level-0 px^2 by stats.localisation on a 1-px lattice (exact for outlines
    with integer vertices), and the map itself."""
    cover = coverage(polygons, (size, size), 1.0, supersample=1)
    return float(cover.sum()), cover


# -- polygons ---------------------------------------------------------------------------------
def test_polygon_in_level0_pixels_in_coordinate_order(tmp_path):
    pts = [(12711.2998, 88778.1016), (12950.5, 88778.1016), (12950.5, 89001.25),
           (12711.2998, 89001.25)]
    path = tmp_path / "tumor_001.xml"
    text = asap_xml([("_0", pts)])
    # the file lists its points out of order: the Order attribute decides
    lines = text.splitlines()
    first = [i for i, l in enumerate(lines) if "<Coordinate " in l]
    lines[first[1]], lines[first[2]] = lines[first[2]], lines[first[1]]
    path.write_text("\n".join(lines))
    polygons = load_polygons(str(path))
    assert len(polygons) == 1 and len(polygons[0]) == 1
    ring = polygons[0][0]
    assert ring.dtype == np.float64 and ring.shape[1] == 2
    assert {tuple(p) for p in ring} == set(pts)
    w, h = 12950.5 - 12711.2998, 89001.25 - 88778.1016
    assert area_um2(polygons, (1, 1)) == pytest.approx(w * h, rel=1e-9)
    assert area_um2(polygons, (0.25, 0.25)) == pytest.approx(w * h / 16, rel=1e-9)


@pytest.mark.parametrize("group", ["_0", "_1", "Tumor", "metastases", "TUMOR"])
def test_tumour_groups(tmp_path, group):
    path = write(tmp_path, "a.xml", [(group, square(10, 10, 50, 30))])
    assert exact_area(load_polygons(path))[0] == 40 * 20


@pytest.mark.parametrize("group", ["_2", "normal", "Exclusion"])
def test_cut_out_groups_are_not_tumour(tmp_path, group):
    path = write(tmp_path, "a.xml", [("_0", square(0, 0, 100, 100)),
                                     (group, square(20, 20, 40, 40))])
    tumour, cut = read_outlines(path)
    assert len(tumour) == 1 and len(cut) == 1
    assert exact_area(load_polygons(path))[0] == 100 * 100 - 20 * 20


def test_group_mapping_other_groups_subgroups_and_point_types(tmp_path):
    path = write(tmp_path, "a.xml", [
        ("_0", square(0, 0, 10, 10)),
        ("tissue", square(0, 0, 200, 200)),               # not a lesion group: ignored
        ("None", square(0, 0, 200, 200)),
        ("lesion A", square(100, 100, 120, 110)),         # a subgroup of metastases
        ("_1", [(50, 50)], "Dot"),                         # no area
        ("_1", [(60, 60), (70, 70)], "Polygon"),           # fewer than 3 points: no area
        ("_1", square(150, 0, 160, 10), "Rectangle"),
    ], groups=("_0", "_1", "_2", "metastases", "tissue"),
        subgroups=[("lesion A", "metastases")])
    roles = group_roles(ET.parse(path).getroot())
    assert roles["lesion a"] == "tumour" and "tissue" not in roles and roles["_2"] == "cut"
    tumour, cut = read_outlines(path)
    assert len(tumour) == 3 and cut == []
    assert exact_area(load_polygons(path))[0] == 100 + 200 + 100


def test_decimal_comma_and_xml_without_extension(tmp_path):
    text = asap_xml([("metastases", square(0, 0, 10, 10))], groups=("metastases", "normal"))
    text = text.replace('X="10"', 'X="10,5"')
    path = tmp_path / "lesion.annotation"        # dispatched on its content, not its name
    path.write_text(text)
    assert area_um2(load_polygons(str(path)), (1, 1)) == pytest.approx(10.5 * 10)


# -- cut-outs: holes that reduce the tumour area -----------------------------------------------
def test_cut_out_is_a_hole_that_reduces_the_area_by_its_own(tmp_path):
    for tumour, cut, groups in (("_0", "_2", ("_0", "_1", "_2")),
                                ("metastases", "normal", ("metastases", "normal"))):
        path = write(tmp_path, "t.xml", [(tumour, square(0, 0, 100, 100)),
                                         (cut, square(20, 20, 40, 40))], groups=groups)
        polygons = load_polygons(path)
        assert len(polygons) == 1 and len(polygons[0]) == 2        # exterior and one hole
        area, cover = exact_area(polygons)
        assert area == 100 * 100 - 20 * 20
        assert area_um2(polygons, (1, 1)) == pytest.approx(100 * 100 - 20 * 20)
        assert cover[30, 30] == 0 and cover[10, 10] == 1 and cover[150, 150] == 0
        assert (cover[20:40, 20:40] == 0).all() and cover[:100, :100].sum() == area


def test_cut_outs_across_edges_overlapping_and_covering_a_lesion(tmp_path):
    path = write(tmp_path, "t.xml", [
        ("_0", square(0, 0, 100, 100)),
        ("_1", square(150, 150, 160, 160)),                # wholly cut out below
        ("_2", square(80, 40, 120, 60)),                   # across the edge: 20 x 20 inside
        ("_2", square(10, 10, 30, 30)),                    # two cut-outs that overlap:
        ("_2", square(20, 20, 40, 40)),                    # their union, 700, is removed
        ("_2", square(140, 140, 170, 170)),
    ])
    polygons = load_polygons(path)
    assert len(polygons) == 1
    area, cover = exact_area(polygons)
    assert area == 100 * 100 - 20 * 20 - (400 + 400 - 100)
    assert area_um2(polygons, (1, 1)) == pytest.approx(area)
    assert cover[25, 25] == 0 and cover[155, 155] == 0 and cover[50, 90] == 0


def test_several_tumour_outlines(tmp_path):
    path = write(tmp_path, "t.xml", [("_0", square(0, 0, 50, 50)),
                                     ("_0", square(100, 100, 120, 130)),
                                     ("_1", square(40, 40, 60, 60))])   # overlaps the first
    polygons = load_polygons(path)
    assert len(polygons) == 2                         # the overlapping two are one area
    union = 50 * 50 + 20 * 20 - 10 * 10
    assert exact_area(polygons)[0] == union + 20 * 30
    assert area_um2(polygons, (1, 1)) == pytest.approx(union + 20 * 30)   # no double count


def test_self_crossing_outline_keeps_its_even_odd_area(tmp_path):
    bow = [(0, 0), (20, 20), (20, 0), (0, 20)]        # a bow tie: two triangles of 100
    path = write(tmp_path, "t.xml", [("_0", bow)])
    assert area_um2(load_polygons(path), (1, 1)) == pytest.approx(200)


# -- bad files ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,text,words", [
    ("broken.xml", "<ASAP_Annotations><Annotations>", "cannot read ASAP XML"),
    ("empty.xml", "", "cannot read ASAP XML"),
    ("other.xml", "<Annotations><Annotation/></Annotations>", "not <ASAP_Annotations>"),
    ("cutonly.xml", asap_xml([("_2", square(0, 0, 9, 9))]), "no tumour outline"),
    ("nogroup.xml", asap_xml([("tissue", square(0, 0, 9, 9))]), "no tumour outline"),
    ("allcut.xml", asap_xml([("_0", square(2, 2, 5, 5)), ("_2", square(0, 0, 9, 9))]),
     "cover every tumour outline"),
    ("nan.xml", asap_xml([("_0", [(0, 0), ("abc", 1), (1, 1)])]), "'abc' is not a number"),
])
def test_bad_file_is_one_line_naming_it(tmp_path, name, text, words):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(AnnotationError) as e:
        load_polygons(str(path))
    message = str(e.value)
    assert message.startswith(str(path) + ": ") and words in message
    assert "\n" not in message


def test_geojson_is_still_read_as_geojson(tmp_path):
    import json
    path = tmp_path / "t.geojson"
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [square(0, 0, 10, 10)]}))
    assert exact_area(load_polygons(str(path)))[0] == 100
    (tmp_path / "missing").mkdir()
    with pytest.raises(AnnotationError, match="nope.xml"):
        load_polygons(str(tmp_path / "missing" / "nope.xml"))


# -- a manifest row whose foci is an XML file --------------------------------------------------
LESION = [("_0", square(96, 96, 416, 416)), ("_2", square(192, 192, 256, 256))]
LESION_AREA = 320 * 320 - 64 * 64


def _manifest(tmp_path, slide="slide.svs"):
    write(tmp_path, "tumor_001.xml", LESION)
    (tmp_path / "manifest.csv").write_text(
        "slide_id,path,label,split,foci\n"
        "tumor_001,{},1,test,tumor_001.xml\n".format(slide))
    return str(tmp_path / "manifest.csv")


def test_manifest_foci_xml_is_checked_and_read_for_localisation(tmp_path):
    from data.manifest import load_manifest, validate
    from data.rows import tumour_polygons
    from stats.localisation import fractions
    manifest = _manifest(tmp_path)
    df = load_manifest(manifest)
    problems = [p for p in validate(df, str(tmp_path), open_slides=False)
                if ": slide file " not in p]
    assert problems == []
    tumour, within = tumour_polygons(df.iloc[0], str(tmp_path))
    assert within is None and len(tumour) == 1 and len(tumour[0]) == 2
    # a CAM lit on the left half of a 512 px slide (map pixels of 8 level-0 px)
    cam = np.zeros((64, 64))
    cam[:, :32] = 1.0
    got = fractions(cam, tumour, 8.0)
    assert got["tumour_area"] == LESION_AREA
    assert got["overlap_area"] == 160 * 320 - 64 * 64          # the hole lies in the left half
    (tmp_path / "tumor_001.xml").write_text("<ASAP_Annotations>")
    problems = [p for p in validate(df, str(tmp_path), open_slides=False)
                if ": slide file " not in p]
    assert len(problems) == 1 and "tumor_001.xml" in problems[0]


def test_predict_writes_localisation_from_xml_foci(tmp_path):
    """`predict_cohort` with --cam on a slide whose foci is an ASAP XML file: the localisation
    line's tumour area is the outline's minus the cut-out, in level-0 px^2."""
    import pandas as pd
    import tensorflow as tf
    from model.inference import LOCALISATION_COLUMNS, predict_cohort
    from model.resnet import build_model
    from tests.conftest import aperio_tiff, tissue
    tf.compat.v1.enable_v2_behavior()
    aperio_tiff(tmp_path / "slide.svs", [tissue(512, 512)], mpp=1.0)
    manifest = _manifest(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text("data:\n  cache: {}\n  target_mpp: 8.0\n  canvas: 64\nmodel:\n"
                      "  weights: none\ntrain:\n  strategy: direct\nout: {}\n".format(
                          tmp_path / "no-cache", tmp_path / "run"))
    cam_dir = str(tmp_path / "cam")
    predictions, cams = predict_cohort(build_model("none"), manifest, str(config),
                                       cam_dir=cam_dir, progress=False)
    assert list(predictions["slide_id"]) == ["tumor_001"] and len(cams) == 1
    loc = pd.read_csv(os.path.join(cam_dir, "localisation.csv"))
    assert tuple(loc.columns) == LOCALISATION_COLUMNS and len(loc) == 1
    assert loc["tumour_area"][0] == pytest.approx(LESION_AREA, abs=1e-6)
    assert 0 <= loc["tumour_covered"][0] <= 1
