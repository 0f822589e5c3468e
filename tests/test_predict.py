"""`reproduce predict` on a tiny synthetic cohort: CSV, CAMs, cache vs. slides, bad input."""
import json
import os

import numpy as np
import pandas as pd
import pytest

TARGET_MPP = 32.0   # tiny images (about 170 x 140 px) so that the test stays fast
CANVAS = 192


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """10 synthetic slides at 8 um/px (node rows for every test slide), prepared, a config and a
    checkpoint of a randomly initialised model."""
    import tensorflow as tf
    tf.compat.v1.enable_v2_behavior()
    from data import synth
    from data.cache import prepare
    from model import checkpoint
    from model.resnet import build_model

    root = tmp_path_factory.mktemp("predict")
    cohort_dir = str(root / "cohort")
    synth.make_cohort(cohort_dir, 10, 3, mpp=8.0, node_fraction=1.0, compression="zlib",
                      workers=1, progress=False)
    manifest = os.path.join(cohort_dir, "manifest.csv")
    cache = str(root / "cache")
    prepare(manifest, cache, target_mpp=TARGET_MPP, progress=False, log=lambda m: None)
    config = str(root / "config.yaml")
    with open(config, "w") as f:
        f.write("data:\n  cache: {}\n  target_mpp: {}\n  canvas: {}\nmodel:\n  weights: none\n"
                "train:\n  strategy: direct\nout: {}\n".format(cache, TARGET_MPP, CANVAS,
                                                               str(root / "run")))
    tf.compat.v1.set_random_seed(1)
    model = build_model("none")
    # Shrink the head so that probabilities are not all saturated at 0 or 1.
    model.head.kernel.assign(model.head.kernel * 1e-3)
    ckpt = str(root / "best.ckpt")
    checkpoint.save(ckpt, model, {"epoch": 0})
    return dict(root=root, manifest=manifest, cache=cache, config=config, ckpt=ckpt,
                model=model)


def _predict(c, out, *extra):
    from reproduce.__main__ import main
    return main(["predict", "--checkpoint", c["ckpt"], "--manifest", c["manifest"],
                 "--config", c["config"], "--out", out] + list(extra))


@pytest.fixture(scope="module")
def cached_run(cohort):
    """One `predict --cache --cam --cam-tiff` run, read by the tests that check it or compare
    against it (each run loads the checkpoint into a new ResNet-50: ~10 s)."""
    out = str(cohort["root"] / "out")
    assert _predict(cohort, out, "--cache", cohort["cache"], "--cam", "--cam-tiff") == 0
    return out


def test_predictions_csv_and_cams(cohort, cached_run):
    from data.cache import load_index, read_cached
    from data.augment import pad_to_canvas
    out = cached_run
    pred = pd.read_csv(os.path.join(out, "predictions.csv"))
    manifest = pd.read_csv(cohort["manifest"])
    test = manifest[manifest["split"] == "test"]
    assert list(pred.columns) == ["slide_id", "probability", "label", "level", "size_category",
                                  "subtype", "chemo"]
    assert list(pred["slide_id"]) == list(test["slide_id"])
    assert set(pred["level"]) == {"slide", "node"}
    assert list(pred["label"]) == list(test["label"])
    assert ((pred["probability"] >= 0) & (pred["probability"] <= 1)).all()
    # The probability is the model on the canvas built from the cached image.
    index = load_index(cohort["cache"]).set_index("slide_id", drop=False)
    sid = pred["slide_id"].iloc[0]
    image = pad_to_canvas(read_cached(cohort["cache"], index.loc[sid]), CANVAS)
    direct = float(cohort["model"](image[None].astype(np.float32)).numpy()[0, 0])
    assert abs(direct - pred["probability"].iloc[0]) <= 1e-5
    # One PNG, GeoJSON and TIFF per row; GeoJSON vertices inside the slide (level-0 px).
    from data.slide import slide_info
    for _, row in pred.iterrows():
        for ext in ("png", "geojson", "tif"):
            assert os.path.getsize(os.path.join(out, "cam", row["slide_id"] + "." + ext)) > 0
        with open(os.path.join(out, "cam", row["slide_id"] + ".geojson")) as f:
            fc = json.load(f)
        info = slide_info(index.loc[row["slide_id"], "path"])
        for feat in fc["features"]:
            ring = np.array(feat["geometry"]["coordinates"][0])
            assert (ring >= -4).all()
            assert (ring[:, 0] <= info["width"] + 4).all() and (ring[:, 1] <= info["height"] + 4).all()


