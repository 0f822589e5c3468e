"""prepare --glass-to-white (data/glass.py): the glass rule, the canvas it gives, the cache that
records it, and the cells that streaming then skips."""
import importlib.util
import json
import os

import numpy as np
import pandas as pd
import pytest

from data import augment as A
from data.cache import CacheError, check_made_with, load_index, read_cached
from data.canvas import Canvas, fill_box, place
from data.glass import GlassError, check_threshold, glass_mask, glass_to_white
from data.slide import read_slide
from reproduce.__main__ import main
from tests.conftest import aperio_tiff, write_lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the index columns of a cache made without the flag: those of every cache before it existed
COLUMNS_WITHOUT_FLAG = ["slide_id", "path", "label", "split", "cache_file", "height", "width",
                        "mpp", "slide_mpp", "source_stamp", "resample"]


def _script():
    spec = importlib.util.spec_from_file_location(
        "glass_skip", os.path.join(ROOT, "scripts", "glass_skip.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _slide_image(height, width, box, seed, glass=236):
    """Noisy near-white glass (every channel ``glass``-255) with a textured tissue block at
    ``box`` = (top, bottom, left, right)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(glass, 256, (height, width, 3), dtype=np.uint8)
    t, b, l, r = box
    tissue = rng.integers(0, 60, (b - t, r - l, 3), dtype=np.uint8)
    image[t:b, l:r] = np.array([170, 80, 150], np.uint8) + tissue
    return image


def test_the_rule_on_a_constructed_image():
    image = np.full((40, 50, 3), 246, np.uint8)            # glass, every channel >= 240
    image[10:30, 10:40] = (180, 90, 160)                   # tissue
    image[20, 20] = (250, 250, 250)                        # an isolated pale pixel in tissue
    image[12:15, 30:33] = (248, 248, 248)                  # a 3x3 pale speck in tissue
    image[15:22, 12:19] = (250, 250, 250)                  # a 7x7 pale hole in tissue
    image[2, 2] = (250, 232, 250)                          # a pale pink glass pixel: one channel
    image[35, 45] = (239, 250, 250)                        # below the threshold, so not glass
    image[0:3, 47:50] = (255, 255, 255)                    # already white
    want = np.ones((40, 50), bool)
    want[10:30, 10:40] = False
    want[15:22, 12:19] = True                              # the 7x7 hole holds a 5x5 block
    want[2, 2] = want[35, 45] = False
    mask = glass_mask(image, 240)
    assert np.array_equal(mask, want)
    white = glass_to_white(image, 240)
    assert (white[want] == 255).all() and np.array_equal(white[~want], image[~want])
    assert tuple(white[20, 20]) == (250, 250, 250) and tuple(white[13, 31]) == (248, 248, 248)
    assert image[0, 0, 0] == 246                           # a copy: the input is untouched
    # one threshold higher and the 246 glass stays: the threshold is the user's
    assert not glass_mask(image, 247)[5, 5] and glass_mask(image, 246)[5, 5]
    # strips (with their halo) give the same as one pass, and in place the same as a copy
    rng = np.random.default_rng(3)
    noisy = rng.integers(225, 256, (61, 37, 3), dtype=np.uint8)
    whole = glass_mask(noisy, 240)
    assert 0 < whole.mean() < 1
    for rows in (1, 2, 5, 16):
        assert np.array_equal(glass_mask(noisy, 240, strip_rows=rows), whole), rows
        inplace = noisy.copy()
        assert glass_to_white(inplace, 240, copy=False, strip_rows=rows) is inplace
        assert np.array_equal(inplace, glass_to_white(noisy, 240)), rows
    assert np.array_equal(glass_to_white(noisy, None), noisy)   # off: unchanged


def test_threshold_values():
    assert check_threshold(None) is None and check_threshold("off") is None
    assert check_threshold("235") == 235 and check_threshold(255) == 255
    for bad in (0, 256, -3, "abc", "2.5", 240.0, True, ""):
        with pytest.raises(GlassError, match="--glass-to-white: must be an integer from 1 to 255"):
            check_threshold(bad)


def test_fill_box_finds_the_box_of_other_pixels():
    rng = np.random.default_rng(0)
    for shape, box in [((70, 90), (3, 60, 17, 89)), ((5, 300), (0, 5, 140, 141)),
                       ((200, 9), (130, 131, 0, 9)), ((40, 40), (0, 40, 0, 40))]:
        image = np.full(shape + (3,), 255, np.uint8)
        t, b, l, r = box
        image[t:b, l:r] = rng.integers(0, 256, (b - t, r - l, 3), dtype=np.uint8)
        image[t, l] = image[b - 1, r - 1] = (254, 255, 255)    # the box's corners differ
        for step in (1, 7, 64):
            assert fill_box(image, 255, step) == box, (shape, step)
        assert fill_box(image) == Canvas.from_dense(image, (255, 255, 255)).box
    assert fill_box(np.full((8, 8, 3), 255, np.uint8)) == (0, 0, 0, 0)


def test_the_canvas_is_the_whitened_image_placed_with_a_smaller_content_box():
    image = _slide_image(300, 260, (120, 190, 40, 110), seed=1)
    white = glass_to_white(image, 236)
    for side in (512, 333):
        before, after = place(image, side), place(white, side)
        assert np.array_equal(after.dense(), A.pad_to_canvas(white, side))
        assert np.array_equal(before.dense(), A.pad_to_canvas(image, side))
        top, left = (side - 300) // 2, (side - 260) // 2
        assert before.box == (top, top + 300, left, left + 260)   # noisy glass: the whole image
        assert after.box == (top + 120, top + 190, left + 40, left + 110)   # the tissue only
    # larger than the canvas: centre-cropped, then trimmed
    with pytest.warns(UserWarning):
        cropped = place(white, 200)
    assert np.array_equal(cropped.dense(), A.pad_to_canvas(white, 200))
    # all glass: an empty content, a white canvas
    empty = place(glass_to_white(_slide_image(50, 40, (0, 0, 0, 0), 2), 236), 64)
    assert empty.empty and (empty.dense() == 255).all()
    # the augmentation's canvas (rotation, flips, colour) equals its dense reference too
    params = A.sample_params(np.random.default_rng(4), translate_px=20)
    aug = A.apply_canvas(white, params, 512)
    assert np.array_equal(aug.dense(), A.apply(white, params, 512))
    box = aug.box
    assert (box[1] - box[0]) * (box[3] - box[2]) < 0.5 * (300 * 260)


def _cohort(folder):
    """Two slides of glass around a tissue block (level 0 at 0.5 um/px), read at 1 um/px."""
    lines = ["slide_id,path,label,split"]
    for i, box in enumerate([(400, 700, 300, 600), (500, 760, 900, 1100)]):
        image = _slide_image(1200, 1400, box, seed=10 + i, glass=242)
        aperio_tiff(folder / "g{}.svs".format(i), [image], mpp=0.5)
        lines.append("g{0},g{0}.svs,{1},{2}".format(i, i, ("train", "val")[i]))
    return write_lines(folder / "manifest.csv", lines)


def _files(cache):
    return {name: open(os.path.join(cache, name), "rb").read()
            for name in sorted(os.listdir(cache))}


def test_the_cache_records_the_threshold_and_reprepares_on_a_change(tmp_path, capsys):
    manifest = _cohort(tmp_path)
    cache = str(tmp_path / "cache")
    args = ["prepare", "--manifest", manifest, "--out", cache, "--target-mpp", "1.0",
            "--no-progress"]

    def summary():
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    assert main(args) == 0                                   # off: the cache as it always was
    assert summary()["glass_to_white"] is None
    off = _files(cache)
    raw = pd.read_csv(os.path.join(cache, "index.csv"), dtype=str, keep_default_na=False)
    assert list(raw.columns) == COLUMNS_WITHOUT_FLAG
    for sid in ("g0", "g1"):
        assert np.array_equal(read_cached(cache, sid),
                              read_slide(str(tmp_path / (sid + ".svs")), 1.0))
    index = load_index(cache)
    check_made_with(index, cache, 1.0, "area", glass_to_white=None)
    with pytest.raises(CacheError, match="glass_to_white off, not data.glass_to_white 240"):
        check_made_with(index, cache, glass_to_white=240)

    assert main(args + ["--glass-to-white", "240"]) == 0     # on: every row read again
    s = summary()
    assert (s["cached"], s["skipped"], s["glass_to_white"]) == (2, 0, 240)
    index = load_index(cache)
    assert (index["glass_to_white"] == "240").all()
    for sid in ("g0", "g1"):
        read = read_slide(str(tmp_path / (sid + ".svs")), 1.0)
        white = read_cached(cache, sid)
        assert np.array_equal(white, glass_to_white(read, 240)) and not np.array_equal(white, read)
    check_made_with(index, cache, glass_to_white=240)
    with pytest.raises(CacheError, match="glass_to_white 240, not data.glass_to_white off"):
        check_made_with(index, cache, glass_to_white=None)
    assert main(args + ["--glass-to-white", "240"]) == 0     # the same: nothing to do
    assert summary()["skipped"] == 2
    assert main(args + ["--glass-to-white", "245"]) == 0     # another threshold: read again
    assert summary()["cached"] == 2
    assert (load_index(cache)["glass_to_white"] == "245").all()

    # training refuses a cache made with another setting than its config
    from model.config import load_config
    from model.training import TrainingError, load_cohort
    config = tmp_path / "c.yaml"
    text = "data:\n  cache: {}\n  target_mpp: 1.0\n  canvas: 1024\n{}out: {}\n"
    config.write_text(text.format(cache, "", tmp_path / "run"))
    with pytest.raises(TrainingError, match="glass_to_white 245, not data.glass_to_white off"):
        load_cohort(load_config(str(config)))
    config.write_text(text.format(cache, "  glass_to_white: 245\n", tmp_path / "run"))
    train, val = load_cohort(load_config(str(config)))
    assert (list(train["slide_id"]), list(val["slide_id"])) == (["g0"], ["g1"])
    # prepare takes it from the config; 'off' on the command line wins
    assert main(["prepare", "--config", str(config), "--manifest", manifest, "--no-progress"]) == 0
    assert summary()["skipped"] == 2
    assert main(["prepare", "--config", str(config), "--manifest", manifest, "--no-progress",
                 "--glass-to-white", "off"]) == 0
    assert summary()["cached"] == 2
    assert _files(cache) == off                              # byte for byte the first cache


def test_a_bad_threshold_is_one_line_and_exit_2(tmp_path, capsys):
    manifest = _cohort(tmp_path)
    for bad in ("256", "0", "bright"):
        assert main(["prepare", "--manifest", manifest, "--out", str(tmp_path / "c"),
                     "--glass-to-white", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["error: --glass-to-white: must be an integer from 1 to 255 (a pixel whose "
                       "every channel is >= it is glass) or off, got '{}'".format(bad)]
    assert not os.path.exists(str(tmp_path / "c"))          # nothing was read or written
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  cache: c\n  target_mpp: 1.0\n  canvas: 512\n"
                      "  glass_to_white: 300\nout: run\n")
    assert main(["prepare", "--config", str(config), "--manifest", manifest]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.glass_to_white: must be an integer from 1 to 255" in err[0]


def test_streaming_skips_more_cells_with_the_flag(tmp_path):
    script = _script()
    manifest = _cohort(tmp_path)
    caches = {}
    for name, flag in (("off", []), ("on", ["--glass-to-white", "240"])):
        caches[name] = str(tmp_path / name)
        assert main(["prepare", "--manifest", manifest, "--out", caches[name], "--target-mpp",
                     "1.0", "--no-progress"] + flag) == 0
    for sid in ("g0", "g1"):
        without = script.skipped_fraction(place(read_cached(caches["off"], sid), 4096))
        with_ = script.skipped_fraction(place(read_cached(caches["on"], sid), 4096))
        assert 0 < without < with_ < 1, (sid, without, with_)
    # the measuring function agrees, and the all-white bound is at least what the plan skips
    image = read_slide(str(tmp_path / "g0.svs"), 1.0)
    figures = script.measure(image, 240, [4096])[4096]
    assert figures[0] < figures[1] <= figures[2] < 1


def test_prediction_refuses_a_mismatched_cache_and_whitens_what_it_reads(tmp_path):
    """Prediction sees what training saw: the cache check covers the threshold, and a slide read
    by the Predictor itself (no cache) gets the same rewrite as a cached image."""
    from model.inference import PredictionError, Predictor, cohort_inputs
    manifest = _cohort(tmp_path)
    cache = str(tmp_path / "cache")
    assert main(["prepare", "--manifest", manifest, "--out", cache, "--target-mpp", "1.0",
                 "--no-progress", "--glass-to-white", "240"]) == 0
    config = {"data": {"cache": cache, "target_mpp": 1.0, "canvas": 1024}, "out": str(tmp_path)}
    with pytest.raises((CacheError, PredictionError), match="glass_to_white 240, not data"):
        cohort_inputs(manifest, config, split="train", cache=cache)
    config["data"]["glass_to_white"] = 240
    cohort_inputs(manifest, config, split="train", cache=cache)

    # Predictor.prepare alone (no network is needed to read a slide): the rule of the config
    predictor = Predictor.__new__(Predictor)
    predictor.target_mpp, predictor.resample, predictor.glass_to_white = 1.0, "area", 240
    path = str(tmp_path / "g0.svs")
    image, _ = predictor.prepare(path)
    assert np.array_equal(image, read_cached(cache, "g0"))
    raw = read_slide(path, 1.0)
    pair, _ = predictor.prepare((raw, 1.0))
    assert np.array_equal(pair, glass_to_white(raw, 240)) and not np.array_equal(pair, raw)
    predictor.glass_to_white = None
    assert np.array_equal(predictor.prepare((raw, 1.0))[0], raw)
