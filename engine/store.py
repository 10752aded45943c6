"""All SQL of VisionBoard: schema migrations, runs and their life-cycle, workers, metrics
and datasets. No other module writes SQL.

One SQLite file under the data directory, in WAL mode with a busy timeout, so the dashboard,
the worker and the trainer can use it at once. One writer per column of `runs`:

- the dashboard and the CLI write config, name, tags and note, and the user's requests
  cancel_requested and resume_requested (create_run, rename_run, set_tags, set_note,
  request_cancel, resume_run);
- the worker writes status, started_at, finished_at, worker, devices and error (claim_run,
  set_status, set_devices); at the exit it copies the trainer's error into `error`;
- the trainer, main process only, writes the metrics rows, heartbeat_at, summary and
  trainer_error (add_metrics, heartbeat, update_summary, record_trainer_error).

Two hand-overs cross these lines, both here. `status` moves only through this module's
verbs: the worker's claim (queued -> running) and exit (running -> completed, failed,
cancelled), and two user transitions guarded by ACTIONS on runs no worker holds: cancelling a
queued run (-> cancelled, finished_at) and resuming a failed or cancelled one (-> queued,
clearing error and finished_at). And claim_run opens each attempt by setting heartbeat_at to
the claim time and clearing trainer_error, so a resumed run is judged by neither the pulse nor
the error of its last attempt. Each worker writes its own row of `workers` (beat_worker).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

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


MIGRATIONS = [_m001_initial, _m002_run_ids_never_reused, _m003_trainer_error_and_workers]


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
    rows = list(db.query("select * from runs where id = ?", [run_id]))
    return _decode(rows[0]) if rows else None


def list_runs(
    db,
    status: str | Iterable[str] | None = None,
    task: str | None = None,
    model: str | None = None,
    tag: str | None = None,
    search: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Runs, newest first, filtered by status, task, model, tag and a name search."""
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
    return [_decode(r) for r in db.query(sql, args)]


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
    This opens an attempt: the trainer's heartbeat_at starts at the claim, its error empty."""
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
        db.conn.execute(
            "update runs set status = 'running', worker = ?, started_at = ?, heartbeat_at = ?, "
            "finished_at = null, error = null, trainer_error = null where id = ?",
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


def set_devices(db, run_id: int, devices: str) -> None:
    """What the worker gave the run, e.g. `cuda:0,cuda:1` or `cpu x2` (worker only)."""
    with db.conn:
        db.conn.execute("update runs set devices = ? where id = ?", [devices, run_id])


# -- life-cycle: which status allows which user action ------------------------------------

# The one rule of what a user may do to a run in each status. The dashboard and the CLI show
# the actions allowed_actions() gives; the verbs below check the same table inside their
# UPDATE (`... WHERE id = ? AND status IN (...)`) and raise RunStateError when it refuses.
ACTIONS: dict[str, tuple[str, ...]] = {
    "cancel": ("queued", "running"),  # a queued run stops at once, a running one at a step
    "resume": ("failed", "cancelled"),  # from its checkpoint; a completed run is re-run
    "rerun": STATUSES,  # a new run with the same config
    "edit": STATUSES,  # name, tags and note (and "edit and re-run", which starts a new run)
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
    """An action the run's status does not allow; says the run, its status and the rule."""

    def __init__(self, run_id: int, status: str, action: str):
        self.run_id, self.status, self.action = run_id, status, action
        self.allowed = ACTIONS[action]
        hint = "; cancel it first" if action == "delete" and status == "running" else ""
        super().__init__(f"run {run_id} is {status}: {action_rule(action)}{hint}")


def action_rule(action: str) -> str:
    """The rule in words, e.g. 'only a failed or cancelled run can be resumed'."""
    if action not in ACTIONS:
        raise ValueError(f"action {action!r}: expected one of {', '.join(ACTIONS)}")
    allowed = ACTIONS[action]
    if allowed == STATUSES:
        return f"any run can be {DONE[action]}"
    words = allowed[0] if len(allowed) == 1 else f"{', '.join(allowed[:-1])} or {allowed[-1]}"
    return f"only a {words} run can be {DONE[action]}"


def allowed_actions(run: dict[str, Any]) -> set[str]:
    """The actions a run's status allows (which buttons the dashboard shows)."""
    return {action for action, statuses in ACTIONS.items() if run["status"] in statuses}


def check_action(run: dict[str, Any], action: str) -> None:
    """Raise RunStateError when the run's status does not allow `action`."""
    if run["status"] not in ACTIONS[action]:
        raise RunStateError(run["id"], run["status"], action)


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
    """Cancel a queued run at once (no worker has it); ask a running run's trainer to stop."""
    # The two branches are the two statuses of ACTIONS["cancel"].
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


def resume_run(db, run_id: int) -> None:
    """Queue a failed or cancelled run again; the trainer continues from its checkpoint."""
    _update_if_allowed(
        db,
        run_id,
        "resume",
        {
            "status": "queued",
            "resume_requested": 1,
            "cancel_requested": 0,
            "error": None,
            "finished_at": None,
        },
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


def beat_worker(db, name: str, host: str, pid: int) -> None:
    """A worker says it serves this data directory (worker only; first beat adds its row)."""
    stamp = now()
    with db.conn:
        db.conn.execute(
            "insert into workers (name, host, pid, started_at, heartbeat_at) "
            "values (?, ?, ?, ?, ?) "
            "on conflict (name) do update set heartbeat_at = excluded.heartbeat_at",
            [name, host, int(pid), stamp, stamp],
        )


def remove_worker(db, name: str) -> None:
    """A worker that stops takes its row with it."""
    with db.conn:
        db.conn.execute("delete from workers where name = ?", [name])


def list_workers(db) -> list[dict[str, Any]]:
    return list(db.query("select * from workers order by started_at"))


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
