"""The paper's training loop, on 1..N ranks: ``fit(config, **overrides)``.

Run it under mpirun for Horovod (``python -m reproduce train`` is this function behind argument
parsing); without mpirun it is one rank.

- Horovod as in its examples: ``hvd.init()``, one GPU per rank (``hvd.local_rank()``), the
  initial weights and Adam state broadcast from rank 0.
- The effective batch is ``train.batch_size`` slides, drawn as data.pipeline's order gives
  them (``update_slides``). With fewer ranks than slides, each rank accumulates several; which
  rank computes which slide is chosen so that the ranks finish together (``model.balance``:
  each slide's planned cost from the cache index and its seeded augmentation draw, longest
  first onto the least-loaded rank, the same on every rank). Each rank contributes the sum of
  its slides' gradients divided by the batch size, and ``hvd.allreduce`` sums these, so the
  update is the mean gradient over the batch whatever the number of ranks and however the
  slides are shared (8 GPUs x 1, or 2 ranks x 4).
- Adam at ``learning_rate``, binary cross-entropy (model.loss). An *epoch* is
  ``iterations_per_epoch`` updates (88 in the paper), followed by the validation loss, averaged
  over all ranks (each rank evaluates its shard of the validation split; losses and counts are
  summed by allreduce).
- Schedule (``model.schedule``): ``patience`` epochs without a lower validation loss -> learning
  rate becomes ``reduced_learning_rate`` (counter restarts); ``patience`` more -> stop.
  ``max_epochs`` caps it. Only the best-validation weights are kept (``best.ckpt``).
  ``train.on_plateau``: ``keep`` (default, the paper's words) counts any lower loss as better
  (strict ``<``) and trains on from the current weights; ``rollback`` (the released code,
  aetherAI/whole-slide-cnn ``whole_slide_cnn/utils.py`` ``ReduceLRAndRollbackOnPlateau``, a
  Keras ``ReduceLROnPlateau`` with its default ``min_delta`` 1e-4) counts only
  ``val_loss < best - 1e-4`` and, when the rate drops, reloads the best weights (Adam's state
  is kept, as ``model.load_weights`` keeps it there). docs/fidelity.md, row ``plateau-rule``.
- Only rank 0 writes: ``last.ckpt`` every ``checkpoint_every`` iterations and at each epoch end,
  ``best.ckpt``, ``train_log.csv`` (epoch, train_loss, val_loss, train_accuracy, val_accuracy,
  learning_rate, seconds, then the epoch's means per update of the slowest rank's seconds, the
  mean rank's seconds and the straggler share (slowest - mean) / slowest), TensorBoard events
  in ``events/`` (the same three per update, under ``batch/``).
- ``resume=True`` continues from ``last.ckpt``: weights, Adam state, epoch and iteration,
  schedule phase and counters, best loss, and the update's position in the data order (one
  for all ranks; a checkpoint of an older version, with each rank's own position, is
  converted). The training data order and the assignment of slides to ranks are functions of
  (seed, pass) and the cache index (data.pipeline, model.balance), so the resumed run sees the
  same updates, computed by the same ranks.

Faults stop the run in one line and lose no finished work:
- a cached image that is missing, cut short or of another size than the index says stops
  ``fit`` before TensorFlow starts, naming the slide and the ``prepare`` command that rebuilds
  it (``data.cache.damaged_entries``: each file's header and last bytes, not a decode); one
  that fails to decode later, in the pipeline, stops the run there with the same advice;
- a loss or gradient that is not finite (NaN, inf) stops the run before that update is applied,
  naming the epoch and iteration: ``last.ckpt`` and ``best.ckpt`` keep the weights from before;
- a checkpoint that the disk refuses (full, over quota) is a one-line ``data.files.WriteError``
  naming it; the previous file stays.

Fault injection for tests: ``REPRODUCE_FAULT=RANK:ITERATION:exit|kill|nan`` makes rank RANK call
``os._exit(1)``, SIGKILL itself, or compute a NaN loss and NaN gradients, at global iteration
ITERATION (0-based).

TF1's graph mode: training runs eagerly, and a process that has already used TensorFlow's
default graph (a model built first, in TF 1.15's default mode) can no longer switch. There
``fit`` runs the same training in a child process (``python -m reproduce train`` on the
resolved config, written to ``OUT/fit_config.yaml``), passes its output on, and returns what it
would have returned, read back from the run directory. Under an MPI launcher every rank must
train itself, so there it refuses in one line (``model.gpu.GraphModeError``).
"""
import csv
import gc
import json
import math
import os
import shlex
import signal
import sys
import time

import numpy as np

from data.errors import InputError
from data.files import atomic_path, atomic_write_text
from model.graphmode import graph_mode_in_use, run_passing_output
from model.loss import bce
from model.schedule import end_epoch, new_state

LOG_COLUMNS = ("epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy",
               "learning_rate", "seconds", "slowest_rank_seconds", "mean_rank_seconds",
               "straggler_share")


class TrainingError(InputError):
    """Training cannot start or go on with this input (config, cache, run directory)."""


