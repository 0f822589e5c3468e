"""Faults that must lose no finished work, each ending in one line that names the file:

- a full disk under a checkpoint (``model.checkpoint.save``) or the prepare cache (``reproduce
  prepare``): the previous checkpoint, cache image and index stay bit for bit (a small tmpfs is
  mounted for it: these tests run as root, here and in CI, and fail when ``mount`` is refused);
- a cached image damaged between prepare and train: cut short or replaced, training refuses
  before it starts, naming the slide and the prepare command, which then rebuilds it; damaged
  inside (same size, header and end intact), the pipeline stops the run at that slide;
- a loss that turns NaN (injected with ``REPRODUCE_FAULT=0:ITERATION:nan``): training stops
  before that update with the epoch and iteration, the checkpoints from before it stay, and
  ``--resume`` goes on from them.
"""
import contextlib
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from data.files import TMP_PREFIX, WriteError, sha256_file
from tests.conftest import aperio_tiff, tissue
from tests.mpi import mpi_env
from tests.test_train import make_cohort, write_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------ helpers

@contextlib.contextmanager
def small_disk(folder, size="1m"):
    """A tmpfs of ``size`` mounted at ``folder`` for the block (unmounted after)."""
    os.makedirs(folder, exist_ok=True)
    try:
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", folder],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True)
        why = p.stdout.strip()
    except OSError as e:
        p, why = None, str(e)
    if p is None or p.returncode != 0:
        pytest.fail("mount -t tmpfs at {} failed ({}): the full-disk tests need root and "
                    "permission to mount, as CI has".format(folder, why or "no message"))
    try:
        yield folder
    finally:
        subprocess.run(["umount", folder], check=True)


def fill(folder, leave=0):
    """Fills the disk of ``folder`` with one file, then frees ``leave`` bytes of it."""
    filler = os.path.join(folder, "filler")
    block = b"\0" * 4096
    with open(filler, "wb", buffering=0) as f:     # unbuffered: nothing left to flush
        try:
            while f.write(block):
                pass
        except OSError as e:
            assert e.errno == 28, e        # ENOSPC
    if leave:
        os.truncate(filler, max(0, os.path.getsize(filler) - leave))
    return filler


def cli(*args, env=None, timeout=300):
    """``python -m reproduce ARGS`` in a child process (text output)."""
    return subprocess.run([sys.executable, "-m", "reproduce"] + [str(a) for a in args],
                          cwd=ROOT, env=mpi_env(env), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout)


def one_error_line(p):
    """The CLI's one-line error: exit status 2, no traceback; returns the line."""
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), p.stderr[-3000:]
    return line


