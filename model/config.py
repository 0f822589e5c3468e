"""The run configuration: a small YAML file with four sections, checked whole before any work.

    data:  manifest, cache, target_mpp, canvas, translate_px, resample, glass_to_white
    model: weights
    train: strategy, tile, memory_gb, batch_size, learning_rate, reduced_learning_rate,
           iterations_per_epoch, patience, on_plateau, max_epochs, augment, seed,
           checkpoint_every, threads
    out:   the run directory (checkpoints, logs)

Sizes are in pixels at ``data.target_mpp`` micrometres per pixel. Relative paths are taken
from the current directory (run from the repository root). Every problem is a one-line
``ConfigError`` (a ``data.errors.InputError``) naming the file and the key: an unknown key, a missing file, a wrong type or an
impossible value (a canvas that is not positive, a batch that the ranks cannot share, ...).
"""
import copy
import math
import os

from model.strategy import NAMES as STRATEGIES
from data.slide import RESAMPLE_FILTERS
from data.errors import InputError

REQUIRED = object()


class ConfigError(InputError):
    """A configuration file or value is wrong: the message names the file and the key."""


def _positive_int(x):
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


def _positive_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


# section -> key -> (default, check(value) -> error text or None). REQUIRED marks no default.
def _check(pred, text):
    return lambda v: None if pred(v) else text


_INT = _check(_positive_int, "must be a positive integer")
_NUMBER = _check(_positive_number, "must be a positive number")
_STRING = _check(lambda v: isinstance(v, str) and v != "", "must be a non-empty string")
_BOOL = _check(lambda v: isinstance(v, bool), "must be true or false")
_OPTIONAL_INT = _check(lambda v: v is None or _positive_int(v), "must be a positive integer or null")
_OPTIONAL_NUMBER = _check(lambda v: v is None or _positive_number(v),
                          "must be a positive number or null")
PLATEAU_RULES = ("keep", "rollback")

SCHEMA = {
    "data": {
        "manifest": (None, _check(lambda v: v is None or (isinstance(v, str) and v),
                                  "must be a path or null")),
        # the prepare cache; null: prediction reads the slides (training needs a cache)
        "cache": (REQUIRED, _check(lambda v: v is None or (isinstance(v, str) and v),
                               "must be a path or null")),
        "target_mpp": (REQUIRED, _NUMBER),       # µm per pixel of the training images
        "canvas": (REQUIRED, _check(lambda v: _positive_int(v) and v >= 32,
                                    "must be a positive integer of at least 32 (pixels)")),
        "translate_px": (0, _check(lambda v: isinstance(v, int) and not isinstance(v, bool)
                                   and v >= 0, "must be an integer >= 0 (pixels)")),
        # area: exact box filter (the paper names none); cubic: the released code's
        # cv2.INTER_CUBIC. docs/fidelity.md, row resample.
        "resample": ("area", _check(lambda v: v in RESAMPLE_FILTERS,
                                    "must be one of " + ", ".join(RESAMPLE_FILTERS))),
        # null (off, the paper's way) or 1-255: prepare makes glass (every channel >= it) pure
        # white, not in the paper (data/glass.py; docs/fidelity.md, row glass-to-white).
        "glass_to_white": (None, _check(lambda v: v is None or (_positive_int(v) and v <= 255),
                                        "must be an integer from 1 to 255 (a pixel whose every "
                                        "channel is >= it is glass) or null (off)")),
    },
    "model": {
        "weights": ("none", _STRING),           # imagenet | none | path of a local .h5
    },
    "train": {
        "strategy": ("auto", _check(lambda v: v in STRATEGIES,
                                    "must be one of " + ", ".join(STRATEGIES))),
        # streaming's tile: caps a super-window's side (model.strategy.levels_budget); in TF1's
        # graph mode, the one-level design's tile, null: from memory_gb, else from the GPU's
        # memory (nvidia-smi) or host RAM / ranks on the node (model.strategy.choose_tile).
        # Setting both tile and memory_gb is an error.
        "tile": (None, _check(lambda v: v is None or (_positive_int(v) and v % 32 == 0),
                              "must be a positive multiple of 32 (pixels) or null")),
        "memory_gb": (None, _OPTIONAL_NUMBER),  # GB a streaming step may use
        "batch_size": (8, _INT),
        "learning_rate": (1e-5, _NUMBER),
        "reduced_learning_rate": (1e-6, _NUMBER),
        "iterations_per_epoch": (88, _INT),
        "patience": (24, _INT),
        # keep: the paper's words (strict <, training goes on from the current weights);
        # rollback: the released code's (min_delta 1e-4, back to the best weights at the drop).
        "on_plateau": ("keep", _check(lambda v: v in PLATEAU_RULES,
                                      "must be one of " + ", ".join(PLATEAU_RULES))),
        "max_epochs": (None, _OPTIONAL_INT),
        "augment": (True, _BOOL),
        "seed": (0, _check(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                           "must be an integer >= 0")),
        "checkpoint_every": (10, _INT),         # iterations between mid-epoch checkpoints
        "threads": (None, _OPTIONAL_INT),       # TF threads per rank; null: OMP_NUM_THREADS or cores/ranks
    },
}
TOP_LEVEL = ("data", "model", "train", "out")
DICT_NAME = "<config dict>"    # what messages call a configuration given as a dict