# ---------------------------------------------------------------- distributed pieces

class Collective:
    """Horovod's collectives for the training loop (identity when there is one rank)."""

    def __init__(self, hvd, tf):
        self.hvd, self.tf = hvd, tf
        self.rank, self.size = hvd.rank(), hvd.size()

    def total(self, tensors):
        """Element-wise sum over ranks of a list of tensors, in one fused allreduce."""
        if self.size == 1:
            return list(tensors)
        tf = self.tf
        flat = tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)
        flat = self.hvd.allreduce(flat, op=self.hvd.Sum)
        out, start = [], 0
        for t in tensors:
            n = int(np.prod(t.shape))
            out.append(tf.reshape(flat[start:start + n], t.shape))
            start += n
        return out

    def sum(self, values):
        values = np.asarray(values, np.float64)
        if self.size == 1:
            return values
        return self.hvd.allreduce(self.tf.constant(values), op=self.hvd.Sum).numpy()

    def gather(self, row):
        """Rows of int64 from every rank, in rank order: shape (size, len(row))."""
        row = np.asarray([row], np.int64)
        if self.size == 1:
            return row
        return self.hvd.allgather(self.tf.constant(row)).numpy()

    def broadcast_json(self, obj):
        """Rank 0's JSON-able ``obj`` on every rank."""
        if self.size == 1:
            return obj
        tf = self.tf
        data = np.frombuffer(json.dumps(obj).encode(), np.uint8).astype(np.int32) \
            if self.rank == 0 else np.zeros(0, np.int32)
        n = int(self.hvd.broadcast(tf.constant([len(data)], tf.int32), 0).numpy()[0])
        if self.rank != 0:
            data = np.zeros(n, np.int32)
        data = self.hvd.broadcast(tf.constant(data), 0).numpy()
        return json.loads(data.astype(np.uint8).tobytes().decode())

    def broadcast_variables(self, variables):
        if self.size > 1:
            self.hvd.broadcast_variables(variables, root_rank=0)


def local_gradients(strategy, slides, batch_size):
    """This rank's share of one update's gradient: the sum of its slides' gradients divided by
    the batch size (not the mean of its own slides: ranks may hold unequal counts).

    ``slides``: this rank's (image, label) pairs, at least one. Returns (grads, [loss_sum,
    correct, count]) with the local sums for the logs.
    """
    total, sums = None, [0.0, 0.0, 0.0]
    for image, label in slides:
        loss, probability, grads = strategy.gradients(image, label)
        total = list(grads) if total is None else [a + g for a, g in zip(total, grads)]
        label = float(label)
        sums[0] += float(loss)
        sums[1] += float((float(probability) >= 0.5) == (label >= 0.5))
        sums[2] += 1.0
    return [g / float(batch_size) for g in total], sums


def batch_gradients(strategy, slides, collective, batch_size):
    """One update's gradient: each rank's ``local_gradients`` summed over the ranks, i.e. the
    mean over the batch's ``batch_size`` slides of the per-slide gradients, however the slides
    are shared among the ranks. Returns (grads, this rank's [loss_sum, correct, count])."""
    local, sums = local_gradients(strategy, slides, batch_size)
    return collective.total(local), sums


class SlideStream:
    """This rank's share of each update, in the endless training order of data.pipeline.

    ``position`` = (pass, global offset in the pass's padded order) is the update position,
    the same on every rank; it is what a checkpoint stores. Each update's slides are
    ``data.pipeline.update_slides``; ``cost(row dict, pass, position)`` gives each one's
    planned cost, and ``model.balance.assign`` shares them out, the same on every rank, so a
    stream built at a position replays the same updates with the same assignments. Slides are
    read ``chunk`` updates at a time through one prefetching dataset.
    """

    def __init__(self, index, canvas, seed, rank, size, batch_size, augment, cost,
                 position=(0, 0), chunk=16, **extra):
        self.index, self.canvas, self.seed = index, canvas, seed
        self.rank, self.size, self.batch_size = rank, size, batch_size
        self.augment, self.cost, self.chunk, self.extra = augment, cost, chunk, extra
        self.records = index.to_dict("records")
        self.position = [int(position[0]), int(position[1])]
        self._iterator, self._counts = None, []

    def shares(self, position):
        """(every rank's list of (pass, position, row) for the update at ``position``, the
        position after it)."""
        from data.pipeline import update_slides
        from model.balance import assign
        slides, after = update_slides(len(self.records), self.seed, self.size, self.batch_size,
                                      position)
        costs = [self.cost(self.records[row], p, at) for p, at, row in slides]
        return [[slides[i] for i in share] for share in assign(costs, self.size)], after

    def _open(self):
        """The dataset of this rank's slides for the next ``chunk`` updates."""
        from data.pipeline import assigned_dataset
        mine, self._counts, position = [], [], tuple(self.position)
        for _ in range(self.chunk):
            shares, position = self.shares(position)
            mine += shares[self.rank]
            self._counts.append((len(shares[self.rank]), position))
        self._iterator = iter(assigned_dataset(self.index, self.canvas, self.seed, mine,
                                               augment=self.augment, **self.extra))

    def close(self):
        """Drops the dataset iterator (a new one opens at the same position on ``next``)."""
        self._iterator, self._counts = None, []

    def next_update(self):
        """This rank's (image, label, slide_id) elements of the next update."""
        from data.pipeline import next_element
        if not self._counts:
            self._open()
        count, after = self._counts[0]
        elements = [next_element(self._iterator) for _ in range(count)]
        self._counts.pop(0)
        self.position = list(after)
        return elements


