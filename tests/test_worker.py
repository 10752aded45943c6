"""The worker's queue: claiming, GPUs, the exit it records, liveness and orphans.

(The command line it launches is tested in test_launch.py; faults with real processes in
test_faults.py.)"""

import os
import socket
from types import SimpleNamespace

import pytest

from engine import store
from engine.worker import Worker


def test_recover_settles_runs_no_live_worker_watches(db, home):
    base = {"task": "classification", "model": "m", "dataset": "d"}
    dead_worker = f"{socket.gethostname()}:999999"
    old_beat = "2000-01-01T00:00:00+00:00"

    def running(owner, beat=None, **summary):
        run_id = store.create_run(db, base)
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
        db, {"task": "classification", "model": "m", "dataset": "d", "device": "cuda"}
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
    one = store.create_run(db, {**base, "num_processes": 1})
    two = store.create_run(db, {**base, "num_processes": 2})
    three = store.create_run(db, {**base, "num_processes": 1})
    worker = Worker(home)
    worker.gpus = [0, 1, 2]
    assert worker.start_next() and worker.start_next()
    assert launched == [(one, [0]), (two, [1, 2])]
    assert not worker.start_next()  # no GPU free: run 3 waits in the queue
    assert store.get_run(db, three)["status"] == "queued"
    too_big = store.create_run(db, {**base, "num_processes": 8})
    worker.jobs.clear()
    store.request_cancel(db, three)
    assert not worker.start_next()
    assert "needs 8 GPUs" in store.get_run(db, too_big)["error"]


def test_the_exit_takes_the_trainers_error_from_the_row(db, home):
    worker = Worker(home)
    base = {"task": "classification", "model": "m", "dataset": "d"}

    def ended(code, trainer_error=None):
        run_id = store.create_run(db, base)
        store.claim_run(db, worker.id, run_id=run_id)
        if trainer_error:
            store.record_trainer_error(db, run_id, trainer_error)
        worker.record_end(run_id, code)
        return store.get_run(db, run_id)

    failed = ended(1, "FileNotFoundError: /data/gone")
    assert (failed["status"], failed["error"]) == ("failed", "FileNotFoundError: /data/gone")
    assert ended(1)["error"] == "trainer exited with code 1; see train.log"
    assert ended(-9)["error"] == "trainer killed by signal SIGKILL"
    assert (ended(0)["status"], ended(0)["error"]) == ("completed", None)


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
    mine, other = store.create_run(db, base), store.create_run(db, base)
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
    run_id = store.create_run(db, base)
    store.claim_run(db, worker.id, run_id=run_id)
    run = store.get_run(db, run_id)
    assert not run["worker_gone"] and store.run_state(run) == "running"
    assert store.allowed_actions(run) == {"cancel", "rerun", "edit"}
    # Its worker stops beating: within WORKER_PULSE_SECONDS it is gone, for every reader.
    db.conn.execute("update workers set heartbeat_at = '2000-01-01T00:00:00+00:00'")
    db.conn.commit()
    run = store.get_run(db, run_id)
    assert run["worker_gone"] and store.run_state(run) == store.ORPHANED
    assert store.status_label(run) == "running (worker gone)"
    assert store.allowed_actions(run) == {"cancel", "resume", "rerun", "edit"}
    assert store.run_as_json(db, run_id)["worker_gone"] is True
    with pytest.raises(store.RunStateError, match="cancel it first"):
        store.delete_run(db, run_id)
    # Its trainer (no launch recorded: its heartbeat is all there is) still beats: a resume
    # would start a second trainer on the run.
    with pytest.raises(store.TrainerStillRunning, match=f"run {run_id}'s trainer is still"):
        store.resume_run(db, run_id)
    store.record_launch(db, run_id, "cpu x1", 999999, here)  # a process group long gone
    store.resume_run(db, run_id)
    assert store.get_run(db, run_id)["status"] == "queued"
    # Cancelling an orphan whose trainer is gone cancels it at once.
    store.claim_run(db, f"{here}:999999", run_id=run_id)
    store.record_launch(db, run_id, "cpu x1", 999999, here)
    store.request_cancel(db, run_id)
    run = store.get_run(db, run_id)
    assert run["status"] == "cancelled" and run["finished_at"] and run["trainer_pid"] is None


def test_the_rule_words_name_the_orphan():
    assert store.action_rule("resume") == (
        "only a failed or cancelled run can be resumed (or a running one whose worker is gone)"
    )
    assert store.action_rule("cancel") == "only a queued or running run can be cancelled"
    assert store.action_rule("rerun") == "any run can be re-run"
