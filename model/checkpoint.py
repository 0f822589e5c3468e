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
    contract                    JSON: the input contract (``input_contract``): the target mpp,
                                canvas, resampling filter and glass threshold of the training
                                images, the input preprocessing and the head
    rng/*                       NumPy's global RNG state

Files are written atomically (a temporary file in the same directory, then ``os.replace``),
so a kill at any moment leaves either the old checkpoint or the new one, never a torn file; a
full disk leaves the old one too, and says so in one line (``data.files.WriteError``).
``best.ckpt`` in a run directory holds the best-validation weights (no optimizer): it is what
``reproduce predict`` loads with ``load_for_inference``.

The input contract is what makes a checkpoint usable on its own: ``checkpoint_input`` gives
prediction its input from it, and refuses a config that contradicts it in one line naming both
values. A checkpoint written without one (older files) takes its input from the config its
state records (``state["config"]``) while that file exists, else from the config or arguments
given, and says which in a one-line notice.

Variables are read and written with ``tf.keras.backend.batch_get_value`` / ``batch_set_value``,
which work in eager and in TF1 graph mode alike (the Keras session holds a graph's values).
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


def save(path, model, state, optimizer=None, contract=None):
    """Writes ``path`` atomically: model (and optimizer) variables by name, the JSON state and,
    when given, the input contract (``input_contract(cfg)`` of the training config)."""
    import tensorflow as tf
    variables = _by_name(model.variables, "model/")
    if optimizer is not None:
        variables.update(_by_name(optimizer.variables(), "optimizer/"))
    arrays = dict(zip(variables, tf.keras.backend.batch_get_value(list(variables.values()))))
    arrays["state"] = np.array(json.dumps(state))
    if contract is not None:
        arrays["contract"] = np.array(json.dumps(contract))
    arrays["names"] = np.array(json.dumps([v.name for v in variables.values()]))
    keys, pos, gauss, cached = np.random.get_state()[1:]
    arrays.update({"rng/keys": keys, "rng/meta": np.array([pos, gauss, cached], np.float64)})
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        _write_npz(f, arrays)


def _write_npz(f, arrays):
    """``np.savez``'s file (one stored .npy member per key, zip64) in a ZipFile that is closed on
    every path: when the disk fills up mid-write, the error (a one-line ``data.files.WriteError``
    naming the checkpoint, the previous file kept) is all there is, with no half-open archive
    left to print a second traceback when it is collected."""
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        for key, value in arrays.items():
            with z.open(key + ".npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def read_state(path):
    """The JSON state of a checkpoint, without loading its arrays."""
    with _open(path) as z:
        try:
            return json.loads(str(z["state"]))
        except _UNREADABLE as e:
            raise _damaged(path, e)


def restore(path, model, optimizer=None, rng=True):
    """Loads ``path`` into ``model`` (and ``optimizer``, whose slots must exist); returns the state.

    Every member is read and checked before any variable is assigned: a damaged member (bad
    CRC, cut short) or a wrong shape raises CheckpointError and leaves the model as it was.
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
    values = []
    for key, variable in targets.items():
        value = z[key]
        if tuple(value.shape) != tuple(variable.shape):
            raise CheckpointError("{}: {} has shape {}, the model wants {}".format(
                path, key, value.shape, tuple(variable.shape)))
        values.append((variable, value))
    state = json.loads(str(z["state"]))
    rng_state = None
    if rng and "rng/keys" in z.files:
        pos, gauss, cached = z["rng/meta"]
        rng_state = ("MT19937", z["rng/keys"], int(pos), int(gauss), float(cached))
    import tensorflow as tf
    tf.keras.backend.batch_set_value(values)
    if rng_state is not None:
        np.random.set_state(rng_state)
    return state


def load_for_inference(path):
    """A Keras model (model.resnet.build_model) holding the weights of checkpoint ``path``,
    built in the mode the process is in (eager, or TF1's graph mode). ``model.input_contract``
    is the checkpoint's input contract (None for an older file) and ``model.checkpoint_path``
    is ``path``: ``model.inference.Predictor`` takes its input from them."""
    from model.resnet import build_model
    read_state(path)   # a missing, cut or foreign file: one line, before building the model
    contract = read_contract(path)
    model = build_model("none")
    restore(path, model, rng=False)
    model.input_contract, model.checkpoint_path = contract, path
    return model


# ------------------------------------------------------------------------- the input contract

# What the network does to its input and how it ends: model.resnet.preprocess (RGB -> BGR, minus
# the ImageNet means, no scaling: Keras' "caffe" mode) and model.resnet.build_model (global
# average pooling, Dense(1), sigmoid). A checkpoint naming others was made by other code.
PREPROCESSING = "caffe"
HEAD = "gap-dense1-sigmoid"
# The config's keys that fix a model's input images, in the order they are checked.
CONFIG_KEYS = ("data.target_mpp", "data.canvas", "data.resample", "data.glass_to_white")
_OLDER = "carries no input contract (written before checkpoints recorded their input)"


def input_contract(cfg):
    """The input contract of a model trained with config ``cfg`` (a loaded config, or any
    mapping with a ``data`` section): the CONFIG_KEYS' values, PREPROCESSING and HEAD."""
    data = cfg["data"]
    glass = data.get("glass_to_white")
    return {"data.target_mpp": float(data["target_mpp"]), "data.canvas": int(data["canvas"]),
            "data.resample": data.get("resample") or "area",
            "data.glass_to_white": None if glass is None else int(glass),
            "preprocessing": PREPROCESSING, "head": HEAD}


def read_contract(path):
    """The input contract stored in checkpoint ``path``, or None for a checkpoint without one.
    CheckpointError when the file is unreadable, the contract incomplete, or made for another
    preprocessing or head than this package's model."""
    with _open(path) as z:
        if "contract" not in z.files:
            return None
        try:
            contract = json.loads(str(z["contract"]))
        except _UNREADABLE as e:
            raise _damaged(path, e)
    missing = [k for k in CONFIG_KEYS + ("preprocessing", "head") if k not in contract]
    if missing:
        raise CheckpointError("{}: its input contract lacks {}".format(path, ", ".join(missing)))
    for key, ours in (("preprocessing", PREPROCESSING), ("head", HEAD)):
        if contract[key] != ours:
            raise CheckpointError("{} was trained with {} {}, this package's model has {}".format(
                path, key, contract[key], ours))
    return contract


def _show(value):
    return "null" if value is None else repr(value) if isinstance(value, float) else str(value)


def _same(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(float(a) - float(b)) <= 1e-9 * max(
            abs(float(a)), abs(float(b)))
    return a == b


def check_contract(name, contract, given, source):
    """Refuses ``given`` (some of CONFIG_KEYS -> value) where it contradicts ``contract``, in one
    line naming both values: ``best.ckpt was trained at data.target_mpp 2.28, configs/demo.yaml
    says 32.0``. ``name``: the checkpoint as the message calls it; ``source``: what gave the
    values (a config's path, an argument)."""
    for key in CONFIG_KEYS:
        if key in given and not _same(contract[key], given[key]):
            raise CheckpointError("{} was trained {} {} {}, {} says {}".format(
                name, "at" if key == "data.target_mpp" else "with", key, _show(contract[key]),
                source, _show(given[key])))


def _load(config, overrides=None):
    if config is None:
        return None
    from model.config import load_config
    return load_config(config, overrides=overrides)


def check_given(name, contract, cfg=None, arguments=None):
    """Refuses the ``arguments`` (some of CONFIG_KEYS -> value; None values are not given), then
    the config ``cfg`` on the keys the arguments leave, where they contradict ``contract``."""
    arguments = {k: v for k, v in (arguments or {}).items() if v is not None}
    for key, value in arguments.items():
        check_contract(name, contract, {key: value}, "the argument " + key.split(".", 1)[1])
    if cfg is not None:
        rest = {k: v for k, v in input_contract(cfg).items() if k not in arguments}
        check_contract(name, contract, rest, cfg.path)


def checkpoint_input(path, config=None, arguments=None, overrides=None):
    """Where prediction with checkpoint ``path`` takes its input: (contract, cfg, notice).

    ``config``: a config (YAML path, dict or loaded; None: none given), loaded with
    ``overrides``; ``arguments``: values given directly (some of CONFIG_KEYS -> value, e.g.
    ``predict_slide``'s target_mpp and canvas). Both are checked against the contract
    (CheckpointError naming both values). ``cfg`` is the loaded config (None when none was
    given and none is recorded); ``notice`` is None, or for a checkpoint without a contract the
    one line saying where its input comes from: the config its state records while that file
    exists, else ``config`` (the arguments overriding it), else complete ``arguments``.
    """
    arguments = {k: v for k, v in (arguments or {}).items() if v is not None}
    contract = read_contract(path)
    cfg = _load(config, overrides)
    if contract is None:
        return _older_input(path, cfg, arguments)
    check_given(path, contract, cfg, arguments)
    return contract, cfg, None


def _older_input(path, cfg, arguments):
    """``checkpoint_input`` for a checkpoint without a contract (see there)."""
    recorded = read_state(path).get("config")
    if isinstance(recorded, str) and os.path.isfile(recorded):
        trained = _load(recorded)
        contract = input_contract(trained)
        check_given("{} (by the config it records, {})".format(path, recorded), contract, cfg,
                    arguments)
        notice = "{} {}: its input is that of {}, the config it records".format(
            path, _OLDER, recorded)
        return contract, cfg if cfg is not None else trained, notice
    why = "the config it records, {}, is gone".format(recorded) if recorded else \
        "it records no config"
    if cfg is not None:
        contract = dict(input_contract(cfg), **arguments)
        source = cfg.path + (" and the arguments" if arguments else "")
    elif all(k in arguments for k in CONFIG_KEYS[:2]):
        contract = input_contract({"data": {"target_mpp": arguments["data.target_mpp"],
                                            "canvas": arguments["data.canvas"]}})
        source = "the arguments"
    else:
        raise CheckpointError("{} {} and {}: give the training config (--config)".format(
            path, _OLDER, why))
    notice = "{} {}: its input is taken from {} ({})".format(path, _OLDER, source, why)
    return contract, cfg, notice


def check_config(path, cfg):
    """``train --resume``: refuses a config whose input contradicts checkpoint ``path``'s, in
    one line naming both values. Returns None, or for a checkpoint without a contract the
    one-line notice that the config's input is taken unchecked."""
    contract = read_contract(path)
    if contract is None:
        return "{} {}: resuming with the input of {}".format(path, _OLDER, cfg.path)
    check_contract(path, contract, input_contract(cfg), cfg.path)
    return None


def contract_config(contract, out):
    """A config dict (model.config's sections) that predicts with ``contract``'s input and the
    defaults for the rest: what ``reproduce predict`` runs with when no --config is given.
    ``data.cache`` is null: prepared images come from --cache, else the slides are read."""
    data = {key.split(".", 1)[1]: contract[key] for key in CONFIG_KEYS}
    data["cache"] = None
    return {"data": data, "out": out}
