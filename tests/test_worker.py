import os
import socket
from types import SimpleNamespace

from engine import store
from engine.worker import Worker, launch_command, worker_running


def run_row(**cfg):
    return {
        "id": 7,
        "resume_requested": 0,
        "config": {"num_processes": 1, "mixed_precision": "no", **cfg},
    }


def test_cpu_single_process_uses_cpu_flag(home):
    cmd, env = launch_command(run_row(), home, [], 29500)
    assert "--cpu" in cmd and "--multi_gpu" not in cmd
    assert cmd[cmd.index("--num_processes") + 1] == "1"
    assert cmd[-4:] == ["--run-id", "7", "--home", str(home)]
    assert env["CUDA_VISIBLE_DEVICES"] == ""


def test_cpu_several_processes_use_multi_gpu_which_starts_them_on_gloo(home):
    cmd, _ = launch_command(run_row(num_processes=2), home, [], 29500)
    # `--cpu --num_processes 2` silently starts one process.
    assert "--multi_gpu" in cmd and "--cpu" not in cmd


def test_gpus_are_handed_to_the_run(home):
    cmd, env = launch_command(run_row(num_processes=2, mixed_precision="bf16"), home, [2, 3], 29500)
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert "--multi_gpu" in cmd and cmd[cmd.index("--mixed_precision") + 1] == "bf16"
    resumed, _ = launch_command({**run_row(), "resume_requested": 1}, home, [0], 29500)
    assert resumed[-1] == "--resume"


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
    Worker(home).recover()
    status = {i: store.get_run(db, i)["status"] for i in range(1, orphan_failed + 1)}
    assert status[silent] == "failed"
    assert "stopped; resume it" in store.get_run(db, silent)["error"]
    assert status[stale] == "failed"
    assert "no heartbeat" in store.get_run(db, stale)["error"]
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
    assert not worker_running(db)
    worker = Worker(home)
    worker.announce()
    assert [w["name"] for w in store.list_workers(db)] == [worker.id]
    assert worker_running(db)
    worker.shutdown()
    assert store.list_workers(db) == [] and not worker_running(db)
    here = socket.gethostname()
    store.beat_worker(db, f"{here}:999999", here, 999999)  # a dead process on this host
    assert not worker_running(db)
    store.beat_worker(db, "elsewhere:1", "elsewhere", 1)  # another host: its beat is recent
    assert worker_running(db)
    db.conn.execute("update workers set heartbeat_at = '2000-01-01T00:00:00+00:00'")
    db.conn.commit()
    assert not worker_running(db)  # a silent worker elsewhere serves no more
