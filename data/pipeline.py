"""The tf.data whole-slide pipeline: cached slide -> (augmented) canvas, sharded by rank.

Elements are ``(canvas, label float32 [], slide_id string [])``, where ``canvas`` is the dict of a
``data.canvas.Canvas`` -- ``content`` uint8 [h, w, 3], ``offset`` int32 [2] (top, left), ``fill``
uint8 [3], ``shape`` int32 [2] (canvas, canvas) -- so a 21,500^2 canvas is never built: the
strategies take it as it is (``data.canvas.as_canvas``) and ``Canvas.dense()`` builds it when
wanted. The pixels are those of ``data.augment.augment`` (training) and
``data.augment.pad_to_canvas`` (evaluation), exactly.

Training order (a function of ``(seed, epoch)`` only, so a resumed run replays it):

1. ``order = permutation(n)`` drawn by ``np.random.default_rng([seed, epoch])``;
2. if ``n`` is not a multiple of ``size``, ``order`` is extended by repeating its own start
   (``order[:pad]``) so that every rank gets ``ceil(n / size)`` slides: Horovod needs the same
   number of steps on every rank;
3. rank ``r`` takes ``order[r::size]``: its ``i``-th element is global position ``r + i*size``;
4. that element's augmentation is drawn from ``np.random.default_rng([seed, epoch, position])``,
   so it does not depend on threads, prefetching or where a run was resumed.

To resume at the ``k``-th element of this rank, pass ``skip=k`` (or call ``.skip(k)`` on the
dataset: the same thing, as the augmentation is tied to the element, not to a running state).

Training by updates (``update_slides``, ``assigned_dataset``): an update is the next
``batch_size`` global positions of this order, the same set of slides that the shards above
give when each rank takes its next ``batch_size / size`` elements; the training loop chooses
which rank computes which of them (``model.balance``) and reads each rank's share with
``assigned_dataset``, every element still augmented by its own (seed, pass, position).

Evaluation: fixed order (the index's row order), no augmentation, centre-padded to the canvas;
rank ``r`` takes rows ``r::size``, so every slide is seen exactly once over the ranks (the ranks
differ by at most one element). ``pad=True`` instead equalises the counts by repeating rows from
the start and adds a fourth element ``valid`` (bool) that is False on the repeats; drop those.

A slide that cannot be read (a cached image damaged after prepare: ``data.cache.CacheError``,
or any other ``InputError`` of the reader) comes out of ``next_element`` / ``elements`` as an
``UnreadableSlide`` naming the slide and the reason in one line, rather than as TensorFlow's
``UnknownError`` with a Python traceback inside its message.

Call ``tf.compat.v1.enable_v2_behavior()`` first (TF 1.15): the datasets are iterated eagerly.
"""
import functools
import os

import numpy as np
import tensorflow as tf

from data import augment as _augment
from data.canvas import place
from data.errors import InputError


class UnreadableSlide(InputError):
    """A slide of a dataset could not be read: the message names the slide, then the reason."""


def _unreadable(error):
    """The UnreadableSlide that a reader raised inside a dataset, from the OpError TensorFlow
    made of it (its message holds "UnreadableSlide: <line>"), or None for any other error."""
    text = getattr(error, "message", None) or str(error)
    mark = UnreadableSlide.__name__ + ": "
    at = text.find(mark)
    return None if at < 0 else UnreadableSlide(text[at + len(mark):].split("\n", 1)[0])


def next_element(iterator):
    """``next(iterator)`` of a dataset of this module; a slide the reader could not read raises
    UnreadableSlide (one line), other errors and StopIteration pass as they are."""
    try:
        return next(iterator)
    except tf.errors.OpError as e:
        unreadable = _unreadable(e)
        if unreadable is None:
            raise
        raise unreadable from None


def elements(dataset):
    """The elements of a dataset of this module, as ``next_element`` gives them."""
    iterator = iter(dataset)
    while True:
        try:
            yield next_element(iterator)
        except StopIteration:
            return


def training_order(n, seed, epoch, size=1):
    """Row indices of one epoch in global order, padded to a multiple of `size` (see above)."""
    if n <= 0:
        raise ValueError("training_dataset: the index has no slides")
    if int(seed) < 0 or int(epoch) < 0:
        raise ValueError("seed and epoch must be non-negative, got {} and {}".format(seed, epoch))
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
    pad = (-n) % size
    return np.concatenate([order, np.resize(order, pad)]) if pad else order


