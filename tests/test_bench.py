"""`python -m reproduce bench --content`: the paper's canvas with a small content, planned and
timed by the skipping streaming strategy, and the plan's MACs against the exact floor (the
figures themselves go to docs/benchmarks.md)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import aperio_tiff, reproduce, tissue

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(*args):
    return reproduce("bench", *args)


def test_plan_only_follows_the_content_not_the_canvas():
    done = bench("--size", "21500", "--content", "1200x1000", "--plan-only", "--rotate", "30")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["mode"] == "plan" and result["rotate_deg"] == 30.0
    top, bottom, left, right = result["content_box"]
    # the rotated 1200 x 1000 box: 1200 cos 30 + 1000 sin 30 = 1539 px tall, plus bicubic taps
    assert 1530 <= bottom - top <= 1550 and 1460 <= right - left <= 1475
    # the plan in levels: one super-window, windows over the levels, the proxy for the rest
    assert result["super_windows"] == 1 and result["windows"] >= 17
    assert result["proxy_cells"] > 0.99 * 672 ** 2 and result["kept_gb"] > 0
    assert result["augment_seconds"] > 0 and result["proxy"] is not None
    # forward MACs: the plan against the least an exact step computes
    assert 0 < result["floor_flops"] <= result["planned_flops"]
    assert result["flops_ratio"] == pytest.approx(result["planned_flops"] / result["floor_flops"],
                                                  rel=1e-4)
    assert result["floor_seconds"] > 0 and result["plan_seconds"] > 0


def test_draws_report_the_ratio_over_the_augmentation_draws():
    done = bench("--size", "4000", "--content", "600x500", "--plan-only", "--tile", "512",
                 "--draws", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["draws"] == 3 and result["seeds"] == [0, 2] and len(result["ratios"]) == 3
    assert 1 <= result["ratio_min"] <= result["ratio_mean"] <= result["ratio_max"]
    assert result["ratio_min"] == min(result["ratios"])
    assert result["ratio_max"] == max(result["ratios"])
    assert result["floor_seconds_mean"] > 0 and result["plan_seconds_max"] > 0


def test_a_content_step_reports_its_augmentation_and_ratio():
    done = bench("--size", "2400", "--content", "200x160", "--tile", "1024")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["content"] == [200, 160] and result["proxy"] is not None
    assert result["super_windows"] == 1 and result["windows"] >= 17
    assert 0 < result["planned_flops"]
    assert 0 < result["augment_seconds"] < result["seconds_per_step"]
    assert result["peak_rss_gb"] > 0
    # `python -m reproduce` runs on TCMalloc (docker/install-system.sh installs it)
    assert result["allocator"] == "tcmalloc"


def test_the_system_allocator_on_request():
    env = dict(os.environ, REPRODUCE_ALLOCATOR="system")
    env.pop("LD_PRELOAD", None)
    done = subprocess.run([sys.executable, "-m", "reproduce", "bench", "--size", "64", "--mode",
                           "direct", "--steps", "3"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["allocator"] == "system"
    # the steady state leaves the first step out
    assert result["steady_seconds_per_step"] == pytest.approx(
        np.mean(result["step_seconds"][1:]), abs=2e-3)


@pytest.mark.parametrize("args", [
    ["--size", "1000", "--content", "200x200", "--mode", "direct"],
    ["--height", "1000", "--width", "900", "--content", "200x200"],
    ["--size", "1000", "--plan-only"],
    ["--size", "1000", "--content", "2000x200"],
    ["--size", "1000", "--content", "abc"],
    ["--size", "1000", "--content", "200x200", "--draws", "3"],
    ["--size", "1000", "--content", "200x200", "--plan-only", "--draws", "0"],
    ["--size", "1000", "--content", "no-such-slide.svs", "--plan-only"],
    ["--size", "1000", "--content", "200x200", "--config", "configs/paper.yaml"],
    ["--content", "README.md", "--plan-only"],
])
def test_bad_input_is_one_line(args):
    done = bench(*args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.strip().startswith("error:")


def _slide_and_config(tmp_path, glass):
    """A small Aperio slide (tissue in the middle of near-white, noisy glass, 0.5 um/px) and a
    config that reads it at 2 um/px on a 1,024 px canvas, with glass threshold ``glass``."""
    rng = np.random.RandomState(0)
    level0 = (rng.randint(246, 252, (640, 800, 3))).astype(np.uint8)
    level0[200:440, 240:560] = tissue(240, 320)
    path = aperio_tiff(tmp_path / "slide.tiff", [level0], mpp=0.5)
    config = tmp_path / "config.yaml"
    config.write_text("data:\n  cache: null\n  target_mpp: 2.0\n  canvas: 1024\n"
                      "  translate_px: 20\n  glass_to_white: {}\nout: {}\n".format(
                          glass or "null", tmp_path / "run"))
    return path, str(config)


def test_content_can_be_a_slide_read_as_training_does(tmp_path):
    path, config = _slide_and_config(tmp_path, 240)
    done = bench("--content", path, "--config", config, "--plan-only", "--tile", "256")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["content"] == path and result["size"] == 1024
    assert result["slide_shape"] == [160, 200] and result["glass_to_white"] == 240
    top, bottom, left, right = result["content_box"]
    # the glass is white: only the 60 x 80 px of tissue (rotated) is content
    assert max(bottom - top, right - left) < 110
    assert 1 <= result["flops_ratio"]


def test_a_slides_glass_is_content_unless_whitened(tmp_path):
    from model import bench as model_bench
    floors = {}
    for glass in (None, 240):
        folder = tmp_path / "glass-{}".format(glass)
        folder.mkdir()
        path, config = _slide_and_config(folder, glass)
        content = model_bench.slide_content(path, config)
        canvas = model_bench.content_canvas(content, 1024, None)    # centred, as predicted
        floors[glass] = model_bench.flops.floor_macs(canvas)
    assert 0 < floors[240] < 0.5 * floors[None]
