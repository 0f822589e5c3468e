"""Checkpoints: one ``.ckpt`` file (NumPy .npz) holding everything a run needs to continue.

Keys:
    model/NNNNN                 every variable of the model (trainable or not: frozen BN too),
                                in ``model.variables`` order
    optimizer/NNNNN             Adam's iteration count and slots (m, v), in ``variables()`` order
    names                       JSON: the variable names, for readers (Keras suffixes names
                                like ``conv1_conv_1`` when a process builds a model twice, so
                                loading goes by order and checks every shape)
    state                       JSON: epoch, iteration, schedule counters, lr, best loss,
                                data positions, seed, ... (see model/training.py)
    rng/*                       NumPy's global RNG state

Files are written atomically (a temporary file in the same directory, then ``os.replace``),
so a kill at any moment leaves either the old checkpoint or the new one, never a torn file.
``best.ckpt`` in a run directory holds the best-validation weights (no optimizer): it is what
``reproduce predict`` loads with ``load_for_inference``.
"""
import json
import os
import zipfile
import zlib

import numpy as np

from data.errors import InputError
from data.files import atomic_path


class CheckpointError(InputError):
    """The file is not a checkpoint of this model (message names the file)."""


# What reading a truncated, damaged or foreign file raises: np.load's own errors (not a zip or
# .npy, a pickle refused), the zip archive's (no central directory, a bad CRC, a cut member)
# and a missing key.
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


def _open(path):
    """``np.load(path)`` as an NpzFile; CheckpointError naming the file for anything else."""
    if not os.path.isfile(path):
        raise CheckpointError("{}: checkpoint not found".format(path))
    try:
        # The archive first: np.load of a cut zip leaves a half-built NpzFile whose __del__
        # prints a traceback when it is collected.
        with zipfile.ZipFile(path):
            pass
        return np.load(path)
    except _UNREADABLE as e:
        raise CheckpointError("{}: not a readable checkpoint ({}: {})".format(
            path, type(e).__name__, e))


def _damaged(path, e):
    return CheckpointError("{}: damaged checkpoint ({}: {}); use another one, e.g. best.ckpt "
                           "or an earlier copy".format(path, type(e).__name__, e))


def _by_name(variables, prefix):
    return {"{}{:05d}".format(prefix, i): v for i, v in enumerate(variables)}


def save(path, model, state, optimizer=None):
    """Writes ``path`` atomically: model (and optimizer) variables by name + the JSON state."""
    arrays = {k: v.numpy() for k, v in _by_name(model.variables, "model/").items()}
    if optimizer is not None:
        arrays.update({k: v.numpy() for k, v in _by_name(optimizer.variables(), "optimizer/").items()})
    arrays["state"] = np.array(json.dumps(state))
    arrays["names"] = np.array(json.dumps(
        [v.name for v in model.variables] + [v.name for v in (optimizer.variables() if optimizer else [])]))
    keys, pos, gauss, cached = np.random.get_state()[1:]
    arrays.update({"rng/keys": keys, "rng/meta": np.array([pos, gauss, cached], np.float64)})
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def read_state(path):
    """The JSON state of a checkpoint, without loading its arrays."""
    with _open(path) as z:
        try:
            return json.loads(str(z["state"]))
        except _UNREADABLE as e:
            raise _damaged(path, e)


def restore(path, model, optimizer=None, rng=True):
    """Loads ``path`` into ``model`` (and ``optimizer``, whose slots must exist); returns the state.

    A damaged member (bad CRC, cut short) raises CheckpointError after some variables may
    have been assigned: the model is then not usable, as with any failed load.
    """
    with _open(path) as z:
        try:
            return _restore(path, z, model, optimizer, rng)
        except _UNREADABLE as e:
            raise _damaged(path, e)


def _restore(path, z, model, optimizer, rng):
    targets = _by_name(model.variables, "model/")
    if optimizer is not None:
        targets.update(_by_name(optimizer.variables(), "optimizer/"))
    stored = [k for k in z.files if k.startswith("model/")]
    missing = [k for k in targets if k not in z.files]
    if missing or len(stored) != len(model.variables):
        raise CheckpointError("{}: holds {} model variables, this model has {}{}".format(
            path, len(stored), len(model.variables),
            " and an optimizer state" if optimizer is not None else ""))
    for key, variable in targets.items():
        value = z[key]
        if tuple(value.shape) != tuple(variable.shape):
            raise CheckpointError("{}: {} has shape {}, the model wants {}".format(
                path, key, value.shape, tuple(variable.shape)))
        variable.assign(value)
    if rng and "rng/keys" in z.files:
        pos, gauss, cached = z["rng/meta"]
        np.random.set_state(("MT19937", z["rng/keys"], int(pos), int(gauss), float(cached)))
    return json.loads(str(z["state"]))


def load_for_inference(path):
    """A Keras model (model.resnet.build_model) holding the weights of checkpoint ``path``."""
    from model.resnet import build_model
    read_state(path)   # a missing, cut or foreign file: one line, before building the model
    model = build_model("none")
    restore(path, model, rng=False)
    return model
