"""data.camelyon / `reproduce camelyon`: manifests from the CAMELYON16/17 label files."""
import os

import pandas as pd
import pytest

from data.camelyon import build_manifest, detect
from reproduce.__main__ import main

REFERENCE = os.environ.get("CAMELYON_REFERENCE", "/work/shared/reference")
C16 = os.path.join(REFERENCE, "camelyon16_test_reference.csv")
C17 = os.path.join(REFERENCE, "camelyon17_stage_labels.csv")

SAMPLE16 = "Test_001,Tumor,IDC,Macro\nTest_002,Normal,DCIS,None\nTest_003,Tumor,ILC,Micro\n"
SAMPLE17 = ("patient,stage\npatient_000.zip,pN0\npatient_000_node_0.tif,negative\n"
            "patient_000_node_1.tif,negative\npatient_001.zip,pN1mi\n"
            "patient_001_node_0.tif,micro\npatient_001_node_1.tif,itc\n"
            "patient_002.zip,pN1\npatient_002_node_3.tif,macro\n")


def _touch(folder, *names):
    for n in names:
        p = folder / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def _sample16(tmp_path):
    """SAMPLE16 as tmp_path/reference.csv, and slides (empty files) under tmp_path/slides: two of
    its three test slides and two training slides; returns the label file's path."""
    labels = tmp_path / "reference.csv"
    labels.write_text(SAMPLE16)
    _touch(tmp_path / "slides", "test_001.tif", "Test_003.tif", "normal_001.tif", "tumor_009.tif")
    return labels


def _sample17(tmp_path):
    """SAMPLE17 as tmp_path/stage_labels.csv, and its slides (empty files) under
    tmp_path/slides in CAMELYON17's centre_k folders; returns the label file's path."""
    labels = tmp_path / "stage_labels.csv"
    labels.write_text(SAMPLE17)
    _touch(tmp_path / "slides", "centre_0/patient_000_node_0.tif",
           "centre_0/patient_000_node_1.tif", "centre_1/patient_001_node_0.tif",
           "centre_1/patient_001_node_1.tif", "centre_2/patient_002_node_3.tif")
    return labels


def test_camelyon16_sample(tmp_path):
    labels = _sample16(tmp_path)
    assert detect(str(labels)) == 16
    df, missing = build_manifest(str(labels), str(tmp_path / "slides"))
    assert missing == ["Test_002"]
    test = df[df["split"] == "test"].set_index("slide_id")
    assert test.loc["Test_001", "label"] == 1 and test.loc["Test_001", "size_category"] == "macro"
    assert test.loc["Test_003", "size_category"] == "micro"
    assert test.loc["Test_001", "path"].endswith("test_001.tif")  # case-insensitive lookup
    train = df[df["split"] != "test"].set_index("slide_id")
    assert train.loc["tumor_009", "label"] == 1 and train.loc["normal_001", "label"] == 0


def test_camelyon17_sample_labels_and_patient_split(tmp_path):
    labels = _sample17(tmp_path)
    df, missing = build_manifest(str(labels), str(tmp_path / "slides"), which=17)
    assert missing == []
    assert len(df) == 5 and not df["slide_id"].str.endswith("zip").any()  # patient rows skipped
    got = df.set_index("slide_id")
    assert got.loc["patient_001_node_1", "size_category"] == "itc"
    assert got.loc["patient_001_node_1", "label"] == 1  # ITC counted positive, as the paper does
    assert got.loc["patient_000_node_0", "label"] == 0
    assert (df.groupby("patient")["split"].nunique() == 1).all()


