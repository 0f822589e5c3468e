"""The Python API from TF1's default graph mode: a fresh process that builds the model first.

TensorFlow 1.15 starts in graph mode; a model built there lives in a graph, and eager execution
can no longer be switched on. ``predict_slide`` runs such a model in graph mode
(model/runner.py) and must give the eager numbers. The example below is the API's, run in a
fresh interpreter on a small synthetic slide with the weights of the eager reference (a
checkpoint written here), then once more from a checkpoint path, still in graph mode.
"""
import numpy as np

from tests.conftest import aperio_tiff, run_python, tissue

EXAMPLE = '''\
from model.resnet import build_model
from reproduce import predict_slide
m = build_model('none')
'''

# The reference weights into the graph's model, then the call of the example, and more.
RUN = EXAMPLE + '''\
import numpy as np
import tensorflow as tf
from model import checkpoint, gpu
checkpoint.restore("weights.ckpt", m, rng=False)
result = predict_slide(m, 'slide.svs', target_mpp=8.0, canvas=512, cam=True)
print("eager", tf.executing_eagerly())
print("p", repr(result.probability))
np.save("cam.npy", result.cam)
from_path = predict_slide("contract.ckpt", "slide.svs", cam=True)
print("path", repr(from_path.probability))
np.save("cam_path.npy", from_path.cam)
try:
    gpu.configure(gpu.session_config(gpu=False))
except gpu.GraphModeError as e:
    print("configure", str(e).count("\\n"))
'''


def test_the_api_example_runs_in_graph_mode_as_eagerly(tmp_path):
    import tensorflow as tf
    tf.compat.v1.enable_v2_behavior()
    from model import checkpoint
    from model.resnet import build_model
    from reproduce import predict_slide

    # 900 x 700 px at 4 um/px: 450 x 350 px at 8 um/px, inside the 512 px canvas.
    slide = aperio_tiff(str(tmp_path / "slide.svs"), [tissue(700, 900, seed=5)], mpp=4.0)
    tf.compat.v1.set_random_seed(7)
    model = build_model("none")
    model.head.kernel.assign(model.head.kernel * 1e-3)   # probabilities away from 0 and 1
    checkpoint.save(str(tmp_path / "weights.ckpt"), model, {"epoch": 1})
    contract = dict(data=dict(target_mpp=8.0, canvas=512))
    checkpoint.save(str(tmp_path / "contract.ckpt"), model, {"epoch": 1},
                    contract=checkpoint.input_contract(contract))
    eager = predict_slide(model, slide, target_mpp=8.0, canvas=512, cam=True)

    p = run_python(RUN, tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = dict(line.split(" ", 1) for line in p.stdout.strip().splitlines())
    assert out["eager"] == "False"                 # it really ran in graph mode
    assert out["configure"] == "0"                 # training's eager switch: one line, refused
    for name, cam in (("p", "cam.npy"), ("path", "cam_path.npy")):
        probability, grid = float(out[name]), np.load(str(tmp_path / cam))
        assert 0.0 < probability < 1.0 and grid.shape == eager.cam.shape == (16, 16)
        assert abs(probability - eager.probability) <= 1e-5, name
        np.testing.assert_allclose(grid, eager.cam, rtol=0,
                                   atol=1e-5 * max(1.0, float(np.abs(eager.cam).max())))
