"""The worker's queue: claiming, GPUs, the exit it records, liveness and orphans.

(The command line it launches is tested in test_launch.py; faults with real processes in
test_faults.py.)"""

import os
import signal
import socket
from types import SimpleNamespace

import pytest
from factories import ADMIN

from engine import store
from engine.worker import Worker


def test_recover_settles_runs_no_live_worker_watches(db, home):
    base = {"task": "classification", "model": "m", "dataset": "d"}
    dead_worker = f"{socket.gethostname()}:999999"
    old_beat = "2000-01-01T00:00:00+00:00"

    def running(owner, beat=None, **summary):
        run_id = store.create_run(db, base, by=ADMIN)
        store.claim_run(db, owner, run_id=run_id)
        if summary:
            store.update_summary(db, run_id, **summary)
        if beat:
            db.conn.execute("update runs set heartbeat_at = ? where id = ?", [beat, run_id])
            db.conn.commit()
        return run_id

    silent = running(dead_worker, beat=old_beat)
    stale = running("elsewhere:1", beat=old_beat)
    mine = running(f"{socket.gethostname()}:{os.getpid()}")
    orphan_training = running(dead_worker)  # its trainer still beats: let it finish
    db.conn.execute(  # claimed a while ago: its heartbeat is one since the claim
        "update runs set started_at = ? where id = ?", [old_beat, orphan_training]
    )
    db.conn.commit()
    orphan_done = running(dead_worker, stop_reason="early stop")
    orphan_cancelled = running(dead_worker, stop_reason="cancelled")
    orphan_failed = running(dead_worker, stop_reason="failed")
    store.record_trainer_error(db, orphan_failed, "ValueError: no images")
    worker = Worker(home)
    worker.announce()  # a worker beats before it claims: its own runs are never orphans
    worker.recover()
    status = {i: store.get_run(db, i)["status"] for i in range(1, orphan_failed + 1)}
    assert status[silent] == "failed"
    assert "stopped and its trainer is gone" in store.get_run(db, silent)["error"]
    assert "resume it to continue" in store.get_run(db, silent)["error"]
    assert status[stale] == "failed"
    assert "last heartbeat" in store.get_run(db, stale)["error"]
    assert status[mine] == status[orphan_training] == "running"
    assert status[orphan_done] == "completed"
    assert status[orphan_cancelled] == "cancelled"
    assert status[orphan_failed] == "failed"
    assert store.get_run(db, orphan_failed)["error"] == "ValueError: no images"


def test_cuda_run_on_a_machine_without_gpu_fails_with_reason(db, home):
    run_id = store.create_run(
        db, {"task": "classification", "model": "m", "dataset": "d", "device": "cuda"}, by=ADMIN
    )
    worker = Worker(home, only_run=run_id)
    worker.gpus = []
    worker.run()
    run = store.get_run(db, run_id)
    assert run["status"] == "failed" and "no GPU" in run["error"]


def test_gpu_runs_share_the_machine_when_they_fit(db, home, monkeypatch):
    launched = []

    def fake_launch(self, run, gpus):
        launched.append((run["id"], gpus))
        self.jobs[run["id"]] = SimpleNamespace(gpus=gpus)

    monkeypatch.setattr(Worker, "launch", fake_launch)
    base = {"task": "classification", "model": "m", "dataset": "d"}
    one = store.create_run(db, {**base, "num_processes": 1}, by=ADMIN)
    two = store.create_run(db, {**base, "num_processes": 2}, by=ADMIN)
    three = store.create_run(db, {**base, "num_processes": 1}, by=ADMIN)
    worker = Worker(home)
    worker.gpus = [0, 1, 2]
    assert worker.start_next() and worker.start_next()
    assert launched == [(one, [0]), (two, [1, 2])]
    assert not worker.start_next()  # no GPU free: run 3 waits in the queue
    assert store.get_run(db, three)["status"] == "queued"
    too_big = store.create_run(db, {**base, "num_processes": 8}, by=ADMIN)
    worker.jobs.clear()
    store.request_cancel(db, three, by=ADMIN)
    assert not worker.start_next()
    assert "needs 8 GPUs" in store.get_run(db, too_big)["error"]