@pytest.mark.skipif(not os.path.isfile(C17), reason="CAMELYON17 label file not at " + C17)
def test_camelyon17_real_labels_split_is_patient_level_and_seeded(tmp_path):
    (tmp_path / "slides").mkdir()
    a, missing = build_manifest(C17, str(tmp_path / "slides"), keep_missing=True, seed=3)
    b, _ = build_manifest(C17, str(tmp_path / "slides"), keep_missing=True, seed=3)
    c, _ = build_manifest(C17, str(tmp_path / "slides"), keep_missing=True, seed=4)
    raw = pd.read_csv(C17)
    nodes = raw[~raw["patient"].str.endswith(".zip")]
    assert len(a) == len(nodes) == len(missing)
    assert a.equals(b) and not a["split"].equals(c["split"])
    assert (a.groupby("patient")["split"].nunique() == 1).all()  # no patient in two splits
    patients = a.groupby("split")["patient"].nunique()
    n = a["patient"].nunique()
    assert abs(patients["test"] - 0.2 * n) <= 3 and abs(patients["val"] - 0.2 * n) <= 3
    assert set(a["size_category"]) == {"negative", "itc", "micro", "macro"}
    assert ((a["label"] == 1) == (a["size_category"] != "negative")).all()
    for split in ("train", "val", "test"):
        assert a[a["split"] == split]["label"].nunique() == 2  # stratified: both classes


