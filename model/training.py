"""The paper's training loop, on 1..N ranks: ``fit(config, **overrides)``.

Run it under mpirun for Horovod (``python -m reproduce train`` is this function behind argument
parsing); without mpirun it is one rank.

- Horovod as in its examples: ``hvd.init()``, one GPU per rank (``hvd.local_rank()``), the
  initial weights and Adam state broadcast from rank 0.
- One slide per rank per micro-step. The effective batch is ``train.batch_size`` slides: each
  rank accumulates ``batch_size / world_size`` micro-steps, then the per-rank mean gradients are
  averaged by ``hvd.allreduce``, so the update is the mean gradient over the batch whatever the
  number of ranks (8 GPUs x 1, or 2 ranks x 4).
- Adam at ``learning_rate``, binary cross-entropy (model.loss). An *epoch* is
  ``iterations_per_epoch`` updates (88 in the paper), followed by the validation loss, averaged
  over all ranks (each rank evaluates its shard of the validation split; losses and counts are
  summed by allreduce).
- Schedule (``schedule_step``): ``patience`` epochs without a lower validation loss -> learning
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
  learning_rate, seconds), TensorBoard events in ``events/``.
- ``resume=True`` continues from ``last.ckpt``: weights, Adam state, epoch and iteration,
  schedule phase and counters, best loss, and each rank's position in the data order. The
  training data order is a function of (seed, pass) (data.pipeline), so the resumed run sees
  the same slides in the same order.

Fault injection for tests: ``REPRODUCE_FAULT=RANK:ITERATION:exit|kill`` makes rank RANK call
``os._exit(1)`` or SIGKILL itself before global iteration ITERATION (0-based).
"""
import csv
import json
import os
import signal
import sys
import time

import numpy as np

from data.errors import InputError
from data.files import atomic_path
from model.loss import bce

LOG_COLUMNS = ("epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy",
               "learning_rate", "seconds")
ROLLBACK_MIN_DELTA = 1e-4   # Keras ReduceLROnPlateau's default, under the released code's rollback


class TrainingError(InputError):
    """Training cannot start or go on with this input (config, cache, run directory)."""


# ---------------------------------------------------------------- schedule (pure, tested alone)

def new_state(cfg, world_size):
    t = cfg["train"]
    return dict(epoch=0, iteration=0, global_iteration=0, phase=0,
                learning_rate=t["learning_rate"], best_val_loss=None, best_epoch=None,
                bad_epochs=0, done=False, seed=t["seed"], world_size=world_size,
                batch_size=t["batch_size"], positions=[[0, 0]] * world_size,
                sums=[0.0, 0.0, 0.0], seconds=0.0)


def schedule_step(state, val_loss, patience, reduced_learning_rate, max_epochs=None,
                  min_delta=0.0):
    """End of an epoch: updates best loss, patience counter, phase, lr and ``done``.

    An epoch improves when ``val_loss < best - min_delta`` (the first always does). Phase 0
    runs at the initial lr; ``patience`` epochs without improvement switch to phase 1 at
    ``reduced_learning_rate`` with the counter reset; ``patience`` more without improvement
    end the run. Returns True when this epoch improved (its weights become best.ckpt).
    """
    best = state["best_val_loss"]
    improved = best is None or val_loss < best - min_delta
    if improved:
        state["best_val_loss"], state["best_epoch"], state["bad_epochs"] = val_loss, state["epoch"], 0
    else:
        state["bad_epochs"] += 1
        if state["bad_epochs"] >= patience:
            if state["phase"] == 0:
                state["phase"], state["learning_rate"], state["bad_epochs"] = 1, reduced_learning_rate, 0
            else:
                state["done"] = True
    state["epoch"] += 1
    state["iteration"] = 0
    if max_epochs is not None and state["epoch"] >= max_epochs:
        state["done"] = True
    return improved


# ---------------------------------------------------------------- distributed pieces

class Collective:
    """Horovod's collectives for the training loop (identity when there is one rank)."""

    def __init__(self, hvd, tf):
        self.hvd, self.tf = hvd, tf
        self.rank, self.size = hvd.rank(), hvd.size()

    def mean(self, tensors):
        """Element-wise mean over ranks of a list of tensors, in one fused allreduce."""
        if self.size == 1:
            return list(tensors)
        tf = self.tf
        flat = tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)
        flat = self.hvd.allreduce(flat, op=self.hvd.Average)
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


