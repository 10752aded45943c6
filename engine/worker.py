"""The queue: claim queued runs, launch each (engine.launch), watch, record the end.

On GPU machines a run gets as many free GPUs as it has processes and several runs go at once
when they fit; on CPU one run trains at a time. A run ends in a true status whatever dies:
- the trainer or its launcher: the worker stops what is left of the launcher's process group
  and every trainer process the attempt recorded (one trainer per run), and records the exit
  by the store's one rule (store.record_exit), only while the run is still its own;
- the worker itself: its runs are orphans that anyone settles (store.settle_run), this worker
  once restarted included;
- the disk: the worker lives on through a full disk, retrying the status writes it could not
  make, and a run it cannot start says "disk full" with the space free.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from engine import database, disk, store
from engine.home import host_name
from engine.launch import free_port, gpu_count, gpus_needed, launch_command
from engine.run_folder import LOG, RunFolder

POLL_SECONDS = 1.0
JOB_EXIT_SECONDS = 0.05  # between two looks at whether a launcher has exited
CANCEL_GRACE_SECONDS = 60.0  # a cancelled trainer stops at its next step; then it is killed
RECOVER_SECONDS = 10.0  # how often orphaned runs (other workers' and ours) are settled
LAUNCHER_GRACE_SECONDS = 10.0  # a launcher gone: what it left gets SIGTERM, then SIGKILL


def worker_id() -> str:
    return f"{host_name()}:{os.getpid()}"


def parse_devices(value: str, present: int | None = None) -> list[int]:
    """`--devices`: GPU indices such as `0,1`, or `cpu` (none); with `present` (the GPUs this
    host has, when it has any), only those."""
    if value.strip().lower() in ("", "cpu", "none"):
        return []
    try:
        gpus = [int(part) for part in value.split(",")]
    except ValueError:
        gpus = [-1]
    if any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise ValueError(
            f"--devices {value!r}: expected GPU indices separated by commas (e.g. 0,1), or cpu"
        )
    if present and max(gpus) >= present:
        raise ValueError(
            f"--devices {value!r}: this host has {present} GPU(s), numbered 0 to {present - 1}"
        )
    return gpus


@dataclass
class Job:
    run_id: int
    process: subprocess.Popen
    gpus: list[int]
    log: object
    cancel_sent_at: float | None = None


@dataclass
class Worker:
    home: Path
    only_run: int | None = None  # `visionboard train` starts a worker for its run alone
    devices: list[int] | None = None  # the GPUs it may use (None: every GPU of the host)
    poll: float = POLL_SECONDS
    jobs: dict[int, Job] = field(default_factory=dict)
    # Run endings not yet written (a full disk), retried each poll: run id -> the launcher's
    # exit code (store.record_exit reads what it means), or (status, error) the worker decided.
    endings: dict[int, int | tuple[str, str | None]] = field(default_factory=dict)
    stop_event: threading.Event = field(default_factory=threading.Event)
    signalled: bool = False  # a stop signal came (stop_on_signal)

    def __post_init__(self):
        self.home = store.home_dir(self.home)
        self.db = store.connect(self.home)
        self.id = worker_id()
        self.host = host_name()
        self.gpus = list(range(gpu_count())) if self.devices is None else list(self.devices)

    # -- the loop ---------------------------------------------------------------------
    def run(self, once: bool = False) -> None:
        """Work until stopped (or, with `once`/only_run, until the queue has nothing for us).
        A full disk stops no worker: what could not be written is tried again at the next poll."""
        last_recover = None
        try:
            while not self.stopping():
                try:
                    self.announce()  # first: a run we hold must never look orphaned
                    if last_recover is None or time.monotonic() - last_recover > RECOVER_SECONDS:
                        self.recover()
                        last_recover = time.monotonic()
                    self.watch()
                    started = False
                    while not self.stopping() and self.start_next():  # all that fit
                        started = True
                except Exception as exc:
                    if not disk.is_disk_full(exc) and not database.is_connection_lost(exc):
                        raise
                    self.warn(f"cannot write ({exc}); trying again")
                    self.stop_event.wait(self.poll)
                    continue
                idle = not self.jobs and not self.endings and not started
                if (once or self.only_run is not None) and idle:
                    break
                self.wait_poll()
        finally:
            self.shutdown()

    def stop_on_signal(self, signum, frame) -> None:
        """A signal handler that stops the loop. Not stop_event.set() itself: a handler runs in
        the main thread between two bytecodes, maybe inside stop_event.wait() while that holds
        the event's lock, which set() would then wait for forever; a thread sets it once the
        wait lets go of the lock."""
        self.signalled = True  # seen by the loop at once, before the event is set
        threading.Thread(target=self.stop_event.set, daemon=True).start()

    def stopping(self) -> bool:
        return self.signalled or self.stop_event.is_set()

    def wait_poll(self) -> None:
        """Wait for the next poll, or less: a launcher's exit is seen at once (a waitpid every
        JOB_EXIT_SECONDS), so a finished run is recorded without waiting out the poll."""
        deadline = time.monotonic() + self.poll
        while not self.stop_event.wait(min(JOB_EXIT_SECONDS, self.poll)):
            if time.monotonic() >= deadline:
                return
            if any(job.process.poll() is not None for job in self.jobs.values()):
                return

    def warn(self, message: str) -> None:
        """A problem the worker lives through, said once (not at every poll)."""
        if message != getattr(self, "last_warning", None):
            self.last_warning = message
            print(f"worker {self.id}: {message}", file=sys.stderr, flush=True)

    def announce(self) -> None:
        """Say that this worker serves the data directory's queue, or only its one run (so a
        `visionboard train` knows whether its run will start without a worker of its own), on
        which host and devices."""
        devices = ",".join(map(str, self.gpus)) or "cpu"
        store.beat_worker(self.db, self.id, self.host, os.getpid(), self.only_run, devices)

    def free_gpus(self) -> list[int]:
        used = {g for job in self.jobs.values() for g in job.gpus}
        return [g for g in self.gpus if g not in used]

    def start_next(self) -> bool:
        queued = store.list_runs(self.db, status="queued")
        queued = [r for r in queued if r["on_host"] in (None, "", self.host)]  # pinned elsewhere
        queued.sort(key=lambda r: r["id"])
        if self.only_run is not None:
            queued = [r for r in queued if r["id"] == self.only_run]
        for run in queued:
            try:
                needed = gpus_needed(run["config"], len(self.gpus))
                break
            except Exception as exc:
                if disk.is_disk_full(exc):
                    raise
                if self.runnable_elsewhere(run):
                    continue  # another host's worker has what it needs (more GPUs): its run
                # A run that cannot be prepared (say, a broken accelerate config file) fails
                # alone; the worker and the queue behind it go on.
                self.fail_unclaimed(run, str(exc))
                return False
        else:
            return False
        if needed == 0 and any(not job.gpus for job in self.jobs.values()):
            return False  # on the CPU one run at a time
        free = self.free_gpus()
        if len(free) < needed:
            return False  # wait until enough GPUs are free
        gpus = free[:needed]
        claimed = store.claim_run(self.db, self.id, run_id=run["id"], host=self.host)
        if claimed is None:
            return False  # another worker took it
        self.launch(claimed, gpus)
        return True

    def runnable_elsewhere(self, run: dict) -> bool:
        """Whether another live worker serving the queue (on the run's host, if pinned) has the
        devices the run needs, as it announced them: a run this host cannot train waits for
        that one instead of failing here."""
        for other in store.list_workers(self.db):
            if other["name"] == self.id or other["run_id"] is not None:
                continue
            if other["devices"] is None or not store.worker_alive(other):
                continue  # gone, or a worker of an older version: its devices are unknown
            if run["on_host"] and other["host"] != run["on_host"]:
                continue
            try:
                gpus_needed(run["config"], len(parse_devices(other["devices"])))
            except Exception:
                continue
            return True
        return False

    def fail_unclaimed(self, run: dict, reason: str) -> None:
        claimed = store.claim_run(self.db, self.id, run_id=run["id"], host=self.host)
        if claimed:
            self.finish(run["id"], "failed", reason)

    def launch(self, run: dict, gpus: list[int]) -> None:
        folder = RunFolder(self.home, run["id"])
        try:
            cmd, env = launch_command(run, self.home, gpus, free_port())
        except Exception as exc:
            if disk.is_disk_full(exc):
                raise
            self.finish(run["id"], "failed", f"could not build the launch command: {exc}")
            return
        log = None
        try:
            # With less than the reserve free, no run starts: it would die mid-epoch.
            disk.require_space(folder.create().path, 0)
            log = open(folder.log, "a", buffering=1)
            log.write(f"--- {datetime.now(UTC).isoformat(timespec='seconds')} {' '.join(cmd)}\n")
        except OSError as exc:
            if log is not None:
                log.close()
            reason = disk.disk_full_message(exc, folder.path) or f"could not write {LOG}: {exc}"
            self.finish(run["id"], "failed", reason)
            return
        try:
            process = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=Path(__file__).resolve().parent.parent,
                start_new_session=True,  # so a cancel can stop the whole process group
            )
        except OSError as exc:
            log.close()
            self.finish(run["id"], "failed", f"could not start the trainer: {exc}")
            return
        # Watched from now on, even if the next write meets a full disk.
        self.jobs[run["id"]] = Job(run["id"], process, gpus, log)
        devices = (
            ",".join(f"cuda:{g}" for g in gpus) or f"cpu x{run['config'].get('num_processes', 1)}"
        )
        if not store.record_launch(self.db, run["id"], self.id, devices, process.pid, self.host):
            # Taken from us meanwhile (settled as an orphan): it must not train beside another.
            self.warn(f"run {run['id']} is no longer ours; stopping the trainer just started")
            store.stop_trainers(self.home, run["id"], process.pid, 0.0)
            process.wait()
            log.close()
            del self.jobs[run["id"]]

    def watch(self) -> None:
        for run_id, job in list(self.jobs.items()):
            code = job.process.poll()
            if code is None:
                self.forward_cancel(job)
                continue
            # The launcher is gone: a trainer it leaves behind must not train on unwatched,
            # nor beside the next attempt: its process group (the launcher's pid) and each
            # trainer process (torchrun starts them outside that group) are stopped.
            store.stop_trainers(self.home, run_id, job.process.pid, LAUNCHER_GRACE_SECONDS)
            job.log.close()
            del self.jobs[run_id]
            self.endings[run_id] = code
        self.write_endings()

    def forward_cancel(self, job: Job) -> None:
        """The trainer stops itself on cancel; one that does not answer is killed."""
        if not store.cancel_requested(self.db, job.run_id):
            return
        if job.cancel_sent_at is None:
            job.cancel_sent_at = time.monotonic()
        elif time.monotonic() - job.cancel_sent_at > CANCEL_GRACE_SECONDS:
            store.signal_trainers(self.home, job.run_id, job.process.pid, signal.SIGKILL)

    def finish(self, run_id: int, status: str, error: str | None = None) -> None:
        """Record a run's end; its trainer's process group is gone, so the row forgets it."""
        self.endings[run_id] = (status, error)
        self.write_endings()

    def write_endings(self) -> None:
        """Write the endings not written yet; on a full disk keep them for the next poll."""
        for run_id, ending in list(self.endings.items()):
            try:
                if isinstance(ending, int):
                    written = store.record_exit(self.db, run_id, self.id, ending)
                else:
                    status, error = ending
                    written = store.set_status(
                        self.db, run_id, status, error=error, worker=self.id, trainer_pid=None
                    )
            except Exception as exc:
                if not disk.is_disk_full(exc):
                    raise
                self.warn(f"cannot record that run {run_id} ended ({exc}); trying again")
                return
            del self.endings[run_id]
            if not written:
                # Settled by a reader while we could not write, maybe resumed and claimed
                # since: its row is no longer ours to end.
                self.warn(f"run {run_id} is no longer ours: its ending was not recorded")

    # -- recovery ---------------------------------------------------------------------
    def recover(self) -> None:
        """Settle the runs no live worker holds (store.settle_orphans): a trainer that
        finished on its own gets its ending recorded, a gone one why it stopped."""
        store.settle_orphans(self.db)

    def shutdown(self) -> None:
        """Stopping the worker cancels what it runs, so no run is left 'running'."""
        for job in self.jobs.values():
            store.signal_trainers(self.home, job.run_id, job.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for run_id, job in list(self.jobs.items()):
            try:
                job.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                store.signal_trainers(self.home, run_id, job.process.pid, signal.SIGKILL)
                job.process.wait()
            store.stop_trainers(self.home, run_id, job.process.pid, 5.0)  # what is left
            job.log.close()
            try:
                cancelled = store.cancel_requested(self.db, run_id)
            except Exception as exc:
                if not disk.is_disk_full(exc):
                    raise
                cancelled = False
            if cancelled:
                self.endings[run_id] = ("cancelled", None)
            else:
                error = "the worker was stopped; resume it to continue"
                self.endings[run_id] = ("failed", error)
        self.jobs.clear()
        try:
            self.write_endings()
            store.remove_worker(self.db, self.id)
        except Exception as exc:
            if not disk.is_disk_full(exc):
                raise
            # Left running with our row silent: any later look settles them (store.settle_run).
            self.warn(f"stopped without recording every run's end ({exc})")
