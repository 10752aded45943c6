import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from factories import ADMIN

from engine import data_roots, database, store


@pytest.fixture
def db(store_db):
    """Every store test that takes `db` runs on SQLite and on PostgreSQL."""
    return store_db


def config(**kw):
    return {
        "task": "classification",
        "model": "efficientnet_b0",
        "dataset": "digits",  # a name: the store confines only paths (looks_like_path)
        "epochs": 2,
        **kw,
    }


def test_connect_sets_wal_busy_timeout_and_migrates(home):
    db = store.connect(home)
    assert db.journal_mode == "wal"
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == store.BUSY_TIMEOUT_MS
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(store.MIGRATIONS)
    assert {"runs", "metrics", "datasets"} <= set(db.table_names())
    # Reconnecting does not migrate twice.
    again = store.connect(home)
    assert again.execute("PRAGMA user_version").fetchone()[0] == len(store.MIGRATIONS)


def test_create_and_read_run(db):
    run_id = store.create_run(
        db, config(), tags=["b", "a"], by={"username": "ada", "role": "member"}
    )
    run = store.get_run(db, run_id)
    assert run["status"] == "queued"
    assert run["config"]["model"] == "efficientnet_b0"
    assert run["name"] == "efficientnet_b0 on digits"
    assert run["user"] == "ada" and run["tags"] == ["a", "b"]
    assert store.get_run(db, 999) is None


