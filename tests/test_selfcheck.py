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


# The three runs that build ResNet-50, by the test that reads each.
RUNS = {
    # 2 x 2 windows; the whole model first takes Adam steps, so the dense weights are trained
    "test_passes_non_square_not_multiple_of_32_with_trained_head": [
        "--height", "641", "--width", "610", "--tile", "96", "--head", "trained",
        "--train-steps", "1", "--perturb-bn"],
    "test_exits_1_when_margin_is_too_small": [
        "--height", "97", "--width", "1105", "--tile", "64", "--margin", "64"],
    # 1217 x 893 px (neither a multiple of 32): one tile around the tissue plus a 513 x 509 px
    # proxy for the fill compute ~94% of the canvas, near the smallest canvas on which skipping
    # pays at all for this content (1400 x 1300: 69%, but 1.7 x the reference's whole-image work).
    "test_content_skips_the_fill_and_stays_exact": [
        "--height", "1217", "--width", "893", "--content", "150x120", "--tile", "768",
        "--perturb-bn"],
}


@pytest.fixture(scope="module")
def started(request, tmp_path_factory):
    """The selected tests' selfcheck runs, started together when the first of them needs one:
    each spends ~15 s single-threaded (imports, building ResNet-50, tracing), which two cores
    overlap. Returns a function: test name -> CompletedProcess."""
    selected = {item.originalname or item.name for item in request.session.items}
    folder = tmp_path_factory.mktemp("selfcheck")
    running = {}
    for name, args in RUNS.items():
        if name in selected:
            out = open(str(folder / (name + ".out")), "w")
            err = open(str(folder / (name + ".err")), "w")
            running[name] = (subprocess.Popen(
                [sys.executable, "-m", "reproduce", "selfcheck"] + args, cwd=ROOT, stdout=out,
                stderr=err), out, err)

    def finish(name):
        process, out, err = running[name]
        process.wait(timeout=900)
        out.close()
        err.close()
        with open(out.name) as o, open(err.name) as e:
            return subprocess.CompletedProcess(process.args, process.returncode, o.read(), e.read())
    yield finish
    for process, out, err in running.values():
        if process.poll() is None:
            process.kill()
            process.wait()
        out.close()
        err.close()


def test_passes_non_square_not_multiple_of_32_with_trained_head(started):
    done = started("test_passes_non_square_not_multiple_of_32_with_trained_head")
    assert done.returncode == 0, done.stderr[-2000:]
    result = last_json(done.stdout)
    assert result["passed"] and result["tiles"] >= 2 and result["proxy"] is None
    assert result["logit_rel_error"] <= 1e-5 and result["cam_rel_error"] <= 1e-5
    assert result["gradient_max_rel_error"] <= 1e-4
    assert result["gradient_tensors"] == 108       # 106 backbone (BN frozen) + dense kernel, bias


def test_exits_1_when_margin_is_too_small(started):
    done = started("test_exits_1_when_margin_is_too_small")
    assert done.returncode == 1, done.stderr[-2000:]
    result = last_json(done.stdout)
    assert not result["passed"] and result["margin"] == 64
    assert result["gradient_max_rel_error"] > 1e-4


def test_content_skips_the_fill_and_stays_exact(started):
    """A uniform-fill canvas with augmented tissue off centre: the proxy stands for the fill."""
    done = started("test_content_skips_the_fill_and_stays_exact")
    assert done.returncode == 0, done.stderr[-2000:]
    result = last_json(done.stdout)
    assert result["passed"] and result["proxy"] is not None and result["content"] == [150, 120]
    assert 0 < result["computed_pixel_ratio"] < 1.0
    top, bottom, left, right = result["content_box"]
    assert 0 <= top < bottom <= 1217 and 0 <= left < right <= 893
    # off centre
    assert abs((top + bottom) / 2 - 608.5) > 50 or abs((left + right) / 2 - 446.5) > 50


@pytest.mark.parametrize("args", [["--tile", "33"], ["--size", "0"], ["--content", "12"],
                                  ["--content", "0x5"]])
def test_bad_input_is_one_line(args):
    done = selfcheck(*args)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.strip().startswith("error:")