def test_the_exit_takes_the_trainers_error_from_the_row(db, home):
    worker = Worker(home)
    worker.announce()  # alive: a cancel of its runs waits for their exit
    base = {"task": "classification", "model": "m", "dataset": "d"}

    def ended(code, trainer_error=None, stop_reason=None, cancel=False, settle=False):
        run_id = store.create_run(db, base, by=ADMIN)
        store.claim_run(db, worker.id, run_id=run_id)
        if trainer_error:
            store.record_trainer_error(db, run_id, trainer_error)
        if stop_reason:
            store.update_summary(db, run_id, stop_reason=stop_reason)
        if cancel:
            store.request_cancel(db, run_id, by=ADMIN)
        if settle:  # nobody saw the exit: the worker is gone, the trainer too
            db.conn.execute(
                "update runs set worker = 'gone:1', trainer_pid = 999999, "
                "trainer_host = ? where id = ?",
                [socket.gethostname(), run_id],
            )
            db.conn.commit()
            store.settle_run(db, run_id)
        else:
            assert store.record_exit(db, run_id, worker.id, code) is not None
        run = store.get_run(db, run_id)
        return run["status"], run["error"]

    assert ended(1, "FileNotFoundError: /data/gone") == ("failed", "FileNotFoundError: /data/gone")
    assert ended(1) == ("failed", "trainer exited with code 1; see train.log")
    assert ended(-9) == (
        "failed",
        "trainer killed by signal SIGKILL (out of memory?); see train.log",
    )
    assert ended(-15) == ("failed", "trainer killed by signal SIGTERM; see train.log")
    # A real-time signal has no name: said by its number, the worker lives on.
    assert ended(-40) == ("failed", "trainer killed by signal 40; see train.log")
    assert ended(0) == ended(0, stop_reason="epoch limit") == ("completed", None)
    assert ended(-9, cancel=True) == ("cancelled", None)  # killed after the cancel's grace
    # The worker's exit and an orphan's settle read the trainer's own ending first, alike: a
    # cancel pressed after a finished run's last check, and a crash after a cancel.
    for settle in (False, True):
        done = ended(0, stop_reason="epoch limit", cancel=True, settle=settle)
        assert done == ("completed", None)
        crashed = ended(1, "RuntimeError: boom", stop_reason="failed", cancel=True, settle=settle)
        assert crashed == ("failed", "RuntimeError: boom")


def test_a_late_ending_never_overwrites_the_next_attempt(db, home):
    base = {"task": "classification", "model": "m", "dataset": "d"}
    run_id = store.create_run(db, base, by=ADMIN)
    store.claim_run(db, "host:1", run_id=run_id)
    assert store.record_launch(db, run_id, "host:1", "cpu x1", 999999, "host")
    # Worker A looks gone: a reader settles its run, the user resumes it, worker B claims it.
    store.set_status(db, run_id, "failed", error="settled", worker="host:1")
    store.resume_run(db, run_id, by=ADMIN)
    store.claim_run(db, "host:2", run_id=run_id)
    # A's endings come late; B's attempt stays B's.
    assert not store.record_exit(db, run_id, "host:1", 1)
    assert not store.set_status(db, run_id, "failed", error="late", worker="host:1")
    assert not store.record_launch(db, run_id, "host:1", "cpu x1", 4242, "host")
    run = store.get_run(db, run_id)
    assert (run["status"], run["worker"], run["error"], run["trainer_pid"]) == (
        "running",
        "host:2",
        None,
        None,
    )
    assert store.record_exit(db, run_id, "host:2", 0) == "completed"


def test_a_worker_drops_an_ending_that_is_no_longer_its_own(db, home, capsys):
    base = {"task": "classification", "model": "m", "dataset": "d"}
    worker = Worker(home)
    run_id = store.create_run(db, base, by=ADMIN)
    store.claim_run(db, "someone:else", run_id=run_id)
    worker.endings[run_id] = 1
    worker.write_endings()
    assert not worker.endings and store.get_run(db, run_id)["status"] == "running"
    assert f"run {run_id} is no longer ours" in capsys.readouterr().err


def test_a_run_claimed_but_never_launched_has_no_trainer_once_its_worker_is_gone(db, home):
    base = {"task": "classification", "model": "m", "dataset": "d"}
    run_id = store.create_run(db, base, by=ADMIN)
    store.claim_run(db, f"{socket.gethostname()}:999999", run_id=run_id)  # then it died
    run = store.get_run(db, run_id)
    assert run["worker_gone"] and not store.trainer_alive(db, run)
    assert store.settle_run(db, run_id) == "failed"  # at once, not after STALE_SECONDS
    store.resume_run(db, run_id, by=ADMIN)
    assert store.get_run(db, run_id)["status"] == "queued"