def test_slides_without_cache_give_the_same_predictions(cohort, cached_run):
    out_a = cached_run
    out_b = str(cohort["root"] / "b")
    # A config whose cache folder does not exist: predict reads the slides (nodes cropped).
    cfg = str(cohort["root"] / "nocache.yaml")
    with open(cohort["config"]) as f:
        text = f.read().replace(cohort["cache"], str(cohort["root"] / "none"))
    with open(cfg, "w") as f:
        f.write(text)
    assert _predict(dict(cohort, config=cfg), out_b) == 0
    a = pd.read_csv(os.path.join(out_a, "predictions.csv"))
    b = pd.read_csv(os.path.join(out_b, "predictions.csv"))
    assert list(a["slide_id"]) == list(b["slide_id"])
    np.testing.assert_allclose(a["probability"], b["probability"], rtol=0, atol=1e-6)


def test_bad_inputs_are_one_line_errors(cohort, capsys, tmp_path):
    bad = tmp_path / "bad.csv"
    pd.read_csv(cohort["manifest"]).assign(path="slides/missing.tiff").to_csv(bad, index=False)
    from reproduce.__main__ import main
    rc = main(["predict", "--checkpoint", cohort["ckpt"], "--manifest", str(bad), "--config",
               cohort["config"], "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "bad.csv" in err[0] and "Traceback" not in err[0]
    rc = main(["predict", "--checkpoint", str(tmp_path / "nope.ckpt"), "--manifest",
               cohort["manifest"], "--config", cohort["config"], "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "nope.ckpt" in err[0]
    rc = main(["predict", "--checkpoint", cohort["ckpt"], "--manifest", cohort["manifest"],
               "--config", cohort["config"], "--out", str(tmp_path / "o"), "--split", "nosuch"])
    assert rc == 2 and "nosuch" in capsys.readouterr().err


def _one_line(capsys, rc, name):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and name in err[0] and "Traceback" not in err[0], err


def test_damaged_or_foreign_checkpoint_is_one_line(cohort, capsys, tmp_path):
    from reproduce.__main__ import main
    with open(cohort["ckpt"], "rb") as f:
        data = f.read()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[:len(data) // 2])           # a copy interrupted halfway
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF                   # a bit error inside an array
    bad = tmp_path / "bitrot.ckpt"
    bad.write_bytes(bytes(flipped))
    for path in (cut, bad, cohort["config"], cohort["manifest"]):
        rc = main(["predict", "--checkpoint", str(path), "--manifest", cohort["manifest"],
                   "--config", cohort["config"], "--out", str(tmp_path / "o")])
        _one_line(capsys, rc, os.path.basename(str(path)))


def test_home_relative_manifest_paths(cohort, monkeypatch, tmp_path):
    """``~/...`` in a manifest: validation and reading resolve it the same way."""
    import shutil
    home = tmp_path / "home"
    shutil.copytree(os.path.dirname(cohort["manifest"]), str(home / "cohort"))
    monkeypatch.setenv("HOME", str(home))
    manifest = pd.read_csv(cohort["manifest"], dtype=str, keep_default_na=False)
    assert "foci" in manifest.columns          # every path column, the tumour outlines too
    for col in ("path", "annotation", "foci"):
        manifest[col] = ["~/cohort/" + v if v else "" for v in manifest[col]]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    manifest.to_csv(str(elsewhere / "m.csv"), index=False)
    cfg = str(tmp_path / "nocache.yaml")    # no cache: predict reads the slides themselves
    with open(cohort["config"]) as f:
        text = f.read().replace(cohort["cache"], str(tmp_path / "none"))
    with open(cfg, "w") as f:
        f.write(text)
    out = str(tmp_path / "o")
    assert _predict(dict(cohort, manifest=str(elsewhere / "m.csv"), config=cfg), out) == 0
    pred = pd.read_csv(os.path.join(out, "predictions.csv"))
    assert len(pred) == (manifest["split"] == "test").sum()


def test_predict_slide_api_matches_the_command(cohort, cached_run, tmp_path):
    """The Python API: a path or an (image, mpp) pair; the same numbers as `predict`."""
    from data.cache import load_index, read_cached
    from model.cam import export_prediction, prediction_regions
    from reproduce import predict_slide
    pred = pd.read_csv(os.path.join(cached_run, "predictions.csv")).set_index("slide_id")
    index = load_index(cohort["cache"]).set_index("slide_id", drop=False)
    row = index.loc[pred.index[pred["level"] == "slide"][0]]
    image = read_cached(cohort["cache"], row)
    result = predict_slide(cohort["model"], (image, TARGET_MPP), config=cohort["config"],
                           cam=True)
    assert abs(result.probability - pred.loc[row["slide_id"], "probability"]) <= 1e-6
    assert abs(result.probability - 1 / (1 + np.exp(-result.logit))) <= 1e-9
    assert result.cam.shape == (CANVAS // 32, CANVAS // 32)
    assert abs(float(result.cam.astype(np.float64).mean()) - result.logit) <= 1e-4
    assert result.image_shape == image.shape[:2] and result.level0_mpp == TARGET_MPP
    # From the slide file: read at target_mpp here, level-0 geometry from the file.
    from_file = predict_slide(cohort["ckpt"], row["path"], target_mpp=TARGET_MPP,
                              canvas=CANVAS, strategy="direct", cam=True)
    assert abs(from_file.probability - result.probability) <= 1e-6
    assert from_file.level0_mpp == pytest.approx(row["slide_mpp"])
    paths = export_prediction(from_file, str(tmp_path / "cam"), "one", threshold=0.5)
    with open(paths["geojson"]) as f:
        assert json.load(f) == json.loads(json.dumps(prediction_regions(from_file, 0.5)))
    assert os.path.getsize(paths["png"]) > 0


def test_annotated_rows_get_localisation_and_outlines(cohort, tmp_path):
    """Rows with a `foci` GeoJSON: cam/localisation.csv holds one line each, equal to the Python
    API's figures, with the tumour area of the polygons (level-0 px^2)."""
    from data.cache import load_index, read_cached
    from data.manifest import resolve
    from data.nodes import area_um2, load_polygons
    from data.rows import node_origin, tumour_polygons
    from model.cam import prediction_localisation
    from model.inference import LOCALISATION_COLUMNS
    from reproduce import predict_slide
    out = str(tmp_path / "loc")
    assert _predict(cohort, out, "--cache", cohort["cache"], "--cam") == 0
    loc = pd.read_csv(os.path.join(out, "cam", "localisation.csv"))
    assert tuple(loc.columns) == LOCALISATION_COLUMNS
    manifest = pd.read_csv(cohort["manifest"], dtype=str, keep_default_na=False)
    annotated = manifest[(manifest["split"] == "test") & (manifest["foci"] != "")]
    assert len(annotated) > 0 and list(loc["slide_id"]) == list(annotated["slide_id"])
    assert set(loc["level"]) == {"slide", "node"} and (loc["label"] == 1).all()
    assert ((loc["tumour_covered"] >= 0) & (loc["tumour_covered"] <= 1)).all()
    index = load_index(cohort["cache"]).set_index("slide_id", drop=False)
    base = os.path.dirname(cohort["manifest"])
    for _, row in annotated.iterrows():
        got = loc.set_index("slide_id").loc[row["slide_id"]]
        polygons = load_polygons(resolve(base, row["foci"]))
        # The focus lies inside its node: the clipped area is the polygon's (up to the lattice).
        assert got["tumour_area"] == pytest.approx(area_um2(polygons, (1, 1)), rel=0.05)
        tumour, within = tumour_polygons(row, base)
        assert (within is None) == (row["level"] == "slide")
        image = read_cached(cohort["cache"], index.loc[row["slide_id"]])
        result = predict_slide(cohort["model"], (image, TARGET_MPP), config=cohort["config"],
                               cam=True, level0_mpp=float(row["mpp"]),
                               origin_xy=node_origin(row, base))
        again = prediction_localisation(result, tumour, 0.5, within=within)
        for key in ("tumour_area", "cam_area", "overlap_area"):
            assert again[key] == pytest.approx(got[key], rel=1e-6, abs=1e-6), key
