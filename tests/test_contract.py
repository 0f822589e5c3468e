"""A checkpoint knows its input: `predict` without --config, refusals, older checkpoints.

Two tiny Aperio slides, a randomly initialised ResNet-50 (weights none) saved with the input
contract of its config, and as older files without one (recording that config, a config since
deleted, or nothing). Slides are 138 x 113 px at 32 um/px: a `predict` run is mostly the
model's loading.
"""
import os

import numpy as np
import pandas as pd
import pytest

from tests.conftest import aperio_tiff, tissue

TARGET_MPP = 32.0
CANVAS = 160


def _write_config(path, cache, target_mpp=TARGET_MPP, canvas=CANVAS, out="run"):
    with open(path, "w") as f:
        f.write("data:\n  cache: {}\n  target_mpp: {}\n  canvas: {}\nmodel:\n  weights: none\n"
                "out: {}\n".format(cache, target_mpp, canvas, out))
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import tensorflow as tf
    tf.compat.v1.enable_v2_behavior()
    from model import checkpoint
    from model.config import load_config
    from model.resnet import build_model

    root = tmp_path_factory.mktemp("contract")
    rows = []
    for i, label in enumerate((1, 0)):
        path = aperio_tiff(str(root / "s{}.svs".format(i)), [tissue(900, 1100, seed=i)], mpp=4.0)
        rows.append(dict(slide_id="s{}".format(i), path=os.path.basename(path), label=label,
                         split="test"))
    manifest = str(root / "manifest.csv")
    pd.DataFrame(rows).to_csv(manifest, index=False)
    right = _write_config(root / "right.yaml", str(root / "nocache"))
    wrong = _write_config(root / "wrong.yaml", str(root / "nocache"), target_mpp=16.0)

    tf.compat.v1.set_random_seed(3)
    model = build_model("none")
    model.head.kernel.assign(model.head.kernel * 1e-3)   # probabilities away from 0 and 1
    ckpts = dict(contract=str(root / "best.ckpt"), recorded=str(root / "recorded.ckpt"),
                 bare=str(root / "bare.ckpt"), gone=str(root / "gone.ckpt"))
    checkpoint.save(ckpts["contract"], model, {"epoch": 1},
                    contract=checkpoint.input_contract(load_config(right)))
    checkpoint.save(ckpts["recorded"], model, {"epoch": 1, "config": right})
    checkpoint.save(ckpts["bare"], model, {"epoch": 1})
    checkpoint.save(ckpts["gone"], model, {"epoch": 1, "config": str(root / "deleted.yaml")})
    return dict(root=root, manifest=manifest, right=right, wrong=wrong, ckpts=ckpts)


def _predict(s, capsys, ckpt, name, *extra):
    """(exit status, probabilities or None, stderr lines) of `reproduce predict`."""
    from reproduce.__main__ import main
    capsys.readouterr()
    out = str(s["root"] / name)
    rc = main(["predict", "--checkpoint", s["ckpts"][ckpt], "--manifest", s["manifest"],
               "--out", out] + list(extra))
    err = capsys.readouterr().err.strip().splitlines()
    probabilities = None
    if rc == 0:
        probabilities = pd.read_csv(os.path.join(out, "predictions.csv"))["probability"].values
    return rc, probabilities, err


@pytest.fixture(scope="module")
def with_right_config(setup):
    """Probabilities of the contract checkpoint with the right --config (the reference)."""
    from reproduce.__main__ import main
    out = str(setup["root"] / "reference")
    assert main(["predict", "--checkpoint", setup["ckpts"]["contract"], "--manifest",
                 setup["manifest"], "--config", setup["right"], "--out", out]) == 0
    return pd.read_csv(os.path.join(out, "predictions.csv"))["probability"].values


def test_the_contract_is_stored_and_read(setup):
    from model import checkpoint
    contract = checkpoint.read_contract(setup["ckpts"]["contract"])
    assert contract == {"data.target_mpp": TARGET_MPP, "data.canvas": CANVAS,
                        "data.resample": "area", "data.glass_to_white": None,
                        "preprocessing": "caffe", "head": "gap-dense1-sigmoid"}
    assert checkpoint.read_state(setup["ckpts"]["contract"]) == {"epoch": 1}
    assert checkpoint.read_contract(setup["ckpts"]["bare"]) is None