def test_claim_is_atomic_and_in_order(db, home):
    ids = [store.create_run(db, config(), by=ADMIN) for _ in range(6)]
    claimed = []

    def claim():
        conn = store.connect(home)
        while (run := store.claim_run(conn, threading.current_thread().name)) is not None:
            claimed.append(run["id"])

    threads = [threading.Thread(target=claim, name=f"w{i}") for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == ids  # each run claimed exactly once
    assert all(r["status"] == "running" for r in store.list_runs(db))


def test_status_summary_cancel_and_requeue(db):
    run_id = store.create_run(db, config(), by=ADMIN)
    store.claim_run(db, "w")
    store.update_summary(db, run_id, epoch=1, best_metric=0.5)
    store.update_summary(db, run_id, epoch=2)
    assert store.get_run(db, run_id)["summary"] == {"epoch": 2, "best_metric": 0.5}
    store.request_cancel(db, run_id, by=ADMIN)
    assert store.cancel_requested(db, run_id)
    store.set_status(db, run_id, "cancelled")
    run = store.get_run(db, run_id)
    assert run["status"] == "cancelled" and run["finished_at"]
    store.resume_run(db, run_id, by=ADMIN)
    run = store.get_run(db, run_id)
    assert (run["status"], run["resume_requested"], run["cancel_requested"]) == ("queued", 1, 0)
    assert run["finished_at"] is None
    with pytest.raises(ValueError, match="status 'done'"):
        store.set_status(db, run_id, "done")


def test_cancel_of_a_queued_run_is_immediate(db):
    run_id = store.create_run(db, config(), by=ADMIN)
    store.request_cancel(db, run_id, by=ADMIN)
    assert store.get_run(db, run_id)["status"] == "cancelled"
    assert store.claim_run(db, "w") is None


def test_metrics_long_table_and_resume_cleanup(db):
    run_id = store.create_run(db, config(), by=ADMIN)
    store.add_metrics(db, run_id, 1, 1, {"lr": 0.1, "train_loss_step": 2.0})
    store.add_metrics(db, run_id, 2, 1, {"test_accuracy": 0.5})
    store.add_metrics(db, run_id, 3, 2, {"test_accuracy": 0.7, "none": None})
    assert len(store.get_metrics(db, run_id)) == 4
    assert store.metric_names(db, run_id) == ["lr", "test_accuracy", "train_loss_step"]
    store.delete_metrics_after(db, run_id, 1)
    assert [m["epoch"] for m in store.get_metrics(db, run_id, ["test_accuracy"])] == [1]


def test_run_as_json_shape(db):
    run_id = store.create_run(db, config(), by=ADMIN)
    store.update_summary(
        db,
        run_id,
        best_metric=0.9,
        best_epoch=1,
        epochs_trained=2,
        stop_reason="epoch limit",
        global_batch_size=64,
    )
    store.add_metrics(db, run_id, 4, 1, {"test_roc_auc": 0.9})
    data = store.run_as_json(db, run_id)
    assert {"id", "name", "status", "config", "summary", "metrics"} <= set(data)
    assert data["summary"]["global_batch_size"] == 64
    assert data["metrics"] == [{"name": "test_roc_auc", "step": 4, "epoch": 1, "value": 0.9}]


def test_list_filters_tags_notes_delete(db, home):
    a = store.create_run(db, config(), name="alpha", tags=["baseline"], by=ADMIN)
    b = store.create_run(
        db, config(task="detection", model="fasterrcnn_resnet50_fpn"), name="beta", by=ADMIN
    )
    assert [r["id"] for r in store.list_runs(db)] == [b, a]
    assert [r["id"] for r in store.list_runs(db, task="detection")] == [b]
    assert [r["id"] for r in store.list_runs(db, tag="baseline")] == [a]
    assert [r["id"] for r in store.list_runs(db, search="alp")] == [a]
    store.edit_run(db, b, by=ADMIN, tags=["x", " ", "y"])
    assert store.all_tags(db) == ["baseline", "x", "y"]
    store.edit_run(db, a, by=ADMIN, note="lr too high")
    assert store.get_run(db, a)["note"] == "lr too high"
    folder = store.run_dir(a, home)
    (folder / "train.log").write_text("log")
    store.add_metrics(db, a, 1, 1, {"lr": 1})
    store.delete_run(db, a, by=ADMIN)
    assert store.get_run(db, a) is None and not folder.exists()
    assert store.get_metrics(db, a) == []
    store.claim_run(db, "w")
    with pytest.raises(store.RunStateError, match="running"):
        store.delete_run(db, b, by=ADMIN)


def test_datasets_registry(db, home):
    folder = str(data_roots.datasets_dir(home) / "digits")
    Path(folder).mkdir()
    store.register_dataset(
        db, "digits", folder, "imagefolder", "classification", {"images": 10}, by=ADMIN
    )
    assert store.get_dataset(db, "digits")["info"] == {"images": 10}
    assert store.resolve_dataset(db, "digits") == folder
    assert store.resolve_dataset(db, "/other") == "/other"
    store.delete_dataset(db, "digits", by=ADMIN)
    assert store.list_datasets(db) == []


def test_corrupt_json_column_does_not_crash_reads(db):
    run_id = store.create_run(db, config(), by=ADMIN)
    db.conn.execute("update runs set summary = '{broken' where id = ?", [run_id])
    assert store.get_run(db, run_id)["summary"] == {}


def test_busy_database_waits_instead_of_failing(home):
    db = store.connect(home)
    run_id = store.create_run(db, config(), by=ADMIN)
    other = sqlite3.connect(home / store.DB_NAME, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(0.5, other.commit)
    timer.start()
    store.heartbeat(db, run_id)  # blocks until the other writer commits
    timer.join()
    assert store.get_run(db, run_id)["heartbeat_at"]


def test_run_ids_are_never_reused_and_old_databases_migrate(home, monkeypatch):
    monkeypatch.setattr(store, "MIGRATIONS", store.MIGRATIONS[:1])
    old = store.connect(home)  # a database made before migration 2
    # Rows as that version wrote them (today's create_run also writes the audit trail).
    first = old["runs"].insert({"name": "kept", "status": "queued", "user": "ada"}).last_pk
    second = old["runs"].insert({"name": "second", "status": "queued", "user": "ada"}).last_pk
    old.conn.close()
    monkeypatch.undo()
    db = store.connect(home)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(store.MIGRATIONS)
    assert store.get_run(db, first)["name"] == "kept"  # rows survive the migration
    store.delete_run(db, second, by=ADMIN)
    assert store.create_run(db, config(), by=ADMIN) == second + 1


def test_runs_version_reads_the_newest_run_edit_from_an_index(db, monkeypatch):
    # Without the (target_kind, id) index, max(id) walked every audit record of a run.
    run_id = store.create_run(db, config(), by=ADMIN)
    store.edit_run(db, run_id, by=ADMIN, note="n")
    sent = []
    execute = db.execute
    monkeypatch.setattr(db, "execute", lambda sql, *a: sent.append(sql) or execute(sql, *a))
    version = store.runs_version(db)
    monkeypatch.undo()
    newest = store.list_audit(db, by=ADMIN, target_kind="run", limit=1)[0]["id"]
    assert version["edited"] == newest
    [sql] = sent
    if database.dialect(db) is database.SQLITE:
        plan = " | ".join(row[-1] for row in db.execute(f"explain query plan {sql}"))
        assert "SEARCH audit USING COVERING INDEX audit_kind_id (target_kind=?)" in plan, plan
    else:  # a few rows: PostgreSQL would scan them, unless told that scans cost too much
        db.execute("set enable_seqscan = off")
        plan = " | ".join(row[0] for row in db.execute(f"explain {sql}"))
        assert "Index Only Scan Backward using audit_kind_id on audit" in plan, plan


def test_counts_queue_position_labels_and_filter_values(db):
    a = store.create_run(db, config(), name="a", by=ADMIN)
    b = store.create_run(db, config(model="resnet18"), name="b", by=ADMIN)
    c = store.create_run(db, config(), name="c", by=ADMIN)
    store.claim_run(db, "w", run_id=a)
    assert store.count_runs(db) == 3
    assert store.count_runs(db, ("queued", "running")) == 3
    assert store.count_runs(db, "running") == 1
    assert store.runs_ahead(db, c) == 2  # a running, b queued before it
    assert store.run_labels(db, limit=2) == [(c, "c", "queued"), (b, "b", "queued")]
    assert store.distinct_values(db, "model") == ["efficientnet_b0", "resnet18"]
    with pytest.raises(ValueError, match="expected one of model"):
        store.distinct_values(db, "config; drop table runs")


# -- life-cycle -----------------------------------------------------------------------------


def run_in(db, status):
    """A run in `status`, got there the way the worker gets it there."""
    run_id = store.create_run(db, config(), by=ADMIN)
    if status != "queued":
        # A worker beats before it claims (a running run without a live worker is orphaned).
        store.beat_worker(db, "w", socket.gethostname(), os.getpid())
        store.claim_run(db, "w", run_id=run_id)
    if status in store.FINISHED:
        store.set_status(db, run_id, status)
    return run_id


VERBS = {
    "cancel": lambda db, run_id, by=ADMIN: store.request_cancel(db, run_id, by=by),
    "resume": lambda db, run_id, by=ADMIN: store.resume_run(db, run_id, by=by),
    "rerun": lambda db, run_id, by=ADMIN: store.queue_rerun(db, run_id, by=by),
    "edit": lambda db, run_id, by=ADMIN: store.edit_run(db, run_id, by=by, note="edited"),
    "delete": lambda db, run_id, by=ADMIN: store.delete_run(db, run_id, by=by),
}


def test_allowed_actions_per_status(db):
    everywhere = {"rerun", "edit"}
    expected = {
        "queued": everywhere | {"cancel", "delete"},
        "running": everywhere | {"cancel"},
        "completed": everywhere | {"delete"},
        "failed": everywhere | {"resume", "delete"},
        "cancelled": everywhere | {"resume", "delete"},
    }
    for status, actions in expected.items():
        assert store.state_actions(store.get_run(db, run_in(db, status))) == actions, status
    assert set(VERBS) == set(store.ACTIONS)  # every action has a guarded verb


@pytest.mark.parametrize(
    ("action", "status"),
    [
        ("cancel", "completed"),
        ("cancel", "failed"),
        ("cancel", "cancelled"),
        ("resume", "queued"),
        ("resume", "running"),
        ("resume", "completed"),
        ("delete", "running"),
    ],
)
def test_guarded_verbs_refuse_and_say_why(db, home, action, status):
    run_id = run_in(db, status)
    store.add_metrics(db, run_id, 1, 1, {"lr": 0.1})
    (store.run_dir(run_id, home) / "train.log").write_text("log")
    before = store.get_run(db, run_id)
    with pytest.raises(store.RunStateError) as refused:
        VERBS[action](db, run_id)
    error = refused.value
    assert (error.run_id, error.status, error.action) == (run_id, status, action)
    assert error.allowed == store.ACTIONS[action] and status not in error.allowed
    assert str(error).startswith(f"run {run_id} is {status}: only a ")
    # Nothing was written: not the row, not the metrics, not the folder.
    assert store.get_run(db, run_id) == before
    assert len(store.get_metrics(db, run_id)) == 1
    assert (store.run_dir(run_id, home) / "train.log").exists()


def test_refusal_messages_name_the_rule(db):
    completed = run_in(db, "completed")
    with pytest.raises(store.RunStateError, match="only a failed or cancelled run can be resumed"):
        store.resume_run(db, completed, by=ADMIN)
    running = run_in(db, "running")
    with pytest.raises(store.RunStateError, match="can be deleted; cancel it first"):
        store.delete_run(db, running, by=ADMIN)
    with pytest.raises(ValueError, match="action 'pause': expected one of cancel"):
        store.action_rule("pause")


@pytest.mark.parametrize("action", sorted(VERBS))
def test_verbs_on_a_missing_run_say_it_is_not_found(db, action):
    with pytest.raises(store.RunNotFound, match="run 99 not found"):
        VERBS[action](db, 99)


def test_cancel_of_a_running_run_asks_the_trainer(db):
    run_id = run_in(db, "running")
    store.request_cancel(db, run_id, by=ADMIN)
    run = store.get_run(db, run_id)
    assert (run["status"], run["cancel_requested"]) == ("running", 1)


def test_rerun_queues_a_copy_and_edit_works_in_any_status(db):
    for status in store.STATUSES:
        run_id = run_in(db, status)
        store.edit_run(db, run_id, by=ADMIN, name=f"was {status}")
        store.edit_run(db, run_id, by=ADMIN, tags=["t"])
        # The copy is the re-runner's (here another admin), not the first run's owner's.
        new_id = store.queue_rerun(db, run_id, by={"username": "bo", "role": "admin"})
        copy = store.get_run(db, new_id)
        assert (copy["status"], copy["name"], copy["tags"], copy["user"]) == (
            "queued",
            f"was {status} (re-run of #{run_id})",
            ["t"],
            "bo",
        )
        assert copy["config"] == store.get_run(db, run_id)["config"]


def test_rerun_names_its_source_once_and_twins_are_found(db):
    # "Re-run" copied the name as is: two runs of one name, nothing saying which came first.
    run_id = run_in(db, "completed")
    store.edit_run(db, run_id, by=ADMIN, name="baseline")
    first = store.queue_rerun(db, run_id, by=ADMIN)
    assert store.get_run(db, first)["name"] == f"baseline (re-run of #{run_id})"
    second = store.queue_rerun(db, first, by=ADMIN)
    assert store.get_run(db, second)["name"] == f"baseline (re-run of #{first})"
    config = store.get_run(db, run_id)["config"]
    assert store.active_twins(db, config) == [first, second]  # queued; the source is done
    assert store.active_twins(db, {**config, "lr": 0.5}) == []


def test_group_alive_reads_a_running_leader_alone_and_else_every_process(monkeypatch):
    # stop_trainers polls it 20 times a second: it read every process's stat on each call.
    read = []
    real = store._proc_stat
    monkeypatch.setattr(store, "_proc_stat", lambda pid: read.append(int(pid)) or real(pid))
    leader = subprocess.Popen(["sleep", "30"], start_new_session=True)
    # A group whose leader exited (a zombie until reaped) while its child sleeps on.
    shell = subprocess.Popen(["sh", "-c", "sleep 30 & echo $!"], stdout=subprocess.PIPE,
                             text=True, start_new_session=True)  # fmt: skip
    child = int(shell.stdout.readline())
    try:
        assert store.group_alive(leader.pid) and read == [leader.pid]
        deadline = time.monotonic() + 10
        while store._proc_stat(shell.pid)[0] != "Z":
            assert time.monotonic() < deadline, "the shell did not exit"
            time.sleep(0.01)
        read.clear()
        assert store.group_alive(shell.pid) and child in read and len(read) > 2
        os.kill(child, signal.SIGKILL)
        while store.group_alive(shell.pid):  # only its zombie leader is left
            assert time.monotonic() < deadline, "a group of a zombie alone is not running"
            time.sleep(0.01)
        leader.kill()
        leader.wait()
        assert not store.group_alive(leader.pid)
    finally:
        leader.kill()  # Popen's kill: never a pid reused after its wait
        leader.wait()
        with contextlib.suppress(ProcessLookupError):  # the unreaped shell holds the group id
            os.killpg(shell.pid, signal.SIGKILL)
        shell.wait()


def test_trainer_error_is_its_own_column_and_each_attempt_starts_clean(db):
    run_id = run_in(db, "running")
    store.record_trainer_error(db, run_id, "RuntimeError: CUDA out of memory")
    run = store.get_run(db, run_id)
    assert run["trainer_error"] == "RuntimeError: CUDA out of memory"
    assert run["error"] is None  # the worker copies it when it records the exit
    store.set_status(db, run_id, "failed", error=run["trainer_error"])
    store.resume_run(db, run_id, by=ADMIN)
    claimed = store.claim_run(db, "w2")
    assert claimed["trainer_error"] is None and claimed["error"] is None
    assert claimed["heartbeat_at"] == claimed["started_at"]


def test_workers_beat_and_leave(db):
    store.beat_worker(db, "host:1", "host", 1)
    first = store.list_workers(db)
    assert [(w["name"], w["host"], w["pid"]) for w in first] == [("host:1", "host", 1)]
    db.conn.execute("update workers set heartbeat_at = '2000-01-01T00:00:00+00:00'")
    db.conn.commit()
    store.beat_worker(db, "host:1", "host", 1)
    again = store.list_workers(db)[0]
    assert again["started_at"] == first[0]["started_at"]
    assert again["heartbeat_at"] > "2000-01-01T00:00:00+00:00"  # the beat moved
    store.remove_worker(db, "host:1")
    assert store.list_workers(db) == []


def test_the_store_confines_dataset_paths_under_every_verb(db, home, tmp_path, monkeypatch):
    """register_dataset and queueing (create_run, queue_rerun) check the data roots
    themselves, so a script calling the store cannot skip the forms' check."""
    monkeypatch.setenv(data_roots.ENV, "")  # only <home>/datasets
    inside = data_roots.datasets_dir(home) / "set"
    inside.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    for path in (outside, home, home / "visionboard.db", "/etc", inside / ".." / ".." / "1"):
        with pytest.raises(data_roots.PathRefused, match="does not exist inside the data roots"):
            store.register_dataset(db, "x", str(path), "csv", "classification", by=ADMIN)
        with pytest.raises(data_roots.PathRefused, match="does not exist inside the data roots"):
            store.create_run(db, config(dataset=str(path)), by=ADMIN)
    for value in ("~/secret", "./secret", "../secret", "sub/secret"):
        assert store.looks_like_path(value)
        with pytest.raises(data_roots.PathRefused):
            store.create_run(db, config(dataset=value), by=ADMIN)
    assert store.list_datasets(db) == [] and store.list_runs(db) == []
    store.register_dataset(db, "set", str(inside), "imagefolder", "classification", by=ADMIN)
    run_id = store.create_run(db, config(dataset=str(inside)), by=ADMIN)
    store.create_run(db, config(dataset="set"), by=ADMIN)  # a registered name
    store.create_run(db, config(dataset="digits"), by=ADMIN)  # a name: confined when read
    inside.rename(inside.with_name("moved"))  # a rerun queues the same path again: checked again
    with pytest.raises(data_roots.PathRefused):
        store.queue_rerun(db, run_id, by=ADMIN)


def test_a_run_pinned_to_a_host_is_claimed_there_only(db):
    pinned = store.create_run(db, config(), name="pinned", by=ADMIN, on_host="gpu-b")
    free = store.create_run(db, config(), by=ADMIN)
    assert store.claim_run(db, "gpu-a:1", host="gpu-a")["id"] == free  # the pinned one skipped
    assert store.claim_run(db, "gpu-a:1", host="gpu-a") is None
    assert store.claim_run(db, "gpu-a:1", run_id=pinned, host="gpu-a") is None
    claimed = store.claim_run(db, "gpu-b:7", host="gpu-b")
    assert (claimed["id"], claimed["on_host"]) == (pinned, "gpu-b")
    store.set_status(db, pinned, "completed")
    again = store.queue_rerun(db, pinned, by=ADMIN)  # the same run again: on the same host
    assert store.get_run(db, again)["on_host"] == "gpu-b"
    audit = store.list_audit(db, by=ADMIN, action="queue", target_id=str(pinned))
    assert audit[0]["detail"]["on_host"] == "gpu-b"
    store.beat_worker(db, "gpu-a:1", "gpu-a", 1, None, "0,1")  # another host: its pulse counts
    assert store.worker_running(db, None, "gpu-a") and not store.worker_running(db, None, "gpu-b")
    assert store.list_workers(db)[0]["devices"] == "0,1"
    assert store.worker_hosts(db) == ["gpu-a"]
