"""The trainer's side of the run's row: metrics, progress, heartbeat, summary, and the cancel check.

Only the main process writes. The processes meet every `interval` steps in ONE collective that
carries the cancel flag and the next interval, so every process stops at the same step (no DDP
deadlock) and none waits on another in between. The main process picks the interval from the
measured step time, so a check (and a flush) comes about every FLUSH_SECONDS. Step losses stay
on the device as detached tensors until a flush turns them into numbers in one host sync.

Each flush after new steps also writes the progress a reader needs from the first step on
(epoch_step of steps_per_epoch, images_per_second, eta_seconds and eta_at), from the step
timing measured since the epoch began and the time the last evaluation took.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch
from accelerate.utils import broadcast

from engine import store

FLUSH_SECONDS = 2.0  # how often step metrics, heartbeat and the cancel flag travel
# "1": each step's values are read at once, a host sync per step (a developer switch:
# bench/bench_vs_timm.py --levers measures what keeping them on the device is worth).
STEP_SYNC_ENV = "VISIONBOARD_STEP_SYNC"


class Cancelled(Exception):
    """The run's cancel flag was seen; every process raises it at the same step."""


def next_interval(seconds_per_step: float, flush_seconds: float = FLUSH_SECONDS) -> int:
    """Steps until the next check, so that checks come about every `flush_seconds`."""
    return max(1, int(flush_seconds / max(seconds_per_step, 1e-6)))


class MetricLog:
    def __init__(
        self,
        accelerator,
        db,
        run_id: int,
        flush_seconds: float = FLUSH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.db = db
        self.run_id = run_id
        self.flush_seconds = flush_seconds
        self.clock = clock
        self.pending: list[tuple[int, int, dict[str, Any]]] = []
        self.progress: dict[str, int] = {}
        self.interval = 1  # check after the first step: the step time is not known before it
        self.steps_since_check = 0
        self.last_check = self.last_flush = clock()
        self.plan: dict[str, int] = {}  # steps_per_epoch, images_per_step, epochs (plan_run)
        self.epoch_start: tuple[float, int] | None = None  # (clock, global step) of this epoch
        self.last_step_time: float | None = None
        self.evaluated_epoch = 0  # the last epoch whose values record_epoch wrote
        self.sync_each_step = os.environ.get(STEP_SYNC_ENV) == "1"
        self.seconds_between_epochs = 0.0  # evaluation and checkpoint: measured from epoch 2

    # -- timing ---------------------------------------------------------------------------
    def plan_run(self, steps_per_epoch: int, images_per_step: int, epochs: int) -> None:
        """What the progress is counted against (the trainer's set-up, once)."""
        self.plan = {
            "steps_per_epoch": steps_per_epoch,
            "images_per_step": images_per_step,
            "epochs": epochs,
        }

    def start_epoch(self, epoch: int, step: int) -> None:
        """The epoch's first step is about to run (`step` steps done before it)."""
        now = self.clock()
        if self.last_step_time is not None:
            self.seconds_between_epochs = now - self.last_step_time
        self.epoch_start = (now, step)
        self.evaluated_epoch = max(self.evaluated_epoch, epoch - 1)

    def timing(self, step: int) -> dict[str, float]:
        """Images per second and the time left, from this epoch's measured steps (empty
        before the first step is done)."""
        if not self.plan or self.epoch_start is None or step <= self.epoch_start[1]:
            return {}
        # Up to the last step, not now: a flush after the evaluation must not count it as steps.
        last = self.last_step_time if self.last_step_time is not None else self.clock()
        seconds_per_step = (last - self.epoch_start[0]) / (step - self.epoch_start[1])
        steps_left = max(0, self.plan["epochs"] * self.plan["steps_per_epoch"] - step)
        evaluations_left = max(0, self.plan["epochs"] - self.evaluated_epoch)
        return {
            "images_per_second": self.plan["images_per_step"] / max(seconds_per_step, 1e-9),
            "eta_seconds": steps_left * seconds_per_step
            + evaluations_left * self.seconds_between_epochs,
            "eta_at": time.time(),  # the dashboard counts down from here between flushes
        }

    # -- metrics ------------------------------------------------------------------------
    def record_step(self, step: int, epoch: int, values: dict[str, Any]) -> None:
        """One optimizer step's values (floats or 0-d tensors); every process calls it each
        step, as it counts towards the next check."""
        if self.sync_each_step:
            values = {name: float(value) for name, value in values.items()}
        if self.main:
            self.pending.append((step, epoch, values))
            self.last_step_time = self.clock()
            # The summary's progress: `epoch` is the last finished one.
            self.progress = {"epoch": epoch - 1, "step": step, "current_epoch": epoch}
            if self.plan:
                per_epoch = self.plan["steps_per_epoch"]
                self.progress |= {
                    "steps_per_epoch": per_epoch,
                    "epoch_step": step - (epoch - 1) * per_epoch,
                }
        self.steps_since_check += 1
        if self.steps_since_check >= self.interval:
            self.check()

    def record_epoch(self, step: int, epoch: int, values: dict[str, Any], check: bool = True):
        """An epoch's values, written at once; every process calls it at the epoch's end.
        With check=False the cancel check waits for the caller's check() (the trainer saves
        the epoch's checkpoint first, so a cancel never throws a finished epoch away)."""
        if self.main:
            self.pending.append((step, epoch, values))
            self.evaluated_epoch = epoch
            self.progress = {"step": step} | self.progress  # the time left, without the eval
        if check:
            self.check()
        else:
            self.flush()

    def summary(self, **fields: Any) -> None:
        if self.main:
            store.update_summary(self.db, self.run_id, **fields)

    # -- travel -------------------------------------------------------------------------
    def check(self) -> None:
        """Flush, then learn whether to stop and when to check next: one collective."""
        now = self.clock()
        stop, interval = False, 1
        if self.main:
            self.flush()
            stop = store.cancel_requested(self.db, self.run_id)
            seconds_per_step = (now - self.last_check) / max(self.steps_since_check, 1)
            interval = next_interval(seconds_per_step, self.flush_seconds)
        if self.accelerator.num_processes > 1:
            message = torch.tensor([float(stop), float(interval)], device=self.accelerator.device)
            stop, interval = broadcast(message).tolist()
        self.interval, self.steps_since_check, self.last_check = int(interval), 0, now
        if stop:
            raise Cancelled()

    def beat(self) -> None:
        """Heartbeat while evaluating, when due: main process only, no collective."""
        if self.main and self.clock() - self.last_flush > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows, the progress and the heartbeat (main process)."""
        if not self.main:
            return
        self.last_flush = self.clock()
        tensors = [v for _, _, values in self.pending for v in values.values() if _is_tensor(v)]
        # The one host sync of a flush: every buffered step loss becomes a float at once.
        numbers = iter(
            torch.stack([t.detach().float().reshape(()) for t in tensors]).tolist()
            if tensors
            else []
        )
        for step, epoch, values in self.pending:
            values = {k: next(numbers) if _is_tensor(v) else v for k, v in values.items()}
            store.add_metrics(self.db, self.run_id, step, epoch, values)
        self.pending.clear()
        if self.progress:
            progress = self.progress | self.timing(self.progress["step"])
            store.update_summary(self.db, self.run_id, **progress)
            self.progress = {}
        store.heartbeat(self.db, self.run_id)


def _is_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)