def shard(order, rank, size):
    """Rank `rank`'s part of a global order: ``order[rank::size]``, with global positions."""
    if not 0 <= rank < size:
        raise ValueError("rank {} is not in [0, {})".format(rank, size))
    positions = np.arange(rank, len(order), size)
    return np.asarray(order)[positions], positions


def update_slides(n, seed, size, batch_size, position):
    """One update's slides in the training order, from ``position`` = (pass, offset): a list
    of (pass, global position, row), and the position after it.

    The update takes the next ``batch_size`` global positions of the padded order, running on
    into the next pass when this one ends: the same set of slides that the ranks' shards gave
    when each rank took its next ``batch_size / size`` elements, so balancing who computes them
    changes no update's content. ``offset`` is a multiple of ``size`` at every update boundary.
    """
    pass_, offset = int(position[0]), int(position[1])
    slides = []
    while len(slides) < batch_size:
        order = training_order(n, seed, pass_, size)
        if offset >= len(order):
            pass_, offset = pass_ + 1, 0
            continue
        take = min(batch_size - len(slides), len(order) - offset)
        slides += [(pass_, offset + i, int(order[offset + i])) for i in range(take)]
        offset += take
    return slides, (pass_, offset)


def eval_assignment(n, rank=0, size=1, pad=False):
    """(row indices, valid flags) of rank `rank` for evaluation; see the module docstring."""
    order = np.arange(n)
    if pad and n % size:
        order = np.concatenate([order, np.resize(order, (-n) % size)])
    rows, positions = shard(order, rank, size)
    return rows, positions < n


def element_rng(seed, epoch, position):
    """The augmentation generator of one training element."""
    return np.random.default_rng([int(seed), int(epoch), int(position)])


def _default_reader(cache_dir):
    from data.cache import read_cached   # the prepare cache (data/cache.py)
    return functools.partial(read_cached, cache_dir or "")


def _records(index):
    for column in ("slide_id", "label"):
        if column not in index.columns:
            raise ValueError("pipeline: the index has no '{}' column".format(column))
    return index.to_dict("records")


def _dataset(records, rows, extra, canvas, load, num_parallel_calls, prefetch, skip=0):
    labels = np.array([float(records[i]["label"]) for i in rows], np.float32)
    ids = np.array([str(records[i]["slide_id"]) for i in rows], dtype=object).astype(bytes)
    ds = tf.data.Dataset.from_tensor_slices((rows.astype(np.int64), extra, labels, ids))
    if skip:
        ds = ds.skip(int(skip))

    def load_parts(row, key):
        try:
            placed = load(row, key)
        except InputError as e:    # named here; next_element turns it back into one line
            raise UnreadableSlide("slide {}: {}".format(records[int(row)]["slide_id"], e))
        return (placed.content, np.asarray(placed.offset, np.int32), placed.fill,
                np.asarray(placed.shape, np.int32))

    def to_element(row, key, label, slide_id):
        content, offset, fill, shape = tf.numpy_function(
            load_parts, [row, key], (tf.uint8, tf.int32, tf.uint8, tf.int32))
        content.set_shape([None, None, 3])
        offset.set_shape([2])
        fill.set_shape([3])
        shape.set_shape([2])
        return dict(content=content, offset=offset, fill=fill, shape=shape), label, slide_id

    ds = ds.map(to_element, num_parallel_calls=num_parallel_calls)
    return ds.prefetch(prefetch) if prefetch else ds