def test_liveness_is_a_row_per_worker(db, home):
    assert not store.worker_running(db)
    worker = Worker(home)
    worker.announce()
    assert [w["name"] for w in store.list_workers(db)] == [worker.id]
    assert store.worker_running(db)
    worker.shutdown()
    assert store.list_workers(db) == [] and not store.worker_running(db)
    here = socket.gethostname()
    store.beat_worker(db, f"{here}:999999", here, 999999)  # a dead process on this host
    assert not store.worker_running(db)
    store.beat_worker(db, "elsewhere:1", "elsewhere", 1)  # another host: its beat is recent
    assert store.worker_running(db)
    db.conn.execute("update workers set heartbeat_at = '2000-01-01T00:00:00+00:00'")
    db.conn.commit()
    assert not store.worker_running(db)  # a silent worker elsewhere serves no more


def test_the_worker_of_a_train_command_serves_its_run_only(db, home):
    # It used to register as serving the whole queue: a second `visionboard train` (or the
    # dashboard) then believed its run would start, and it waited forever.
    base = {"task": "classification", "model": "m", "dataset": "d"}
    mine, other = store.create_run(db, base, by=ADMIN), store.create_run(db, base, by=ADMIN)
    Worker(home, only_run=mine).announce()
    assert store.list_workers(db)[0]["run_id"] == mine
    assert store.worker_running(db, mine)
    assert not store.worker_running(db, other) and not store.worker_running(db)
    here = socket.gethostname()
    store.beat_worker(db, f"{here}:{os.getppid()}", here, os.getppid())  # a queue worker
    assert store.worker_running(db, other) and store.worker_running(db)


def test_a_run_whose_worker_is_gone_is_orphaned_and_may_be_cancelled_or_resumed(db, home):
    base = {"task": "classification", "model": "m", "dataset": "d"}
    here = socket.gethostname()
    worker = Worker(home)
    worker.announce()
    run_id = store.create_run(db, base, by=ADMIN)
    store.claim_run(db, worker.id, run_id=run_id)
    # Its trainer beat since the claim (an hour ago).
    db.conn.execute("update runs set started_at = '2000-01-01T00:00:00+00:00' where id = ?",
                    [run_id])  # fmt: skip
    db.conn.commit()
    run = store.get_run(db, run_id)
    assert not run["worker_gone"] and store.run_state(run) == "running"
    assert store.state_actions(run) == {"cancel", "rerun", "edit"}
    # Its worker stops beating: within WORKER_PULSE_SECONDS it is gone, for every reader.
    db.conn.execute("update workers set heartbeat_at = '2000-01-01T00:00:00+00:00'")
    db.conn.commit()
    run = store.get_run(db, run_id)
    assert run["worker_gone"] and store.run_state(run) == store.ORPHANED
    assert store.status_label(run) == "running (worker gone)"
    assert store.state_actions(run) == {"cancel", "resume", "rerun", "edit"}
    assert store.run_as_json(db, run_id)["worker_gone"] is True
    with pytest.raises(store.RunStateError, match="cancel it first"):
        store.delete_run(db, run_id, by=ADMIN)
    # Its trainer (no launch recorded: its heartbeat is all there is) still beats: a resume
    # would start a second trainer on the run.
    with pytest.raises(store.TrainerStillRunning, match=f"run {run_id}'s trainer is still"):
        store.resume_run(db, run_id, by=ADMIN)
    store.record_launch(db, run_id, worker.id, "cpu x1", 999999, here)  # a group long gone
    store.resume_run(db, run_id, by=ADMIN)
    assert store.get_run(db, run_id)["status"] == "queued"
    # Cancelling an orphan whose trainer is gone cancels it at once.
    store.claim_run(db, f"{here}:999999", run_id=run_id)
    store.record_launch(db, run_id, f"{here}:999999", "cpu x1", 999999, here)
    store.request_cancel(db, run_id, by=ADMIN)
    run = store.get_run(db, run_id)
    assert run["status"] == "cancelled" and run["finished_at"] and run["trainer_pid"] is None


def test_the_rule_words_name_the_orphan():
    assert store.action_rule("resume") == (
        "only a failed or cancelled run can be resumed (or a running one whose worker is gone)"
    )
    assert store.action_rule("cancel") == "only a queued or running run can be cancelled"
    assert store.action_rule("rerun") == "any run can be re-run"