@pytest.mark.skipif(not os.path.isfile(C16), reason="CAMELYON16 reference not at " + C16)
def test_cli_camelyon16_real_reference_lists_missing(tmp_path, capsys):
    slides = tmp_path / "slides"
    _touch(slides, "test_001.tif", "test_002.tif")
    out = tmp_path / "m.csv"
    assert main(["camelyon", "--labels", C16, "--slides", str(slides), "--out", str(out)]) == 0
    df = pd.read_csv(str(out))
    raw = pd.read_csv(C16, header=None)
    assert list(df["slide_id"]) == ["Test_001", "Test_002"] and (df["split"] == "test").all()
    assert list(df["label"]) == [int(raw[1][i] == "Tumor") for i in (0, 1)]
    err = capsys.readouterr().err
    listing = tmp_path / "m.missing.txt"
    # one line: the count, the first five names, and the file that holds them all
    assert err.count("\n") == 1 and len(err) < 400
    assert "{} slide(s)".format(len(raw) - 2) in err
    assert "Test_003, Test_004, Test_005, Test_006, Test_007 and 123 more" in err
    assert "Test_130" not in err and str(listing) in err
    assert listing.read_text().splitlines() == ["Test_{:03d}".format(i) for i in range(3, 131)]
    rc = main(["camelyon", "--labels", C16, "--slides", str(slides), "--out", str(out),
               "--strict"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "128 slide(s)" in err and "(--strict)" in err
    # all slides present: no list, and a stale one is removed
    _touch(slides, *("test_{:03d}.tif".format(i) for i in range(3, 131)))
    assert main(["camelyon", "--labels", C16, "--slides", str(slides), "--out", str(out)]) == 0
    assert not listing.exists()
    rc = main(["camelyon", "--labels", str(tmp_path / "nope.csv"), "--slides", str(slides),
               "--out", str(out)])
    assert rc == 2 and "nope.csv" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isfile(C17), reason="CAMELYON17 labels not at " + C17)
def test_cli_camelyon17_without_slides_names_the_list(tmp_path, capsys):
    (tmp_path / "slides").mkdir()
    out = tmp_path / "c17.csv"
    assert main(["camelyon", "--labels", C17, "--slides", str(tmp_path / "slides"), "--out",
                 str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("500 slide(s)") and len(err) < 400
    assert "and 495 more; full list in {}".format(tmp_path / "c17.missing.txt") in err
    names = (tmp_path / "c17.missing.txt").read_text().splitlines()
    assert len(names) == len(set(names)) == 500 and names[0] == "patient_000_node_0"


def _lesion_xml(group="metastases"):
    """A small lesion annotation in the challenges' ASAP layout (level-0 pixels)."""
    return ('<?xml version="1.0"?>\n<ASAP_Annotations>\n\t<Annotations>\n'
            '\t\t<Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="{}" '
            'Color="#F4FA58">\n\t\t\t<Coordinates>\n'
            '\t\t\t\t<Coordinate Order="0" X="100.5" Y="200" />\n'
            '\t\t\t\t<Coordinate Order="1" X="300" Y="200" />\n'
            '\t\t\t\t<Coordinate Order="2" X="300" Y="350.25" />\n'
            '\t\t\t</Coordinates>\n\t\t</Annotation>\n\t</Annotations>\n'
            '\t<AnnotationGroups>\n\t\t<Group Name="{}" PartOfGroup="None" Color="#ff0000">\n'
            '\t\t\t<Attributes />\n\t\t</Group>\n\t</AnnotationGroups>\n'
            '</ASAP_Annotations>\n').format(group, group)


def test_cli_annotations_fill_the_foci_column(tmp_path, capsys):
    """`--annotations DIR`: each slide with a <slide_id>.xml under DIR (any depth, any case)
    gets its absolute path in `foci`, the others ''; XML files that match no slide of the
    manifest are named in one warning line; the manifest's foci pass its check."""
    from data.manifest import load_manifest, validate
    from data.nodes import load_polygons
    labels = _sample17(tmp_path)
    notes = tmp_path / "lesion_annotations"
    notes.mkdir()
    (notes / "patient_001_node_0.xml").write_text(_lesion_xml())
    (notes / "centre_2").mkdir()
    (notes / "centre_2" / "Patient_002_Node_3.xml").write_text(_lesion_xml())
    (notes / "patient_099_node_1.xml").write_text(_lesion_xml())   # no such slide
    (notes / "readme.txt").write_text("not an annotation")
    out = tmp_path / "m.csv"
    assert main(["camelyon", "--labels", str(labels), "--slides", str(tmp_path / "slides"),
                 "--out", str(out), "--annotations", str(notes)]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("warning: 1 annotation")
    assert "patient_099_node_1.xml" in captured.err and str(notes) in captured.err
    assert "tumour outlines for 2" in captured.out
    df = pd.read_csv(str(out), dtype=str, keep_default_na=False).set_index("slide_id")
    assert df.loc["patient_001_node_0", "foci"] == str(notes / "patient_001_node_0.xml")
    assert df.loc["patient_002_node_3", "foci"] == str(notes / "centre_2" /
                                                        "Patient_002_Node_3.xml")
    assert os.path.isabs(df.loc["patient_002_node_3", "foci"])
    assert (df.drop(["patient_001_node_0", "patient_002_node_3"])["foci"] == "").all()
    manifest = load_manifest(str(out))
    problems = [p for p in validate(manifest, str(tmp_path), open_slides=False)
                if ": slide file " not in p]          # the slides here are empty files
    assert problems == []
    polygons = load_polygons(df.loc["patient_001_node_0", "foci"])
    assert len(polygons) == 1 and polygons[0][0][:, 0].min() == 100.5
    # every XML matched: no warning; a missing folder is a one-line error
    (notes / "patient_099_node_1.xml").unlink()
    assert main(["camelyon", "--labels", str(labels), "--slides", str(tmp_path / "slides"),
                 "--out", str(out), "--annotations", str(notes)]) == 0
    assert capsys.readouterr().err == ""
    rc = main(["camelyon", "--labels", str(labels), "--slides", str(tmp_path / "slides"),
               "--out", str(out), "--annotations", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "nope" in err and "--annotations" in err
    # without --annotations the manifest has no foci column, as before
    assert main(["camelyon", "--labels", str(labels), "--slides", str(tmp_path / "slides"),
                 "--out", str(out)]) == 0
    assert "foci" not in pd.read_csv(str(out)).columns


def test_camelyon16_annotations_match_test_and_train_slides(tmp_path):
    from data.camelyon import add_foci
    labels = _sample16(tmp_path)
    notes = tmp_path / "notes"
    notes.mkdir()
    for name in ("test_001.xml", "tumor_009.xml", "test_002.xml"):   # Test_002 has no slide
        (notes / name).write_text(_lesion_xml("_0"))
    df, _ = build_manifest(str(labels), str(tmp_path / "slides"))
    unmatched = add_foci(df, str(notes))
    assert unmatched == ["test_002.xml"]
    foci = df.set_index("slide_id")["foci"]
    assert foci["Test_001"] == str(notes / "test_001.xml")       # Test_001 <- test_001.xml
    assert foci["tumor_009"] == str(notes / "tumor_009.xml")
    assert foci["Test_003"] == "" and foci["normal_001"] == ""
