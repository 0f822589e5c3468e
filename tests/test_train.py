"""reproduce train under real mpirun: gradients across ranks, the schedule, kill -9 + --resume,
a dying rank, and the CSV/TensorBoard/checkpoint outputs.

The cohort is built here as a prepare cache (index.csv + PNGs): 64 x 64 px slides where the
positives carry a dark blue-purple focus on pink tissue, so a few Adam steps lower the loss.
"""
import csv
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from model.loss import bce
from tests.mpi import mpi_env, mpirun

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64   # px


def make_cohort(cache_dir, n_train=8, n_val=4, seed=0):
    """A prepare cache of easy 64 px slides: tissue everywhere, a dark focus on positives."""
    from data.cache import encode_image
    rng = np.random.RandomState(seed)
    os.makedirs(cache_dir, exist_ok=True)
    rows = []
    for i in range(n_train + n_val):
        label = i % 2
        image = np.full((SIZE, SIZE, 3), (235, 180, 200), np.uint8)
        image = np.clip(image + rng.randint(-12, 13, image.shape), 0, 255).astype(np.uint8)
        if label:
            y, x = rng.randint(8, SIZE - 32, 2)
            image[y:y + 24, x:x + 24] = (60, 30, 110)
        name = "s{:02d}.png".format(i)
        with open(os.path.join(cache_dir, name), "wb") as f:
            f.write(encode_image(image, "png"))
        rows.append(dict(slide_id="s{:02d}".format(i), path="synthetic/s{:02d}.tiff".format(i),
                         label=label, split="train" if i < n_train else "val", cache_file=name,
                         height=SIZE, width=SIZE, mpp=8.0, slide_mpp=0.25))
    pd.DataFrame(rows).to_csv(os.path.join(cache_dir, "index.csv"), index=False)
    return cache_dir


def write_config(tmp_path, out, **train):
    t = dict(strategy="direct", batch_size=2, learning_rate=1e-3, reduced_learning_rate=1e-4,
             iterations_per_epoch=4, patience=2, max_epochs=2, augment=False, seed=0,
             checkpoint_every=2, threads=1)
    t.update(train)
    cfg = {"data": {"cache": str(tmp_path / "cache"), "target_mpp": 8.0, "canvas": SIZE,
                    "translate_px": 0},
           "model": {"weights": "none"}, "train": t, "out": str(out)}
    path = str(tmp_path / "{}.yaml".format(os.path.basename(str(out))))
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def train(np_, config, *extra, env=None, timeout=240):
    return mpirun(np_, "-m", "reproduce", "train", "--config", config, *extra, env=env,
                  timeout=timeout, cwd=ROOT)


def read_log(out):
    with open(os.path.join(str(out), "train_log.csv")) as f:
        return list(csv.DictReader(f))


def checkpoint_arrays(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files if k.startswith(("model/", "optimizer/"))}


# ------------------------------------------------------------------------ pure pieces