def batch_gradients(strategy, slides, collective):
    """One update's gradient: this rank's micro-steps accumulated, then averaged over ranks.

    ``slides``: this rank's (image, label) pairs, batch_size / world_size of them. Returns
    (grads, [loss_sum, correct, count]) with grads = mean over all ranks' slides of the
    per-slide gradients, and the local sums for the logs.
    """
    total, sums = None, [0.0, 0.0, 0.0]
    for image, label in slides:
        loss, probability, grads = strategy.gradients(image, label)
        total = list(grads) if total is None else [a + g for a, g in zip(total, grads)]
        label = float(label)
        sums[0] += float(loss)
        sums[1] += float((float(probability) >= 0.5) == (label >= 0.5))
        sums[2] += 1.0
    local = [g / float(len(slides)) for g in total]
    return collective.mean(local), sums


class SlideStream:
    """This rank's endless training sequence: pass 0, pass 1, ... of data.pipeline's order.

    ``position`` = (pass, offset within the pass) is what a checkpoint stores; a stream built
    at a position replays the same slides from there (the order is a function of seed and
    pass only).
    """

    def __init__(self, index, canvas, seed, rank, size, augment, position=(0, 0), **extra):
        self.index, self.canvas, self.seed = index, canvas, seed
        self.rank, self.size, self.augment, self.extra = rank, size, augment, extra
        self.position = [int(position[0]), int(position[1])]
        self._iterator = None

    def _open(self):
        from data.pipeline import training_dataset
        ds = training_dataset(self.index, self.canvas, self.seed, self.position[0],
                              rank=self.rank, size=self.size, augment=self.augment,
                              skip=self.position[1], **self.extra)
        self._iterator = iter(ds)

    def next(self):
        for _ in range(2):
            if self._iterator is None:
                self._open()
            try:
                image, label, slide_id = next(self._iterator)
                self.position[1] += 1
                return image, label, slide_id
            except StopIteration:
                self._iterator = None
                if self.position[1] == 0:
                    break
                self.position = [self.position[0] + 1, 0]
        raise TrainingError("rank {}: the training split gives this rank no slides".format(
            self.rank))


def validate(strategy, dataset, collective):
    """(val_loss, val_accuracy) over all ranks: each its shard, sums combined by allreduce."""
    sums = np.zeros(3)
    for image, label, _ in dataset:
        r = strategy.predict(image)
        y = float(label)
        sums += [bce(r["logit"], y), float((r["probability"] >= 0.5) == (y >= 0.5)), 1.0]
    loss_sum, correct, n = collective.sum(sums)
    if n == 0:
        raise TrainingError("the validation split is empty")
    return loss_sum / n, correct / n


def fault(rank, global_iteration):
    """REPRODUCE_FAULT=RANK:ITERATION:exit|kill: this rank dies here (tests of failure)."""
    spec = os.environ.get("REPRODUCE_FAULT")
    if not spec:
        return
    who, when, how = spec.split(":")
    if int(who) == rank and int(when) == global_iteration:
        sys.stderr.write("REPRODUCE_FAULT: rank {} {} at iteration {}\n".format(rank, how, when))
        sys.stderr.flush()
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(1)


# ---------------------------------------------------------------- cohort and run directory

def load_cohort(cfg):
    """(train index, val index) from the cache, restricted to data.manifest when given."""
    from data.manifest import ManifestError, load_manifest

    cache = cfg["data"]["cache"]
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
    return train.reset_index(drop=True), val.reset_index(drop=True)


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


def _open_run(cfg, resume):
    """(last, best) checkpoint paths of the run directory, checked against ``resume``."""
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
    return last, best


# ---------------------------------------------------------------- the loop

