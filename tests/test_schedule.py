"""model.schedule: the end-of-epoch rule of the paper (patience, reduced rate, stop) and the
released code's rollback variant, as pure functions of the run's state."""
from model.schedule import (ROLLBACK_MIN_DELTA, end_epoch, improves, min_delta, new_state,
                            schedule_step)

CFG = {"train": {"learning_rate": 1e-5, "seed": 0, "batch_size": 8}}


def _train(on_plateau="keep", patience=2, max_epochs=None):
    """A config's train section for end_epoch."""
    return dict(patience=patience, reduced_learning_rate=1e-6, max_epochs=max_epochs,
                on_plateau=on_plateau)


def _run(losses, **train):
    """The state after end_epoch on each loss, and end_epoch's answers."""
    state, answers = new_state(CFG, 1), []
    for loss in losses:
        answers.append(end_epoch(state, loss, _train(**train)))
    return state, answers


def test_schedule_reduces_then_stops():
    s = new_state(CFG, 2)
    lrs = []
    for loss in [1.0, 0.9, 0.95, 0.96, 0.97, 0.85, 0.9, 0.91]:
        assert not s["done"]
        schedule_step(s, loss, patience=2, reduced_learning_rate=1e-6)
        lrs.append(s["learning_rate"])
    # epochs 3,4 no better than 0.9 -> lr drops after epoch 4; epoch 6 improves; 7, 8 do not.
    assert lrs == [1e-5, 1e-5, 1e-5, 1e-6, 1e-6, 1e-6, 1e-6, 1e-6]
    assert s["done"] and s["best_val_loss"] == 0.85 and s["best_epoch"] == 5 and s["epoch"] == 8
    capped = new_state(CFG, 1)
    schedule_step(capped, 1.0, patience=5, reduced_learning_rate=1e-6, max_epochs=1)
    assert capped["done"]


def test_schedule_min_delta_and_rollback_rule():
    """on_plateau rollback counts an epoch as better only below best - 1e-4 (keep: any lower)."""
    keep, roll = new_state(CFG, 1), new_state(CFG, 1)
    for loss in (0.5, 0.49995, 0.49990):
        schedule_step(keep, loss, patience=2, reduced_learning_rate=1e-6)
        schedule_step(roll, loss, patience=2, reduced_learning_rate=1e-6,
                      min_delta=ROLLBACK_MIN_DELTA)
    # keep: every epoch lower -> best is the last; rollback: 5e-5 steps are no improvement.
    assert keep["best_epoch"] == 2 and keep["phase"] == 0 and keep["bad_epochs"] == 0
    assert roll["best_epoch"] == 0 and roll["best_val_loss"] == 0.5
    assert roll["phase"] == 1 and roll["learning_rate"] == 1e-6 and roll["bad_epochs"] == 0
    assert ROLLBACK_MIN_DELTA == 1e-4


def test_new_state_starts_every_rank_at_the_beginning():
    s = new_state(CFG, 3)
    assert (s["epoch"], s["iteration"], s["global_iteration"], s["phase"]) == (0, 0, 0, 0)
    assert s["learning_rate"] == 1e-5 and s["best_val_loss"] is None and not s["done"]
    assert s["positions"] == [[0, 0]] * 3 and s["world_size"] == 3 and s["batch_size"] == 8


def test_patience_reached_reduces_the_rate_and_restarts_the_count():
    s = new_state(CFG, 1)
    assert schedule_step(s, 1.0, patience=3, reduced_learning_rate=1e-6)   # the first improves
    for k in (1, 2):
        assert not schedule_step(s, 1.0, patience=3, reduced_learning_rate=1e-6)
        assert s["bad_epochs"] == k and s["phase"] == 0 and s["learning_rate"] == 1e-5
    assert not schedule_step(s, 1.5, patience=3, reduced_learning_rate=1e-6)
    assert s["phase"] == 1 and s["learning_rate"] == 1e-6 and s["bad_epochs"] == 0
    assert not s["done"] and s["epoch"] == 4 and s["iteration"] == 0


def test_second_patience_stops_the_run():
    s, _ = _run([1.0, 1.1, 1.2])            # patience 2: the rate drops after epoch 3
    assert s["phase"] == 1 and not s["done"]
    s2, _ = _run([1.0, 1.1, 1.2, 1.3])      # one bad epoch in phase 1: not yet
    assert not s2["done"] and s2["bad_epochs"] == 1
    s3, _ = _run([1.0, 1.1, 1.2, 1.3, 1.4])  # two: stop
    assert s3["done"] and s3["phase"] == 1 and s3["epoch"] == 5
    assert s3["best_val_loss"] == 1.0 and s3["best_epoch"] == 0


def test_improvement_in_phase_one_resets_the_count():
    s, answers = _run([1.0, 1.1, 1.2, 1.3, 0.9, 1.0])
    assert [a[0] for a in answers] == [True, False, False, False, True, False]
    assert s["phase"] == 1 and not s["done"] and s["bad_epochs"] == 1 and s["best_epoch"] == 4


def test_improvement_below_min_delta_is_no_improvement():
    assert improves(None, 5.0, 1.0)                       # the first epoch always improves
    assert improves(0.5, 0.4999, 0.0)                     # keep: any lower loss
    assert not improves(0.5, 0.5, 0.0)                    # equal is not lower
    assert not improves(0.5, 0.49995, ROLLBACK_MIN_DELTA)  # rollback: 5e-5 lower is not enough
    assert improves(0.5, 0.4998, ROLLBACK_MIN_DELTA)
    s = new_state(CFG, 1)
    schedule_step(s, 0.5, patience=5, reduced_learning_rate=1e-6, min_delta=0.01)
    assert not schedule_step(s, 0.495, patience=5, reduced_learning_rate=1e-6, min_delta=0.01)
    assert s["best_val_loss"] == 0.5 and s["bad_epochs"] == 1


def test_max_epochs_ends_the_run_whatever_the_losses():
    s, answers = _run([1.0, 0.9, 0.8], max_epochs=3, patience=5)
    assert all(a[0] for a in answers) and s["done"] and s["epoch"] == 3
    s, _ = _run([1.0, 0.9], max_epochs=3, patience=5)
    assert not s["done"]


def test_min_delta_of_each_plateau_rule():
    assert min_delta("keep") == 0.0 and min_delta("rollback") == ROLLBACK_MIN_DELTA


def test_rollback_only_when_the_rate_drops_under_rollback():
    losses = [1.0, 1.1, 1.2, 1.3, 1.4]      # patience 2: the rate drops after epoch 3
    for rule in ("keep", "rollback"):
        s, answers = _run(losses, on_plateau=rule)
        rolls = [a[1] for a in answers]
        assert rolls == [False, False, rule == "rollback", False, False], rule
        assert s["done"] and s["learning_rate"] == 1e-6
