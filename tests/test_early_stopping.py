"""Early stopping: one object decides improvement and stop, at resume and after each epoch."""

import math

from engine.checkpoint import TrainState
from engine.early_stopping import EarlyStopping


def test_an_improvement_resets_the_count_and_becomes_the_best_epoch():
    rule, state = EarlyStopping("max", patience=2, delta=0.01), TrainState()
    assert rule.update(state, 1, 0.5)
    assert not rule.update(state, 2, 0.505)  # less than delta
    assert (state.best, state.best_epoch, state.since_best) == (0.5, 1, 1)
    assert rule.update(state, 3, 0.6)
    assert (state.best, state.best_epoch, state.since_best) == (0.6, 3, 0)


def test_stops_after_patience_epochs_without_improvement():
    rule, state = EarlyStopping("min", patience=2), TrainState()
    rule.update(state, 1, 0.3)
    assert not rule.update(state, 2, 0.4) and not rule.should_stop(state)
    assert not rule.update(state, 3, math.nan) and rule.should_stop(state)
    assert state.best_epoch == 1


def test_when_off_it_never_stops_but_still_tracks_the_best_epoch():
    rule, state = EarlyStopping("max", patience=1, enabled=False), TrainState()
    for epoch, value in enumerate([0.9, 0.1, 0.1, 0.1], start=1):
        rule.update(state, epoch, value)
    assert not rule.should_stop(state) and (state.best_epoch, state.since_best) == (1, 3)


def test_a_resumed_state_is_judged_by_the_same_rule():
    rule = EarlyStopping("max", patience=3)
    assert rule.should_stop(TrainState(epoch=5, best=0.8, best_epoch=2, since_best=3))
    assert not rule.should_stop(TrainState(epoch=5, best=0.8, best_epoch=4, since_best=1))
