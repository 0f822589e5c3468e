"""The Python API as the README shows it: ``predict_slide`` on a slide file, CAM exported.

EXAMPLE is the README's example, word for word (the test checks that once the README holds
it); it runs here on a tiny synthetic Aperio slide with a checkpoint of a randomly initialised
model (weights none) that carries the demo config's input contract, in a folder laid out like
the demo's.
"""
import json
import os
import subprocess
import sys

import numpy as np

from tests.conftest import aperio_tiff, tissue

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXAMPLE = '''\
from reproduce import predict_slide
from model.cam import export_prediction

result = predict_slide("runs/demo/train/best.ckpt", "slide.svs", cam=True)
print("p = {:.3f} (logit {:+.3f})".format(result.probability, result.logit))
paths = export_prediction(result, "cams", name="slide")   # PNG overlay, level-0 GeoJSON
print(paths["geojson"], paths["regions"], "region(s)")
'''


def test_readme_example_runs(tmp_path):
    import tensorflow as tf
    tf.compat.v1.enable_v2_behavior()
    from model import checkpoint
    from model.config import load_config
    from model.resnet import build_model

    os.makedirs(str(tmp_path / "runs" / "demo" / "train"))
    demo = load_config(os.path.join(ROOT, "configs", "demo.yaml"))
    checkpoint.save(str(tmp_path / "runs" / "demo" / "train" / "best.ckpt"),
                    build_model("none"), {"epoch": 1}, contract=checkpoint.input_contract(demo))
    # 1100 x 900 px at 4 um/px: 138 x 113 px at the demo's 32 um/px, inside its 256 px canvas.
    aperio_tiff(str(tmp_path / "slide.svs"), [tissue(900, 1100, seed=2)], mpp=4.0)

    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", EXAMPLE], cwd=str(tmp_path), env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    first, second = p.stdout.strip().splitlines()
    probability = float(first.split()[2])
    assert 0.0 <= probability <= 1.0 and "logit" in first
    assert second.startswith(os.path.join("cams", "slide.geojson"))
    with open(str(tmp_path / "cams" / "slide.geojson")) as f:
        collection = json.load(f)
    assert collection["type"] == "FeatureCollection"
    assert len(collection["features"]) == int(second.split()[1])
    # Region vertices are level-0 pixels of the 1100 x 900 slide (a little slack at the edges).
    for feature in collection["features"]:
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert (ring >= -4).all() and (ring[:, 0] <= 1104).all() and (ring[:, 1] <= 904).all()
    assert os.path.getsize(str(tmp_path / "cams" / "slide.png")) > 0

    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    if "from reproduce import predict_slide" in readme:   # the README's copy is this one
        assert EXAMPLE in readme


def test_importing_reproduce_loads_no_tensorflow():
    code = "import sys, reproduce; assert callable(reproduce.predict_slide); " \
           "assert callable(reproduce.fit); print('tensorflow' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "False", p.stderr


def test_predict_slide_pads_itself_for_every_strategy():
    """An (image, mpp) pair: rescaled to target_mpp, placed on the canvas here; direct (the
    dense canvas) and streaming (the Canvas, padding never built) give the same numbers, and
    they are the model's on the training pipeline's padded canvas."""
    import tensorflow as tf
    tf.compat.v1.enable_v2_behavior()
    from data.augment import pad_to_canvas
    from model.resnet import build_model
    from reproduce import predict_slide
    tf.compat.v1.set_random_seed(0)
    model = build_model("none")
    model.head.kernel.assign(model.head.kernel * 1e-3)     # probabilities away from 0 and 1
    image = tissue(150, 200, seed=4)
    direct = predict_slide(model, (image, 8.0), target_mpp=8.0, canvas=256, strategy="direct",
                           cam=True)
    streaming = predict_slide(model, (image, 8.0), target_mpp=8.0, canvas=256,
                              strategy="streaming", cam=True)
    padded = pad_to_canvas(image, 256)[None].astype(np.float32)
    assert abs(direct.probability - float(model(padded).numpy()[0, 0])) <= 1e-5
    assert abs(direct.logit - streaming.logit) <= 1e-5 * max(1.0, abs(direct.logit))
    np.testing.assert_allclose(streaming.cam, direct.cam, rtol=0, atol=1e-4)
    assert direct.offset == (53, 28) and direct.cam.shape == (8, 8)
    half = predict_slide(model, (image, 4.0), target_mpp=8.0, canvas=256, strategy="direct")
    assert half.image_shape == (75, 100) and half.cam is None and half.level0_mpp == 4.0


# ------------------------------------------------------------------------ fit from graph mode

GRAPH_MODE_FIT = '''\
import json
import sys
import tensorflow as tf
from model.resnet import build_model
from reproduce import fit
m = build_model('none')          # TF1's default mode: the default graph now holds a model
result = fit(sys.argv[1], max_epochs=1, iterations_per_epoch=2)
print("eager", tf.executing_eagerly())
print("result", json.dumps(result))
'''


def test_fit_runs_from_graph_mode_in_a_child_process(tmp_path):
    """A fresh process builds a model in graph mode, then calls fit: the training runs in a
    child ``python -m reproduce train`` on the resolved config, and fit returns what it returns
    in-process, read back from the run directory."""
    import pandas as pd
    from model.checkpoint import read_state
    from tests.test_train import make_cohort, write_config
    make_cohort(str(tmp_path / "cache"), n_train=2, n_val=2)
    out = tmp_path / "run"
    config = write_config(tmp_path, out, batch_size=1, iterations_per_epoch=4, max_epochs=3)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", GRAPH_MODE_FIT, config], cwd=ROOT, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "fit: this process runs TensorFlow in graph mode" in p.stderr
    assert "train: done after 1 epochs" in p.stderr               # the child's own lines
    printed = dict(line.split(" ", 1) for line in p.stdout.strip().splitlines())
    assert printed["eager"] == "False"
    result = json.loads(printed["result"])
    state = read_state(str(out / "last.ckpt"))
    log = pd.read_csv(str(out / "train_log.csv"))
    assert result == dict(out=str(out), best=str(out / "best.ckpt"), last=str(out / "last.ckpt"),
                          log=str(out / "train_log.csv"), epochs=1, best_epoch=1,
                          best_val_loss=state["best_val_loss"])
    assert state["global_iteration"] == 2 and list(log["epoch"]) == [1]
    assert abs(log["val_loss"][0] - result["best_val_loss"]) <= 1e-6 * abs(log["val_loss"][0])
    assert os.path.isfile(result["best"]) and os.path.isfile(str(out / "fit_config.yaml"))


def test_fit_from_graph_mode_under_an_mpi_launcher_is_one_line(tmp_path):
    """Under mpirun every rank must train in its own process: refused, in one line."""
    from tests.test_train import write_config
    config = write_config(tmp_path, tmp_path / "run")
    code = ("import tensorflow as tf\nfrom reproduce import fit\nfrom model.gpu import "
            "GraphModeError\ntf.constant(0)\ntry:\n    fit({!r})\nexcept GraphModeError as e:\n"
            "    print(str(e))\n".format(config))
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", OMPI_COMM_WORLD_SIZE="1",
               OMPI_COMM_WORLD_RANK="0")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fit under an MPI launcher: ")
    assert "call fit at program start" in lines[0]
    assert not os.path.exists(str(tmp_path / "run"))
