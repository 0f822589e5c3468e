"""`python -m reproduce selfcheck` as a user runs it: JSON out, exit 0 when streaming matches the
whole image, 1 when it does not (a margin below the receptive-field radius), 2 on bad input."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def selfcheck(*args):
    return subprocess.run([sys.executable, "-m", "reproduce", "selfcheck"] + list(args), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)


def last_json(text):
    return json.loads(text.strip().splitlines()[-1])


def test_passes_non_square_not_multiple_of_32_with_trained_head():
    # 2 x 2 windows; the whole model first takes Adam steps, so the dense weights are trained
    done = selfcheck("--height", "641", "--width", "610", "--tile", "96", "--head", "trained",
                     "--train-steps", "1", "--perturb-bn")
    assert done.returncode == 0, done.stderr[-2000:]
    result = last_json(done.stdout)
    assert result["passed"] and result["tiles"] >= 2 and result["proxy"] is None
    assert result["logit_rel_error"] <= 1e-5 and result["cam_rel_error"] <= 1e-5
    assert result["gradient_max_rel_error"] <= 1e-4
    assert result["gradient_tensors"] == 108       # 106 backbone (BN frozen) + dense kernel, bias


def test_exits_1_when_margin_is_too_small():
    done = selfcheck("--height", "97", "--width", "1105", "--tile", "64", "--margin", "64")
    assert done.returncode == 1, done.stderr[-2000:]
    result = last_json(done.stdout)
    assert not result["passed"] and result["margin"] == 64
    assert result["gradient_max_rel_error"] > 1e-4


def test_content_skips_the_fill_and_stays_exact():
    """A uniform-fill canvas with augmented tissue off centre: the proxy stands for the fill."""
    done = selfcheck("--height", "1400", "--width", "1300", "--content", "150x120", "--tile",
                     "768", "--perturb-bn")
    assert done.returncode == 0, done.stderr[-2000:]
    result = last_json(done.stdout)
    assert result["passed"] and result["proxy"] is not None and result["content"] == [150, 120]
    assert 0 < result["computed_pixel_ratio"] < 1.0
    top, bottom, left, right = result["content_box"]
    assert 0 <= top < bottom <= 1400 and 0 <= left < right <= 1300
    assert abs((top + bottom) / 2 - 700) > 50 or abs((left + right) / 2 - 650) > 50  # off centre


@pytest.mark.parametrize("args", [["--tile", "33"], ["--size", "0"], ["--content", "12"],
                                  ["--content", "0x5"]])
def test_bad_input_is_one_line(args):
    done = selfcheck(*args)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.strip().startswith("error:")
