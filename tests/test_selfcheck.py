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
    assert result["passed"] and result["tiles"] == 4
    assert result["logit_rel_error"] <= 1e-5 and result["cam_rel_error"] <= 1e-5
    assert result["gradient_max_rel_error"] <= 1e-4
    assert result["gradient_tensors"] == 108       # 106 backbone (BN frozen) + dense kernel, bias


def test_exits_1_when_margin_is_too_small():
    done = selfcheck("--height", "97", "--width", "1105", "--tile", "64", "--margin", "64")
    assert done.returncode == 1, done.stderr[-2000:]
    result = last_json(done.stdout)
    assert not result["passed"] and result["margin"] == 64
    assert result["gradient_max_rel_error"] > 1e-4


@pytest.mark.parametrize("args", [["--tile", "33"], ["--size", "0"]])
def test_bad_input_is_one_line(args):
    done = selfcheck(*args)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.strip().startswith("error:")