def test_a_run_too_big_here_waits_for_a_host_that_has_the_gpus(db, home, monkeypatch):
    """Workers on two hosts share the queue: a run needing more GPUs than this one has is left
    to the host whose worker announced enough, and the runs behind it still start here; with
    no such worker it fails with why."""
    launched = []

    def fake_launch(self, run, gpus):
        launched.append((run["id"], gpus))
        self.jobs[run["id"]] = SimpleNamespace(gpus=gpus)

    monkeypatch.setattr(Worker, "launch", fake_launch)
    base = {"task": "classification", "model": "m", "dataset": "d"}
    big = store.create_run(db, {**base, "num_processes": 2}, by=ADMIN)
    small = store.create_run(db, {**base, "num_processes": 1}, by=ADMIN)
    store.beat_worker(db, "host-b:1", "host-b", 1, None, "0,1")  # another host, two GPUs
    worker = Worker(home, devices=[0])
    assert worker.start_next()
    assert launched == [(small, [0])]
    assert store.get_run(db, big)["status"] == "queued"  # host-b's to take
    store.remove_worker(db, "host-b:1")
    worker.jobs.clear()
    assert not worker.start_next()
    assert "needs 2 GPUs" in store.get_run(db, big)["error"]


def test_cpu_runs_on_a_gpu_worker_start_one_at_a_time(db, home, monkeypatch):
    launched = []

    def fake_launch(self, run, gpus):
        launched.append((run["id"], gpus))
        self.jobs[run["id"]] = SimpleNamespace(gpus=gpus)

    monkeypatch.setattr(Worker, "launch", fake_launch)
    base = {"task": "classification", "model": "m", "dataset": "d", "device": "cpu"}
    first = store.create_run(db, base, by=ADMIN)
    second = store.create_run(db, base, by=ADMIN)
    worker = Worker(home, devices=[0, 1])
    assert worker.start_next() and not worker.start_next()
    assert launched == [(first, [])]
    assert store.get_run(db, second)["status"] == "queued"


def test_train_follows_a_run_pinned_here_with_a_worker_of_its_own(db, home, monkeypatch):
    """`visionboard train --on-host` this host: a worker serving the queue on another host
    cannot take the run, so the command starts its own, as for a queue with no worker."""
    import engine.worker
    from engine import cli

    started = []

    class FakeWorker:
        def __init__(self, home, only_run):
            started.append(only_run)
            self.stop_event = SimpleNamespace(set=lambda: None)

        def run(self):
            store.set_status(db, started[-1], "completed")

    looks = []

    def settle(db, run_id):  # a look of follow(); one that never ends is the finding
        looks.append(run_id)
        assert len(looks) < 5, "nothing starts the pinned run"
        return []

    monkeypatch.setattr(engine.worker, "Worker", FakeWorker)
    monkeypatch.setattr(store, "settle_quietly", settle)
    monkeypatch.setenv("VISIONBOARD_HOST", "host-a")
    store.beat_worker(db, "host-b:1", "host-b", 1, None, "0,1")  # serves the queue, elsewhere
    run_id = store.create_run(
        db, {"task": "classification", "model": "m", "dataset": "d"}, by=ADMIN, on_host="host-a"
    )
    assert cli.follow(db, run_id, home) == 0
    assert started == [run_id]


def test_devices_name_gpus_this_host_has():
    from engine.worker import parse_devices

    assert parse_devices("0,1") == [0, 1] and parse_devices("cpu") == []
    assert parse_devices("2,3") == [2, 3]  # no GPU seen here (a test, a driverless host)
    with pytest.raises(ValueError, match="this host has 2 GPU"):
        parse_devices("1,2", present=2)
    with pytest.raises(ValueError, match="expected GPU indices"):
        parse_devices("0,0")


@pytest.mark.timeout(30)
def test_a_stop_signal_landing_inside_the_loops_wait_stops_the_worker(home):
    # SIGTERM's handler runs in the main thread between two bytecodes: maybe inside
    # stop_event.wait(), while it holds the event's lock. Setting the event right there would
    # wait for that lock forever (a worker that never stopped, seen once under load).
    worker = Worker(home)
    with worker.stop_event._cond:  # the lock stop_event.wait() holds around its wait
        worker.stop_on_signal(signal.SIGTERM, None)
        assert not worker.stop_event.is_set()
        assert worker.stopping()  # the loop starts nothing more meanwhile
    assert worker.stop_event.wait(10)
