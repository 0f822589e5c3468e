"""Chooses how a slide's forward pass and gradients are computed, and with how much memory
(see docs/architecture.md, "Strategies and memory").

    direct     the whole image as one graph (model/direct.py)
    streaming  exact, computed in levels only where the content reaches, within a memory budget
               (model/levels.py); in TF1's graph mode, tile by tile (model/streaming.py)
    unified    the earlier released code's method (aetherAI/whole-slide-cnn), not this paper's:
               direct, on a GPU whose allocator oversubscribes into host RAM through CUDA
               unified memory (model/gpu.py). Opt-in only; refused up front when its step would
               not fit this host's RAM (``check_memory``)
    auto       streaming, on a CPU and on a GPU alike

Memory model. ``step_bytes`` is the one formula for the bytes of a step: ``BASE_BYTES`` plus a
per-pixel figure times the input pixels that one pass computes at once (a window, or the whole
image), plus, for a network streamed in ``Level``s, the maps the levels keep. The one-level
design's tile is chosen from it (``tile_for_memory``, ``choose_tile``) and a whole-image step
(direct, unified) is checked against it (``check_memory``). Streaming in levels plans within the
budget of ``levels_budget`` (model/levels.py counts its kept activations itself).

Layers: this module needs no TensorFlow and imports neither strategy's module at its top; it
builds a strategy only in ``make_strategy``, and the strategies never import it (a streaming
strategy is given its tile or its budget).
"""
import collections
import math

from data import mpi
from data.errors import InputError
from model.resnet import MARGIN, OUTPUT_STRIDE

NAMES = ("direct", "streaming", "unified", "auto")
# options of model.streaming.Streaming alone: set, they choose the one-level design
WINDOWS_ONLY = ("margin", "allow_inexact", "skip_uniform")

# Training: direct steps measured here, 1024^2 -> 2.70 GB and 2048^2 -> 7.96 GB peak RSS
# (docs/benchmarks.md, "## streaming"), i.e. ~1.67 KB/px over ~0.95 GB; BASE_BYTES adds the
# streaming gradient accumulator and slack. Prediction keeps no activations for a backward pass;
# its per-pixel figure is a conservative estimate, not a measurement.
TRAIN_BYTES_PER_PIXEL = 1700
PREDICT_BYTES_PER_PIXEL = 600
BASE_BYTES = 1.5e9
# A kept map holds float32 values.
MAP_BYTES_PER_VALUE = 4
# Shares of memory a step may plan for, the rest left as headroom:
# - GPU: the CUDA context, cuDNN workspaces and the allocator's fragmentation take the rest;
# - host RAM (a CPU run): this rank's share of the node, of which the data pipeline (a prepared
#   slide and its augmented copy), Python and the OS take the rest.
GPU_SHARE = 0.75
HOST_SHARE = 0.5


class StrategyError(InputError, ValueError):
    """The chosen strategy cannot run here (a whole-image step larger than host RAM): an
    InputError for the CLI (one line, exit 2), a ValueError for the library's callers."""


def resolve(name):
    """The concrete strategy that ``name`` means: 'auto' is streaming on any machine (a direct
    step at 21,500^2 px needs ~790 GB; docs/fidelity.md, row `direct-memory`)."""
    if name not in NAMES:
        raise ValueError("strategy must be one of {}, not {!r}".format(", ".join(NAMES), name))
    return "streaming" if name == "auto" else name


def bytes_per_pixel(training=True):
    """Bytes per input pixel of one pass of the whole network: a training step (forward and
    backward) or a prediction (forward)."""
    return TRAIN_BYTES_PER_PIXEL if training else PREDICT_BYTES_PER_PIXEL


class Level(collections.namedtuple("Level", "stride channels margin_px")):
    """One level of a network streamed in levels, in network order: the layers from the previous
    level's output map (the image, for the first level) to an output map of one cell per
    ``stride`` input px along each axis and ``channels`` values per cell, computed in windows
    that carry ``margin_px`` input px of margin on every side that is not an image edge (the
    level's own receptive-field radius, rounded up to its input's stride).

    Today's streaming is one level: ``Level(OUTPUT_STRIDE, FEATURES, MARGIN)`` (32, 2048, 256)."""
    __slots__ = ()

    def map_bytes(self, pixels, margin_px=0, training=True):
        """Bytes of this level's output map kept over a region of ``pixels`` input px grown by
        ``margin_px`` on every side (taken as a square of that area), float32, and with its
        gradient when ``training``."""
        side = math.sqrt(pixels) + 2 * margin_px
        cells = math.ceil(side / self.stride) ** 2
        return MAP_BYTES_PER_VALUE * self.channels * cells * (2 if training else 1)