def data_position(state, size):
    """The update position (pass, global offset) of a checkpoint's state. Older checkpoints
    hold each rank's own (pass, offset in its shard) in ``positions``: at an update boundary
    these are equal, and rank offset k is global offset k x size, so they are converted."""
    if "position" in state:
        return [int(v) for v in state["position"]]
    positions = [[int(v) for v in p] for p in state["positions"]]
    if any(p != positions[0] for p in positions):
        raise TrainingError("--resume: the checkpoint's ranks are at different data positions "
                            "({}); it cannot be continued".format(positions))
    return [positions[0][0], positions[0][1] * size]


def validate(strategy, dataset, collective):
    """(val_loss, val_accuracy) over all ranks: each its shard, sums combined by allreduce."""
    from data.pipeline import elements
    sums = np.zeros(3)
    for image, label, _ in elements(dataset):
        r = strategy.predict(image)
        y = float(label)
        sums += [bce(r["logit"], y), float((r["probability"] >= 0.5) == (y >= 0.5)), 1.0]
    loss_sum, correct, n = collective.sum(sums)
    if n == 0:
        raise TrainingError("the validation split is empty")
    return loss_sum / n, correct / n


def fault(rank, global_iteration):
    """REPRODUCE_FAULT=RANK:ITERATION:exit|kill|nan (tests of failure): this rank dies here
    (exit, kill), or (nan) True is returned: this update's loss and gradients are to be NaN."""
    spec = os.environ.get("REPRODUCE_FAULT")
    if not spec:
        return False
    who, when, how = spec.split(":")
    if int(who) != rank or int(when) != global_iteration:
        return False
    sys.stderr.write("REPRODUCE_FAULT: rank {} {} at iteration {}\n".format(rank, how, when))
    sys.stderr.flush()
    if how == "nan":
        return True
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(1)


def poisoned(grads, sums):
    """The injected fault ``nan``: the batch's loss and every gradient NaN."""
    return [g * float("nan") for g in grads], [float("nan")] + list(sums[1:])


# ---------------------------------------------------------------- cohort and run directory

def load_cohort(cfg):
    """(train index, val index) from the cache, restricted to data.manifest when given."""
    from data.manifest import ManifestError, load_manifest

    cache = cfg["data"]["cache"]
    if cache is None:
        raise TrainingError("{}: data.cache: training reads a prepared cache; set it (or pass "
                            "--cache)".format(cfg.path))
    if not os.path.isfile(os.path.join(cache, "index.csv")):
        raise TrainingError("{}: data.cache: no index.csv in {} (run `python -m reproduce "
                            "prepare --config {}` first)".format(cfg.path, cache, cfg.path))
    from data.cache import CacheError, check_made_with, load_index
    try:
        index = load_index(cache)
        # a cache made at another mpp, with another filter or another glass threshold
        # (prepare --glass-to-white) is not silently trained on
        check_made_with(index, cache, cfg["data"]["target_mpp"], cfg["data"]["resample"],
                        glass_to_white=cfg["data"].get("glass_to_white"))
    except CacheError as e:
        raise TrainingError("data.cache: {}".format(e))
    manifest = cfg["data"]["manifest"]
    if manifest is not None:
        try:
            ids = load_manifest(manifest)["slide_id"]
        except (KeyError, ManifestError) as e:
            raise TrainingError("{}: data.manifest {}: unreadable ({})".format(
                cfg.path, manifest, e))
        missing = sorted(set(ids) - set(index["slide_id"].astype(str)))
        if missing:
            raise TrainingError("{}: data.cache {} lacks {} slide(s) of the manifest (e.g. {}); "
                                "run prepare".format(cfg.path, cache, len(missing), missing[0]))
        index = index[index["slide_id"].astype(str).isin(set(ids))]
    if "level" in index.columns:   # single-node crops are for evaluation; the paper trains on slides
        index = index[index["level"].fillna("slide").replace("", "slide") == "slide"]
    train, val = index[index["split"] == "train"], index[index["split"] == "val"]
    if len(train) == 0 or len(val) == 0:
        raise TrainingError("{}: data.cache {}: needs slides in both the train and val splits "
                            "(train {}, val {})".format(cfg.path, cache, len(train), len(val)))
    check_cached_images(cfg, index[index["split"].isin(("train", "val"))])
    return train.reset_index(drop=True), val.reset_index(drop=True)