def fit(config, *, resume=False, **overrides):
    """Trains the whole-slide ResNet-50 as the paper did; the loop of ``reproduce train``.

    ``config``: a YAML path (configs/*.yaml) or a dict of the same sections.
    ``resume``: continue the run in ``out`` from its ``last.ckpt``.
    ``overrides``: configuration values that replace the config's, by key name
    (``out="runs/x"``, ``max_epochs=3``, ``manifest=...``) or dotted (``**{"train.seed": 1}``).

    Run under mpirun, every rank calls it. Returns (on every rank) a dict: out, best and last
    (checkpoint paths), log (train_log.csv), epochs, best_epoch (1-based), best_val_loss.
    Bad input raises ``data.errors.InputError`` (TrainingError, CheckpointError, ...) or the
    the config's ``model.config.ConfigError``, naming the file or the key.
    """
    from data import mpi
    from model.config import check_world_size, load_config

    world = mpi.world_size()
    cfg = load_config(config, overrides=_overrides(overrides), world_size=world)
    from model.strategy import check_memory   # a whole-image step too big: refused before any work
    check_memory(cfg["train"]["strategy"], cfg["data"]["canvas"], where=cfg.path)
    out = cfg["out"]
    last, best = _open_run(cfg, resume)
    train_index, val_index = load_cohort(cfg)
    if len(train_index) < world:
        raise TrainingError("{}: {} training slides for {} ranks: each rank needs one".format(
            cfg.path, len(train_index), world))

    # TensorFlow's process config comes first: threads per rank, the GPU and its allocator.
    import horovod.tensorflow as hvd
    from model import gpu
    from model.strategy import resolve
    import tensorflow as tf

    hvd.init()
    rank, size, local_rank = hvd.rank(), hvd.size(), hvd.local_rank()
    accumulation = check_world_size(cfg, size)
    t = cfg["train"]
    strategy_name = resolve(t["strategy"])
    threads = t["threads"] or gpu.threads_per_rank(hvd.local_size())
    has_gpu = gpu.gpu_available()
    gpu.configure(gpu.session_config(
        gpu.host_ram_bytes(), gpu.gpu_ram_bytes(local_rank) if has_gpu else None,
        local_rank, threads, unified=strategy_name == "unified", gpu=has_gpu))
    tf.compat.v1.enable_v2_behavior()
    tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)   # deprecation noise
    if strategy_name == "unified" and not has_gpu:
        _say(rank, "warning: strategy unified without a GPU runs as direct on the CPU")

    from model import checkpoint
    from model.resnet import WeightsError, build_model
    from model.strategy import make_strategy

    tf.compat.v1.set_random_seed(t["seed"])
    np.random.seed(t["seed"])
    try:
        # Only rank 0 needs the initial weights: the others receive them by broadcast.
        model = build_model(cfg["model"]["weights"] if rank == 0 else "none")
    except WeightsError as e:
        raise TrainingError("{}: model.weights: {}".format(cfg.path, e))
    try:
        strategy = make_strategy(strategy_name, model, tile=t["tile"], memory_gb=t["memory_gb"],
                                 canvas=cfg["data"]["canvas"], mpp=cfg["data"]["target_mpp"],
                                 log=lambda line: _say(rank, line),
                                 rank_on_node=local_rank, ranks_on_node=hvd.local_size())
    except ValueError as e:
        raise TrainingError("{}: train.strategy {} (tile {}, memory_gb {}): {}".format(
            cfg.path, strategy_name, t["tile"], t["memory_gb"], e))
    variables = model.trainable_variables
    optimizer = tf.keras.optimizers.Adam(t["learning_rate"])
    # Create Adam's slots now (zero gradients leave the weights unchanged: m = v = 0), so that
    # they can be restored and broadcast before the first real step.
    optimizer.apply_gradients(zip([tf.zeros_like(v) for v in variables], variables))
    optimizer.iterations.assign(0)
    collective = Collective(hvd, tf)

    state = None
    if rank == 0:
        if resume:
            try:
                state = checkpoint.restore(last, model, optimizer)
            except checkpoint.CheckpointError as e:   # every rank must hear of it, not wait
                state = dict(error=str(e))
            else:
                if state["world_size"] != size or state["batch_size"] != t["batch_size"]:
                    state = dict(error="--resume: {} was written by {} ranks with batch_size "
                                 "{}; run it with -np {}".format(
                                     last, state["world_size"], state["batch_size"],
                                     state["world_size"]))
        else:
            state = new_state(cfg, size)
    state = collective.broadcast_json(state)
    if "error" in state:
        raise TrainingError(state["error"])
    collective.broadcast_variables(model.variables + optimizer.variables())
    optimizer.learning_rate = state["learning_rate"]

    log_path = os.path.join(out, "train_log.csv")
    rows, writer = [], None
    if rank == 0:
        os.makedirs(out, exist_ok=True)
        # Epochs after the checkpoint's may be logged by the killed run: they are re-run.
        rows = [r for r in read_log(log_path) if int(r["epoch"]) <= state["epoch"]]
        writer = tf.compat.v2.summary.create_file_writer(os.path.join(out, "events"))
        _say(rank, "train: {} ranks x {} accumulated = batch {}; strategy {}; {} train / {} val "
                   "slides; {} px canvas at {} um/px; {} in epoch {} after iteration {}".format(
                       size, accumulation, t["batch_size"], strategy_name, len(train_index),
                       len(val_index), cfg["data"]["canvas"], cfg["data"]["target_mpp"],
                       "resuming" if resume else "starting", state["epoch"] + 1,
                       state["iteration"]))

    canvas = cfg["data"]["canvas"]
    from data import pipeline
    stream = SlideStream(train_index, canvas, t["seed"], rank, size, t["augment"],
                         position=state["positions"][rank],
                         translate_px=cfg["data"]["translate_px"])
    rollback = t["on_plateau"] == "rollback"

    def save_last():
        state["positions"] = collective.gather(stream.position).tolist()
        if rank == 0:
            checkpoint.save(last, model, state, optimizer)

    from tqdm import tqdm
    while not state["done"]:
        started = time.time()
        bar = tqdm(total=t["iterations_per_epoch"], initial=state["iteration"], disable=rank != 0,
                   desc="epoch {}".format(state["epoch"] + 1), file=sys.stderr, leave=False)
        while state["iteration"] < t["iterations_per_epoch"]:
            fault(rank, state["global_iteration"])
            slides = [stream.next()[:2] for _ in range(accumulation)]
            grads, sums = batch_gradients(strategy, slides, collective)
            optimizer.apply_gradients(zip(grads, variables))
            sums = collective.sum(sums)
            state["sums"] = [a + b for a, b in zip(state["sums"], sums)]
            state["iteration"] += 1
            state["global_iteration"] += 1
            if rank == 0:
                with writer.as_default():
                    tf.compat.v2.summary.scalar("batch/loss", sums[0] / sums[2],
                                                step=state["global_iteration"])
                bar.set_postfix(loss="{:.4f}".format(state["sums"][0] / state["sums"][2]))
                bar.update(1)
            if (state["iteration"] % t["checkpoint_every"] == 0
                    and state["iteration"] < t["iterations_per_epoch"]):
                state["seconds"] += time.time() - started
                started = time.time()
                save_last()
        bar.close()

        val_loss, val_accuracy = validate(strategy, pipeline.eval_dataset(
            val_index, canvas, rank=rank, size=size), collective)
        loss_sum, correct, n = state["sums"]
        row = dict(epoch=state["epoch"] + 1, train_loss=loss_sum / n, val_loss=val_loss,
                   train_accuracy=correct / n, val_accuracy=val_accuracy,
                   learning_rate=state["learning_rate"],
                   seconds=round(state["seconds"] + time.time() - started, 3))
        phase = state["phase"]
        improved = schedule_step(state, val_loss, t["patience"], t["reduced_learning_rate"],
                                 t["max_epochs"], ROLLBACK_MIN_DELTA if rollback else 0.0)
        optimizer.learning_rate = state["learning_rate"]
        state["sums"], state["seconds"] = [0.0, 0.0, 0.0], 0.0
        if rank == 0:
            rows.append(row)
            write_log(log_path, rows)
            with writer.as_default():
                for key in LOG_COLUMNS[1:6]:
                    tf.compat.v2.summary.scalar("epoch/" + key, row[key], step=row["epoch"])
            writer.flush()
            if improved:
                checkpoint.save(best, model, dict(epoch=row["epoch"], val_loss=val_loss,
                                                  config=cfg.path))
            _say(rank, "epoch {epoch}: train loss {train_loss:.4f} acc {train_accuracy:.3f} | "
                       "val loss {val_loss:.4f} acc {val_accuracy:.3f} | lr {learning_rate:g} | "
                       "{seconds:.0f} s".format(**row) + (" (best)" if improved else ""))
        if rollback and state["phase"] != phase:
            # The rate drops: go on from the best weights (rank 0's best.ckpt, then broadcast).
            if rank == 0:
                checkpoint.restore(best, model, rng=False)
            collective.broadcast_variables(model.variables)
            _say(rank, "on_plateau rollback: lr -> {:g}, weights of epoch {} ({})".format(
                state["learning_rate"], state["best_epoch"] + 1, best))
        save_last()
    _say(rank, "train: done after {} epochs; best val loss {:.4f} at epoch {} -> {}".format(
        state["epoch"], state["best_val_loss"], state["best_epoch"] + 1, best))
    return dict(out=out, best=best, last=last, log=log_path, epochs=state["epoch"],
                best_epoch=state["best_epoch"] + 1, best_val_loss=state["best_val_loss"])
