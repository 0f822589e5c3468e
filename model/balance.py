"""Which rank computes which slide of an update: the planned cost of each slide, and the
assignment that lets the ranks finish together.

With fewer ranks than the batch, each rank accumulates several slides per update, and the
slowest rank sets the update's time. The update's set of slides is fixed by the data order
(``data.pipeline.update_slides``); only who computes which slide is chosen here:

- ``slide_cost``: what a slide's step will cost, from its cached image's height and width and
  its seeded augmentation draw alone, without reading or warping the image. Under the
  streaming strategy it is the forward MACs (``model.flops.planned_macs``) of the plan that
  ``model.streaming.plan`` makes for the canvas; the planner needs only the canvas's shape and
  content box, and the box is ``data.augment.footprint`` of the draw. The augmentation trims
  white rows and columns off the warped footprint, which depends on the pixels: the box used
  here is the untrimmed one, so a slide with white edges is planned a little larger than it
  is computed. Under a whole-image strategy every slide costs the canvas's area.
- ``assign``: longest first onto the least-loaded rank (LPT), ties broken by position and
  rank number, so every rank computes the same assignment without communication. Equal costs
  give the round-robin order ``position % ranks``: the order of an unbalanced run.
"""
import collections

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


def slide_cost(height, width, canvas, params=None, tile=None, margin=None):
    """The planned forward MACs of one slide's step (an int); ``tile`` None (a whole-image
    strategy): the canvas's area, the same for every slide."""
    if tile is None:
        return int(canvas) * int(canvas)
    from model.flops import planned_macs
    from model.streaming import MARGIN, plan
    box = content_box(height, width, canvas, params)
    return planned_macs(plan(PlannedCanvas((canvas, canvas), box), tile,
                             MARGIN if margin is None else margin))


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
