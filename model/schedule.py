"""The paper's schedule: what the end of an epoch does to the learning rate and to the run.

"When no improvement was made over the last 24 epochs, the learning rate was decreased to
0.000001 for the first time, and the training was stopped for the second time" (Methods;
docs/fidelity.md, rows ``schedule`` and ``plateau-rule``). Here as pure functions of the run's
state (a JSON-able dict, stored in ``last.ckpt``), so the rule is tested without TensorFlow:

- phase 0 runs at ``learning_rate``; ``patience`` epochs without improvement switch to phase 1 at
  ``reduced_learning_rate`` and restart the count; ``patience`` more end the run; ``max_epochs``
  caps it.
- An epoch improves when ``val_loss < best - min_delta``. ``train.on_plateau``: ``keep`` (the
  paper's words) uses 0, any lower loss; ``rollback`` (the released code's
  ``ReduceLRAndRollbackOnPlateau``, a Keras ``ReduceLROnPlateau``) uses Keras's default
  ``min_delta`` 1e-4 and, when the rate drops, the training goes on from the best weights.
"""

ROLLBACK_MIN_DELTA = 1e-4   # Keras ReduceLROnPlateau's default, under the released code's rollback


def new_state(cfg, world_size):
    """The state of a run that has not trained yet: epoch 0 at the initial rate, no best loss,
    every rank at the start of the data order, the epoch's sums and seconds at zero."""
    t = cfg["train"]
    return dict(epoch=0, iteration=0, global_iteration=0, phase=0,
                learning_rate=t["learning_rate"], best_val_loss=None, best_epoch=None,
                bad_epochs=0, done=False, seed=t["seed"], world_size=world_size,
                batch_size=t["batch_size"], positions=[[0, 0]] * world_size,
                sums=[0.0, 0.0, 0.0], seconds=0.0)


def min_delta(on_plateau):
    """How much lower than the best a validation loss must be to count as an improvement under
    the ``train.on_plateau`` rule: 0 for ``keep``, ``ROLLBACK_MIN_DELTA`` for ``rollback``."""
    return ROLLBACK_MIN_DELTA if on_plateau == "rollback" else 0.0


def improves(best_val_loss, val_loss, delta=0.0):
    """Whether ``val_loss`` is an improvement on ``best_val_loss`` (None: the first epoch, which
    always is)."""
    return best_val_loss is None or val_loss < best_val_loss - delta


def _count_bad_epoch(state, patience, reduced_learning_rate):
    """One more epoch without improvement: at ``patience`` of them phase 0 drops the rate (and
    restarts the count), phase 1 ends the run."""
    state["bad_epochs"] += 1
    if state["bad_epochs"] < patience:
        return
    if state["phase"] == 0:
        state["phase"], state["learning_rate"], state["bad_epochs"] = 1, reduced_learning_rate, 0
    else:
        state["done"] = True


def schedule_step(state, val_loss, patience, reduced_learning_rate, max_epochs=None,
                  min_delta=0.0):
    """End of an epoch: updates best loss, patience counter, phase, lr and ``done`` in ``state``.

    An epoch improves when ``val_loss < best - min_delta`` (the first always does). Phase 0
    runs at the initial lr; ``patience`` epochs without improvement switch to phase 1 at
    ``reduced_learning_rate`` with the counter reset; ``patience`` more without improvement
    end the run. Returns True when this epoch improved (its weights become best.ckpt).
    """
    improved = improves(state["best_val_loss"], val_loss, min_delta)
    if improved:
        state["best_val_loss"], state["best_epoch"], state["bad_epochs"] = val_loss, state["epoch"], 0
    else:
        _count_bad_epoch(state, patience, reduced_learning_rate)
    state["epoch"] += 1
    state["iteration"] = 0
    if max_epochs is not None and state["epoch"] >= max_epochs:
        state["done"] = True
    return improved


def end_epoch(state, val_loss, train):
    """``schedule_step`` with the settings of a config's ``train`` section (patience,
    reduced_learning_rate, max_epochs, on_plateau). Returns (improved, rolls_back): whether this
    epoch's weights are the best so far, and whether the run goes on from the best weights
    (``rollback`` and the rate has just dropped)."""
    phase = state["phase"]
    improved = schedule_step(state, val_loss, train["patience"], train["reduced_learning_rate"],
                             train["max_epochs"], min_delta(train["on_plateau"]))
    rolls_back = train["on_plateau"] == "rollback" and state["phase"] != phase
    return improved, rolls_back
