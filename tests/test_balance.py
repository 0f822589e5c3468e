"""model.balance and the update order: each update's set of slides is unchanged, the
assignment balances the planned load and replays, and a slide's planned cost needs no pixels."""
import numpy as np
import pandas as pd
import pytest

from data import pipeline
from data.augment import augment_canvas, sample_params
from model.balance import assign, content_box, slide_cost, straggler_share


def test_equal_costs_give_the_unbalanced_round_robin():
    for ranks in (1, 2, 4, 8):
        shares = assign([7] * 8, ranks)
        assert shares == [list(range(r, 8, ranks)) for r in range(ranks)]


def test_assignment_is_longest_first_onto_the_least_loaded_rank():
    costs = [1, 9, 3, 3, 8, 2, 2, 4]
    shares = assign(costs, 2)
    assert sorted(i for s in shares for i in s) == list(range(8))
    loads = [sum(costs[i] for i in s) for s in shares]
    assert loads == [16, 16]
    assert assign(costs, 2) == shares                     # deterministic
    # LPT's bound: the slowest rank is within 4/3 of the optimum (here the optimum itself).
    costs = [100, 1, 1, 1, 1, 1, 1, 1]
    shares = assign(costs, 2)
    assert [len(s) for s in shares] == [1, 7] and all(shares)


def test_every_rank_gets_a_slide_even_with_zero_costs():
    assert all(assign([0, 0, 5, 0], 4))


def test_updates_are_the_sets_the_shards_gave():
    # Today's order: each rank takes its next batch/size elements of its shard, running on into
    # the next pass. The update's set must be the union of those, pass by pass.
    n, seed, size, batch = 7, 3, 2, 4
    per_rank = batch // size
    streams = []
    for r in range(size):
        elements = []
        for p in range(6):
            rows, positions = pipeline.shard(pipeline.training_order(n, seed, p, size), r, size)
            elements += [(p, int(q), int(row)) for row, q in zip(rows, positions)]
        streams.append(elements)
    position = (0, 0)
    for u in range(10):
        slides, position = pipeline.update_slides(n, seed, size, batch, position)
        expected = [e for s in streams for e in s[u * per_rank:(u + 1) * per_rank]]
        assert sorted(slides) == sorted(expected), u
        assert position[1] % size == 0


def _index(shapes):
    return pd.DataFrame([dict(slide_id="s{}".format(i), label=i % 2, height=h, width=w)
                         for i, (h, w) in enumerate(shapes)])


def test_planned_cost_is_the_plan_of_the_augmented_canvas():
    from model.flops import planned_macs
    from model.streaming import plan
    canvas, tile = 1024, 256
    rng = np.random.default_rng(0)
    for k, (h, w) in enumerate([(300, 500), (700, 200), (900, 900)]):
        image = rng.integers(0, 200, (h, w, 3), dtype=np.uint8)
        draw = pipeline.element_rng(1, 0, k)
        params = sample_params(pipeline.element_rng(1, 0, k), translate_px=24)
        placed = augment_canvas(image, draw, canvas, translate_px=24)
        y0, y1, x0, x1 = placed.box
        top, bottom, left, right = content_box(h, w, canvas, params)
        # the footprint holds the content; the augmentation only trims white edges off it
        assert top <= y0 and y1 <= bottom and left <= x0 and x1 <= right
        assert bottom - top - (y1 - y0) <= 16 and right - left - (x1 - x0) <= 16
        cost = slide_cost(h, w, canvas, params, tile=tile)
        real = planned_macs(plan(placed, tile))
        assert real <= cost <= 1.1 * real
    assert slide_cost(300, 500, canvas, params) == canvas * canvas     # whole-image strategies


def test_straggler_share():
    assert straggler_share([2.0, 1.0]) == (2.0, 1.5, 0.25)
    assert straggler_share([1.0, 1.0])[2] == 0.0


@pytest.mark.parametrize("size", [1, 2, 4])
def test_stream_shares_replay_and_cover_each_update(size):
    from model.training import SlideStream
    index = _index([(100 + 37 * i, 400 - 23 * i) for i in range(7)])
    records = index.to_dict("records")

    def cost(record, p, position):
        return record["height"] * record["width"]

    stream = SlideStream(index, 512, 5, 0, size, 8, True, cost)
    position = (0, 0)
    for _ in range(5):
        shares, after = stream.shares(position)
        slides, expected_after = pipeline.update_slides(7, 5, size, 8, position)
        assert sorted(s for share in shares for s in share) == sorted(slides)
        assert after == expected_after
        assert all(shares)
        loads = [sum(cost(records[row], p, q) for p, q, row in share) for share in shares]
        biggest = max(cost(records[row], p, q) for p, q, row in slides)
        assert max(loads) - min(loads) <= biggest
        assert stream.shares(position) == (shares, after)    # the same on a resume
        position = after


def test_checkpoint_positions_of_older_versions_are_converted():
    from data.errors import InputError
    from model.training import data_position
    assert data_position(dict(position=[2, 6], positions=[[9, 9]]), 2) == [2, 6]
    # each rank at offset 3 of its shard, 2 ranks: global offset 6 of the pass
    assert data_position(dict(positions=[[1, 3], [1, 3]]), 2) == [1, 6]
    assert data_position(dict(positions=[[0, 0]] * 4), 4) == [0, 0]
    with pytest.raises(InputError, match="different data positions"):
        data_position(dict(positions=[[1, 3], [1, 2]]), 2)


def test_levels_cost_plans_the_rotated_footprint():
    """In levels the cost is the plan of the warped footprint (not its box): it holds every
    pixel the augmentation changes, hardly more, and plans within 5% of the real canvas."""
    from model.balance import footprint_canvas
    from model.flops import summed_area
    from model.levels import plan
    canvas = 1024
    rng = np.random.default_rng(1)
    for k, (h, w) in enumerate([(300, 500), (700, 260)]):
        image = rng.integers(0, 200, (h, w, 3), dtype=np.uint8)        # no white pixel
        params = sample_params(pipeline.element_rng(2, 0, k), translate_px=24)
        placed = augment_canvas(image, pipeline.element_rng(2, 0, k), canvas, translate_px=24)
        mask = footprint_canvas(h, w, canvas, params)
        assert mask.content.strides[2] == 0                       # one byte per px, seen 3 times
        real = np.zeros((canvas, canvas), bool)
        y0, y1, x0, x1 = placed.box
        real[y0:y1, x0:x1] = np.any(placed.content != placed.fill, axis=2)
        planned = np.zeros((canvas, canvas), bool)
        t, b, l, r = mask.box
        planned[t:b, l:r] = mask.content[..., 0] == 0
        assert not (real & ~planned).any()                        # holds what is changed
        assert planned.sum() <= 1.03 * real.sum()                 # and little more
        assert summed_area(mask)[-1, -1] < 0.9 * (b - t) * (r - l)    # not its box
        cost = slide_cost(h, w, canvas, params, levels=True)
        exact = plan(placed, None, True)[0].macs()
        assert exact <= cost <= 1.05 * exact
