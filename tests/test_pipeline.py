"""data.pipeline: shapes and dtypes, disjoint equal-size shards, replayable order, eval once."""

import numpy as np
import pandas as pd
import pytest

tf = pytest.importorskip("tensorflow")
tf.compat.v1.enable_v2_behavior()

from data import augment, pipeline  # noqa: E402
from data.augment import pad_to_canvas  # noqa: E402
from data.canvas import as_canvas  # noqa: E402

CANVAS = 48


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """Seven small 'cached slides' as .npy files and their index (cache_file absolute)."""
    folder = tmp_path_factory.mktemp("cache")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(7):
        h, w = 20 + 3 * i, 40 - 2 * i
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        path = str(folder / "s{}.npy".format(i))
        np.save(path, image)
        rows.append(dict(slide_id="s{}".format(i), path="x", label=i % 2, split="train",
                         cache_file=path, height=h, width=w, mpp=8.0))
    return pd.DataFrame(rows)


def reader(row):
    return np.load(row["cache_file"])


def _collect(ds):
    """(dense canvas, label, slide id) of every element."""
    return [(as_canvas(img).dense(), float(lab.numpy()), sid.numpy().decode())
            for img, lab, sid in ds]


def test_elements_have_the_contract_shapes_and_dtypes(index):
    ds = pipeline.training_dataset(index, CANVAS, seed=1, epoch=0, reader=reader,
                                   translate_px=4)
    items = _collect(ds)
    assert len(items) == 7
    for img, lab, sid in items:
        assert img.shape == (CANVAS, CANVAS, 3) and img.dtype == np.uint8
        assert lab == index.set_index("slide_id").loc[sid, "label"]
    element, lab, sid = next(iter(ds))
    assert sorted(element) == ["content", "fill", "offset", "shape"]
    assert element["content"].dtype == tf.uint8 and element["content"].shape[2] == 3
    assert element["offset"].dtype == tf.int32 and element["offset"].shape == (2,)
    assert element["fill"].dtype == tf.uint8 and element["fill"].shape == (3,)
    assert list(element["shape"].numpy()) == [CANVAS, CANVAS]
    assert lab.dtype == tf.float32 and sid.dtype == tf.string
    assert lab.shape == () and sid.shape == ()


def test_training_canvas_equals_the_dense_augmentation_of_its_slide(index):
    """The pipeline carries the canvas as fill + content; its pixels are augment.augment's."""
    records = index.set_index("slide_id")
    ds = pipeline.training_dataset(index, CANVAS, seed=3, epoch=1, reader=reader,
                                   translate_px=4)
    order, positions = pipeline.shard(pipeline.training_order(7, 3, 1), 0, 1)
    for (element, _, sid), position in zip(ds, positions):
        canvas = as_canvas(element)
        sid = sid.numpy().decode()
        dense = augment.augment(np.load(records.loc[sid, "cache_file"]),
                                pipeline.element_rng(3, 1, position), CANVAS, translate_px=4)
        assert np.array_equal(canvas.dense(), dense), sid
        assert canvas.content.size < dense.size or canvas.box == (0, CANVAS, 0, CANVAS)


def test_shards_are_disjoint_equal_and_cover_every_slide(index):
    size = 3                                   # 7 slides -> 3 each, 2 repeats
    shards = [_collect(pipeline.training_dataset(index, CANVAS, 5, 2, rank=r, size=size,
                                                 augment=False, reader=reader))
              for r in range(size)]
    assert [len(s) for s in shards] == [3, 3, 3]
    order = pipeline.training_order(7, 5, 2, size)
    assert sorted(order[:7]) == list(range(7))            # a permutation, then its start
    assert list(order[7:]) == list(order[:2])
    for r, s in enumerate(shards):
        assert [sid for _, _, sid in s] == ["s{}".format(i) for i in order[r::size]]
    seen = [sid for s in shards for _, _, sid in s]
    assert set(seen) == set(index["slide_id"])
    firsts = [sid for s in shards for _, _, sid in s[:2]]  # the first 6 positions: distinct
    assert len(set(firsts)) == 6