def noise(height, width, seed):
    """Incompressible pixels: a PNG of them is about 3 bytes a pixel, whatever the seed."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def no_temporaries(folder):
    return not [f for f in os.listdir(folder) if f.startswith(TMP_PREFIX)]


# ------------------------------------------------------------------------ full disk

def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path):
    import tensorflow as tf
    tf.compat.v1.enable_v2_behavior()
    from model import checkpoint
    tf.compat.v1.set_random_seed(3)
    model = tf.keras.Sequential([tf.keras.layers.Dense(64, input_shape=(32,)),
                                 tf.keras.layers.Dense(1)])
    with small_disk(str(tmp_path / "disk")) as disk:
        path = os.path.join(disk, "run", "last.ckpt")
        checkpoint.save(path, model, {"epoch": 1})
        before, weights = sha256_file(path), [v.numpy() for v in model.variables]
        fill(disk)
        for v in model.variables:
            v.assign(tf.zeros_like(v))
        with pytest.raises(WriteError) as e:
            checkpoint.save(path, model, {"epoch": 2})
        message = str(e.value)
        assert "\n" not in message and message.startswith(path + ": ")
        assert "the disk is full (ENOSPC)" in message and "previous file" in message
        assert sha256_file(path) == before and no_temporaries(os.path.dirname(path))
        assert checkpoint.restore(path, model, rng=False) == {"epoch": 1}
        for v, w in zip(model.variables, weights):
            assert np.array_equal(v.numpy(), w)


def _two_slides(folder, seed):
    """Slides a (48 px) and b (300 px) of noise at 1 um/px, and their manifest."""
    for name, side in (("a", 48), ("b", 300)):
        aperio_tiff(str(folder / (name + ".svs")), [noise(side, side, seed + side)], mpp=1.0)
    manifest = folder / "manifest.csv"
    manifest.write_text("slide_id,path,label,split\na,a.svs,0,train\nb,b.svs,1,val\n")
    return str(manifest)


def test_a_full_disk_stops_prepare_in_one_line_and_keeps_the_cache(tmp_path):
    """The sources change, prepare reads both again on a nearly full disk: slide a's new image
    fits, b's does not. One line names b's file; b's previous image and index row stay (bit for
    bit), a's new ones are kept, and a rerun with space finishes b alone."""
    from data.cache import load_index, read_cached
    from data.slide import read_slide
    manifest = _two_slides(tmp_path, seed=0)
    with small_disk(str(tmp_path / "disk")) as disk:
        cache = os.path.join(disk, "cache")
        prepare = ["prepare", "--manifest", manifest, "--out", cache, "--target-mpp", "1.0",
                   "--no-progress"]
        p = cli(*prepare)
        assert p.returncode == 0, p.stderr[-3000:]
        old_b, b_file = read_cached(cache, "b"), os.path.join(cache, "b.png")
        old_b_sha, old_b_row = sha256_file(b_file), load_index(cache).iloc[1].to_dict()

        _two_slides(tmp_path, seed=1)                       # new sources: both read again
        filler = fill(disk, leave=64 * 1024)                # room for a (7 KB), not b (270 KB)
        line = one_error_line(cli(*prepare))
        assert line == "error: {}: not written: the disk is full (ENOSPC); the previous file " \
                       "there is unchanged".format(b_file)
        assert sha256_file(b_file) == old_b_sha and no_temporaries(cache)
        index = load_index(cache)
        assert list(index["slide_id"]) == ["a", "b"]
        assert index.iloc[1].to_dict() == old_b_row          # b: its previous entry, whole
        assert np.array_equal(read_cached(cache, "b"), old_b)
        assert np.array_equal(read_cached(cache, "a"), read_slide(str(tmp_path / "a.svs"), 1.0))

        os.remove(filler)
        p = cli(*prepare)
        assert p.returncode == 0, p.stderr[-3000:]
        assert '"cached": 1' in p.stdout and '"skipped": 1' in p.stdout
        assert np.array_equal(read_cached(cache, "b"), read_slide(str(tmp_path / "b.svs"), 1.0))


# ------------------------------------------------------------------------ damaged cache

def _prepared_run(tmp_path):
    """Four small slides prepared at 8 um/px (2 train, 2 val; s0 is 64 x 48 px, the others
    64 x 64) and a training config on them; returns (config path, cache folder)."""
    from reproduce.__main__ import main
    lines = ["slide_id,path,label,split"]
    for i in range(4):
        width = 384 if i == 0 else 512
        aperio_tiff(str(tmp_path / "s{}.svs".format(i)), [tissue(512, width, seed=i)], mpp=1.0)
        lines.append("s{0},s{0}.svs,{1},{2}".format(i, i % 2, "train" if i < 2 else "val"))
    manifest, cache = tmp_path / "manifest.csv", str(tmp_path / "cache")
    manifest.write_text("\n".join(lines) + "\n")
    assert main(["prepare", "--manifest", str(manifest), "--out", cache, "--target-mpp", "8",
                 "--no-progress"]) == 0
    config = str(tmp_path / "train.yaml")
    with open(config, "w") as f:
        yaml.safe_dump({"data": {"manifest": str(manifest), "cache": cache, "target_mpp": 8.0,
                                 "canvas": 64},
                        "model": {"weights": "none"}, "out": str(tmp_path / "run")}, f)
    return config, cache