def test_mpi_launcher_detection():
    """One reading of the launchers' variables (data.mpi) for train and prepare alike."""
    from data import mpi
    assert not mpi.launched({}) and mpi.world_size({}) == 1 and mpi.rank({}) == 0
    openmpi = {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3"}
    assert mpi.launched(openmpi) and (mpi.world_size(openmpi), mpi.rank(openmpi)) == (4, 3)
    hydra = {"PMI_SIZE": "3", "PMI_RANK": "2"}
    assert mpi.launched(hydra) and (mpi.world_size(hydra), mpi.rank(hydra)) == (3, 2)
    pmix = {"PMIX_RANK": "1"}     # PMIx names the rank only: MPI itself knows the size
    assert mpi.launched(pmix) and (mpi.world_size(pmix), mpi.rank(pmix)) == (1, 1)


def test_bce_is_stable():
    for z in (-800.0, -3.0, 0.0, 2.5, 800.0):
        for y in (0.0, 1.0):
            exact = np.logaddexp(0.0, z) - z * y     # -log(sigmoid(z)^y (1 - sigmoid(z))^(1-y))
            assert abs(bce(z, y) - float(exact)) < 1e-9 * max(1.0, abs(z))


# ------------------------------------------------------------------------ under mpirun

GRADIENT_WORKER = r"""
import sys
import numpy as np
import tensorflow as tf
tf.compat.v1.enable_v2_behavior()
# One thread per process: the same summation order in both runs. With Eigen's default pool the
# order follows the machine's load, and the unnormalised random-init network (logits in the
# thousands) amplifies that rounding to 1e-3 in some tensors.
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
import horovod.tensorflow as hvd
from model import checkpoint
from model.direct import Direct
from model.resnet import build_model
from model.training import Collective, batch_gradients

out, weights = sys.argv[1], sys.argv[2]
hvd.init()
model = build_model("none")
collective = Collective(hvd, tf)
if hvd.size() > 1:
    collective.broadcast_variables(model.variables)
    if hvd.rank() == 0:
        checkpoint.save(weights, model, {})
else:
    # Started together with the 2-rank job: wait for its weights (saved atomically, so the
    # file appears whole).
    import os, time
    deadline = time.time() + 280
    while not os.path.isfile(weights) and time.time() < deadline:
        time.sleep(0.2)
    checkpoint.restore(weights, model)
images = [np.random.RandomState(s).randint(0, 256, (64, 96, 3)).astype(np.uint8)
          for s in (10, 11, 12, 13)]
slides = list(zip(images, [1.0, 0.0, 0.0, 1.0]))
# Equal shares: a batch of 2, one slide per rank. Unequal shares (a balanced assignment): a
# batch of 4, rank 0 one slide, rank 1 three.
equal, unequal = slides[:2], slides
if hvd.size() > 1:
    equal = [equal[hvd.rank()]]
    unequal = [unequal[0]] if hvd.rank() == 0 else unequal[1:]
grads, sums = batch_gradients(Direct(model), equal, collective, batch_size=2)
balanced, _ = batch_gradients(Direct(model), unequal, collective, batch_size=4)
if hvd.rank() == 0:
    np.savez(out, *[g.numpy() for g in grads])
    np.savez(out.replace(".npz", "_unequal.npz"), *[g.numpy() for g in balanced])
"""


def test_two_rank_gradients_equal_one_rank_batch_of_two(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(GRADIENT_WORKER)
    weights = str(tmp_path / "w.ckpt")
    # One process, no mpirun: both slides accumulated on the one rank (accumulation 2). It starts
    # now, builds its model while the 2-rank job runs, then waits for that job's weights.
    with open(str(tmp_path / "one.log"), "w") as log:
        one = subprocess.Popen([sys.executable, str(script), str(tmp_path / "one.npz"), weights],
                               env=mpi_env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        two = mpirun(2, str(script), str(tmp_path / "two.npz"), weights, timeout=300)
        assert two.returncode == 0, two.stderr[-2000:]
        one.wait(timeout=300)
    finally:
        if one.poll() is None:
            one.kill()
            one.wait()
    with open(str(tmp_path / "one.log")) as f:
        assert one.returncode == 0, f.read()[-2000:]
    with np.load(str(tmp_path / "two.npz")) as a, np.load(str(tmp_path / "one.npz")) as b:
        assert len(a.files) == len(b.files) == 108
        worst = 0.0
        for k in a.files:
            scale = max(float(np.abs(b[k]).max()), 1e-12)
            worst = max(worst, float(np.abs(a[k] - b[k]).max()) / scale)
    # Stated tolerance: 1e-5 of each tensor's largest gradient (float32 sums in another order).
    print("worst relative difference", worst)
    assert worst < 1e-5, worst
    # Ranks holding unequal counts (1 and 3 slides of a batch of 4): each contributes its sum /
    # 4, the ranks' parts are summed, and the update equals the one-rank mean over the 4 slides.
    with np.load(str(tmp_path / "two_unequal.npz")) as a, \
            np.load(str(tmp_path / "one_unequal.npz")) as b:
        assert len(a.files) == len(b.files) == 108
        worst = max(float(np.abs(a[k] - b[k]).max()) / max(float(np.abs(b[k]).max()), 1e-12)
                    for k in a.files)
    print("unequal shares: worst relative difference", worst)
    assert worst < 1e-5, worst


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    base = tmp_path_factory.mktemp("cohort")
    make_cohort(str(base / "cache"))
    return base


def test_train_kill9_resume_equals_uninterrupted(cohort):
    # Uninterrupted: 2 epochs of 4 iterations, 2 ranks x 1 slide.
    straight = cohort / "straight"
    p = train(2, write_config(cohort, straight, checkpoint_every=4))   # epoch ends only
    assert p.returncode == 0, p.stderr[-3000:]
    log = read_log(straight)
    assert [int(r["epoch"]) for r in log] == [1, 2]
    for r in log:
        assert set(r) == {"epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy",
                          "learning_rate", "seconds", "slowest_rank_seconds",
                          "mean_rank_seconds", "straggler_share"}
        assert 0.0 <= float(r["straggler_share"]) < 1.0
        assert float(r["slowest_rank_seconds"]) >= float(r["mean_rank_seconds"]) > 0.0
    # The loss goes down on the easy cohort.
    assert float(log[-1]["train_loss"]) < float(log[0]["train_loss"])
    assert float(log[-1]["val_loss"]) < float(log[0]["val_loss"])
    assert os.path.isfile(str(straight / "best.ckpt"))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(str(straight / "events")))

    # Killed: rank 0 SIGKILLs itself before global iteration 6 (epoch 2, iteration 3 of 4),
    # after the checkpoint of iteration 2 of epoch 2. mpirun takes rank 1 down too.
    crashed = cohort / "crashed"
    config = write_config(cohort, crashed)
    started = time.time()
    p = train(2, config, env={"REPRODUCE_FAULT": "0:6:kill"})
    assert p.returncode != 0 and time.time() - started < 120
    from model.checkpoint import read_state
    state = read_state(str(crashed / "last.ckpt"))
    assert (state["epoch"], state["iteration"], state["global_iteration"]) == (1, 2, 6)
    assert len(read_log(crashed)) == 1
    # Without --resume the run directory is refused; with it the run finishes.
    p = train(2, config)
    assert p.returncode != 0 and "--resume" in p.stderr
    p = train(2, config, "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resuming in epoch 2 after iteration 2" in p.stderr

    resumed_log = read_log(crashed)
    assert [int(r["epoch"]) for r in resumed_log] == [1, 2]
    for a, b in zip(log, resumed_log):
        for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "learning_rate"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5, abs=1e-6), key
    # Final weights and Adam state: equal to the uninterrupted run's within 1e-5 relative
    # (absolute 1e-7); in practice they are bit-identical on the CPU with one thread per rank.
    a = checkpoint_arrays(str(straight / "last.ckpt"))
    b = checkpoint_arrays(str(crashed / "last.ckpt"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-7, err_msg=k)
    print("resume: max |resumed - uninterrupted| over {} arrays = {:.3g}".format(
        len(a), max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)))
    sa, sb = read_state(str(straight / "last.ckpt")), read_state(str(crashed / "last.ckpt"))
    for key in ("epoch", "iteration", "global_iteration", "phase", "learning_rate", "bad_epochs",
                "best_epoch", "done", "positions"):
        assert sa[key] == sb[key], key


def test_a_dying_rank_ends_the_job(cohort):
    out = cohort / "dies"
    started = time.time()
    p = train(2, write_config(cohort, out), env={"REPRODUCE_FAULT": "1:0:exit"}, timeout=120)
    elapsed = time.time() - started
    assert p.returncode != 0
    assert elapsed < 90, elapsed
    assert "REPRODUCE_FAULT: rank 1 exit" in p.stderr


def test_batch_not_shared_by_ranks_is_refused(cohort):
    p = train(2, write_config(cohort, cohort / "odd", batch_size=3), timeout=120)
    assert p.returncode != 0 and "train.batch_size" in p.stderr and "Traceback" not in p.stderr


def _single(config, *extra, timeout=300):
    """One rank, no mpirun: ``python -m reproduce train``."""
    return subprocess.run([sys.executable, "-m", "reproduce", "train", "--config", config]
                          + list(extra), cwd=ROOT, env=mpi_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout)


def test_resume_from_a_damaged_checkpoint_is_one_line(cohort):
    out = cohort / "damaged"
    out.mkdir()
    (out / "last.ckpt").write_bytes(b"PK\x03\x04 cut short by a full disk")
    p = _single(write_config(cohort, out), "--resume", timeout=120)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr[-2000:]
    assert "last.ckpt" in lines[0] and "Traceback" not in p.stderr


def test_on_plateau_rollback_restores_the_best_weights(cohort, tmp_path):
    """Train on positives only, validate on negatives only: every update raises the validation
    loss, so epoch 2 is no better than epoch 1 and the rate drops (patience 1). ``rollback``
    then continues from best.ckpt's weights (epoch 1); ``keep`` continues from the current."""
    cache = tmp_path / "cache"
    make_cohort(str(cache), n_train=2, n_val=2)
    index = pd.read_csv(str(cache / "index.csv"))
    index["label"] = (index["split"] == "train").astype(int)
    index.to_csv(str(cache / "index.csv"), index=False)
    runs, started = {}, {}
    # The two runs are single-threaded (train.threads 1) and independent: they run side by side.
    for rule in ("rollback", "keep"):
        out = tmp_path / rule
        config = write_config(tmp_path, out, batch_size=1, iterations_per_epoch=2, patience=1,
                              max_epochs=2, checkpoint_every=2)
        # The Python API, as a user would call it: fit(config, **overrides).
        code = "from reproduce import fit; print(fit({!r}, on_plateau={!r}))".format(
            config, rule)
        with open(str(tmp_path / (rule + ".log")), "w") as log:   # a file: no pipe to stall
            started[rule] = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                                             env=mpi_env(), stdout=subprocess.DEVNULL, stderr=log)
    try:
        for p in started.values():
            p.wait(timeout=300)
    finally:
        for p in started.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    for rule in ("rollback", "keep"):
        out, p = tmp_path / rule, started[rule]
        with open(str(tmp_path / (rule + ".log"))) as f:
            stderr = f.read()
        assert p.returncode == 0, stderr[-3000:]
        log = read_log(out)
        assert float(log[1]["val_loss"]) > float(log[0]["val_loss"])   # the premise
        from model.checkpoint import read_state
        state = read_state(str(out / "last.ckpt"))
        assert state["phase"] == 1 and state["learning_rate"] == 1e-4 and state["best_epoch"] == 0
        runs[rule] = (checkpoint_arrays(str(out / "last.ckpt")),
                      checkpoint_arrays(str(out / "best.ckpt")))
        assert ("on_plateau rollback" in stderr) == (rule == "rollback")
    last, best = runs["rollback"]
    model_keys = [k for k in best if k.startswith("model/")]
    assert model_keys and all(np.array_equal(last[k], best[k]) for k in model_keys)
    last, best = runs["keep"]
    assert any(not np.array_equal(last[k], best[k]) for k in model_keys)
