"""Batching of concurrent prediction requests, with a bounded queue.

Requests (jobs of one or more images) wait in a queue; one background thread takes what has
arrived, up to `max_batch` images, waiting at most `max_wait` seconds after the oldest job for
more to come, and predicts it in one call. While a batch runs, the next one gathers, so under
load the batches fill by themselves and an idle server answers a lone request after
`max_wait`. Jobs carry a key (the detection threshold): a batch is predicted once per key, so
each job gets exactly what a plain call with its key gives. The queue holds at most
`max_queue` images, counting those a caller reserved room for while it prepares them; past
that, reserve and submit raise QueueFull (HTTP 503 with Retry-After). A batch that fails is
predicted again job by job, so only the job at fault hears of it; a job whose caller gave up
is skipped; the thread outlives any of it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


class QueueFull(RuntimeError):
    """The queue holds max_queue images already; `retry_after`: seconds worth waiting."""

    def __init__(self, queued: int, max_queue: int, retry_after: int):
        self.queued, self.max_queue, self.retry_after = queued, max_queue, retry_after
        super().__init__(
            f"the prediction queue is full ({queued} image(s) waiting, at most {max_queue}): "
            f"retry in {retry_after} s"
        )


class BatcherClosed(RuntimeError):
    """The batcher was closed (its model unloaded): submit to another."""


@dataclass
class _Job:
    items: Sequence[Any]
    key: Hashable
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """predict(items, key) -> one result per item, called from one background thread."""

    def __init__(
        self,
        predict: Callable[[list[Any], Hashable], list[Any]],
        max_batch: int = 16,
        max_wait: float = 0.005,
        max_queue: int = 64,
        name: str = "batcher",
    ):
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch and max_queue must be 1 or more, max_wait 0 or more")
        self.predict, self.max_batch, self.max_wait = predict, max_batch, max_wait
        self.max_queue = max_queue
        self._jobs: deque[_Job] = deque()
        self._queued = 0  # images waiting (not yet taken into a batch)
        self._reserved = 0  # images reserved room for, being prepared (see reserve)
        self._cond = threading.Condition()
        self._closed = False
        self._batch_seconds = 0.0  # moving average, for Retry-After
        self.batches = self.images = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # -- the callers' side ------------------------------------------------------------------
    def submit(self, items: Sequence[Any], key: Hashable = None, reserved: bool = False) -> Future:
        """Queue one job; its future gets the list of results (or the exception). `reserved`:
        its room was reserved (reserve), so it cannot be refused as QueueFull."""
        job = _Job(list(items), key)
        if not job.items:
            job.future.set_result([])
            return job.future
        with self._cond:
            if reserved:
                self._reserved -= len(job.items)
            if self._closed:
                raise BatcherClosed("the batcher is closed")
            if not reserved:
                self._check_room(len(job.items))
            self._jobs.append(job)
            self._queued += len(job.items)
            self._cond.notify_all()
        return job.future

    def reserve(self, count: int) -> None:
        """Hold room for `count` items now, or raise QueueFull: a caller reserves before the
        work of preparing them (decoding images), then submits them with reserved=True, or
        releases the room. Items being prepared count as waiting, so however many requests
        arrive at once, at most max_queue items are held."""
        with self._cond:
            self._check_room(count)
            self._reserved += count

    def release(self, count: int) -> None:
        """Give back room reserved for items that will not be submitted."""
        with self._cond:
            self._reserved -= count

    def _check_room(self, count: int) -> None:
        waiting = self._queued + self._reserved
        if waiting and waiting + count > self.max_queue:
            raise QueueFull(waiting, self.max_queue, self._retry_after())

    def _retry_after(self) -> int:
        batches_ahead = (self._queued + self._reserved) / self.max_batch + 1
        return max(1, math.ceil(batches_ahead * self._batch_seconds))

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "queued_images": self._queued,
                "reserved_images": self._reserved,
                "max_queue": self.max_queue,
                "max_batch": self.max_batch,
                "max_wait_ms": self.max_wait * 1000,
                "batches": self.batches,
                "images": self.images,
                "mean_batch": round(self.images / self.batches, 2) if self.batches else None,
            }

    def close(self, timeout: float | None = 30) -> None:
        """Refuse new jobs (BatcherClosed) at once; the thread finishes the queued ones, then
        stops (waited for up to `timeout` seconds; 0: not waited for)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # -- the batching thread ------------------------------------------------------------------
    def _take(self) -> list[_Job] | None:
        """The next batch's jobs (at least one, whole jobs, up to max_batch images when more
        than one), after waiting for the queue to fill; None once closed and drained."""
        with self._cond:
            while not self._jobs:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._jobs[0].arrived + self.max_wait
            while self._queued < self.max_batch and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            taken = [self._jobs.popleft()]
            size = len(taken[0].items)
            while self._jobs and size + len(self._jobs[0].items) <= self.max_batch:
                job = self._jobs.popleft()
                taken.append(job)
                size += len(job.items)
            self._queued -= size
            return taken

    def _loop(self) -> None:
        while (jobs := self._take()) is not None:
            started = time.monotonic()
            # A job whose caller gave up (its future cancelled) is skipped; the others can no
            # longer be cancelled, so setting their results below cannot fail.
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            if not jobs:
                continue
            groups: dict[Hashable, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.key, []).append(job)
            for key, group in groups.items():
                try:
                    self._run(key, group)
                except BaseException as exc:  # the thread must outlive any batch
                    for job in group:
                        if not job.future.done():
                            job.future.set_exception(exc)
            seconds = time.monotonic() - started
            with self._cond:
                self.batches += 1
                self.images += sum(len(job.items) for job in jobs)
                self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * seconds

    def _run(self, key: Hashable, jobs: list[_Job]) -> None:
        """Predict the jobs together; if that fails and they are several, each alone, so one
        request's failure (its images, or a batch too large for the device) is its own."""
        try:
            results = self._predict_all([item for job in jobs for item in job.items], key)
        except Exception as exc:
            if len(jobs) > 1:
                for job in jobs:
                    self._run(key, [job])
                return
            jobs[0].future.set_exception(exc)  # its request hears why
            return
        start = 0
        for job in jobs:
            job.future.set_result(results[start : start + len(job.items)])
            start += len(job.items)

    def _predict_all(self, items: list[Any], key: Hashable) -> list[Any]:
        results: list[Any] = []
        for start in range(0, len(items), self.max_batch):  # one big job, in batches
            batch = items[start : start + self.max_batch]
            got = list(self.predict(batch, key))
            if len(got) != len(batch):  # results must never slide onto another request
                raise RuntimeError(f"the predictor gave {len(got)} results for {len(batch)} images")
            results += got
        return results