def test_order_and_augmentation_replay_from_seed_epoch_and_position(index):
    def run(**kw):
        return _collect(pipeline.training_dataset(index, CANVAS, 11, 3, rank=1, size=2,
                                                  reader=reader, translate_px=4, **kw))
    first, again = run(), run(num_parallel_calls=1)
    assert [x[2] for x in first] == [x[2] for x in again]
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, again))
    resumed = run(skip=2)
    assert [x[2] for x in resumed] == [x[2] for x in first[2:]]
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first[2:], resumed))
    other_epoch = pipeline.training_order(7, 11, 4)
    assert list(other_epoch) != list(pipeline.training_order(7, 11, 3))
    # augmented differs from plain padding
    plain = {sid: pad_to_canvas(reader(r), CANVAS) for sid, r in
             zip(index["slide_id"], index.to_dict("records"))}
    assert any(not np.array_equal(img, plain[sid]) for img, _, sid in first)


def test_eval_sees_every_slide_once_in_fixed_order(index):
    parts = [_collect(pipeline.eval_dataset(index, CANVAS, rank=r, size=2, reader=reader))
             for r in range(2)]
    assert [len(p) for p in parts] == [4, 3]
    assert [sid for _, _, sid in parts[0]] == ["s0", "s2", "s4", "s6"]
    for part in parts:
        for img, _, sid in part:
            row = index.set_index("slide_id").loc[sid]
            assert np.array_equal(img, pad_to_canvas(np.load(row["cache_file"]), CANVAS))
    padded = list(pipeline.eval_dataset(index, CANVAS, rank=1, size=2, reader=reader, pad=True))
    assert len(padded) == 4
    assert [bool(e[3].numpy()) for e in padded] == [True, True, True, False]
    assert padded[3][2].numpy().decode() == "s0"


def test_default_reader_is_the_prepare_cache(index, tmp_path):
    from data.cache import read_cached
    ds = pipeline.eval_dataset(index, CANVAS)            # cache_file is absolute, as load_index
    items = _collect(ds)
    assert [sid for _, _, sid in items] == list(index["slide_id"])
    for (img, _, sid), row in zip(items, index.to_dict("records")):
        assert np.array_equal(img, pad_to_canvas(read_cached("", row), CANVAS)), sid


def test_an_update_read_by_assignment_equals_the_shards_elements(index):
    """The slides of one update (running on into the next pass), read in any assignment, are
    the shards' elements with the same pixels: balancing changes who computes, not what."""
    size, seed = 2, 7
    shards = [_collect(pipeline.training_dataset(index, CANVAS, seed, 0, rank=r, size=size,
                                                 reader=reader, translate_px=4))
              for r in range(size)]
    slides, after = pipeline.update_slides(7, seed, size, 4, (0, 6))   # positions 6, 7 of pass 0
    assert after == (1, 2) and [s[:2] for s in slides] == [(0, 6), (0, 7), (1, 0), (1, 1)]
    got = _collect(pipeline.assigned_dataset(index, CANVAS, seed, slides[:2][::-1],
                                             reader=reader, translate_px=4))
    # position 7 of pass 0 is rank 1's 4th element, position 6 rank 0's 4th
    for (img, lab, sid), (r, i) in zip(got, [(1, 3), (0, 3)]):
        assert sid == shards[r][i][2] and np.array_equal(img, shards[r][i][0])
    nxt = _collect(pipeline.training_dataset(index, CANVAS, seed, 1, rank=0, size=size,
                                             reader=reader, translate_px=4))
    got = _collect(pipeline.assigned_dataset(index, CANVAS, seed, slides[2:3], reader=reader,
                                             translate_px=4))
    assert got[0][2] == nxt[0][2] and np.array_equal(got[0][0], nxt[0][0])
