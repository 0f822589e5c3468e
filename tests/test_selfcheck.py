"""`python -m reproduce selfcheck` as a user runs it: JSON out, exit 0 when streaming matches the
whole image, 1 when it does not (a margin below the receptive-field radius), 2 on bad input; both
engines (levels, the default, in one super-window and in several; the one-level windows); and
its float64 reference (really float64, equal to float32 within float32's precision) and the rule
that judges streaming's error by the float32 whole image's own error against it."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import reproduce

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def selfcheck(*args):
    return reproduce("selfcheck", *args)


def last_json(text):
    return json.loads(text.strip().splitlines()[-1])


# The runs that build ResNet-50, by the test that reads each.
LEVELS_CANVAS = ["--height", "608", "--width", "352", "--content", "150x120", "--perturb-bn"]
RUNS = {
    # 2 x 2 windows; the whole model first takes Adam steps, so the dense weights are trained
    "test_passes_non_square_not_multiple_of_32_with_trained_head": [
        "--engine", "windows", "--height", "641", "--width", "610", "--tile", "96", "--head",
        "trained", "--train-steps", "1", "--perturb-bn"],
    "test_exits_1_when_margin_is_too_small": [
        "--engine", "windows", "--height", "97", "--width", "1105", "--tile", "64", "--margin",
        "64"],
    # 1217 x 893 px (neither a multiple of 32): one tile around the tissue plus a 513 x 509 px
    # proxy for the fill compute ~94% of the canvas, near the smallest canvas on which skipping
    # pays at all for this content (1400 x 1300: 69%, but 1.7 x the reference's whole-image work).
    "test_content_skips_the_fill_and_stays_exact": [
        "--engine", "windows", "--height", "1217", "--width", "893", "--content", "150x120",
        "--tile", "768", "--perturb-bn"],
    # Levels (the default engine) on tissue rotated by 288 degrees, off centre and cut by the
    # right edge: rows longer than the proxy (512 of 608 px, so its maps are not the identity),
    # once in one super-window (~30 s) and once split by --tile 192 into 6 (~60 s).
    "test_levels_one_super_window": LEVELS_CANVAS,
    "test_levels_split_into_super_windows": LEVELS_CANVAS + ["--tile", "192"],
}
# Runs that a test compares with besides its own.
ALSO_READS = {"test_levels_split_into_super_windows": ["test_levels_one_super_window"]}


@pytest.fixture(scope="module")
def started(request, tmp_path_factory):
    """The selected tests' selfcheck runs, started together when the first of them needs one:
    each spends ~15 s single-threaded (imports, building ResNet-50, tracing), which two cores
    overlap. Returns a function: test name -> CompletedProcess."""
    selected = {item.originalname or item.name for item in request.session.items}
    selected |= {other for name in selected for other in ALSO_READS.get(name, ())}
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
    assert_judged_against_float64(result, passed=True)


def test_exits_1_when_margin_is_too_small(started):
    done = started("test_exits_1_when_margin_is_too_small")
    assert done.returncode == 1, done.stderr[-2000:]
    result = last_json(done.stdout)
    assert not result["passed"] and result["margin"] == 64
    assert result["gradient_max_rel_error"] > 1e-4
    assert_judged_against_float64(result, passed=False)


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
    assert_judged_against_float64(result, passed=True)


def levels_result(started, name):
    """A levels run's JSON, checked to pass and to report the levels engine's fields."""
    done = started(name)
    assert done.returncode == 0, done.stderr[-2000:]
    result = last_json(done.stdout)
    assert result["passed"] and result["engine"] == "levels"
    assert not {"tiles", "computed_pixel_ratio", "margin"} & set(result)
    assert result["content"] == [150, 120] and result["proxy"] == [512, 352]
    top, bottom, left, right = result["content_box"]
    assert abs((top + bottom) / 2 - 304) > 50 or abs((left + right) / 2 - 176) > 50
    assert bottom - top > 150       # turned by other than a multiple of 90 degrees: a wider box
    assert result["logit_rel_error"] <= 1e-5 and result["cam_rel_error"] <= 1e-5
    assert result["gradient_max_rel_error"] <= 1e-4 and result["gradient_tensors"] == 108
    assert 0 < result["floor_flops"] < result["planned_flops"]
    assert result["flops_ratio"] == pytest.approx(
        result["planned_flops"] / result["floor_flops"], abs=1e-4)
    assert_judged_against_float64(result, passed=True)
    return result


def test_levels_one_super_window(started):
    result = levels_result(started, "test_levels_one_super_window")
    assert result["tile"] is None and result["super_windows"] == 1
    assert result["windows"] >= 17      # at least one window on each level


def test_levels_split_into_super_windows(started):
    """--tile 192 (at most 6 output cells a side): several super-windows, the same numbers, more
    work (each super-window recomputes its cells' receptive fields) above the same floor."""
    split = levels_result(started, "test_levels_split_into_super_windows")
    whole = levels_result(started, "test_levels_one_super_window")
    assert split["tile"] == 192 and split["super_windows"] > 1
    assert split["windows"] > whole["windows"]
    assert split["floor_flops"] == whole["floor_flops"]
    assert split["planned_flops"] > whole["planned_flops"]
    assert split["logit"] == pytest.approx(whole["logit"], abs=1e-5)


def assert_judged_against_float64(result, passed):
    """The JSON's float64 block: both sides' errors, the stated rule, and a verdict that follows
    from the limiting tensor's ratio."""
    block, rule = result["against_float64"], result["criterion"]
    assert rule["factor"] == 4.0 and rule["floor"] == 1e-6 and rule["reference"].startswith(
        "float64")
    for side in ("streaming", "whole_float32"):
        assert set(block[side]) == {"logit_rel_error", "loss_rel_error", "cam_rel_error",
                                    "gradient_max_rel_error", "gradient_worst_tensor"}
    # float32's own error against float64 is float32 rounding: small, but not 0 on every tensor
    assert 0 < block["whole_float32"]["gradient_max_rel_error"] < 1e-3
    limiting = block["limiting"]
    assert limiting["allowed"] == pytest.approx(4.0 * limiting["whole_float32"] + 1e-6)
    assert limiting["ratio"] == pytest.approx(limiting["streaming"] / limiting["allowed"])
    assert result["passed"] is passed and (limiting["ratio"] <= 1.0) is passed
    if not passed:      # an inexact margin is far outside float32's rounding, not near it
        assert limiting["ratio"] > 100


@pytest.mark.parametrize("args", [["--tile", "33"], ["--size", "0"], ["--content", "12"],
                                  ["--content", "0x5"], ["--engine", "tiles"]])
def test_bad_input_is_one_line(args):
    done = selfcheck(*args)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.strip().startswith("error:")


@pytest.mark.parametrize("args", [["--margin", "64"], ["--engine", "levels", "--margin", "64"]])
def test_margin_is_refused_with_the_levels_engine(args):
    """The inexact margin is the windows engine's: with levels (the default) it is a user
    error, one line, before any model is built."""
    done = selfcheck(*args)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --margin") and "windows" in lines[0]


def test_check_refuses_margin_with_levels_and_unknown_engines():
    from model.selfcheck import check
    with pytest.raises(ValueError, match="windows engine only"):
        check(32, 32, margin=64)
    with pytest.raises(ValueError, match="engine must be one of"):
        check(32, 32, engine="tiles")


# In-process: the float64 copy and the rule, on a small image (seconds).

@pytest.fixture(scope="module")
def tiny():
    """A float32 model with random frozen BN and a random head, its float64 copy, a 70 x 600 px
    image, and the float32 and float64 whole-image results on it, by tensor name."""
    tf = pytest.importorskip("tensorflow")
    tf.compat.v1.enable_v2_behavior()
    from model import selfcheck
    from model.resnet import build_model
    tf.compat.v1.set_random_seed(0)
    model = build_model("none")
    selfcheck.perturb_batchnorm(model, seed=0)
    image = selfcheck.synthetic_tissue(70, 600, seed=5)
    selfcheck.set_random_head(model, image, seed=0)
    copy = selfcheck.Float64Copy(model)
    names = [v.name for v in model.trainable_variables]
    results = dict(float32=selfcheck.whole_image(model, image, 1.0),
                   float64=selfcheck.whole_image_float64(copy, image, 1.0),
                   float64_one_tape=selfcheck.whole_image(copy, image, 1.0))
    tensors = {kind: selfcheck.named_tensors(results[kind], names)
               for kind in ("float32", "float64")}
    return dict(tf=tf, selfcheck=selfcheck, model=model, copy=copy, image=image,
                results=results, tensors=tensors, names=names)


def test_float64_copy_holds_and_computes_float64(tiny):
    tf, copy = tiny["tf"], tiny["copy"]
    assert {v.dtype for v in copy.base.variables + copy.head.variables} == {tf.float64}
    assert len(copy.trainable_variables) == len(tiny["model"].trainable_variables) == 108
    batchnorms = [layer for layer in copy.base.layers
                  if isinstance(layer, tf.keras.layers.BatchNormalization)]
    assert len(batchnorms) == 53 and not any(bn.trainable or bn.fused for bn in batchnorms)
    features = copy.backbone(tf.constant(tiny["image"][None], tf.float32))
    assert features.dtype == tf.float64
    results = tiny["results"]["float64"]
    assert all(g.dtype == np.float64 for g in results["grads"])
    assert results["cam"].dtype == np.float64
    # every op of the traced network outputs float64 (no float32 step hidden inside a layer)
    traced = tf.function(lambda x: copy.base(x, training=False))
    concrete = traced.get_concrete_function(tf.TensorSpec([1, 64, 96, 3], tf.float64))
    kinds = {t.dtype for op in concrete.graph.get_operations() for t in op.outputs}
    assert tf.float64 in kinds and not kinds & {tf.float32, tf.float16, tf.bfloat16}


def test_float64_block_by_block_equals_one_tape(tiny):
    """The reference's block-wise backward (each block rerun from its stored input) computes
    the whole-image gradient of one tape over the whole network, to float64 rounding."""
    relative = tiny["selfcheck"].relative_errors(
        tiny["selfcheck"].named_tensors(tiny["results"]["float64_one_tape"], tiny["names"]),
        tiny["tensors"]["float64"])
    assert max(relative.values()) <= 1e-12
    assert len(tiny["copy"].segments) == 17       # the stem and 16 residual blocks
    assert sum(len(s.variables) for s in tiny["copy"].segments) == 106


def test_float64_agrees_with_float32_within_its_precision(tiny):
    """Same weights and frozen statistics (random BN: batch statistics would be far off); the
    only difference is float32 rounding: ~1e-7 to 1e-6 on the logit, the loss and the CAM, and
    on most gradients, not exactly 0. A ReLU input that rounding moves across 0 changes a
    gradient by one position's share of it, and which ReLUs are that close to 0 differs from one
    CPU to another: on one, no gradient moved by over 1e-5; on another, 44 of the 108 did, the
    worst (conv3_block4_1_conv's, 675 positions) by 1.4e-3. So the gradients are held to 1e-5
    at the median and 1e-2 at most; a copy that computed another network would be off by far
    more on the logit alone."""
    relative = tiny["selfcheck"].relative_errors(tiny["tensors"]["float32"],
                                                 tiny["tensors"]["float64"])
    assert max(relative[k] for k in ("logit", "loss", "cam")) <= 1e-6
    gradients = [e for name, e in relative.items() if name not in ("logit", "loss", "cam")]
    assert len(gradients) == 108
    assert np.median(gradients) <= 1e-5 and max(gradients) <= 1e-2
    assert max(relative.values()) > 0


def test_judge_passes_within_the_factor_and_fails_far_outside(tiny):
    selfcheck = tiny["selfcheck"]
    reference, float32 = tiny["tensors"]["float64"], tiny["tensors"]["float32"]
    own = selfcheck.relative_errors(float32, reference)
    from model.streaming import Streaming
    streaming = Streaming(tiny["model"], tile=64)
    ours = selfcheck.named_tensors(
        selfcheck.streaming_results(streaming, tiny["image"], 1.0), tiny["names"])
    verdict = selfcheck.judge(selfcheck.relative_errors(ours, reference), own)
    assert verdict["passed"] and verdict["ratio"] <= 1.0
    # one gradient entry moved by 1% of the tensor's largest entry: far outside, and named (the
    # tensor that float32 itself computes best: one that a ReLU near 0 did not move)
    name = min(tiny["names"], key=own.get)
    moved = dict(ours)
    moved[name] = ours[name].copy()
    moved[name].flat[0] += 0.01 * np.max(np.abs(reference[name]))
    verdict = selfcheck.judge(selfcheck.relative_errors(moved, reference), own)
    assert not verdict["passed"] and verdict["tensor"] == name and verdict["ratio"] > 100


def test_judge_factor_and_floor():
    from model.selfcheck import judge
    float32 = {"logit": 0.0, "loss": 2e-7, "cam": 1e-7, "g": 1e-5}
    assert judge({"logit": 9e-7, "loss": 1e-6, "cam": 1e-7, "g": 3.9e-5}, float32)["passed"]
    # the floor alone: float32 exact on the logit, streaming 2e-6 off
    verdict = judge({"logit": 2e-6, "loss": 0.0, "cam": 0.0, "g": 0.0}, float32)
    assert not verdict["passed"] and verdict["tensor"] == "logit"
    # the factor: 4.2x float32's own error on g
    verdict = judge({"logit": 0.0, "loss": 0.0, "cam": 0.0, "g": 4.2e-5}, float32)
    assert not verdict["passed"] and verdict["tensor"] == "g"
    assert verdict["allowed"] == pytest.approx(4e-5 + 1e-6)
