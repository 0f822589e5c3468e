"""The step measurement behind ``python -m reproduce bench``: time of one whole-slide training
step (or prediction), and the planner's figures without a network.

A step is what training does per slide: ``strategy.gradients(image, label)`` then Adam
(lr 1e-5) applying the gradients (``predict``: ``strategy.predict(image, cam=True)`` instead).
Tracing happens first on a small image; ``seconds_per_step`` is the mean of the timed steps. The
image is a synthetic tissue patch repeated to size (the time does not depend on content).

``content`` (streaming): the image is instead the paper's canvas (square) holding tissue put
there by the paper's augmentation (``data.augment.apply_canvas``, drawn from ``seed``; ``rotate``
fixes the angle), so the step skips the cells that see only the fill. The tissue is h x w px of
the synthetic patch (``content`` = (h, w)), or a slide file (``content`` = its path) read as
training sees it (``slide_content``: the ``config``'s target mpp, filter and glass threshold,
placed on its canvas with its translation, or centred when it does not augment). The step then
includes the augmentation, which is also reported alone as ``augment_seconds``.

``mode``: 'streaming' is the strategy training runs (model/levels.py), 'windows' the one-level
design of model/streaming.py (for comparison), 'direct' the whole image at once.

``plan_only`` runs no network: it augments, plans in levels and reports the plan (windows over
all levels, super-windows, proxy, the bytes it keeps) and its forward MACs against the exact
floor (``model.flops``): ``planned_flops`` / ``floor_flops``. With ``draws`` it reports that
ratio's mean, min and max over the augmentation draws ``seed`` .. ``seed + draws - 1``.

Peak memory is not measured here: the command runs ``measure`` in a fresh child process and
reads the child's peak RSS.
"""
import collections
import os
import sys
import time

import numpy as np
import tensorflow as tf

from data import augment
from data.canvas import place
from model import flops, levels, streaming
from model.direct import Direct
from model.resnet import build_model
from model.selfcheck import synthetic_tissue
from model.strategy import choose_tile

_PATCH = 512          # px: the synthetic tissue patch that is repeated to size
_WARM_EXTRA = 64      # px beyond the margin of the small image that traces the graphs