class Config(dict):
    """The checked configuration: ``cfg["train"]["batch_size"]``; ``cfg.path`` is its file."""
    path = None


def _err(path, key, text):
    return ConfigError("{}: {}: {}".format(path, key, text))


def _read_yaml(path):
    import yaml
    if not os.path.isfile(path):
        raise ConfigError("{}: config file not found".format(path))
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise ConfigError("{}: not valid YAML{}".format(
            path, "" if line is None else " (line {})".format(line + 1)))


def load_config(config, overrides=None, world_size=None):
    """Reads and checks a configuration: the YAML file at path ``config``, or a dict of the same
    sections (a ``Config`` is checked again; messages name a plain dict ``<config dict>``).

    ``overrides``: {"data.manifest": value, "out": value, ...} applied before checking (the
    command line's --manifest/--out); None values are ignored. ``world_size``: the number of
    ranks, checked against train.batch_size (the batch is one slide per rank per micro-step,
    accumulated batch_size / world_size times, so it must divide).
    """
    path, raw = _read_raw(config)
    cfg = _with_defaults(raw, path)
    _apply_overrides(cfg, overrides, path)
    _check_values(cfg, path)
    _check_relations(cfg, path, world_size)
    return cfg


def _read_raw(config):
    """(the name messages use, the sections as given) of a file path or a dict."""
    if isinstance(config, dict):
        path = getattr(config, "path", None) or DICT_NAME
        raw = copy.deepcopy(dict(config))
    else:
        path = os.fspath(config)
        raw = _read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("{}: must be a mapping of sections {}".format(path, ", ".join(TOP_LEVEL)))
    for key in raw:
        if key not in TOP_LEVEL:
            raise _err(path, key, "unknown key (sections: {})".format(", ".join(TOP_LEVEL)))
    return path, raw


def _with_defaults(raw, path):
    """A ``Config`` of every section's keys: the given values, else the schema's defaults."""
    cfg = Config()
    cfg.path = path
    for section, keys in SCHEMA.items():
        given = raw.get(section) or {}
        if not isinstance(given, dict):
            raise _err(path, section, "must be a mapping")
        for key in given:
            if key not in keys:
                raise _err(path, "{}.{}".format(section, key), "unknown key")
        cfg[section] = {k: given.get(k, default) for k, (default, _) in keys.items()}
    cfg["out"] = raw.get("out")
    return cfg


def _apply_overrides(cfg, overrides, path):
    """The command line's values ({dotted key: value}, None: not given) over the file's."""
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        if dotted == "out":
            cfg["out"] = value
        else:
            section, _, key = dotted.partition(".")
            if key not in SCHEMA.get(section, {}):
                raise _err(path, dotted, "unknown key (override)")
            cfg[section][key] = value


def _check_values(cfg, path):
    """Each value against its schema check (required keys present, types and ranges)."""
    for section, keys in SCHEMA.items():
        for key, (default, check) in keys.items():
            value = cfg[section][key]
            name = "{}.{}".format(section, key)
            if value is REQUIRED:
                raise _err(path, name, "missing (required)")
            # YAML reads 1e-5 as a string; accept it as the number it plainly is.
            if check is _NUMBER or check is _OPTIONAL_NUMBER:
                if isinstance(value, str):
                    try:
                        value = cfg[section][key] = float(value)
                    except ValueError:
                        pass
            problem = check(value)
            if problem:
                raise _err(path, name, "{} (got {!r})".format(problem, value))
    if not isinstance(cfg["out"], str) or not cfg["out"]:
        raise _err(path, "out", "missing: the run directory (or pass --out)")


def _check_relations(cfg, path, world_size):
    d, t = cfg["data"], cfg["train"]
    manifest = d["manifest"]
    if manifest is not None and not os.path.isfile(manifest):
        raise _err(path, "data.manifest", "file not found: {}".format(manifest))
    if d["translate_px"] * 2 >= d["canvas"]:
        raise _err(path, "data.translate_px", "{} px is too large for a {} px canvas".format(
            d["translate_px"], d["canvas"]))
    if t["reduced_learning_rate"] > t["learning_rate"]:
        raise _err(path, "train.reduced_learning_rate", "{} is above learning_rate {}".format(
            t["reduced_learning_rate"], t["learning_rate"]))
    if t["tile"] is not None and t["memory_gb"] is not None:
        raise _err(path, "train.tile, train.memory_gb", "both set ({} px, {:g} GB): set one, or "
                   "neither (the memory budget then comes from this machine)".format(
                       t["tile"], t["memory_gb"]))
    weights = cfg["model"]["weights"]
    if weights not in ("imagenet", "none") and not os.path.isfile(os.path.expanduser(weights)):
        raise _err(path, "model.weights",
                   "'{}' is neither imagenet, none nor an existing .h5 file".format(weights))
    if world_size is not None:
        check_world_size(cfg, world_size)


def check_world_size(cfg, world_size):
    """The effective batch is ``batch_size`` slides: world_size ranks x accumulation steps."""
    b = cfg["train"]["batch_size"]
    if b % world_size:
        raise _err(cfg.path, "train.batch_size",
                   "{} slides cannot be shared by {} ranks (it must be a multiple of the "
                   "number of ranks)".format(b, world_size))
    return b // world_size
