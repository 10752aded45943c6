"""All SQL of VisionBoard: schema migrations, runs and their life-cycle, workers, metrics
and datasets. No other module writes SQL.

One SQLite file under the data directory, in WAL mode with a busy timeout, so the dashboard,
the worker and the trainer can use it at once. One writer per column of `runs`:

- the dashboard and the CLI write config, name, tags and note, and the user's requests
  cancel_requested and resume_requested (create_run, rename_run, set_tags, set_note,
  request_cancel, resume_run);
- the worker writes status, started_at, finished_at, worker, devices, trainer_pid,
  trainer_host and error (claim_run, set_status, record_launch); at the exit it copies the
  trainer's error into `error`;
- the trainer, main process only, writes the metrics rows, heartbeat_at, summary and
  trainer_error (add_metrics, heartbeat, update_summary, record_trainer_error).

Two hand-overs cross these lines, both here. `status` moves only through this module's
verbs: the worker's claim (queued -> running) and exit (running -> completed, failed,
cancelled), an orphan's end recorded by whoever looks (settle_run), and two user transitions
guarded by ACTIONS on runs no worker holds: cancelling a queued run (-> cancelled,
finished_at) and resuming a failed or cancelled one or an orphan (-> queued, clearing error
and finished_at). And claim_run opens each attempt by setting heartbeat_at to the claim time
and clearing trainer_error, trainer_pid and the summary's stop_reason, so a resumed run is
judged by neither the pulse, the error, the process nor the ending of its last attempt. Each worker writes its own row of `workers` (beat_worker),
saying what it serves: the queue, or the one run of a `visionboard train`.

Liveness is decided here too, for every reader alike. A running run whose worker is gone (its
row silent for WORKER_PULSE_SECONDS, or its pid dead on this host) is "orphaned": get_run and
list_runs say so (`worker_gone`), it may be cancelled or resumed, and whoever looks (the
dashboard, the CLI, any worker) settles it with settle_run: the ending its trainer wrote is
recorded, or, once its trainer is gone too, why it stopped. The worker records each attempt's
trainer process group and host (record_launch), so a resume is refused while that group lives:
one trainer per run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from engine import disk
from engine.run_folder import RunFolder

DB_NAME = "visionboard.db"
BUSY_TIMEOUT_MS = 30_000
STATUSES = ("queued", "running", "completed", "failed", "cancelled")
FINISHED = ("completed", "failed", "cancelled")
JSON_COLUMNS = ("config", "summary", "tags")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def home_dir(home: str | Path | None = None) -> Path:
    """The data directory: `home`, else $VISIONBOARD_HOME, else ./runs."""
    path = Path(home or os.environ.get("VISIONBOARD_HOME") or "runs")
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def run_dir(run_id: int, home: str | Path | None = None) -> Path:
    """A run's folder, created if missing (engine.run_folder names the files in it)."""
    return RunFolder(home_dir(home), run_id).create().path


def connect(home: str | Path | None = None) -> sqlite_utils.Database:
    """Open (and migrate) the database of a data directory."""
    path = home_dir(home) / DB_NAME
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    db = sqlite_utils.Database(conn)
    db.home = path.parent  # type: ignore[attr-defined]
    if db.journal_mode != "wal":
        db.enable_wal()
    migrate(db)
    return db


# -- migrations ---------------------------------------------------------------------------