def step_bytes(pixels, training=True, levels=None, region_px=None):
    """The bytes of one step, the package's one memory model.

    ``pixels``: input px that one pass computes at once, margins included: one window of
    streaming, the whole image of direct and unified. ``training``: a training step (forward and
    backward), else a prediction. Without ``levels`` (the network as one level):

        BASE_BYTES + bytes_per_pixel(training) * pixels.

    ``levels``: a sequence of ``Level``s, for a design that streams the network level by level
    and keeps each level's output map for the next. Each level but the last keeps its map over
    ``region_px`` input px (the active region; default ``pixels``, as when it is computed whole)
    grown by the next level's margin, with its gradient when training (``Level.map_bytes``);
    those bytes are added. ``pixels`` is then the largest window of any level, charged at the
    whole network's per-pixel figure: an upper bound, since a level runs a part of the network.
    One level keeps no map and gives the formula above.
    """
    need = BASE_BYTES + bytes_per_pixel(training) * pixels
    if levels:
        region = pixels if region_px is None else region_px
        for level, following in zip(levels[:-1], levels[1:]):
            need += level.map_bytes(region, following.margin_px, training)
    return need


def _gb(n_bytes):
    return "{:.1f} GB".format(n_bytes / 1e9)


def check_memory(name, canvas, training=True, host_ram=None, ranks=None, where=None):
    """Refuses a whole-image strategy (``direct``, ``unified``) whose step on a ``canvas`` x
    ``canvas`` px image would need more than this host's RAM for each of its ``ranks`` (default:
    the ranks on this node): unified memory pages the GPU's allocations into host RAM, so host
    RAM bounds it too. Raises ``StrategyError`` (one line, both figures, the way out); cheap, so
    callers run it before any data or TensorFlow work. ``where``: what the message names first
    (the config file)."""
    if resolve(name) not in ("direct", "unified"):
        return
    from model import gpu
    host_ram = gpu.host_ram_bytes() if host_ram is None else host_ram
    ranks = mpi.local_size() if ranks is None else max(1, int(ranks))
    need = step_bytes(float(canvas) ** 2, training)
    room = host_ram / float(ranks)
    if need <= room:
        return
    raise StrategyError(
        "{}train.strategy {}: a whole-image {} step on the {:,} px canvas needs about {} "
        "({:,} B/px x {:,}^2 px), more than this host's RAM {}{}; use strategy streaming (or "
        "auto), which is exact and plans within a memory budget".format(
            "{}: ".format(where) if where else "", name, "training" if training else "prediction",
            int(canvas), _gb(need), bytes_per_pixel(training), int(canvas), _gb(host_ram),
            "" if ranks == 1 else " / {} ranks = {}".format(ranks, _gb(room))))