def test_a_damaged_cached_image_stops_training_before_it_starts(tmp_path):
    from data.cache import entry_problem, load_index, read_cached
    from data.slide import read_slide
    from model.training import TrainingError
    from reproduce import fit
    config, cache = _prepared_run(tmp_path)
    s1 = os.path.join(cache, "s1.png")
    with open(s1, "rb") as f:
        whole = f.read()
    with open(s1, "wb") as f:                        # cut short: header intact, no end
        f.write(whole[:len(whole) // 2])

    line = one_error_line(cli("train", "--config", config, timeout=120))
    assert "slide s1 ({}) is cut short".format(s1) in line
    command = line.split("rebuild it with: ", 1)[1]
    assert command.startswith("python -m reproduce prepare --manifest ")
    assert not os.path.exists(str(tmp_path / "run" / "last.ckpt"))

    p = subprocess.run([sys.executable] + shlex.split(command)[1:] + ["--no-progress"],
                       cwd=ROOT, env=mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, timeout=120)
    assert p.returncode == 0 and '"cached": 1' in p.stdout, p.stderr[-3000:]
    row = load_index(cache).set_index("slide_id").loc["s1"]
    assert entry_problem(s1, row["height"], row["width"]) is None
    assert np.array_equal(read_cached(cache, "s1"), read_slide(str(tmp_path / "s1.svs"), 8.0))

    shutil.copyfile(os.path.join(cache, "s3.png"), os.path.join(cache, "s0.png"))  # replaced
    with pytest.raises(TrainingError) as e:
        fit(config)
    assert "slide s0" in str(e.value) and "64x64 px, but prepare wrote 64x48 px" in str(e.value)


def _corrupt_inside(path):
    """Flips 64 bytes in the middle of a file: its size, header and end stay as they were."""
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        middle = len(data) // 2
        data[middle:middle + 64] = bytes(255 - b for b in data[middle:middle + 64])
        f.seek(0)
        f.write(bytes(data))


def test_an_image_damaged_inside_is_one_line_from_the_pipeline(tmp_path):
    import tensorflow as tf
    tf.compat.v1.enable_v2_behavior()
    from data.cache import damaged_entries, load_index
    from data.pipeline import UnreadableSlide, elements, eval_dataset
    cache = make_cohort(str(tmp_path / "cache"), n_train=2, n_val=2)
    index = load_index(cache)
    _corrupt_inside(os.path.join(cache, "s02.png"))
    assert damaged_entries(index) == []                  # not found without decoding
    with pytest.raises(UnreadableSlide) as e:
        list(elements(eval_dataset(index, 64)))
    assert str(e.value).startswith("slide s02: {}: cannot decode".format(
        os.path.join(cache, "s02.png")))


def test_an_image_damaged_inside_stops_training_at_that_slide(tmp_path):
    from data.pipeline import training_order
    make_cohort(str(tmp_path / "cache"), n_train=2, n_val=2)
    first = "s{:02d}".format(training_order(2, 0, 0)[0])    # the first slide of epoch 1 (seed 0)
    _corrupt_inside(str(tmp_path / "cache" / (first + ".png")))
    out = tmp_path / "run"
    config = write_config(tmp_path, out, batch_size=1, iterations_per_epoch=2, max_epochs=1)
    line = one_error_line(cli("train", "--config", config, timeout=300))
    assert line.startswith("error: train: slide {}: {}: cannot decode the cached image".format(
        first, tmp_path / "cache" / (first + ".png")))
    assert "delete that file" in line
    assert "rebuild it with: python -m reproduce prepare --manifest MANIFEST --out " in line
    assert line.endswith("no checkpoint was saved in this run yet")
    assert not os.path.exists(str(out / "last.ckpt"))


# ------------------------------------------------------------------------ NaN loss

def _all_finite(path):
    with np.load(path) as z:
        return all(np.isfinite(z[k]).all() for k in z.files
                   if k.startswith(("model/", "optimizer/")))


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    """2 iterations an epoch, a checkpoint after each: the NaN of global iteration 3 (epoch 2,
    iteration 2) stops the run before its update; last.ckpt is the one of epoch 2, iteration
    1, best.ckpt that of epoch 1, both finite; --resume then finishes the run."""
    from model.checkpoint import read_state
    make_cohort(str(tmp_path / "cache"), n_train=2, n_val=2)
    out = tmp_path / "run"
    config = write_config(tmp_path, out, batch_size=1, iterations_per_epoch=2, max_epochs=2,
                          checkpoint_every=1)
    line = one_error_line(cli("train", "--config", config, env={"REPRODUCE_FAULT": "0:3:nan"}))
    assert line == ("error: train: the training loss is nan in epoch 2, iteration 2 of 2 (global "
                    "iteration 4); stopped before that update: {0}/last.ckpt (epoch 2, after "
                    "iteration 1) and {0}/best.ckpt hold the weights from before it".format(out))
    state = read_state(str(out / "last.ckpt"))
    assert (state["epoch"], state["iteration"], state["global_iteration"]) == (1, 1, 3)
    assert read_state(str(out / "best.ckpt"))["epoch"] == 1
    assert _all_finite(str(out / "last.ckpt")) and _all_finite(str(out / "best.ckpt"))
    assert len(pd.read_csv(str(out / "train_log.csv"))) == 1

    p = cli("train", "--config", config, "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert list(pd.read_csv(str(out / "train_log.csv"))["epoch"]) == [1, 2]
    assert _all_finite(str(out / "last.ckpt"))
