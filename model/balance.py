"""Which rank computes which slide of an update: the planned cost of each slide, and the
assignment that lets the ranks finish together.

With fewer ranks than the batch, each rank accumulates several slides per update, and the
slowest rank sets the update's time. The update's set of slides is fixed by the data order
(``data.pipeline.update_slides``); only who computes which slide is chosen here:

- ``slide_cost``: what a slide's step will cost, from its cached image's height and width and
  its seeded augmentation draw alone, without reading or warping the image. Streaming in
  levels, it is the forward MACs of the plan (``model.levels.plan``) of ``footprint_canvas``:
  the canvas with the warped image's footprint (a rotated, scaled rectangle) as its content.
  The real content can be less (glass turned white, white edges), so a slide is planned no
  smaller than it is computed. Streaming in one level, it is the MACs of
  ``model.streaming.plan`` over the footprint's box. Under a whole-image strategy every slide
  costs the canvas's area.
- ``assign``: longest first onto the least-loaded rank (LPT), ties broken by position and
  rank number, so every rank computes the same assignment without communication. Equal costs
  give the round-robin order ``position % ranks``: the order of an unbalanced run.
"""
import collections

import numpy as np

from data.augment import footprint
from data.canvas import canvas_offset

PlannedCanvas = collections.namedtuple("PlannedCanvas", "shape box")
PlannedCanvas.__doc__ = """What ``model.streaming.plan`` reads of a ``data.canvas.Canvas``: its
shape (H, W) and content box (top, bottom, left, right), without the pixels."""


def content_box(height, width, canvas, params=None):
    """(top, bottom, left, right) in canvas px that a cached image of ``height`` x ``width``
    px can change: its augmentation footprint under ``params``, or, without augmentation
    (None), the centred placement. An image larger than the canvas is centre-cropped first, as
    the augmentation does."""
    shape = (min(int(height), canvas), min(int(width), canvas))
    if params is not None:
        return footprint(shape, canvas, params)
    top, left = max(0, canvas_offset(shape[0], canvas)), max(0, canvas_offset(shape[1], canvas))
    return top, top + shape[0], left, left + shape[1]


def slide_cost(height, width, canvas, params=None, tile=None, margin=None, levels=False):
    """The planned forward MACs of one slide's step (an int).

    ``levels``: streaming in levels (``model.levels``): the MACs of the plan of
    ``footprint_canvas`` with ``tile`` as its cap (the memory budget is left out, so every rank
    plans alike whatever its memory). Else ``tile`` (px): the one-level plan
    (``model.streaming.plan``) of the content box with that tile and ``margin``; ``tile`` None
    (a whole-image strategy): the canvas's area, the same for every slide."""
    if levels:
        from model.levels import plan
        return plan(footprint_canvas(height, width, canvas, params), None, True, tile)[0].macs()
    if tile is None:
        return int(canvas) * int(canvas)
    from model.flops import planned_macs
    from model.streaming import MARGIN, plan
    box = content_box(height, width, canvas, params)
    return planned_macs(plan(PlannedCanvas((canvas, canvas), box), tile,
                             MARGIN if margin is None else margin))


def footprint_canvas(height, width, canvas, params=None, rows=512):
    """A ``data.canvas.Canvas`` of ``canvas`` px whose non-fill pixels are those that the warped
    image of ``height`` x ``width`` px can change under ``params``: the canvas pixels whose
    source point lies within 3 px of the image (its bicubic taps reach it; the rule of
    ``data.augment.footprint``), i.e. the rotated, scaled rectangle, not its box. Without
    augmentation (None) it is the centred placement. Black (0) on white; ``rows`` at a time. The
    content is one channel seen three times (a read-only view): 1 byte per px."""
    from data.augment import geometry_matrix
    from data.canvas import Canvas
    shape = (min(int(height), canvas), min(int(width), canvas))
    top, bottom, left, right = content_box(height, width, canvas, params)
    content = np.full((bottom - top, right - left), 255, np.uint8)
    if params is None:
        content[...] = 0
    else:
        inverse = np.linalg.inv(geometry_matrix(shape, canvas, params))
        xs = np.arange(left, right, dtype=np.float64)
        for r in range(top, bottom, rows):
            ys = np.arange(r, min(bottom, r + rows), dtype=np.float64)[:, None]
            sx = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
            sy = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
            inside = (sx > -3) & (sx < shape[1] + 1) & (sy > -3) & (sy < shape[0] + 1)
            content[r - top:r - top + ys.shape[0]][inside] = 0
    return Canvas(np.broadcast_to(content[..., None], content.shape + (3,)), (top, left),
                  (255, 255, 255), (canvas, canvas))


def assign(costs, ranks):
    """Slide indices (into ``costs``) for each of ``ranks`` ranks, each list in ascending order.

    Longest processing time first: slides by decreasing cost (ties: lower index first), each
    onto the rank with the least load (ties: fewer slides, then lower rank). With at least as
    many slides as ranks every rank gets one or more.
    """
    ranks = int(ranks)
    if ranks < 1:
        raise ValueError("assign: ranks must be positive, got {}".format(ranks))
    loads = [(0, 0, r) for r in range(ranks)]
    shares = [[] for _ in range(ranks)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, count, r = min(loads)
        loads[r] = (load + costs[i], count + 1, r)
        shares[r].append(i)
    return [sorted(share) for share in shares]


def straggler_share(seconds):
    """(slowest, mean, (slowest - mean) / slowest) of the ranks' seconds for one update."""
    slowest = max(seconds)
    mean = sum(seconds) / float(len(seconds))
    return slowest, mean, (slowest - mean) / slowest if slowest > 0 else 0.0
