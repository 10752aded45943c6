"""Early stopping: whether an epoch improves on the best one, and whether training stops.

The counters live in the TrainState, so they travel with the checkpoint; this object holds the
rule (mode, delta, patience), decided by evaluate.is_better.
"""

from __future__ import annotations

from engine.checkpoint import TrainState
from engine.evaluate import is_better


class EarlyStopping:
    def __init__(self, mode: str, patience: int, delta: float = 0.0, enabled: bool = True):
        self.mode = mode
        self.patience = patience
        self.delta = delta
        self.enabled = enabled

    @classmethod
    def from_config(cls, cfg) -> EarlyStopping:
        return cls(
            cfg.metric_mode,
            cfg.early_stopping_patience,
            cfg.early_stopping_delta,
            cfg.early_stopping,
        )

    def update(self, state: TrainState, epoch: int, value: float) -> bool:
        """Record epoch `epoch`'s metric; True when it is the new best (kept even when early
        stopping is off: the best epoch's model is the run's model)."""
        if is_better(value, state.best, self.mode, self.delta):
            state.best, state.best_epoch, state.since_best = value, epoch, 0
            return True
        state.since_best += 1
        return False

    def should_stop(self, state: TrainState) -> bool:
        return self.enabled and state.since_best >= self.patience