def training_dataset(index, canvas, seed, epoch, rank=0, size=1, augment=True, translate_px=500,
                     reader=None, cache_dir=None, skip=0, num_parallel_calls=2, prefetch=1,
                     fail_if_larger=False):
    """One epoch of this rank's training slides, augmented as the paper (data.augment).

    index: DataFrame with ``slide_id, label`` and whatever `reader` needs (the prepare cache's
    index: ``cache_file``...). reader: ``row (dict) -> uint8 (H, W, 3)``; default
    ``data.cache.read_cached(cache_dir or "", row)`` (load_index gives absolute cache_file).
    canvas: output side in pixels; translate_px: +- translation in canvas pixels (paper: 500 at
    21,500). skip: elements of this rank to skip (resume). num_parallel_calls: slides decoded and
    augmented at once (each holds its input and a canvas in memory); prefetch: ready elements.
    """
    records = _records(index)
    rows, positions = shard(training_order(len(records), seed, epoch, size), rank, size)
    read = reader or _default_reader(cache_dir)

    def load(row, position):
        image = read(records[int(row)])
        if augment:
            return _augment.augment_canvas(image, element_rng(seed, epoch, position), canvas,
                                           translate_px=translate_px,
                                           fail_if_larger=fail_if_larger)
        return place(image, canvas, fail_if_larger=fail_if_larger)

    return _dataset(records, rows, positions.astype(np.int64), canvas, load,
                    num_parallel_calls, prefetch, skip)


def assigned_dataset(index, canvas, seed, slides, augment=True, translate_px=500, reader=None,
                     cache_dir=None, num_parallel_calls=2, prefetch=1, fail_if_larger=False):
    """The training elements of a list of (pass, global position, row), in that order: each
    augmented with ``element_rng(seed, pass, position)``, as ``training_dataset`` would give
    it. Used by the training loop for the slides assigned to its rank."""
    records = _records(index)
    rows = np.array([row for _, _, row in slides], np.int64)
    keys = np.array([(p, position) for p, position, _ in slides], np.int64).reshape(-1, 2)
    read = reader or _default_reader(cache_dir)

    def load(row, key):
        image = read(records[int(row)])
        if augment:
            return _augment.augment_canvas(image, element_rng(seed, key[0], key[1]), canvas,
                                           translate_px=translate_px,
                                           fail_if_larger=fail_if_larger)
        return place(image, canvas, fail_if_larger=fail_if_larger)

    return _dataset(records, rows, keys, canvas, load, num_parallel_calls, prefetch)


def eval_dataset(index, canvas, rank=0, size=1, reader=None, cache_dir=None, pad=False,
                 num_parallel_calls=2, prefetch=1, fail_if_larger=False):
    """This rank's evaluation slides in index order, centre-padded to the canvas, no augmentation.

    Every slide exactly once over the ranks. With ``pad=True`` the ranks get equal counts and the
    elements get a fourth member ``valid`` (bool, False on repeated slides).
    """
    records = _records(index)
    if not records:
        raise ValueError("eval_dataset: the index has no slides")
    rows, valid = eval_assignment(len(records), rank, size, pad)
    read = reader or _default_reader(cache_dir)

    def load(row, _unused):
        return place(read(records[int(row)]), canvas, fail_if_larger=fail_if_larger)

    ds = _dataset(records, rows, valid, canvas, load, num_parallel_calls, 0)
    if pad:
        flags = tf.data.Dataset.from_tensor_slices(valid)
        ds = tf.data.Dataset.zip((ds, flags)).map(lambda e, v: (e[0], e[1], e[2], v))
    return ds.prefetch(prefetch) if prefetch else ds


def benchmark(canvas, elements=6, num_parallel_calls=2, seed=0):
    """Seconds per training element (read .npy + augment + pad) at a canvas, in steady state.

    The 'cached slide' is a random-content image of 0.8 x canvas per side, stored as .npy in a
    temporary folder. The first element (start-up) is timed apart. Returns a dict.
    """
    import tempfile
    import time
    import pandas as pd
    import cv2

    side = int(0.8 * canvas)
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    image = cv2.resize(small, (side, side), interpolation=cv2.INTER_LINEAR)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "slide.npy")
        np.save(path, image)
        index = pd.DataFrame([dict(slide_id="b{}".format(i), label=i % 2, cache_file=path)
                              for i in range(elements + 1)])
        ds = training_dataset(index, canvas, seed, 0, reader=lambda row: np.load(row["cache_file"]),
                              translate_px=round(500 * canvas / 21500),
                              num_parallel_calls=num_parallel_calls, prefetch=1)
        start = time.perf_counter()
        times = []
        for _ in ds:
            times.append(time.perf_counter())
    first = times[0] - start
    steady = (times[-1] - times[0]) / max(1, len(times) - 1)
    return dict(canvas=int(canvas), elements=len(times), first_element_s=round(first, 3),
                seconds_per_element=round(steady, 3), num_parallel_calls=num_parallel_calls)