def test_predict_without_config_uses_the_contract(setup, capsys, with_right_config):
    rc, probabilities, err = _predict(setup, capsys, "contract", "no-config")
    assert rc == 0 and not [line for line in err if line.startswith("note:")], err
    assert len(probabilities) == 2 and np.ptp(with_right_config) > 0
    np.testing.assert_allclose(probabilities, with_right_config, rtol=0, atol=1e-6)


def test_a_contradicting_config_is_refused_in_one_line(setup, capsys):
    rc, _, err = _predict(setup, capsys, "contract", "refused", "--config", setup["wrong"])
    assert rc == 2 and len(err) == 1, err
    assert err[0] == "error: {} was trained at data.target_mpp 32.0, {} says 16.0".format(
        setup["ckpts"]["contract"], setup["wrong"])


def test_the_api_reads_the_contract_and_refuses_other_values(setup, with_right_config):
    from model.checkpoint import CheckpointError
    from reproduce import predict_slide
    slide = str(setup["root"] / "s0.svs")
    result = predict_slide(setup["ckpts"]["contract"], slide)
    assert result.target_mpp == TARGET_MPP and result.canvas == CANVAS
    assert abs(result.probability - with_right_config[0]) <= 1e-6
    with pytest.raises(CheckpointError) as e:
        predict_slide(setup["ckpts"]["contract"], slide, canvas=256)
    assert str(e.value) == "{} was trained with data.canvas 160, the argument canvas says " \
                           "256".format(setup["ckpts"]["contract"])
    with pytest.raises(CheckpointError, match="data.target_mpp 32.0, .*wrong.yaml says 16.0"):
        predict_slide(setup["ckpts"]["contract"], slide, config=setup["wrong"])


def test_an_older_checkpoint_takes_its_recorded_config(setup, capsys, with_right_config):
    rc, probabilities, err = _predict(setup, capsys, "recorded", "recorded")
    notes = [line for line in err if line.startswith("note:")]
    assert rc == 0 and len(notes) == 1, err
    assert "carries no input contract" in notes[0] and setup["right"] in notes[0]
    assert "the config it records" in notes[0]
    np.testing.assert_allclose(probabilities, with_right_config, rtol=0, atol=1e-6)
    # A --config that contradicts the recorded one: refused like the contract's.
    rc, _, err = _predict(setup, capsys, "recorded", "refused-old", "--config", setup["wrong"])
    assert rc == 2 and len(err) == 1 and "by the config it records" in err[0] and \
        "data.target_mpp 32.0" in err[0] and "says 16.0" in err[0], err


def test_an_older_checkpoint_takes_the_given_config(setup, capsys, with_right_config):
    rc, probabilities, err = _predict(setup, capsys, "bare", "bare", "--config", setup["right"])
    notes = [line for line in err if line.startswith("note:")]
    assert rc == 0 and len(notes) == 1, err
    assert "taken from {} (it records no config)".format(setup["right"]) in notes[0]
    np.testing.assert_allclose(probabilities, with_right_config, rtol=0, atol=1e-6)


def test_an_older_checkpoint_without_any_config_is_one_line(setup, capsys):
    for ckpt, why in (("bare", "it records no config"), ("gone", "deleted.yaml, is gone")):
        rc, _, err = _predict(setup, capsys, ckpt, "none-" + ckpt)
        assert rc == 2 and len(err) == 1 and why in err[0] and "--config" in err[0], err


def test_resume_checks_the_config_against_the_checkpoint(setup):
    from model import checkpoint
    from model.config import load_config
    assert checkpoint.check_config(setup["ckpts"]["contract"], load_config(setup["right"])) \
        is None
    with pytest.raises(checkpoint.CheckpointError, match="data.target_mpp 32.0, .* says 16.0"):
        checkpoint.check_config(setup["ckpts"]["contract"], load_config(setup["wrong"]))
    notice = checkpoint.check_config(setup["ckpts"]["bare"], load_config(setup["right"]))
    assert "carries no input contract" in notice and "\n" not in notice


def test_a_contract_for_other_code_is_refused(setup, tmp_path):
    import json
    from model import checkpoint
    path = str(tmp_path / "other.ckpt")
    with np.load(setup["ckpts"]["contract"]) as z:
        arrays = {k: z[k] for k in z.files}
    contract = json.loads(str(arrays["contract"]))
    arrays["contract"] = np.array(json.dumps(dict(contract, preprocessing="torch")))
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.read_contract(path)
    assert str(e.value) == "{} was trained with preprocessing torch, this package's model has " \
                           "caffe".format(path)
