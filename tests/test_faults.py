"""Faults: whatever dies (trainer, launcher, worker, the `train` command, the disk), the run ends
in a true status with its real cause, and a run never has two trainers.

Most tests use tests/fake_trainer.py, a launcher and trainer without torch that beats, stops at
a cancel and ends like the real one, so they take seconds. The few marked slow use the real
`accelerate launch` and trainer. A test kills only processes it started: by pid, or the process
group its own worker recorded for the run.
"""

import errno
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from factories import ADMIN, write_digits_imagefolder
from fake_trainer import fake_launch_command

from engine import cli, disk, store, train
from engine import worker as worker_module
from engine.config import RunConfig
from engine.launch import DIRECT, LAUNCHED_ENV, VIA_ACCELERATE
from engine.run_folder import RunFolder
from engine.worker import Worker

ROOT = Path(__file__).resolve().parent.parent
FAKE = Path(__file__).resolve().parent / "fake_trainer.py"
BASE = {"task": "classification", "model": "m", "dataset": "d"}
TINY = {
    "model": "efficientnet_b0", "pretrained": False, "image_size": 32, "batch_size": 8,
    "num_workers": 0, "metric": "accuracy", "seed": 1, "device": "cpu", "early_stopping": False,
}  # fmt: skip


def wait_for(condition, seconds, what):
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"no {what} after {seconds} s"
        time.sleep(0.1)
    return value


def run_cli(home, *args):
    return cli.main(["--home", str(home), *args])