def tile_for_memory(memory_gb, margin=MARGIN, training=True):
    """The largest interior tile (px, multiple of 32) whose square window's step (training, or
    prediction) fits ``memory_gb`` (``step_bytes``, solved for the window)."""
    room = float(memory_gb) * 1e9 - step_bytes(0, training)
    window = math.sqrt(max(room, 0.0) / bytes_per_pixel(training))
    tile = int((window - 2 * margin) // OUTPUT_STRIDE) * OUTPUT_STRIDE
    if tile < OUTPUT_STRIDE:
        raise ValueError("memory_gb={} leaves no room for a tile with a {} px margin (needs about "
                         "{:.1f} GB)".format(memory_gb, margin, step_bytes(
                             (2 * margin + OUTPUT_STRIDE) ** 2, training) / 1e9))
    return tile


class TileChoice(collections.namedtuple("TileChoice", "tile margin source uncapped canvas")):
    """The streaming tile (interior px, a multiple of 32), the margin, where the tile came from
    (text), the tile before the canvas cap (None when not capped) and the canvas (px or None)."""
    __slots__ = ()

    def line(self, mpp=None):
        """The one line a run prints about its tile (rank 0)."""
        at = " at {:g} um/px".format(mpp) if mpp else ""
        cap = "" if self.uncapped is None else "; capped from {} px, as the {:,} px canvas " \
            "needs one window".format(self.uncapped, self.canvas)
        return "streaming: tile {} px{} (interior; windows <= {} px{}) from {}".format(
            self.tile, at, self.tile + 2 * self.margin, cap, self.source)


def _machine_budget(rank_on_node, ranks_on_node):
    """(bytes a step may use, the text saying where that came from): GPU ``rank_on_node``'s
    memory x ``GPU_SHARE`` on a GPU, else host RAM / ``ranks_on_node`` x ``HOST_SHARE``."""
    from model import gpu
    rank = mpi.local_rank() if rank_on_node is None else int(rank_on_node)
    device_bytes = gpu.gpu_ram_bytes(rank) if gpu.gpu_available() else None
    if device_bytes:
        budget = device_bytes * GPU_SHARE
        return budget, "{} = GPU {} memory {} (nvidia-smi) x {:g}".format(
            _gb(budget), rank, _gb(device_bytes), GPU_SHARE)
    ranks = mpi.local_size() if ranks_on_node is None else max(1, int(ranks_on_node))
    host = gpu.host_ram_bytes()
    budget = host / float(ranks) * HOST_SHARE
    return budget, "{} = host RAM {} / {} rank{} x {:g}".format(
        _gb(budget), _gb(host), ranks, "" if ranks == 1 else "s", HOST_SHARE)


def _cap_for_canvas(tile, canvas, margin):
    """(tile, uncapped): the tile capped at the smallest that gives an axis of ``canvas`` px one
    window, and the tile before the cap (None when not capped)."""
    # one window covers an axis of L px once its interior reaches L - 2 margin
    enough = max(OUTPUT_STRIDE, -(-(int(canvas) - 2 * margin) // OUTPUT_STRIDE) * OUTPUT_STRIDE)
    return (enough, tile) if tile > enough else (tile, None)


def choose_tile(tile=None, memory_gb=None, canvas=None, training=True, margin=None,
                rank_on_node=None, ranks_on_node=None, names=("train.tile", "train.memory_gb")):
    """The streaming tile, from the first of:

    1. ``tile`` (px), when the user set it;
    2. ``memory_gb``: the largest tile whose step fits it (``tile_for_memory``);
    3. on a GPU (``model.gpu.gpu_available``): GPU ``rank_on_node``'s memory.total from
       nvidia-smi x ``GPU_SHARE``;
    4. on a CPU: host RAM (psutil) / ``ranks_on_node`` x ``HOST_SHARE``.

    Setting both ``tile`` and ``memory_gb`` is an error (``model.config`` says so for a config
    file): one would silently lose. ``canvas``: px of the (square) image; the tile is capped at
    the smallest that gives that canvas one window. ``training``: a training step's memory per
    pixel, else prediction's. ``rank_on_node``/``ranks_on_node``: default from the MPI launcher's
    environment (``data.mpi.local_rank``, ``local_size``). ``names``: what the source text calls
    the two settings. Returns a ``TileChoice``; raises ValueError when a setting is impossible.
    """
    margin = MARGIN if margin is None else int(margin)
    if tile is not None and memory_gb is not None:
        raise ValueError("{} and {}: set one, not both".format(*names))
    if tile is not None:
        tile = int(tile)
        if tile < OUTPUT_STRIDE or tile % OUTPUT_STRIDE:
            raise ValueError("{} must be a positive multiple of {} px, got {}".format(
                names[0], OUTPUT_STRIDE, tile))
        source = names[0]
    elif memory_gb is not None:
        tile = tile_for_memory(memory_gb, margin, training)
        source = "{} = {:g} GB".format(names[1], memory_gb)
    else:
        budget, source = _machine_budget(rank_on_node, ranks_on_node)
        try:
            tile = tile_for_memory(budget / 1e9, margin, training)
        except ValueError as e:
            raise ValueError("{}: {}; set {} or {}".format(source, e, *names))
    uncapped = None
    if canvas is not None:
        tile, uncapped = _cap_for_canvas(tile, canvas, margin)
    return TileChoice(tile, margin, source, uncapped, None if canvas is None else int(canvas))


def make_strategy(name, model, tile=None, memory_gb=None, canvas=None, training=True, log=None,
                  mpp=None, rank_on_node=None, ranks_on_node=None, **options):
    """A strategy object with ``gradients(image, label)`` and ``predict(image, cam=False)``.

    Streaming, eagerly, is ``model.levels.LevelStreaming`` (exact, in levels, each computed
    only where the content reaches), within the memory of ``levels_budget`` and with ``tile``
    capping its super-windows. In TF1's graph mode, or with ``engine="windows"`` or an option
    only that engine has (``margin``, ``allow_inexact``, ``skip_uniform``), it is the one-level
    ``model.streaming.Streaming``, whose tile comes from ``choose_tile`` (kept as
    ``.tile_choice``). ``log`` (a callable) receives one line saying which, and why that much
    memory (``mpp``: um per input px). The whole-image strategies ignore the tile settings (so
    one config can name any strategy) and, with ``canvas``, are checked against host RAM
    (``check_memory``). ``options``: more keyword arguments (``progress``, ...). The strategy
    modules load TensorFlow, so they are imported here, when one is chosen.
    """
    concrete = resolve(name)
    if concrete == "streaming":
        import tensorflow as tf
        engine = options.pop("engine", "levels")
        if engine not in ("levels", "windows"):
            raise ValueError("engine must be levels or windows, got {!r}".format(engine))
        if engine == "levels" and tf.executing_eagerly() and all(
                options.get(k) in (None, False) for k in WINDOWS_ONLY):
            for k in WINDOWS_ONLY:
                options.pop(k, None)
            from model.levels import LevelStreaming
            room, line = levels_budget(tile, memory_gb, rank_on_node, ranks_on_node, mpp)
            strategy = LevelStreaming(model, tile=tile, memory_bytes=room, **options)
            if log is not None:
                log(line)
            return strategy
        from model.streaming import Streaming
        choice = choose_tile(tile, memory_gb, canvas, training, options.get("margin"),
                             rank_on_node, ranks_on_node)
        strategy = Streaming(model, tile=choice.tile, **options)
        strategy.tile_choice = choice
        if log is not None:
            log(choice.line(mpp))
        return strategy
    if canvas is not None:
        check_memory(concrete, canvas, training)
    from model.direct import Direct
    strategy = Direct(model)
    strategy.name = concrete
    return strategy


def levels_budget(tile=None, memory_gb=None, rank_on_node=None, ranks_on_node=None, mpp=None,
                  names=("train.tile", "train.memory_gb")):
    """(bytes, line): what streaming in levels may keep of a step's activations, and the one
    line a run prints about it. The step's memory is ``memory_gb``, else this rank's share of
    the machine (``_machine_budget``); ``BASE_BYTES`` of it is the runtime's. ``tile`` (px of
    output cells, a multiple of 32, or None) caps a super-window's side. Raises ValueError for a
    tile off the 32 px grid or a budget that leaves no room."""
    if tile is not None and (int(tile) < OUTPUT_STRIDE or int(tile) % OUTPUT_STRIDE):
        raise ValueError("{} must be a positive multiple of {} px, got {}".format(
            names[0], OUTPUT_STRIDE, tile))
    if memory_gb is not None:
        budget, source = float(memory_gb) * 1e9, "{} = {:g} GB".format(names[1], memory_gb)
    else:
        budget, source = _machine_budget(rank_on_node, ranks_on_node)
    room = budget - BASE_BYTES
    if room <= 0:
        raise ValueError("{} leaves no room for a step (needs more than {})".format(
            source, _gb(BASE_BYTES)))
    at = "" if not mpp else " at {:g} um/px".format(mpp)
    cap = "" if tile is None else "; super-windows at most {} px of output cells".format(tile)
    return room, "streaming: in levels{}, activations kept within {} ({} less {} for the " \
        "runtime){}".format(at, _gb(room), source, _gb(BASE_BYTES), cap)
