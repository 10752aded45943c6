"""The queue: claim queued runs, launch each with `accelerate launch`, watch, record the end.

On GPU machines a run gets as many free GPUs as it has processes and several runs go at once
when they fit; on CPU one run trains at a time. A run whose trainer or worker died is never
left "running": it is marked failed with the reason and can be resumed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from engine import store
from engine.run_folder import LOG, RunFolder

POLL_SECONDS = 1.0
CANCEL_GRACE_SECONDS = 60.0  # a cancelled trainer stops at its next step; then it is killed
RECOVER_SECONDS = 30.0  # how often other workers' runs are checked for a pulse
# A trainer whose worker died keeps training and beating: give it time to finish on its own.
ORPHAN_GRACE_SECONDS = 120.0
# The trainer's stop_reason → the status the worker records when it never saw the exit.
ENDINGS = {
    "epoch limit": "completed",
    "early stop": "completed",
    "cancelled": "cancelled",
    "failed": "failed",
}
# A worker beats every poll; one silent this long no longer serves (on another host the beat
# is all we can check, so the limit is tighter).
PULSE_SECONDS = 30.0
OTHER_HOST_PULSE_SECONDS = 10.0
STALE_SECONDS = float(os.environ.get("VISIONBOARD_STALE_SECONDS", 300))


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def gpu_count() -> int:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return 0
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def launch_command(run: dict, home: Path, gpus: list[int], port: int) -> tuple[list[str], dict]:
    """The `accelerate launch` command line and environment for a run."""
    cfg = run["config"]
    procs = int(cfg.get("num_processes", 1))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1"]
    cmd += ["--num_processes", str(procs), "--mixed_precision", cfg.get("mixed_precision", "no")]
    cmd += ["--dynamo_backend", "no", "--main_process_port", str(port)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", VISIONBOARD_HOME=str(home))
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
        cmd += ["--gpu_ids", ",".join(str(i) for i in range(len(gpus)))]
        if procs > 1:
            cmd.append("--multi_gpu")
    elif procs > 1:
        # `--cpu --num_processes N` silently starts one process; `--multi_gpu` without a GPU
        # starts N real DDP processes on gloo.
        env["CUDA_VISIBLE_DEVICES"] = ""
        cmd.append("--multi_gpu")
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""
        cmd.append("--cpu")
    cmd += ["-m", "engine.train", "--run-id", str(run["id"]), "--home", str(home)]
    if run.get("resume_requested"):
        cmd.append("--resume")
    return cmd, env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    poll: float = POLL_SECONDS
    jobs: dict[int, Job] = field(default_factory=dict)
    stop_event: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self):
        self.home = store.home_dir(self.home)
        self.db = store.connect(self.home)
        self.id = worker_id()
        self.gpus = list(range(gpu_count()))

    # -- the loop ---------------------------------------------------------------------
    def run(self, once: bool = False) -> None:
        """Work until stopped (or, with `once`/only_run, until the queue has nothing for us)."""
        last_recover = time.monotonic()
        self.recover()
        try:
            while not self.stop_event.is_set():
                if time.monotonic() - last_recover > RECOVER_SECONDS:
                    last_recover = time.monotonic()
                    self.recover()
                self.announce()
                self.watch()
                started = self.start_next()
                if (once or self.only_run is not None) and not self.jobs and not started:
                    break
                self.stop_event.wait(self.poll)
        finally:
            self.shutdown()

    def announce(self) -> None:
        """Say that a worker serves this data directory (so `visionboard train` need not)."""
        store.beat_worker(self.db, self.id, socket.gethostname(), os.getpid())

    def free_gpus(self) -> list[int]:
        used = {g for job in self.jobs.values() for g in job.gpus}
        return [g for g in self.gpus if g not in used]

    def start_next(self) -> bool:
        if not self.gpus and self.jobs:
            return False  # on CPU one run at a time
        queued = store.list_runs(self.db, status="queued")
        queued.sort(key=lambda r: r["id"])
        if self.only_run is not None:
            queued = [r for r in queued if r["id"] == self.only_run]
        if not queued:
            return False
        run = queued[0]
        cfg = run["config"]
        procs = int(cfg.get("num_processes", 1))
        gpus: list[int] = []
        if self.gpus and cfg.get("device", "auto") != "cpu":
            if procs > len(self.gpus):
                self.fail_unclaimed(run, f"needs {procs} GPUs; this machine has {len(self.gpus)}")
                return False
            free = self.free_gpus()
            if len(free) < procs:
                return False  # wait until enough GPUs are free
            gpus = free[:procs]
        elif cfg.get("device") == "cuda":
            self.fail_unclaimed(run, "device=cuda but the worker sees no GPU")
            return False
        claimed = store.claim_run(self.db, self.id, run_id=run["id"])
        if claimed is None:
            return False  # another worker took it
        self.launch(claimed, gpus)
        return True

    def fail_unclaimed(self, run: dict, reason: str) -> None:
        claimed = store.claim_run(self.db, self.id, run_id=run["id"])
        if claimed:
            store.set_status(self.db, run["id"], "failed", error=reason)

    def launch(self, run: dict, gpus: list[int]) -> None:
        folder = RunFolder(self.home, run["id"]).create()
        cmd, env = launch_command(run, self.home, gpus, free_port())
        log = open(folder.log, "a", buffering=1)
        log.write(f"--- {datetime.now(UTC).isoformat(timespec='seconds')} {' '.join(cmd)}\n")
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
            store.set_status(
                self.db, run["id"], "failed", error=f"could not start the trainer: {exc}"
            )
            return
        devices = (
            ",".join(f"cuda:{g}" for g in gpus) or f"cpu x{run['config'].get('num_processes', 1)}"
        )
        store.set_devices(self.db, run["id"], devices)
        self.jobs[run["id"]] = Job(run["id"], process, gpus, log)

    def watch(self) -> None:
        for run_id, job in list(self.jobs.items()):
            code = job.process.poll()
            if code is None:
                self.forward_cancel(job)
                continue
            job.log.close()
            del self.jobs[run_id]
            self.record_end(run_id, code)

    def forward_cancel(self, job: Job) -> None:
        """The trainer stops itself on cancel; one that does not answer is killed."""
        if not store.cancel_requested(self.db, job.run_id):
            return
        if job.cancel_sent_at is None:
            job.cancel_sent_at = time.monotonic()
        elif time.monotonic() - job.cancel_sent_at > CANCEL_GRACE_SECONDS:
            kill_group(job.process, signal.SIGKILL)

    def record_end(self, run_id: int, code: int) -> None:
        run = store.get_run(self.db, run_id)
        if run and run["cancel_requested"]:
            store.set_status(self.db, run_id, "cancelled")
        elif code == 0:
            store.set_status(self.db, run_id, "completed")
        else:
            if run and run.get("trainer_error"):
                error = run["trainer_error"]
            elif code < 0:
                error = f"trainer killed by signal {signal.Signals(-code).name}"
            else:
                error = f"trainer exited with code {code}; see {LOG}"
            store.set_status(self.db, run_id, "failed", error=error)

    # -- recovery ---------------------------------------------------------------------
    def recover(self) -> None:
        """Settle runs that no live worker watches: a trainer that finished on its own gets
        its ending recorded; one that stopped beating is marked failed (it can be resumed)."""
        host = socket.gethostname()
        now = datetime.now(UTC)
        for run in store.list_runs(self.db, status="running"):
            owner = run.get("worker") or ""
            if owner == self.id:
                continue
            owner_host, _, owner_pid = owner.rpartition(":")
            owner_dead = (
                owner_host == host and owner_pid.isdigit() and not pid_alive(int(owner_pid))
            )
            beat = run.get("heartbeat_at") or run.get("started_at")
            age = (now - datetime.fromisoformat(beat)).total_seconds() if beat else 1e9
            ended = ENDINGS.get(run["summary"].get("stop_reason"))
            if ended and (owner_dead or age > STALE_SECONDS):
                error = run.get("trainer_error") if ended == "failed" else None
                store.set_status(self.db, run["id"], ended, error=error)
            elif owner_dead and age > ORPHAN_GRACE_SECONDS:
                store.set_status(
                    self.db, run["id"], "failed",
                    error=f"the worker that ran it ({owner}) stopped; resume it to continue",
                )  # fmt: skip
            elif age > STALE_SECONDS:
                store.set_status(
                    self.db, run["id"], "failed",
                    error=f"no heartbeat for {age:.0f} s; resume it to continue",
                )  # fmt: skip

    def shutdown(self) -> None:
        """Stopping the worker cancels what it runs, so no run is left 'running'."""
        for job in self.jobs.values():
            kill_group(job.process, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for run_id, job in list(self.jobs.items()):
            try:
                job.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_group(job.process, signal.SIGKILL)
                job.process.wait()
            job.log.close()
            if store.cancel_requested(self.db, run_id):
                store.set_status(self.db, run_id, "cancelled")
            else:
                store.set_status(
                    self.db, run_id, "failed", error="the worker was stopped; resume it to continue"
                )
        self.jobs.clear()
        store.remove_worker(self.db, self.id)


def kill_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def worker_running(db) -> bool:
    """Whether a live worker serves this database's data directory."""
    host = socket.gethostname()
    for worker in store.list_workers(db):
        age = (datetime.now(UTC) - datetime.fromisoformat(worker["heartbeat_at"])).total_seconds()
        # On this host a dead pid says more than a recent beat; elsewhere the beat is all.
        if worker["host"] != host and age < OTHER_HOST_PULSE_SECONDS:
            return True
        if worker["host"] == host and age < PULSE_SECONDS and pid_alive(worker["pid"]):
            return True
    return False