class Processes:
    """What a test started: processes (by pid) and trainer process groups, stopped at the end."""

    def __init__(self):
        self.started: list[subprocess.Popen] = []
        self.groups: list[int] = []

    def visionboard(self, seconds: float, *args) -> subprocess.Popen:
        """`visionboard ARGS` whose workers launch the fake trainer (running SECONDS)."""
        process = subprocess.Popen(
            [sys.executable, str(FAKE), "cli", str(seconds), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.started.append(process)
        return process

    def trainer_of(self, db, home, run_id: int) -> dict:
        """Wait for the run's trainer to run; remember its group. Returns the run's row."""
        pid_file = RunFolder(home, run_id).path / "trainer.pid"

        def started():
            run = store.get_run(db, run_id)
            return run if run["trainer_pid"] and pid_file.exists() else None

        run = wait_for(started, 60, "trainer")
        self.groups.append(run["trainer_pid"])
        return run

    def stop(self):
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait()
        for group in self.groups:
            if store.group_alive(group):
                os.killpg(group, signal.SIGKILL)


@pytest.fixture
def processes():
    started = Processes()
    yield started
    started.stop()


@pytest.fixture
def fake_launch(monkeypatch):
    """The in-process worker launches the fake trainer, running `seconds`."""

    def use(seconds: float):
        monkeypatch.setattr(worker_module, "launch_command", fake_launch_command(seconds))

    return use


def failed_run(db) -> int:
    """A run that failed (resumable), got there the way a worker gets it there."""
    run_id = store.create_run(db, BASE, by=ADMIN)
    store.claim_run(db, "w", run_id=run_id)
    store.set_status(db, run_id, "failed", error="earlier")
    return run_id


# -- the worker dies --------------------------------------------------------------------------


def test_a_killed_worker_leaves_a_run_every_reader_sees_and_that_ends_true(
    home, db, processes, capsys
):
    run_id = store.create_run(db, BASE, by=ADMIN)
    worker = processes.visionboard(3, "--home", str(home), "worker")
    pgid = processes.trainer_of(db, home, run_id)["trainer_pid"]
    assert not store.get_run(db, run_id)["worker_gone"]
    worker.kill()  # the worker only: its trainer has a process group of its own
    worker.wait()
    # Seen at once (the worker's pid is dead on this host), by the CLI and any reader.
    assert run_cli(home, "runs", "--json") == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert (listed["status"], listed["worker_gone"]) == ("running", True)
    assert run_cli(home, "runs", "show", str(run_id)) == 0
    assert "running (worker gone)" in capsys.readouterr().out
    # One trainer per run: a resume while the old one trains is refused with its pid.
    assert run_cli(home, "train", "--resume", str(run_id)) == 2
    assert f"pid {pgid}" in capsys.readouterr().err
    # It finishes on its own and whoever looks records its ending, not "failed".
    wait_for(lambda: not store.group_alive(pgid), 30, "trainer end")
    assert run_cli(home, "runs", "show", str(run_id), "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["status"], shown["worker_gone"], shown["error"]) == ("completed", False, None)


def test_an_orphan_can_be_cancelled_and_then_resumed(home, db, processes, capsys):
    run_id = store.create_run(db, BASE, by=ADMIN)
    worker = processes.visionboard(120, "--home", str(home), "worker")
    pgid = processes.trainer_of(db, home, run_id)["trainer_pid"]
    worker.kill()
    worker.wait()
    # Cancel used to do nothing here: now its trainer reads the flag and stops.
    assert run_cli(home, "runs", "cancel", str(run_id)) == 0
    assert "cancel requested" in capsys.readouterr().out
    wait_for(lambda: not store.group_alive(pgid), 30, "trainer stop")
    assert run_cli(home, "runs", "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["status"] == "cancelled"
    store.resume_run(db, run_id, by=ADMIN)
    assert store.get_run(db, run_id)["status"] == "queued"


def test_an_orphan_whose_trainer_died_too_fails_with_why(home, db, processes, capsys):
    run_id = store.create_run(db, BASE, by=ADMIN)
    worker = processes.visionboard(120, "--home", str(home), "worker")
    pgid = processes.trainer_of(db, home, run_id)["trainer_pid"]
    worker.kill()
    worker.wait()
    os.killpg(pgid, signal.SIGKILL)  # the group our worker started for this run
    wait_for(lambda: not store.group_alive(pgid), 30, "trainer end")
    assert run_cli(home, "runs", "show", str(run_id), "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "failed"
    assert "stopped and its trainer is gone" in shown["error"]
    store.resume_run(db, run_id, by=ADMIN)  # nothing of it runs: it may be resumed
    assert store.get_run(db, run_id)["status"] == "queued"


def test_a_restarted_worker_records_the_end_of_a_run_its_predecessor_left(
    home, db, processes, monkeypatch
):
    monkeypatch.setattr(worker_module, "RECOVER_SECONDS", 0.5)
    run_id = store.create_run(db, BASE, by=ADMIN)
    worker = processes.visionboard(2, "--home", str(home), "worker")
    pgid = processes.trainer_of(db, home, run_id)["trainer_pid"]
    worker.kill()
    worker.wait()
    restarted = Worker(home)
    thread = threading.Thread(target=restarted.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: store.get_run(db, run_id)["status"] != "running", 30, "recorded end")
    finally:
        restarted.stop_event.set()
        thread.join(30)
    assert store.get_run(db, run_id)["status"] == "completed"
    wait_for(lambda: not store.group_alive(pgid), 30, "trainer exit")  # it wrote its end first


def test_a_killed_train_command_leaves_a_run_that_ends_true(home, db, processes, capsys):
    run_id = failed_run(db)
    follow = processes.visionboard(3, "--home", str(home), "train", "--resume", str(run_id))
    pgid = processes.trainer_of(db, home, run_id)["trainer_pid"]
    follow.kill()  # like `kill -9`: no chance to cancel its run
    follow.wait()
    assert store.get_run(db, run_id)["worker_gone"]
    wait_for(lambda: not store.group_alive(pgid), 30, "trainer end")
    assert run_cli(home, "runs", "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["status"] == "completed"


# -- the launcher dies ------------------------------------------------------------------------


def test_killing_the_launcher_stops_its_trainer_and_a_resume_starts_one(
    home, db, fake_launch, processes
):
    fake_launch(120)
    run_id = store.create_run(db, BASE, by=ADMIN)
    worker = Worker(home)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        launcher = processes.trainer_of(db, home, run_id)["trainer_pid"]
        os.kill(launcher, signal.SIGKILL)  # the launcher only, not its group
        wait_for(lambda: store.get_run(db, run_id)["status"] == "failed", 30, "recorded end")
        # Its trainer used to train on; now the worker stopped the whole group first.
        assert not store.group_alive(launcher)
        run = store.get_run(db, run_id)
        assert run["error"].startswith("trainer killed by signal SIGKILL")
        assert run["trainer_pid"] is None  # nothing of it runs
        (RunFolder(home, run_id).path / "trainer.pid").unlink()
        store.resume_run(db, run_id, by=ADMIN)
        second = processes.trainer_of(db, home, run_id)["trainer_pid"]
        assert second != launcher and store.group_alive(second)
        store.request_cancel(db, run_id, by=ADMIN)
        wait_for(lambda: store.get_run(db, run_id)["status"] == "cancelled", 30, "cancel")
    finally:
        worker.stop_event.set()
        thread.join(30)


# -- the disk is full -------------------------------------------------------------------------


def failing(function, times: int, error: Exception):
    """`function`, raising `error` on its first `times` calls."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= times:
            raise error
        return function(*args, **kwargs)

    return wrapper


def test_the_worker_lives_through_a_full_disk(home, db, fake_launch, monkeypatch, capsys):
    # It used to die in its announce, leaving its run "running" with nothing behind it.
    fake_launch(0.5)
    full = sqlite3.OperationalError("database or disk is full")
    monkeypatch.setattr(store, "beat_worker", failing(store.beat_worker, 3, full))
    no_space = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(store, "record_exit", failing(store.record_exit, 2, no_space))
    run_id = store.create_run(db, BASE, by=ADMIN)
    Worker(home, only_run=run_id, poll=0.1).run()
    run = store.get_run(db, run_id)
    assert (run["status"], run["error"]) == ("completed", None)
    err = capsys.readouterr().err
    assert "database or disk is full" in err and f"cannot record that run {run_id}" in err


def test_a_run_is_not_started_without_room_and_says_disk_full(home, db, monkeypatch):
    monkeypatch.setattr(disk, "free_bytes", lambda path: 3 * disk.MB)
    run_id = store.create_run(db, BASE, by=ADMIN)
    Worker(home, only_run=run_id).run()
    run = store.get_run(db, run_id)
    folder = RunFolder(home, run_id).path
    assert run["status"] == "failed"
    assert run["error"] == f"disk full: 3 MB free in {folder}, at least 64 MB needed"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits_imagefolder(
        tmp_path_factory.mktemp("data") / "digits", per_class=4, classes=range(2)
    )


def train_claimed(home, db, digits) -> int:
    """A tiny run, claimed as a worker claims it, trained in this process; returns its id."""
    config = RunConfig.from_dict({**TINY, "dataset": str(digits), "epochs": 1}).resolved()
    run_id = store.create_run(db, config, by=ADMIN)
    store.claim_run(db, "w", run_id=run_id)
    assert train.main(["--run-id", str(run_id), "--home", str(home)]) == 1
    return run_id


def test_the_trainer_stops_before_filling_the_disk_and_says_so(home, db, digits, monkeypatch):
    monkeypatch.setattr(disk, "free_bytes", lambda path: 20 * disk.MB)
    run_id = train_claimed(home, db, digits)
    folder = RunFolder(home, run_id)
    run = store.get_run(db, run_id)
    assert run["trainer_error"].startswith(f"disk full: 20 MB free in {folder.path}, at least ")
    assert run["trainer_error"].endswith(" MB needed")
    assert run["summary"]["stop_reason"] == "failed"
    assert not folder.model.exists()  # stopped before the large write, not in the middle
    store.record_exit(db, run_id, "w", 1)  # the worker's record of the exit keeps the cause
    assert store.get_run(db, run_id)["error"] == run["trainer_error"]


def test_enospc_from_a_save_is_reported_as_disk_full(home, db, digits, monkeypatch):
    import engine.best_model

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(engine.best_model, "save_file", no_space)
    run_id = train_claimed(home, db, digits)
    error = store.get_run(db, run_id)["trainer_error"]
    assert error.startswith("disk full: ") and "No space left on device" in error
    assert f"MB free in {RunFolder(home, run_id).path}" in error


# -- serve --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_serve_restarts_its_worker_and_says_so(home, db, processes):
    from engine.launch import free_port

    env = dict(os.environ, VISIONBOARD_SAMPLES="0")
    serve = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "--home", str(home), "serve", "--host",
         "127.0.0.1", "--port", str(free_port()), "--api-port", "0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    processes.started.append(serve)
    first = wait_for(lambda: store.list_workers(db), 60, "worker")[0]
    os.kill(first["pid"], signal.SIGKILL)  # the worker serve started (our child's child)

    def replaced():
        return [w for w in store.list_workers(db) if w["pid"] != first["pid"]]

    wait_for(replaced, 60, "new worker")
    assert serve.poll() is None  # it kept serving
    serve.send_signal(signal.SIGTERM)
    out, _ = serve.communicate(timeout=60)
    assert "the worker stopped (exit code -9); started a new one" in out


# -- with accelerate ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_trainer_fails_with_why_and_a_resume_trains_alone(home, db, digits, processes):
    config = RunConfig.from_dict({**TINY, "dataset": str(digits), "epochs": 4}).resolved()
    run_id = store.create_run(db, config, by=ADMIN)
    worker = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "--home", str(home), "worker"], cwd=ROOT
    )
    processes.started.append(worker)
    wait_for(lambda: store.get_metrics(db, run_id, ["lr"]), 240, "training step")
    trainer = store.get_run(db, run_id)["trainer_pid"]
    # One process: the worker started the trainer itself, no launcher between them.
    assert [pid for _, pid, _ in RunFolder(home, run_id).trainer_records()] == [trainer]
    processes.groups.append(trainer)
    os.kill(trainer, signal.SIGKILL)
    wait_for(lambda: store.get_run(db, run_id)["status"] == "failed", 60, "recorded end")
    assert store.get_run(db, run_id)["error"].startswith("trainer killed by signal SIGKILL")
    assert not store.group_alive(trainer)  # its loader workers went with it
    store.resume_run(db, run_id, by=ADMIN)
    wait_for(lambda: store.get_run(db, run_id)["status"] == "completed", 300, "completion")
    worker.send_signal(signal.SIGTERM)
    worker.wait(30)
    metrics = store.get_metrics(db, run_id)
    # One trainer: one row per epoch metric and per step (two trainers doubled them).
    epochs = [m["epoch"] for m in metrics if m["name"] == "test_accuracy"]
    assert epochs == [1, 2, 3, 4]
    steps = [m["step"] for m in metrics if m["name"] == "lr"]
    assert len(steps) == len(set(steps))


RECORDING_TRAINER = """
import sys, time
from engine.train import record_trainer_process
record_trainer_process(1, sys.argv[1])
print("recorded", flush=True)
time.sleep(120)
"""
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]],
                         stdout=subprocess.PIPE, text=True, start_new_session=True)
child.stdout.readline()
print(child.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("launched, dies", [(VIA_ACCELERATE, True), (DIRECT, False)])
def test_a_trainer_dies_with_accelerates_launcher_and_outlives_a_worker_that_started_it(
    home, processes, launched, dies
):
    # Under accelerate launch a trainer must not train on unwatched once its launcher is gone;
    # started by the worker itself, it trains on when the worker dies, as one under a launcher
    # does, and its run is settled by whoever looks (test above).
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, RECORDING_TRAINER, str(home)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, LAUNCHED_ENV: launched},
    )  # fmt: skip
    processes.started.append(parent)
    trainer = int(parent.stdout.readline())
    processes.groups.append(trainer)
    assert [pid for _, pid, _ in RunFolder(home, 1).trainer_records()] == [trainer]
    parent.kill()
    parent.wait()
    if dies:
        wait_for(lambda: not store.group_alive(trainer), 10, "the trainer's end")
    else:
        time.sleep(0.5)
        assert store.group_alive(trainer)


# -- trainer processes outside the launcher's group -------------------------------------------


def detached_trainer(home, run_id: int) -> subprocess.Popen:
    """A process in a session of its own (as torchrun starts each rank), recorded as a
    trainer process of the run the way engine.train records itself."""
    process = subprocess.Popen(["sleep", "120"], start_new_session=True)
    started = wait_for(lambda: store.process_started(process.pid), 10, "process")
    RunFolder(home, run_id).record_trainer(socket.gethostname(), process.pid, started)
    return process


def test_a_trainer_outside_the_launchers_group_is_seen_and_stopped(home, db):
    run_id = failed_run(db)
    store.resume_run(db, run_id, by=ADMIN)
    store.claim_run(db, "gone:1", run_id=run_id)
    launcher = subprocess.Popen(["sleep", "120"], start_new_session=True)
    store.record_launch(db, run_id, "gone:1", "cpu x2", launcher.pid, socket.gethostname())
    rank = detached_trainer(home, run_id)
    try:
        launcher.kill()  # `kill -- -<launcher pgid>` reaches the launcher only
        launcher.wait()
        assert not store.group_alive(launcher.pid)
        run = store.get_run(db, run_id)
        assert run["worker_gone"] and store.trainer_alive(db, run)
        assert store.settle_run(db, run_id) is None  # it trains on
        with pytest.raises(store.TrainerStillRunning):
            store.resume_run(db, run_id, by=ADMIN)
        store.stop_trainers(home, run_id, launcher.pid, grace=5.0)
        assert rank.wait(10) is not None
        assert store.settle_run(db, run_id) == "failed"
        store.resume_run(db, run_id, by=ADMIN)
        # A new attempt forgets the last one's processes (a reused pid is not a trainer).
        store.claim_run(db, "w", run_id=run_id)
        assert RunFolder(home, run_id).trainer_records() == []
    finally:
        for process in (launcher, rank):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_the_worker_stops_trainer_processes_its_launcher_left(home, db, fake_launch, processes):
    fake_launch(120)
    run_id = store.create_run(db, BASE, by=ADMIN)
    worker = Worker(home, poll=0.1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    rank = None
    try:
        launcher = processes.trainer_of(db, home, run_id)["trainer_pid"]
        rank = detached_trainer(home, run_id)
        os.killpg(launcher, signal.SIGKILL)  # the launcher's whole group
        wait_for(lambda: store.get_run(db, run_id)["status"] == "failed", 30, "recorded end")
        assert rank.wait(10) is not None  # the rank outside the group was stopped too
    finally:
        worker.stop_event.set()
        thread.join(30)
        if rank is not None and rank.poll() is None:
            rank.kill()
            rank.wait()


# -- readers on a full disk -------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        sqlite3.OperationalError("database or disk is full"),
        sqlite3.OperationalError("database is locked"),
        OSError(errno.ENOSPC, "No space left on device"),
    ],
)
def test_reading_runs_on_a_full_disk_shows_them_as_they_are(home, db, monkeypatch, capsys, error):
    run_id = store.create_run(db, BASE, by=ADMIN)
    monkeypatch.setattr(store, "settle_orphans", failing(store.settle_orphans, 99, error))
    monkeypatch.setattr(store, "settle_run", failing(store.settle_run, 99, error))
    assert run_cli(home, "runs", "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] == run_id
    assert run_cli(home, "runs", "show", str(run_id)) == 0
    assert store.settle_quietly(db, run_id) == []
    monkeypatch.setattr(store, "settle_orphans", failing(store.settle_orphans, 99, ValueError()))
    with pytest.raises(ValueError):  # only a full disk or a lock is waited out
        store.settle_quietly(db)


# -- the trainer: a cancel at an epoch's end, the disk decided by the main process ------------


def test_a_cancel_seen_at_the_end_of_an_epoch_keeps_that_epoch(home, db, digits, monkeypatch):
    import engine.metric_log

    # The cancel arrives once the epoch's metrics are written: the epoch-end check sees it.
    def cancel_after_epoch(db, run_id):
        return bool(store.get_metrics(db, run_id, ["test_accuracy"]))

    monkeypatch.setattr(engine.metric_log.store, "cancel_requested", cancel_after_epoch)
    config = RunConfig.from_dict({**TINY, "dataset": str(digits), "epochs": 3}).resolved()
    run_id = store.create_run(db, config, by=ADMIN)
    store.claim_run(db, "w", run_id=run_id)
    assert train.main(["--run-id", str(run_id), "--home", str(home)]) == 0
    summary = store.get_run(db, run_id)["summary"]
    assert summary["stop_reason"] == "cancelled"
    assert summary["epochs_trained"] == 1  # it used to be thrown away with the checkpoint
    assert RunFolder(home, run_id).checkpoint.exists()


def test_the_main_process_decides_whether_the_disk_has_room(home, monkeypatch):
    import torch

    from engine.train import Trainer

    monkeypatch.setattr(disk, "free_bytes", lambda path: 1 * disk.MB)  # this rank's view
    trainer = Trainer.__new__(Trainer)
    trainer.folder = RunFolder(home, 1)
    trainer.accelerator = type("Acc", (), {"num_processes": 2, "device": "cpu"})()
    # A rank other than the main one follows the main one's measure, which had room.
    trainer.main = False
    monkeypatch.setattr(train, "broadcast", lambda t: torch.tensor([1e12]))
    trainer.require_space(10 * disk.MB)
    # Every rank stops when the main one finds too little, with its figures.
    monkeypatch.setattr(train, "broadcast", lambda t: torch.tensor([3.0 * disk.MB]))
    with pytest.raises(disk.DiskFull, match="disk full: 3 MB free in"):
        trainer.require_space(10 * disk.MB)


@pytest.mark.slow
def test_killing_the_launcher_of_a_two_process_run_stops_both_trainers(home, db, digits, processes):
    # torchrun (accelerate launch --multi_gpu) starts each rank in a session of its own: a
    # kill of the launcher's group used to leave both training, unseen by group_alive.
    config = RunConfig.from_dict(
        {**TINY, "dataset": str(digits), "epochs": 200, "num_processes": 2}
    ).resolved()
    run_id = store.create_run(db, config, by=ADMIN)
    worker = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "--home", str(home), "worker"], cwd=ROOT
    )
    processes.started.append(worker)
    wait_for(lambda: store.get_metrics(db, run_id, ["lr"]), 240, "training step")
    launcher = store.get_run(db, run_id)["trainer_pid"]
    processes.groups.append(launcher)
    ranks = [pid for _, pid, _ in RunFolder(home, run_id).trainer_records()]
    processes.groups.extend(ranks)
    assert len(ranks) == 2 and all(os.getpgid(pid) != launcher for pid in ranks)
    os.killpg(launcher, signal.SIGKILL)  # the launcher's whole process group
    wait_for(lambda: store.get_run(db, run_id)["status"] == "failed", 60, "recorded end")
    assert store.trainer_processes(home, run_id) == []
    assert all(store.process_started(pid) is None for pid in ranks)
    assert not store.trainer_alive(db, store.get_run(db, run_id))
    worker.send_signal(signal.SIGTERM)
    worker.wait(30)