def _image(height, width):
    """The synthetic tissue patch of seed 0, repeated to ``height`` x ``width`` px."""
    patch = synthetic_tissue(_PATCH, _PATCH, seed=0)
    reps = (-(-height // _PATCH), -(-width // _PATCH), 1)
    return np.ascontiguousarray(np.tile(patch, reps)[:height, :width])


Content = collections.namedtuple("Content", "tissue translate_px augment fields")
Content.__doc__ = """What a --content canvas holds: the tissue image (uint8 RGB), the augmentation's
translation in px, whether it augments (else the tissue is centred, as ``data.canvas.place``),
and the fields that describe it in the result."""


def synthetic_content(size, content):
    """h x w px of the synthetic tissue on a ``size`` px canvas, translated as the paper's 500 px
    at 21,500 px."""
    return Content(_image(*content), round(500 * size / 21500), True,
                   dict(content=list(content)))


def slide_content(path, config):
    """The slide file at ``path`` as training sees it under the run config ``config`` (a path):
    read at ``data.target_mpp`` with ``data.resample``, its glass turned white at
    ``data.glass_to_white`` as ``prepare`` does (``data.glass``), augmented with
    ``data.translate_px`` when ``train.augment``."""
    from data.glass import glass_to_white
    from data.slide import read_slide
    from model.config import load_config
    cfg = load_config(config)
    data = cfg["data"]
    tissue = read_slide(path, data["target_mpp"], resample=data["resample"])
    glass_to_white(tissue, data["glass_to_white"], copy=False)
    fields = dict(content=path, config=config, slide_shape=list(tissue.shape[:2]),
                  target_mpp=data["target_mpp"], glass_to_white=data["glass_to_white"])
    return Content(tissue, data["translate_px"], cfg["train"]["augment"], fields)


def content_of(size, content, config=None):
    """The ``Content`` of --content: (h, w) of synthetic tissue, or a slide file's path."""
    if isinstance(content, str):
        return slide_content(content, config)
    return synthetic_content(size, content)


def draw_params(content, seed, rotate=None):
    """The augmentation parameters of draw ``seed`` (``rotate``: this angle instead); None when
    the content is not augmented."""
    if not content.augment:
        return None
    params = augment.sample_params(np.random.default_rng(seed),
                                   translate_px=content.translate_px)
    if rotate is not None:
        params = params._replace(rotate_deg=float(rotate))
    return params


def content_canvas(content, size, params):
    """The ``size`` px canvas of ``content`` under augmentation ``params`` (None: centred)."""
    if params is None:
        return place(content.tissue, size)
    return augment.apply_canvas(content.tissue, params, size)


def allocator():
    """'tcmalloc' when this process runs on TCMalloc (reproduce/__main__.py preloads it), else
    'system': the timings depend on it."""
    try:
        with open("/proc/self/maps") as maps:
            return "tcmalloc" if "libtcmalloc" in maps.read() else "system"
    except OSError:
        return "system"


def _to_stderr(line):
    print(line, file=sys.stderr, flush=True)


def streaming_tile(tile, memory_gb, height, width, predict=False, log=_to_stderr):
    """The one-level design's tile (``--mode windows``), as ``model.strategy.choose_tile``
    chooses it: --tile, else --memory-gb, else this machine's memory; its line goes to
    ``log``."""
    choice = choose_tile(tile, memory_gb, canvas=max(height, width), training=not predict,
                         names=("--tile", "--memory-gb"))
    log(choice.line())
    return choice.tile


def _proxy_size(plan):
    return [plan.proxy.height, plan.proxy.width] if plan.proxy else None


def _rotation(params):
    return round(params.rotate_deg, 3) if params is not None else None


def _ratio(planned, floor):
    """planned / floor, None for a canvas without content (a floor of 0)."""
    return round(planned / float(floor), 5) if floor else None


def levels_budget(memory_gb, predict=False, log=_to_stderr):
    """Bytes that a step's kept activations may take, as training reckons them
    (``model.strategy.levels_budget``: --memory-gb, else this machine's share, less the
    runtime); its line goes to ``log``."""
    from model import strategy
    room, line = strategy.levels_budget(None, memory_gb, names=("--tile", "--memory-gb"))
    log(line)
    return room


def plan_figures(content, size, seed, budget, tile=None, rotate=None):
    """One draw's figures: the canvas's plan in levels against the exact floor, and the seconds
    of the augmentation, of the planning and of the floor count."""
    params = draw_params(content, seed, rotate)
    start = time.perf_counter()
    canvas = content_canvas(content, size, params)
    augmented = time.perf_counter()
    plan = levels.plan(canvas, budget, tile=tile)[0]
    planned = time.perf_counter()
    floor = flops.floor_macs(canvas)
    counted = time.perf_counter()
    planned_macs = plan.macs()
    return dict(canvas=canvas, plan=plan, rotate_deg=_rotation(params),
                augment_seconds=augmented - start, plan_seconds=planned - augmented,
                floor_seconds=counted - planned, floor_flops=floor, planned_flops=planned_macs,
                flops_ratio=_ratio(planned_macs, floor))


def plan_fields(plan, training=True):
    """What a plan in levels is: its windows over all levels, its super-windows, its proxy, the
    bytes its largest super-window keeps (a training step's, or a prediction's), and the canvas
    cells the proxy stands for."""
    return dict(windows=plan.windows, super_windows=len(plan.parts), proxy=_proxy_size(plan),
                kept_gb=round(plan.part_bytes(training) / 1e9, 2),
                proxy_cells=int(plan.counts.sum()))


def _one_draw(content, size, seed, rotate, budget, tile):
    """The figures of draw ``seed``: the plan and its MACs against the floor."""
    figures = plan_figures(content, size, seed, budget, tile, rotate)
    canvas, plan = figures["canvas"], figures["plan"]
    result = dict(seed=seed, rotate_deg=figures["rotate_deg"],
                  content_box=[int(v) for v in canvas.box],
                  floor_flops=figures["floor_flops"], planned_flops=figures["planned_flops"],
                  flops_ratio=figures["flops_ratio"],
                  augment_seconds=round(figures["augment_seconds"], 3),
                  plan_seconds=round(figures["plan_seconds"], 4),
                  floor_seconds=round(figures["floor_seconds"], 4))
    result.update(plan_fields(plan))
    return result


def _spread(name, values, digits):
    """{name_mean, name_min, name_max} of ``values`` (None when there are none)."""
    values = [v for v in values if v is not None]
    if not values:
        return {name + "_mean": None, name + "_min": None, name + "_max": None}
    return {name + "_mean": round(float(np.mean(values)), digits),
            name + "_min": round(float(np.min(values)), digits),
            name + "_max": round(float(np.max(values)), digits)}


def _over_draws(content, size, seed, rotate, budget, tile, draws):
    """The ratio planned / floor over draws ``seed`` .. ``seed + draws - 1``, and the seconds
    that each draw's planning and floor count take."""
    results = []
    for draw in range(seed, seed + draws):      # keeps each draw's figures, not its canvas
        figures = plan_figures(content, size, draw, budget, tile, rotate)
        results.append({k: v for k, v in figures.items() if k not in ("canvas", "plan")})
    figures = dict(draws=draws, seeds=[seed, seed + draws - 1],
                   ratios=[r["flops_ratio"] for r in results],
                   floor_flops_mean=int(np.mean([r["floor_flops"] for r in results])),
                   planned_flops_mean=int(np.mean([r["planned_flops"] for r in results])),
                   augment_seconds_mean=round(float(np.mean(
                       [r["augment_seconds"] for r in results])), 3))
    figures.update(_spread("ratio", figures["ratios"], 5))
    for name in ("plan_seconds", "floor_seconds"):
        figures.update({k: v for k, v in _spread(name, [r[name] for r in results], 4).items()
                        if not k.endswith("_min")})
    if rotate is not None:
        figures["rotate_deg"] = float(rotate)
    return figures


def plan_only(size, content, seed, rotate=None, tile=None, memory_gb=None, draws=None,
              config=None):
    """The planner's figures for a --content canvas, without a network: one draw's (``seed``),
    or with ``draws`` the ratio planned / floor over that many draws from ``seed``.
    ``content``: (h, w) of synthetic tissue, or a slide file read under ``config``."""
    budget = levels_budget(memory_gb)
    source = content_of(size, content, config)
    result = dict(height=size, width=size, mode="plan", tile=tile,
                  memory_budget_gb=round(budget / 1e9, 2), **source.fields)
    if draws:
        result.update(_over_draws(source, size, seed, rotate, budget, tile, draws))
    else:
        result.update(_one_draw(source, size, seed, rotate, budget, tile))
    return result


def _strategy(model, mode, tile, memory_gb, height, width, predict, progress):
    """(strategy, its result fields, the (height, width) of the image that traces it).
    ``mode``: 'streaming' (in levels, as training runs), 'windows' (the one-level design of
    model/streaming.py, for comparison) or 'direct'."""
    if mode == "streaming":
        strategy = levels.LevelStreaming(model, tile=tile, progress=progress,
                                         memory_bytes=levels_budget(memory_gb, predict))
        return strategy, dict(tile=tile, memory_budget_gb=round(strategy.memory_bytes / 1e9, 2)), \
            (_WARM_EXTRA, _WARM_EXTRA)
    if mode == "windows":
        strategy = streaming.Streaming(
            model, tile=streaming_tile(tile, memory_gb, height, width, predict), progress=progress)
        warm = strategy.margin + _WARM_EXTRA
        return strategy, dict(tile=strategy.tile, margin=strategy.margin), (warm, warm)
    fields = dict(tile=None, margin=None, tiles=1, computed_pixel_ratio=1.0)
    return Direct(model), fields, (_WARM_EXTRA, _WARM_EXTRA)


def _stepper(model, strategy, predict, canvas, augment_times):
    """step(image, augmented=False): one training step (or prediction) on ``image``; augmented:
    ``image`` is (Content, parameters) and the augmentation that makes the ``canvas`` px canvas
    is part of the step (its seconds go to ``augment_times``)."""
    optimizer = tf.keras.optimizers.Adam(1e-5)

    def step(image, augmented=False):
        if augmented:
            start = time.perf_counter()
            image = content_canvas(image[0], canvas, image[1])
            augment_times.append(time.perf_counter() - start)
        if predict:
            strategy.predict(image, cam=True)
            return
        _, _, grads = strategy.gradients(image, 1.0)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return step


def _timed(step, image, steps, augmented):
    """Seconds of each of ``steps`` calls of ``step(image, augmented)``."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(image, augmented)
        times.append(time.perf_counter() - start)
    return times


def _speed(height, width, times):
    seconds = float(np.mean(times))
    megapixels = height * width / 1e6
    # the first step at full size also pays for its memory's first touch: training's steady
    # state is the steps after it
    steady = round(float(np.mean(times[1:])), 3) if len(times) > 1 else None
    return dict(seconds_per_step=round(seconds, 3), step_seconds=[round(t, 3) for t in times],
                steady_seconds_per_step=steady,
                megapixels_per_second=round(megapixels / seconds, 5),
                seconds_per_megapixel=round(seconds / megapixels, 4))


def measure(height, width, mode, tile=None, memory_gb=None, steps=1, predict=False,
            progress=False, content=None, seed=0, rotate=None, config=None):
    """Runs in this process; returns the result dict without peak_rss_gb. ``content``: (h, w)
    of synthetic tissue, or a slide file read under ``config`` (see ``content_of``)."""
    tf.compat.v1.enable_v2_behavior()
    model = build_model("none")
    result = dict(height=height, width=width, mode=mode, predict=predict, steps=steps)
    strategy, fields, warm = _strategy(model, mode, tile, memory_gb, height, width, predict,
                                       progress)
    result.update(fields)
    augment_times = []
    step = _stepper(model, strategy, predict, height, augment_times)
    if content:
        source = content_of(height, content, config)
        params = draw_params(source, seed, rotate)
        image = (source, params)
        result.update(source.fields, rotate_deg=_rotation(params))
        step(_image(*warm))      # traces the graphs and creates Adam's slots
    else:
        step(_image(*warm))      # traces the graphs and creates Adam's slots
        image = _image(height, width)
    result["loadavg"] = round(os.getloadavg()[0], 2)
    result["allocator"] = allocator()
    times = _timed(step, image, steps, augmented=bool(content))
    if mode == "streaming":
        plan = strategy.last_plan
        result.update(plan_fields(plan, not predict), planned_flops=plan.macs())
    elif mode == "windows":
        plan = strategy.last_plan
        result.update(tiles=len(plan.windows), proxy=_proxy_size(plan),
                      computed_pixel_ratio=round(plan.computed_pixel_ratio, 5),
                      planned_flops=flops.planned_macs(plan))
    if augment_times:
        result["augment_seconds"] = round(float(np.mean(augment_times)), 3)
    result.update(_speed(height, width, times))
    return result