def prepare_command(cfg):
    """The ``python -m reproduce prepare`` command that (re)builds this run's cache: its
    manifest, cache folder, target mpp, filter and glass threshold, spelled out."""
    data = cfg["data"]
    words = ["python", "-m", "reproduce", "prepare",
             "--manifest", shlex.quote(data["manifest"]) if data["manifest"] else "MANIFEST",
             "--out", shlex.quote(data["cache"]), "--target-mpp", repr(float(data["target_mpp"])),
             "--resample", data["resample"]]
    if data.get("glass_to_white") is not None:
        words += ["--glass-to-white", str(data["glass_to_white"])]
    unnamed = "" if data["manifest"] else " (MANIFEST: the manifest the cache was made from)"
    return " ".join(words) + unnamed


def check_cached_images(cfg, index):
    """Before any step: every cached image the run will read is there, complete and of the
    size the index records (``data.cache.damaged_entries``: headers and last bytes only). One
    line naming the first damaged slide, its file and the command that rebuilds it."""
    from data.cache import damaged_entries
    damaged = damaged_entries(index)
    if damaged:
        slide_id, path, problem = damaged[0]
        more = " (and {} more slide(s))".format(len(damaged) - 1) if len(damaged) > 1 else ""
        raise TrainingError("data.cache: the cached image of slide {} ({}) is {}{}; rebuild it "
                            "with: {}".format(slide_id, path, problem, more, prepare_command(cfg)))


def write_log(path, rows):
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
        w.writeheader()
        w.writerows(rows)


def read_log(path):
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _say(rank, text):
    if rank == 0:
        print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- configuration

def _overrides(overrides):
    """fit's keyword overrides as load_config's dotted ones: ``out``, ``section.key``, or a
    key's bare name (unique across sections: ``max_epochs=3`` is ``train.max_epochs``)."""
    from model.config import SCHEMA
    dotted = {}
    for name, value in overrides.items():
        if name == "out" or "." in name:
            dotted[name] = value
            continue
        sections = [s for s, keys in SCHEMA.items() if name in keys]
        if not sections:
            raise TrainingError("fit: {}: not a configuration key (keys: out, {})".format(
                name, ", ".join(k for keys in SCHEMA.values() for k in keys)))
        dotted["{}.{}".format(sections[0], name)] = value
    return dotted


def _open_run(cfg, resume, notices=True):
    """(last, best) checkpoint paths of the run directory, checked against ``resume``.
    ``notices``: print the resumed checkpoint's notice (not when a child process will)."""
    from model import checkpoint
    out = cfg["out"]
    last, best = os.path.join(out, "last.ckpt"), os.path.join(out, "best.ckpt")
    if resume and not os.path.isfile(last):
        raise TrainingError("--resume: no checkpoint {} to resume from".format(last))
    if not resume and os.path.isfile(last):
        raise TrainingError("out: {} already holds a run; pass --resume to continue it, or "
                            "another --out".format(out))
    if resume:
        checkpoint.read_state(last)   # a damaged file: one line now, before MPI and TensorFlow
        notice = checkpoint.check_config(last, cfg)   # a contradicting input: refused here
        if notice and notices:
            from data import mpi
            _say(mpi.rank(), "note: " + notice)
    return last, best


def _read_config(config, overrides, world):
    """The run's config for ``world`` ranks; a whole-image step too big for the host is refused
    here, before any data or TensorFlow."""
    from model.config import load_config
    from model.strategy import check_memory
    cfg = load_config(config, overrides=_overrides(overrides), world_size=world)
    check_memory(cfg["train"]["strategy"], cfg["data"]["canvas"], where=cfg.path)
    return cfg


def _cohort_for(cfg, world):
    """(train index, val index), with at least one training slide for each of ``world`` ranks."""
    train_index, val_index = load_cohort(cfg)
    if len(train_index) < world:
        raise TrainingError("{}: {} training slides for {} ranks: each rank needs one".format(
            cfg.path, len(train_index), world))
    return train_index, val_index


# ---------------------------------------------------------------- one run, in the paper's steps