def _m001_initial(db: sqlite_utils.Database) -> None:
    db["runs"].create(
        {
            "id": int,
            "name": str,
            "task": str,
            "model": str,
            "dataset": str,
            "status": str,
            "config": str,
            "summary": str,
            "user": str,
            "tags": str,
            "note": str,
            "error": str,
            "created_at": str,
            "started_at": str,
            "finished_at": str,
            "heartbeat_at": str,
            "cancel_requested": int,
            "resume_requested": int,
            "worker": str,
            "devices": str,
        },
        pk="id",
        defaults={
            "status": "queued",
            "cancel_requested": 0,
            "resume_requested": 0,
            "summary": "{}",
            "tags": "[]",
            "note": "",
        },
        not_null={"status"},
    )
    db["runs"].create_index(["status"])
    db["metrics"].create(
        {"run_id": int, "name": str, "step": int, "epoch": int, "value": float},
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["metrics"].create_index(["run_id", "name", "step"])
    db["datasets"].create(
        {"name": str, "path": str, "format": str, "task": str, "created_at": str, "info": str},
        pk="name",
    )


def _m002_run_ids_never_reused(db: sqlite_utils.Database) -> None:
    """AUTOINCREMENT: a deleted run's id is never given to a new run (scripts hold ids)."""
    sql = db.execute("select sql from sqlite_master where name = 'runs'").fetchone()[0]
    sql = re.sub(r'CREATE TABLE ["\[]?runs["\]]?', "CREATE TABLE runs_new", sql, count=1)
    sql = re.sub(r'(["\[]?id["\]]? INTEGER PRIMARY KEY)', r"\1 AUTOINCREMENT", sql, count=1)
    db.execute(sql)
    db.execute("insert into runs_new select * from runs")
    db.execute("drop table runs")
    db.execute("alter table runs_new rename to runs")
    db["runs"].create_index(["status"], if_not_exists=True)


def _m003_trainer_error_and_workers(db: sqlite_utils.Database) -> None:
    """The trainer's error gets its own column (it used to be `<run>/error.txt`), and each
    worker's pulse a row (it used to be `<home>/worker.json`)."""
    db["runs"].add_column("trainer_error", str)
    db["workers"].create(
        {"name": str, "host": str, "pid": int, "started_at": str, "heartbeat_at": str},
        pk="name",
    )


def _m004_trainer_process_and_served_run(db: sqlite_utils.Database) -> None:
    """Each attempt's trainer process group and host (so a resume can tell whether the last
    attempt still runs), and what each worker serves (`run_id`: NULL is the queue, else the
    one run of a `visionboard train`)."""
    db["runs"].add_column("trainer_pid", int)
    db["runs"].add_column("trainer_host", str)
    db["workers"].add_column("run_id", int)


MIGRATIONS = [
    _m001_initial,
    _m002_run_ids_never_reused,
    _m003_trainer_error_and_workers,
    _m004_trainer_process_and_served_run,
]


def migrate(db: sqlite_utils.Database) -> None:
    """Apply the migrations this database has not seen yet, each in its own transaction."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    for number, step in enumerate(MIGRATIONS, start=1):
        if number <= version:
            continue
        with db.conn:
            db.conn.execute("BEGIN IMMEDIATE")
            # Another process may have migrated while we waited for the lock.
            if db.execute("PRAGMA user_version").fetchone()[0] >= number:
                continue
            step(db)
            db.conn.execute(f"PRAGMA user_version = {number}")


# -- runs ---------------------------------------------------------------------------------


def _decode(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    row = dict(row)
    for col in JSON_COLUMNS:
        if col in row:
            try:
                row[col] = json.loads(row[col]) if row[col] else ({} if col != "tags" else [])
            except json.JSONDecodeError:
                row[col] = {} if col != "tags" else []
    return row


def create_run(
    db, config: dict[str, Any], name: str = "", user: str = "", tags: Iterable[str] = ()
) -> int:
    """Queue a run; `config` is a RunConfig.resolved() dict. Returns the run id."""
    dataset = str(config.get("dataset", ""))
    if not name:
        name = f"{config.get('model')} on {Path(dataset).name or dataset}"
    table = db["runs"]
    table.insert(
        {
            "name": name,
            "task": config.get("task"),
            "model": config.get("model"),
            "dataset": dataset,
            "status": "queued",
            "config": json.dumps(config),
            "summary": "{}",
            "user": user or "",
            "tags": json.dumps(sorted(set(tags))),
            "note": "",
            "created_at": now(),
            "cancel_requested": 0,
            "resume_requested": 0,
        }
    )
    return table.last_pk


def get_run(db, run_id: int) -> dict[str, Any] | None:
    """A run, with `worker_gone` (see orphaned runs below)."""
    rows = list(db.query("select * from runs where id = ?", [run_id]))
    return _with_liveness(db, [_decode(rows[0])])[0] if rows else None


def list_runs(
    db,
    status: str | Iterable[str] | None = None,
    task: str | None = None,
    model: str | None = None,
    tag: str | None = None,
    search: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Runs, newest first, filtered by status, task, model, tag and a name search (each
    with `worker_gone`)."""
    where, args = [], []
    if status:
        statuses = [status] if isinstance(status, str) else list(status)
        where.append(f"status in ({','.join('?' * len(statuses))})")
        args += statuses
    for col, value in (("task", task), ("model", model)):
        if value:
            where.append(f"{col} = ?")
            args.append(value)
    if tag:
        where.append("exists (select 1 from json_each(runs.tags) where value = ?)")
        args.append(tag)
    if search:
        where.append("name like ?")
        args.append(f"%{search}%")
    sql = "select * from runs"
    if where:
        sql += " where " + " and ".join(where)
    sql += " order by id desc"
    if limit:
        sql += f" limit {int(limit)}"
    return _with_liveness(db, [_decode(r) for r in db.query(sql, args)])


def count_runs(db, status: str | Iterable[str] | None = None) -> int:
    statuses = [status] if isinstance(status, str) else list(status or [])
    sql = "select count(*) from runs"
    if statuses:
        sql += f" where status in ({','.join('?' * len(statuses))})"
    return db.execute(sql, statuses).fetchone()[0]


def runs_ahead(db, run_id: int) -> int:
    """Runs that go before a queued run: those running and those queued earlier."""
    sql = "select count(*) from runs where status = 'running' or (status = 'queued' and id < ?)"
    return db.execute(sql, [run_id]).fetchone()[0]


def run_labels(db, limit: int = 500) -> list[tuple[int, str, str]]:
    """(id, name, status) of the newest runs, without decoding their JSON columns."""
    sql = "select id, name, status from runs order by id desc limit ?"
    return [tuple(r) for r in db.execute(sql, [limit]).fetchall()]


FILTER_COLUMNS = ("model", "task", "user", "dataset", "status")


def distinct_values(db, column: str) -> list[str]:
    """Distinct non-empty values of a runs column (for filters)."""
    if column not in FILTER_COLUMNS:
        raise ValueError(f"column {column!r}: expected one of {', '.join(FILTER_COLUMNS)}")
    sql = f"select distinct {column} from runs where {column} is not null and {column} != ''"
    return [r[0] for r in db.execute(sql + f" order by {column}").fetchall()]


def claim_run(db, worker: str, run_id: int | None = None) -> dict[str, Any] | None:
    """Atomically take the oldest queued run (or `run_id`) and mark it running (worker only).
    This opens an attempt: the trainer's heartbeat_at starts at the claim, its error, process
    and stop reason empty."""
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        sql = "select id from runs where status = 'queued'"
        args: list[Any] = []
        if run_id is not None:
            sql += " and id = ?"
            args.append(run_id)
        row = db.conn.execute(sql + " order by id limit 1", args).fetchone()
        if row is None:
            return None
        stamp = now()
        # The last attempt's stop reason goes too: an orphan's ending is read from it.
        db.conn.execute(
            "update runs set status = 'running', worker = ?, started_at = ?, heartbeat_at = ?, "
            "finished_at = null, error = null, trainer_error = null, trainer_pid = null, "
            "trainer_host = null, summary = json_remove(coalesce(summary, '{}'), "
            "'$.stop_reason') where id = ?",
            [worker, stamp, stamp, row[0]],
        )
    return get_run(db, row[0])


def set_status(db, run_id: int, status: str, error: str | None = None, **fields: Any) -> None:
    """Record where a run the worker holds ended up (worker only)."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r}: expected one of {', '.join(STATUSES)}")
    values = {"status": status, "error": error, **fields}
    if status in FINISHED:
        values["finished_at"] = now()
    with db.conn:
        db["runs"].update(run_id, values)


def record_launch(db, run_id: int, devices: str, pid: int, host: str) -> None:
    """What the worker started (worker only): the devices it gave the run, e.g. `cuda:0,cuda:1`
    or `cpu x2`, and the launcher's pid, which is also the process group of every trainer
    process of this attempt, on `host`."""
    with db.conn:
        db.conn.execute(
            "update runs set devices = ?, trainer_pid = ?, trainer_host = ? where id = ?",
            [devices, int(pid), host, run_id],
        )


# -- life-cycle: which status allows which user action ------------------------------------

# A running run whose worker is gone: not a stored status, but a state read from the workers'
# pulse (run_state). It is as resumable as a failed run (while its trainer lives, resume_run
# refuses with the trainer's pid) and as cancellable as a running one.
ORPHANED = "orphaned"
STATES = (*STATUSES, ORPHANED)

# The one rule of what a user may do to a run in each state. The dashboard and the CLI show
# the actions allowed_actions() gives; the verbs below check the same table inside their
# UPDATE (`... WHERE id = ? AND status IN (...)`) and raise RunStateError when it refuses.
ACTIONS: dict[str, tuple[str, ...]] = {
    # a queued run stops at once, a running one at a step; an orphan's flag is read by its
    # trainer, and once that is gone the run is cancelled
    "cancel": ("queued", "running", ORPHANED),
    "resume": ("failed", "cancelled", ORPHANED),  # from its checkpoint; a completed run is re-run
    "rerun": STATES,  # a new run with the same config
    "edit": STATES,  # name, tags and note (and "edit and re-run", which starts a new run)
    "delete": ("queued", *FINISHED),  # a running run's trainer still writes: cancel it first
}
DONE = {
    "cancel": "cancelled",
    "resume": "resumed",
    "rerun": "re-run",
    "edit": "edited",
    "delete": "deleted",
}


class RunNotFound(KeyError):
    def __init__(self, run_id: int):
        super().__init__(run_id)
        self.run_id = run_id

    def __str__(self) -> str:
        return f"run {self.run_id} not found"


class RunStateError(ValueError):
    """An action the run's state does not allow; says the run, its state and the rule."""

    def __init__(self, run_id: int, status: str, action: str):
        self.run_id, self.status, self.action = run_id, status, action
        self.allowed = ACTIONS[action]
        hint = "; cancel it first" if action == "delete" and status == "running" else ""
        super().__init__(f"run {run_id} is {STATE_WORDS.get(status, status)}: "
                         f"{action_rule(action)}{hint}")  # fmt: skip


class TrainerStillRunning(RunStateError):
    """A resume while the last attempt's trainer lives: one trainer per run, ever."""

    def __init__(self, run: dict[str, Any]):
        self.run_id, self.status, self.action = run["id"], run_state(run), "resume"
        self.allowed = ACTIONS["resume"]
        self.pid, self.host = run["trainer_pid"], run["trainer_host"]
        where = f"pid {self.pid} on {self.host}" if self.pid else f"on {self.host or 'its host'}"
        ValueError.__init__(
            self,
            f"run {self.run_id}'s trainer is still running ({where}): cancel the run and let "
            "it stop, or stop that process, before resuming",
        )


STATE_WORDS = {ORPHANED: "running but its worker is gone"}


def action_rule(action: str) -> str:
    """The rule in words, e.g. 'only a failed or cancelled run can be resumed'."""
    if action not in ACTIONS:
        raise ValueError(f"action {action!r}: expected one of {', '.join(ACTIONS)}")
    allowed = ACTIONS[action]
    if allowed == STATES:
        return f"any run can be {DONE[action]}"
    statuses = [s for s in allowed if s != ORPHANED]
    words = statuses[0] if len(statuses) == 1 else f"{', '.join(statuses[:-1])} or {statuses[-1]}"
    rule = f"only a {words} run can be {DONE[action]}"
    if ORPHANED in allowed and "running" not in allowed:
        rule += " (or a running one whose worker is gone)"
    return rule


def allowed_actions(run: dict[str, Any]) -> set[str]:
    """The actions a run's state allows (which buttons the dashboard shows)."""
    state = run_state(run)
    return {action for action, states in ACTIONS.items() if state in states}


def check_action(run: dict[str, Any], action: str) -> None:
    """Raise RunStateError when the run's state does not allow `action`."""
    state = run_state(run)
    if state not in ACTIONS[action]:
        raise RunStateError(run["id"], state, action)


def _refuse(db, run_id: int, action: str):
    """Raise why a guarded write matched no row: no such run, or a status that forbids it."""
    row = db.conn.execute("select status from runs where id = ?", [run_id]).fetchone()
    if row is None:
        raise RunNotFound(run_id)
    raise RunStateError(run_id, row[0], action)


def _marks(values: tuple[str, ...]) -> str:
    return ",".join("?" * len(values))


def _update_if_allowed(db, run_id: int, action: str, values: dict[str, Any]) -> None:
    """One UPDATE that checks the status and writes, so no other writer slips in between."""
    allowed = ACTIONS[action]
    sets = ", ".join(f"{column} = ?" for column in values)
    with db.conn:
        cursor = db.conn.execute(
            f"update runs set {sets} where id = ? and status in ({_marks(allowed)})",
            [*values.values(), run_id, *allowed],
        )
        if cursor.rowcount == 0:
            _refuse(db, run_id, action)


def request_cancel(db, run_id: int) -> None:
    """Cancel a queued run at once (no worker has it); ask a running run's trainer to stop.
    An orphan whose trainer is gone is cancelled at once (settle_run reads the flag)."""
    # The two branches are the two statuses of ACTIONS["cancel"] (an orphan is running).
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        cursor = db.conn.execute(
            "update runs set status = 'cancelled', finished_at = ?, cancel_requested = 1 "
            "where id = ? and status = 'queued'",
            [now(), run_id],
        )
        if cursor.rowcount == 0:
            cursor = db.conn.execute(
                "update runs set cancel_requested = 1 where id = ? and status = 'running'",
                [run_id],
            )
        if cursor.rowcount == 0:
            _refuse(db, run_id, "cancel")
    settle_run(db, run_id)


def resume_run(db, run_id: int) -> None:
    """Queue a failed or cancelled run (or an orphan) again; the trainer continues from its
    checkpoint. Refused with TrainerStillRunning while the last attempt's trainer lives."""
    settle_run(db, run_id)  # an orphan whose trainer finished is completed, not resumed
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        run = get_run(db, run_id)
        if run is None:
            raise RunNotFound(run_id)
        check_action(run, "resume")
        if trainer_alive(run):
            raise TrainerStillRunning(run)
        db.conn.execute(
            "update runs set status = 'queued', resume_requested = 1, cancel_requested = 0, "
            "error = null, finished_at = null where id = ?",
            [run_id],
        )


def queue_rerun(db, run_id: int, user: str = "") -> int:
    """Queue a new run with a run's config, name and tags. Returns the new run's id."""
    run = get_run(db, run_id)
    if run is None:
        raise RunNotFound(run_id)
    check_action(run, "rerun")
    return create_run(db, run["config"], name=run["name"], user=user, tags=run["tags"])


def cancel_requested(db, run_id: int) -> bool:
    row = db.execute("select cancel_requested from runs where id = ?", [run_id]).fetchone()
    return bool(row and row[0])


def heartbeat(db, run_id: int) -> None:
    """The trainer is alive (trainer only; claim_run sets the first beat of an attempt)."""
    with db.conn:
        db.conn.execute("update runs set heartbeat_at = ? where id = ?", [now(), run_id])


def record_trainer_error(db, run_id: int, message: str) -> None:
    """Why the trainer failed (trainer only); the worker copies it into `error` at the exit."""
    with db.conn:
        db.conn.execute("update runs set trainer_error = ? where id = ?", [message, run_id])


def update_summary(db, run_id: int, **fields: Any) -> dict[str, Any]:
    """Merge fields into the run's summary JSON (trainer only)."""
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        row = db.conn.execute("select summary from runs where id = ?", [run_id]).fetchone()
        summary = json.loads(row[0] or "{}") if row else {}
        summary.update(fields)
        db.conn.execute(
            "update runs set summary = ?, heartbeat_at = ? where id = ?",
            [json.dumps(summary), now(), run_id],
        )
    return summary


def set_tags(db, run_id: int, tags: Iterable[str]) -> None:
    clean = sorted({t.strip() for t in tags if t and t.strip()})
    _update_if_allowed(db, run_id, "edit", {"tags": json.dumps(clean)})


def set_note(db, run_id: int, note: str) -> None:
    _update_if_allowed(db, run_id, "edit", {"note": note})


def rename_run(db, run_id: int, name: str) -> None:
    _update_if_allowed(db, run_id, "edit", {"name": name})


def delete_run(db, run_id: int) -> None:
    """Delete a run's rows and its folder. A running run must be cancelled first."""
    allowed = ACTIONS["delete"]
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        db.conn.execute("delete from metrics where run_id = ?", [run_id])
        cursor = db.conn.execute(
            f"delete from runs where id = ? and status in ({_marks(allowed)})",
            [run_id, *allowed],
        )
        if cursor.rowcount == 0:
            _refuse(db, run_id, "delete")  # rolls the metrics back too
    shutil.rmtree(RunFolder(db.home, run_id).path, ignore_errors=True)


def all_tags(db) -> list[str]:
    rows = db.execute(
        "select distinct value from runs, json_each(runs.tags) order by value"
    ).fetchall()
    return [r[0] for r in rows]


# -- workers ------------------------------------------------------------------------------


def beat_worker(db, name: str, host: str, pid: int, run_id: int | None = None) -> None:
    """A worker says it serves this data directory's queue, or only run `run_id` (worker only;
    first beat adds its row)."""
    stamp = now()
    with db.conn:
        db.conn.execute(
            "insert into workers (name, host, pid, started_at, heartbeat_at, run_id) "
            "values (?, ?, ?, ?, ?, ?) "
            "on conflict (name) do update set heartbeat_at = excluded.heartbeat_at",
            [name, host, int(pid), stamp, stamp, run_id],
        )


def remove_worker(db, name: str) -> None:
    """A worker that stops takes its row with it."""
    with db.conn:
        db.conn.execute("delete from workers where name = ?", [name])


def list_workers(db) -> list[dict[str, Any]]:
    return list(db.query("select * from workers order by started_at"))


# -- liveness: workers, trainers, orphaned runs ---------------------------------------------

# A worker beats every poll (1 s); one silent this long no longer serves. On this host a dead
# pid says so at once; on another host the beat is all there is.
WORKER_PULSE_SECONDS = 30.0
# A trainer beats every few seconds while it trains (not while it loads data and builds its
# model); with no pid to check (another host), one silent this long is gone.
STALE_SECONDS = float(os.environ.get("VISIONBOARD_STALE_SECONDS", 300))
# The trainer's stop_reason -> the status recorded when its worker never saw the exit.
ENDINGS = {
    "epoch limit": "completed",
    "early stop": "completed",
    "cancelled": "cancelled",
    "failed": "failed",
}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_alive(pgid: int) -> bool:
    """Whether any process of a process group still runs (a zombie left unreaped by an init
    that does not reap is not running)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not sys.platform.startswith("linux"):
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def stop_group(pgid: int, grace: float = 10.0) -> None:
    """Stop every process of a group: SIGTERM, then SIGKILL what is left after `grace` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not group_alive(pgid):
                return
            time.sleep(0.05)


def _age(stamp: str | None) -> float:
    """Seconds since an ISO time; very large when there is none."""
    if not stamp:
        return 1e9
    return (datetime.now(UTC) - datetime.fromisoformat(stamp)).total_seconds()


def worker_alive(worker: dict[str, Any] | None) -> bool:
    """Whether a `workers` row belongs to a live worker."""
    if worker is None or _age(worker["heartbeat_at"]) > WORKER_PULSE_SECONDS:
        return False
    return worker["host"] != socket.gethostname() or pid_alive(worker["pid"])


def worker_running(db, run_id: int | None = None) -> bool:
    """Whether a live worker would start queued runs (or run `run_id`): one serving the queue,
    or one a `visionboard train` started for that run alone."""
    return any(
        worker_alive(w) and (w["run_id"] is None or w["run_id"] == run_id) for w in list_workers(db)
    )


def _with_liveness(db, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mark each run `worker_gone`: running, but the worker that holds it is not alive."""
    workers = None
    for run in runs:
        run["worker_gone"] = False
        if run["status"] == "running":
            if workers is None:
                workers = {w["name"]: w for w in list_workers(db)}
            run["worker_gone"] = not worker_alive(workers.get(run["worker"]))
    return runs


def run_state(run: dict[str, Any]) -> str:
    """The run's status, or ORPHANED for a running run whose worker is gone."""
    return ORPHANED if run.get("worker_gone") else run["status"]


def status_label(run: dict[str, Any]) -> str:
    """The status as people read it: 'running (worker gone)' for an orphan."""
    return "running (worker gone)" if run.get("worker_gone") else run["status"]


def trainer_alive(run: dict[str, Any]) -> bool:
    """Whether the last attempt's trainer may still run: its process group on this host, else
    (another host, or no launch recorded yet) a running run's recent heartbeat."""
    if run.get("trainer_pid") and run.get("trainer_host") == socket.gethostname():
        return group_alive(run["trainer_pid"])
    return run["status"] == "running" and _age(run.get("heartbeat_at")) < STALE_SECONDS


def settle_run(db, run_id: int) -> str | None:
    """Record where an orphaned run ended (anyone may call it; a no-op for any other run):
    the ending its trainer wrote, else once its trainer is gone, cancelled when that was
    asked, failed with why otherwise. Returns the status recorded, if any."""
    run = get_run(db, run_id)
    if run is None or not run["worker_gone"]:
        return None  # the usual case, read without taking the write lock
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        run = get_run(db, run_id)  # again, under the lock: another reader may have settled it
        if run is None or not run["worker_gone"]:
            return None
        ended = ENDINGS.get(run["summary"].get("stop_reason"))
        alive = trainer_alive(run)
        error = None
        if ended:
            status, error = ended, run["trainer_error"] if ended == "failed" else None
        elif alive:
            return None  # it trains on: its ending is recorded when it comes
        elif run["cancel_requested"]:
            status = "cancelled"
        else:
            status = "failed"
            error = run["trainer_error"] or (
                f"its worker ({run['worker']}) stopped and its trainer is gone "
                f"(last heartbeat {_age(run['heartbeat_at']):.0f} s ago)"
                + disk.disk_full_note(RunFolder(db.home, run_id).path)
                + "; resume it to continue"
            )
        # A group known to be gone is forgotten, so a later resume never checks a reused pid.
        db.conn.execute(
            "update runs set status = ?, error = ?, finished_at = ?, trainer_pid = ? "
            "where id = ? and status = 'running' and worker = ?",
            [status, error, now(), run["trainer_pid"] if alive else None, run_id, run["worker"]],
        )
    return status


def settle_orphans(db) -> list[int]:
    """settle_run for every orphaned run; the ids of those settled."""
    return [
        run["id"]
        for run in list_runs(db, status="running")
        if run["worker_gone"] and settle_run(db, run["id"])
    ]


# -- metrics ------------------------------------------------------------------------------


def add_metrics(db, run_id: int, step: int, epoch: int, values: dict[str, float]) -> None:
    rows = [
        (run_id, name, int(step), int(epoch), float(value))
        for name, value in values.items()
        if value is not None
    ]
    with db.conn:
        db.conn.executemany(
            "insert into metrics (run_id, name, step, epoch, value) values (?, ?, ?, ?, ?)", rows
        )


def delete_metrics_after(db, run_id: int, epoch: int) -> None:
    """Drop metric rows of epochs after `epoch` (a resumed run redoes them)."""
    with db.conn:
        db.conn.execute("delete from metrics where run_id = ? and epoch > ?", [run_id, epoch])


def get_metrics(db, run_id: int, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    sql = "select name, step, epoch, value from metrics where run_id = ?"
    args: list[Any] = [run_id]
    if names:
        names = list(names)
        sql += f" and name in ({','.join('?' * len(names))})"
        args += names
    return list(db.query(sql + " order by step, rowid", args))


def metric_names(db, run_id: int) -> list[str]:
    rows = db.execute("select distinct name from metrics where run_id = ? order by name", [run_id])
    return [r[0] for r in rows.fetchall()]


def run_as_json(db, run_id: int) -> dict[str, Any] | None:
    """The public shape of `visionboard runs show ID --json`."""
    run = get_run(db, run_id)
    if run is None:
        return None
    keys = ("id", "name", "status", "task", "model", "dataset", "user", "tags", "note", "error")
    times = ("created_at", "started_at", "finished_at", "heartbeat_at")
    out = {k: run[k] for k in keys}
    out["worker_gone"] = run["worker_gone"]  # running, but no live worker holds it
    out.update({k: run[k] for k in times})
    out["config"] = run["config"]
    out["summary"] = run["summary"]
    out["metrics"] = get_metrics(db, run_id)
    return out


# -- datasets -----------------------------------------------------------------------------


def register_dataset(
    db, name: str, path: str, format: str, task: str, info: dict | None = None
) -> None:
    with db.conn:
        db["datasets"].upsert(
            {
                "name": name,
                "path": str(path),
                "format": format,
                "task": task,
                "created_at": now(),
                "info": json.dumps(info or {}),
            },
            pk="name",
        )


def list_datasets(db) -> list[dict[str, Any]]:
    rows = list(db.query("select * from datasets order by name"))
    for r in rows:
        r["info"] = json.loads(r["info"] or "{}")
    return rows


def get_dataset(db, name: str) -> dict[str, Any] | None:
    rows = [r for r in list_datasets(db) if r["name"] == name]
    return rows[0] if rows else None


def delete_dataset(db, name: str) -> None:
    with db.conn:
        db.conn.execute("delete from datasets where name = ?", [name])


def resolve_dataset(db, name_or_path: str) -> str:
    """A registered dataset's path, or the argument itself when it names no registered one."""
    found = get_dataset(db, name_or_path)
    return found["path"] if found else name_or_path
