"""`python -m reproduce bench --content`: the paper's canvas with a small content, planned and
timed by the skipping streaming strategy (the figures themselves go to docs/benchmarks.md)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(*args):
    return subprocess.run([sys.executable, "-m", "reproduce", "bench"] + list(args), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)


def test_plan_only_follows_the_content_not_the_canvas():
    done = bench("--size", "21500", "--content", "1200x1000", "--plan-only", "--rotate", "30")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["mode"] == "plan" and result["rotate_deg"] == 30.0
    top, bottom, left, right = result["content_box"]
    # the rotated 1200 x 1000 box: 1200 cos 30 + 1000 sin 30 = 1539 px tall, plus bicubic taps
    assert 1530 <= bottom - top <= 1550 and 1460 <= right - left <= 1475
    assert result["computed_pixels"] < 0.02 * result["full_canvas_pixels"]
    assert result["computed_pixel_ratio"] == pytest.approx(result["computed_pixels"] / 21500 ** 2,
                                                           rel=1e-3)
    assert result["augment_seconds"] > 0 and result["proxy"] is not None


def test_a_content_step_reports_its_augmentation_and_ratio():
    done = bench("--size", "2400", "--content", "200x160", "--tile", "1024")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["content"] == [200, 160] and result["proxy"] is not None
    assert 0 < result["computed_pixel_ratio"] < 0.5 and result["tiles"] == 1
    assert 0 < result["augment_seconds"] < result["seconds_per_step"]
    assert result["peak_rss_gb"] > 0


@pytest.mark.parametrize("args", [
    ["--size", "1000", "--content", "200x200", "--mode", "direct"],
    ["--height", "1000", "--width", "900", "--content", "200x200"],
    ["--size", "1000", "--plan-only"],
    ["--size", "1000", "--content", "2000x200"],
    ["--size", "1000", "--content", "abc"],
])
def test_bad_input_is_one_line(args):
    done = bench(*args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.strip().startswith("error:")