class TrainingRun(object):
    """The state of one ``fit`` on this rank: config, Horovod, model, optimizer, strategy, the
    schedule's state (model.schedule, stored in ``last.ckpt``), the data stream and the logs.

    ``fit`` calls, in order: ``set_up``, ``start``, then ``one_epoch`` and ``end_of_epoch``
    until the schedule says done, then ``result``.
    """

    def __init__(self, cfg, last, best, train_index, val_index):
        self.cfg, self.t = cfg, cfg["train"]
        self.out, self.last, self.best = cfg["out"], last, best
        self.log_path = os.path.join(self.out, "train_log.csv")
        self.train_index, self.val_index = train_index, val_index
        self.state, self.stream, self.rows, self.writer = None, None, [], None
        self.saved = None   # (epochs done, iteration) of the run's last.ckpt on disk

    # -- set-up: Horovod, the device and threads, the model, the strategy, the optimizer

    def set_up(self):
        """Horovod and TensorFlow's process config first (threads, the GPU and its allocator),
        then the model, the strategy and Adam."""
        self._start_horovod()
        self._configure_device()
        self._build_model()
        self._build_strategy()
        self._build_optimizer()

    def _start_horovod(self):
        """``hvd.init()``; this rank's place and its share of the batch (accumulation steps)."""
        import horovod.tensorflow as hvd
        import tensorflow as tf
        from model.config import check_world_size
        hvd.init()
        self.hvd, self.tf = hvd, tf
        self.rank, self.size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()
        self.accumulation = check_world_size(self.cfg, self.size)
        self.collective = Collective(hvd, tf)

    def _configure_device(self):
        """Threads per rank, one GPU per rank (unified memory for ``unified`` alone), eager TF."""
        from model import gpu
        from model.strategy import resolve
        tf, t = self.tf, self.t
        self.strategy_name = resolve(t["strategy"])
        threads = t["threads"] or gpu.threads_per_rank(self.hvd.local_size())
        has_gpu = gpu.gpu_available()
        gpu.configure(gpu.session_config(
            gpu.host_ram_bytes(), gpu.gpu_ram_bytes(self.local_rank) if has_gpu else None,
            self.local_rank, threads, unified=self.strategy_name == "unified", gpu=has_gpu))
        tf.compat.v1.enable_v2_behavior()
        tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)   # deprecation noise
        if self.strategy_name == "unified" and not has_gpu:
            self.say("warning: strategy unified without a GPU runs as direct on the CPU")

    def _build_model(self):
        """The seeded ResNet-50; only rank 0 reads the initial weights, the others receive them
        by broadcast."""
        from model.resnet import WeightsError, build_model
        self.tf.compat.v1.set_random_seed(self.t["seed"])
        np.random.seed(self.t["seed"])
        try:
            self.model = build_model(self.cfg["model"]["weights"] if self.rank == 0 else "none")
        except WeightsError as e:
            raise TrainingError("{}: model.weights: {}".format(self.cfg.path, e))

    def _build_strategy(self):
        """The way a slide's gradient is computed (model.strategy), for this rank's memory."""
        from model.strategy import make_strategy
        t, data = self.t, self.cfg["data"]
        try:
            self.strategy = make_strategy(
                self.strategy_name, self.model, tile=t["tile"], memory_gb=t["memory_gb"],
                canvas=data["canvas"], mpp=data["target_mpp"], log=self.say,
                rank_on_node=self.local_rank, ranks_on_node=self.hvd.local_size())
        except ValueError as e:
            raise TrainingError("{}: train.strategy {} (tile {}, memory_gb {}): {}".format(
                self.cfg.path, self.strategy_name, t["tile"], t["memory_gb"], e))

    def _build_optimizer(self):
        """Adam at the initial rate, its slots created now (zero gradients leave the weights
        unchanged: m = v = 0) so that they can be restored and broadcast before the first step."""
        tf = self.tf
        self.variables = self.model.trainable_variables
        self.optimizer = tf.keras.optimizers.Adam(self.t["learning_rate"])
        self.optimizer.apply_gradients(zip([tf.zeros_like(v) for v in self.variables],
                                           self.variables))
        self.optimizer.iterations.assign(0)

    # -- initial state: resume or a new run, the same on every rank

    def start(self, resume):
        """The schedule's state, weights and Adam state of rank 0 (a new run, or ``last.ckpt``
        with ``resume``) on every rank; then the log and this rank's data stream."""
        state = self.collective.broadcast_json(self._rank0_state(resume) if self.rank == 0
                                               else None)
        if "error" in state:
            raise TrainingError(state["error"])
        self.state = state
        if resume:
            self.saved = (state["epoch"], state["iteration"])
        self.collective.broadcast_variables(self.model.variables + self.optimizer.variables())
        self.optimizer.learning_rate = state["learning_rate"]
        if self.rank == 0:
            self._open_log(resume)
        state["position"] = data_position(state, self.size)
        state.setdefault("rank_seconds", [0.0, 0.0, 0.0, 0])
        self.stream = SlideStream(self.train_index, self.cfg["data"]["canvas"], self.t["seed"],
                                  self.rank, self.size, self.t["batch_size"], self.t["augment"],
                                  self.slide_cost, position=state["position"],
                                  translate_px=self.cfg["data"]["translate_px"])

    def slide_cost(self, record, pass_, position):
        """The planned cost of a training slide (``model.balance.slide_cost``), from its cached
        size in the index and its seeded augmentation draw: the same on every rank."""
        from data.augment import sample_params
        from data.pipeline import element_rng
        from model.balance import slide_cost
        data = self.cfg["data"]
        params = sample_params(element_rng(self.t["seed"], pass_, position),
                               translate_px=data["translate_px"]) if self.t["augment"] else None
        from model.levels import LevelStreaming
        return slide_cost(record["height"], record["width"], data["canvas"], params,
                          getattr(self.strategy, "tile", None),
                          getattr(self.strategy, "margin", None),
                          levels=isinstance(self.strategy, LevelStreaming))

    def _rank0_state(self, resume):
        """A new run's state, or the checkpoint's; a checkpoint that cannot be continued gives
        ``dict(error=...)``, so that every rank hears of it rather than wait."""
        if not resume:
            return new_state(self.cfg, self.size)
        from model import checkpoint
        try:
            state = checkpoint.restore(self.last, self.model, self.optimizer)
        except checkpoint.CheckpointError as e:
            return dict(error=str(e))
        if state["world_size"] != self.size or state["batch_size"] != self.t["batch_size"]:
            return dict(error="--resume: {} was written by {} ranks with batch_size {}; run it "
                        "with -np {}".format(self.last, state["world_size"],
                                             state["batch_size"], state["world_size"]))
        return state

    def _open_log(self, resume):
        """Rank 0: the run directory, the epochs logged so far (those after the checkpoint's,
        logged by a killed run, are re-run), TensorBoard's writer, and the run's one-line plan."""
        state, t, data = self.state, self.t, self.cfg["data"]
        os.makedirs(self.out, exist_ok=True)
        self.rows = [r for r in read_log(self.log_path) if int(r["epoch"]) <= state["epoch"]]
        self.writer = self.tf.compat.v2.summary.create_file_writer(
            os.path.join(self.out, "events"))
        self.say("train: {} ranks x {} accumulated = batch {}; strategy {}; {} train / {} val "
                 "slides; {} px canvas at {} um/px; {} in epoch {} after iteration {}".format(
                     self.size, self.accumulation, t["batch_size"], self.strategy_name,
                     len(self.train_index), len(self.val_index), data["canvas"],
                     data["target_mpp"], "resuming" if resume else "starting",
                     state["epoch"] + 1, state["iteration"]))

    # -- one epoch: iterations_per_epoch updates, last.ckpt every checkpoint_every of them

    def one_epoch(self):
        """Trains the rest of the current epoch. Returns the time its unsaved seconds started."""
        from tqdm import tqdm
        state, t = self.state, self.t
        started = time.time()
        bar = tqdm(total=t["iterations_per_epoch"], initial=state["iteration"],
                   disable=self.rank != 0, desc="epoch {}".format(state["epoch"] + 1),
                   file=sys.stderr, leave=False)
        while state["iteration"] < t["iterations_per_epoch"]:
            nan = fault(self.rank, state["global_iteration"])
            self._show_update(bar, self._update(nan))
            if (state["iteration"] % t["checkpoint_every"] == 0
                    and state["iteration"] < t["iterations_per_epoch"]):
                state["seconds"] += time.time() - started
                started = time.time()
                self.save_last()
        bar.close()
        return started

    def _update(self, nan=False):
        """One update of the batch: this rank's slides, gradients averaged over ranks, Adam
        (unless the loss or a gradient is not finite: see ``_stop_unless_finite``). ``nan``: the
        injected fault. Returns the batch's [loss_sum, correct, count] over all ranks."""
        state = self.state
        started = time.perf_counter()
        slides = [element[:2] for element in self.stream.next_update()]
        local, sums = local_gradients(self.strategy, slides, self.t["batch_size"])
        self._time_ranks(time.perf_counter() - started)
        grads = self.collective.total(local)
        if nan:
            grads, sums = poisoned(grads, sums)
        sums = self.collective.sum(sums)
        self._stop_unless_finite(sums[0] / sums[2], grads)
        self.optimizer.apply_gradients(zip(grads, self.variables))
        state["sums"] = [a + b for a, b in zip(state["sums"], sums)]
        state["iteration"] += 1
        state["global_iteration"] += 1
        return sums

    def _time_ranks(self, seconds):
        """Every rank's seconds for its share of this update (reading and gradients, before
        the allreduce): the slowest, the mean and the straggler share (slowest - mean) /
        slowest, to TensorBoard (rank 0) and into the epoch's sums for ``train_log.csv``."""
        from model.balance import straggler_share
        micros = self.collective.gather([int(round(seconds * 1e6))])[:, 0] / 1e6
        slowest, mean, share = straggler_share([float(v) for v in micros])
        totals = self.state["rank_seconds"]
        self.state["rank_seconds"] = [totals[0] + slowest, totals[1] + mean, totals[2] + share,
                                      totals[3] + 1]
        if self.rank == 0:
            step = self.state["global_iteration"]
            with self.writer.as_default():
                for name, value in (("slowest_rank_s", slowest), ("mean_rank_s", mean),
                                    ("straggler_share", share)):
                    self.tf.compat.v2.summary.scalar("batch/" + name, value, step=step)

    def _stop_unless_finite(self, loss, grads):
        """A NaN or infinite batch loss (the same on every rank: it is summed over them) or
        gradient (averaged over the ranks) stops training before the update is applied, in one
        line with the epoch and iteration; the checkpoints on disk are from before it."""
        tf = self.tf
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        if math.isfinite(loss) and bool(finite):    # one read back from the device
            return
        state = self.state
        what = "loss is {:g}".format(loss) if not math.isfinite(loss) else \
            "loss is {:g} but a gradient is not finite".format(loss)
        raise TrainingError("train: the training {} in epoch {}, iteration {} of {} (global "
                            "iteration {}); stopped before that update: {}".format(
                                what, state["epoch"] + 1, state["iteration"] + 1,
                                self.t["iterations_per_epoch"], state["global_iteration"] + 1,
                                self.checkpoints_kept()))

    def checkpoints_kept(self):
        """What the checkpoints on disk hold, for a run stopped by a fault."""
        if self.saved is None:
            return "no checkpoint was saved in this run yet"
        epoch, iteration = self.saved
        kept = "{} ({})".format(self.last, "after epoch {}".format(epoch) if iteration == 0 else
                                "epoch {}, after iteration {}".format(epoch + 1, iteration))
        both = os.path.isfile(self.best)
        kept += " and " + self.best if both else ""
        return "{} {} the weights from before it".format(kept, "hold" if both else "holds")

    def _show_update(self, bar, sums):
        """Rank 0: the batch loss to TensorBoard, the epoch's running loss on the bar."""
        if self.rank != 0:
            return
        state, tf = self.state, self.tf
        with self.writer.as_default():
            tf.compat.v2.summary.scalar("batch/loss", sums[0] / sums[2],
                                        step=state["global_iteration"])
        bar.set_postfix(loss="{:.4f}".format(state["sums"][0] / state["sums"][2]))
        bar.update(1)

    def save_last(self):
        """``last.ckpt`` (rank 0): weights, Adam, the state and the update position in the
        data order (``positions``: the same as each rank's position in its own shard, for
        readers of older checkpoints)."""
        from model import checkpoint
        pass_, offset = self.stream.position
        self.state["position"] = [pass_, offset]
        self.state["positions"] = [[pass_, offset // self.size]] * self.size
        if self.rank == 0:
            checkpoint.save(self.last, self.model, self.state, self.optimizer,
                            contract=checkpoint.input_contract(self.cfg))
        self.saved = (self.state["epoch"], self.state["iteration"])

    # -- end of epoch: validation, schedule, log, best checkpoint, rollback

    def end_of_epoch(self, started):
        """Validates, steps the schedule (model.schedule), logs the epoch, keeps the best weights,
        rolls back to them when the rule says so, and saves ``last.ckpt``."""
        from data import pipeline
        state = self.state
        val_loss, val_accuracy = validate(self.strategy, pipeline.eval_dataset(
            self.val_index, self.cfg["data"]["canvas"], rank=self.rank, size=self.size),
            self.collective)
        if not math.isfinite(val_loss):
            raise TrainingError("train: the validation loss is {:g} after epoch {}; stopped "
                                "before logging it: {}".format(val_loss, state["epoch"] + 1,
                                                               self.checkpoints_kept()))
        row = self._epoch_row(val_loss, val_accuracy, started)
        improved, rolls_back = end_epoch(state, val_loss, self.t)
        self.optimizer.learning_rate = state["learning_rate"]
        state["sums"], state["seconds"] = [0.0, 0.0, 0.0], 0.0
        state["rank_seconds"] = [0.0, 0.0, 0.0, 0]
        if self.rank == 0:
            self._log_epoch(row)
            if improved:
                self._save_best(row)
            self.say("epoch {epoch}: train loss {train_loss:.4f} acc {train_accuracy:.3f} | "
                     "val loss {val_loss:.4f} acc {val_accuracy:.3f} | lr {learning_rate:g} | "
                     "{seconds:.0f} s".format(**row) + (" (best)" if improved else ""))
        if rolls_back:
            self._roll_back()
        self.save_last()

    def _epoch_row(self, val_loss, val_accuracy, started):
        """The epoch's line of ``train_log.csv`` (before the schedule changes the rate)."""
        state = self.state
        loss_sum, correct, n = state["sums"]
        slowest, mean, share, updates = state["rank_seconds"]
        updates = max(1, updates)
        return dict(epoch=state["epoch"] + 1, train_loss=loss_sum / n, val_loss=val_loss,
                    train_accuracy=correct / n, val_accuracy=val_accuracy,
                    learning_rate=state["learning_rate"],
                    seconds=round(state["seconds"] + time.time() - started, 3),
                    slowest_rank_seconds=round(slowest / updates, 4),
                    mean_rank_seconds=round(mean / updates, 4),
                    straggler_share=round(share / updates, 4))

    def _log_epoch(self, row):
        """Rank 0: the row into ``train_log.csv`` and its figures into TensorBoard."""
        self.rows.append(row)
        write_log(self.log_path, self.rows)
        with self.writer.as_default():
            for key in LOG_COLUMNS[1:6]:
                self.tf.compat.v2.summary.scalar("epoch/" + key, row[key], step=row["epoch"])
        self.writer.flush()

    def _save_best(self, row):
        """Rank 0: this epoch's weights as ``best.ckpt``."""
        from model import checkpoint
        checkpoint.save(self.best, self.model, dict(epoch=row["epoch"], val_loss=row["val_loss"],
                                                    config=self.cfg.path),
                        contract=checkpoint.input_contract(self.cfg))

    def _roll_back(self):
        """The rate has dropped under ``on_plateau: rollback``: go on from the best weights
        (rank 0's ``best.ckpt``, then broadcast; Adam's state is kept)."""
        from model import checkpoint
        if self.rank == 0:
            checkpoint.restore(self.best, self.model, rng=False)
        self.collective.broadcast_variables(self.model.variables)
        self.say("on_plateau rollback: lr -> {:g}, weights of epoch {} ({})".format(
            self.state["learning_rate"], self.state["best_epoch"] + 1, self.best))

    # -- the end

    def result(self):
        """``fit``'s return value, after rank 0's closing line."""
        state = self.state
        self.say("train: done after {} epochs; best val loss {:.4f} at epoch {} -> {}".format(
            state["epoch"], state["best_val_loss"], state["best_epoch"] + 1, self.best))
        return run_result(self.cfg, state)

    def say(self, text):
        """A line on stderr from rank 0 only."""
        _say(self.rank, text)


# ---------------------------------------------------------------- the protocol

def fit(config, *, resume=False, **overrides):
    """Trains the whole-slide ResNet-50 as the paper did; the loop of ``reproduce train``.

    ``config``: a YAML path (configs/*.yaml) or a dict of the same sections.
    ``resume``: continue the run in ``out`` from its ``last.ckpt``.
    ``overrides``: configuration values that replace the config's, by key name
    (``out="runs/x"``, ``max_epochs=3``, ``manifest=...``) or dotted (``**{"train.seed": 1}``).

    Run under mpirun, every rank calls it. Returns (on every rank) a dict: out, best and last
    (checkpoint paths), log (train_log.csv), epochs, best_epoch (1-based), best_val_loss.
    Bad input raises ``data.errors.InputError`` (TrainingError, CheckpointError, ...) or the
    config's ``model.config.ConfigError``, naming the file or the key.
    """
    from data import mpi
    world = mpi.world_size()
    cfg = _read_config(config, overrides, world)
    elsewhere = graph_mode_in_use()
    if elsewhere and mpi.launched():
        _refuse_graph_mode()
    last, best = _open_run(cfg, resume, notices=not elsewhere)
    train_index, val_index = _cohort_for(cfg, world)
    if elsewhere:
        return fit_in_child(cfg, resume)
    run = TrainingRun(cfg, last, best, train_index, val_index)
    run.set_up()
    run.start(resume)
    _train(run)
    return run.result()


def _train(run):
    """The epochs until the schedule says done. A slide the pipeline cannot decode stops it in
    one line that names the slide, its file and how to rebuild it."""
    from data.pipeline import UnreadableSlide
    try:
        while not run.state["done"]:
            started = run.one_epoch()
            run.end_of_epoch(started)
        return
    except UnreadableSlide as e:
        failure = TrainingError("train: {}; delete that file and rebuild it with: {}; {}".format(
            e, prepare_command(run.cfg), run.checkpoints_kept()))
    except BaseException:
        run.stream.close()   # see below
        raise
    # The data iterator goes now, while TensorFlow is up: left to the end of the process (the
    # run is in reference cycles, and so is the error's traceback), deleting it prints a
    # traceback of its own after the one-line error.
    run.stream.close()
    gc.collect()
    raise failure


def run_result(cfg, state):
    """``fit``'s return value from the config and the final schedule state (``last.ckpt``'s)."""
    out = cfg["out"]
    return dict(out=out, best=os.path.join(out, "best.ckpt"), last=os.path.join(out, "last.ckpt"),
                log=os.path.join(out, "train_log.csv"), epochs=state["epoch"],
                best_epoch=state["best_epoch"] + 1, best_val_loss=state["best_val_loss"])


# ---------------------------------------------------------------- fit from TF1's graph mode

def _refuse_graph_mode():
    """Under an MPI launcher each rank must train in its own process: one line, no child."""
    from model.gpu import GraphModeError
    raise GraphModeError(
        "fit under an MPI launcher: this rank already runs TensorFlow in graph mode (something "
        "built a model or an op before fit), and training needs eager execution from the "
        "start; call fit at program start, before anything uses TensorFlow")


def fit_in_child(cfg, resume):
    """``fit`` in a fresh ``python -m reproduce train`` process, for a process in TF1's graph
    mode: the resolved config goes to ``OUT/fit_config.yaml`` (kept: the checkpoints record
    it), the child's output comes through on stderr as it is written, and the return value is
    the one ``fit`` gives, from the final ``last.ckpt``. The child's one-line error is raised
    here as a TrainingError."""
    import yaml
    from model import checkpoint
    path = os.path.join(cfg["out"], "fit_config.yaml")
    atomic_write_text(path, yaml.safe_dump({k: cfg[k] for k in ("data", "model", "train", "out")},
                                           default_flow_style=False, sort_keys=False))
    command = [sys.executable, "-m", "reproduce", "train", "--config", path]
    command += ["--resume"] if resume else []
    _say(0, "fit: this process runs TensorFlow in graph mode, and training runs eagerly: "
            "training in a new process: {}".format(" ".join(shlex.quote(c) for c in command)))
    status, error = run_passing_output(command)
    if status == 2 and error:
        raise TrainingError(error)
    if status != 0:
        raise RuntimeError("fit: the training process ({}) ended with exit status {}; its "
                           "output is above".format(" ".join(command), status))
    return run_result(cfg, checkpoint.read_state(os.path.join(cfg["out"], "last.ckpt")))
