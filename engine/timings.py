"""Where a run's time goes, kept in its summary as `timings` (the run page shows it).

    {"launched_at": wall clock when the worker launched the trainer (engine.launch),
     "launch": seconds from there to the trainer's set-up (interpreters, imports),
     "data_check": reading and checking the dataset, "model": building and preparing the model,
     "launch_to_first_step": from the launch to the end of the first optimizer step,
     "epochs": [{"epoch", "train", "evaluate", "save", "checkpoint", "log"}, ...],
     "final_test", "total": launch (or set-up) to the end of training}

The worker stamps the launch into the trainer's environment (LAUNCHED_AT_ENV); a trainer
started another way counts from its own set-up. Every process keeps the record, the main
process writes it (engine.metric_log).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

LAUNCHED_AT_ENV = "VISIONBOARD_LAUNCHED_AT"


def launched_at(environ: dict[str, str] | None = None) -> float | None:
    """The launch stamp the worker left in the environment (None: none, or unreadable)."""
    try:
        return float((environ if environ is not None else os.environ)[LAUNCHED_AT_ENV])
    except (KeyError, ValueError):
        return None


class Timings:
    def __init__(self, clock: Callable[[], float] = time.time, launched: float | None = None):
        self.clock = clock
        self.started = clock()
        self.launched = launched if launched is not None else launched_at()
        self.origin = self.launched if self.launched is not None else self.started
        self.record: dict[str, Any] = {"launched_at": self.launched}
        if self.launched is not None:
            self.record["launch"] = round(self.started - self.launched, 3)
        self.epochs: list[dict[str, float]] = []

    @contextmanager
    def phase(self, name: str, epoch: int | None = None) -> Iterator[None]:
        """Add the seconds the block takes to `name` (of the epoch's record, given one)."""
        start = self.clock()
        try:
            yield
        finally:
            target = self.record if epoch is None else self.epoch(epoch)
            target[name] = round(target.get(name, 0.0) + self.clock() - start, 3)

    def epoch(self, epoch: int) -> dict[str, float]:
        if not self.epochs or self.epochs[-1]["epoch"] != epoch:
            self.epochs.append({"epoch": epoch})
        return self.epochs[-1]

    def step_done(self) -> None:
        """After each optimizer step: the first one ends the launch."""
        if "launch_to_first_step" not in self.record:
            self.record["launch_to_first_step"] = round(self.clock() - self.origin, 3)

    def summary(self, finished: bool = False) -> dict[str, Any]:
        """The record as the run's summary keeps it; `total` once training has finished."""
        out = {**self.record, "epochs": [dict(e) for e in self.epochs]}
        if finished:
            out["total"] = round(self.clock() - self.origin, 3)
        return out
