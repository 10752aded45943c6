"""All SQL of VisionBoard: schema migrations, runs and their life-cycle, workers, metrics
and datasets. No other module writes SQL (engine/database.py runs it on either database).

One SQLite file under the data directory, in WAL mode with a busy timeout, so the dashboard,
the worker and the trainer can use it at once; or, for workers on several hosts, one
PostgreSQL database ($VISIONBOARD_DB), the same queries and migrations. One writer per column
of `runs`:

- the dashboard and the CLI write config, name, tags and note, and the user's requests
  cancel_requested and resume_requested (create_run, edit_run, request_cancel,
  resume_run);
- the worker writes status, started_at, finished_at, worker, devices, trainer_pid,
  trainer_host and error (claim_run, set_status, record_launch, record_exit), each only on a
  run it still holds (`... WHERE status = 'running' AND worker = ?`), so a late ending never
  overwrites the next attempt; at the exit record_exit copies the trainer's error into `error`;
- the trainer, main process only, writes the metrics rows, heartbeat_at, summary and
  trainer_error (add_metrics, heartbeat, update_summary, record_trainer_error); every trainer
  process records itself in the run folder (RunFolder.record_trainer), as torchrun starts
  each one outside the launcher's process group.

Two hand-overs cross these lines, both here. `status` moves only through this module's
verbs: the worker's claim (queued -> running) and exit (running -> completed, failed,
cancelled: record_exit), an orphan's end recorded by whoever looks (settle_run; by the same
rule, _exit_status: the trainer's own ending first), and two user transitions
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
launcher process group and host (record_launch) and each trainer process records itself, so a
resume is refused while any of them lives (trainer_alive): one trainer per run.

Who may do what is decided here too: RIGHTS says what each role may do to what it owns and
to what others own (a run is its queuer's, a dataset its registrar's), and every user verb
takes the acting user (`by`), checks it before the run's state (PermissionDenied), and writes
what it did to the `audit` table in the same transaction, so every path (the dashboard, the
CLI, a later API) obeys one rule and leaves one trail.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from engine import choices, data_roots, database, disk, passwords
from engine.database import sqlite_utils  # loaded without pandas: engine.database says why
from engine.home import home_dir, host_name
from engine.run_folder import LOG, RunFolder

DB_NAME = "visionboard.db"
BUSY_TIMEOUT_MS = database.BUSY_TIMEOUT_MS
STATUSES = ("queued", "running", "completed", "failed", "cancelled")
FINISHED = ("completed", "failed", "cancelled")
JSON_COLUMNS = ("config", "summary", "tags")


# Hosts sharing a PostgreSQL store write and compare stamps on the database server's clock
# (its offset from this host's clock is measured at connect), so a host whose clock is off by
# a minute neither takes the others' live workers for gone nor keeps its dead ones alive. One
# host on SQLite reads its own clock (offset 0).
_clock_offset = timedelta(0)


def _clock() -> datetime:
    return datetime.now(UTC) + _clock_offset


def now() -> str:
    return _clock().isoformat(timespec="seconds")


def run_dir(run_id: int, home: str | Path | None = None) -> Path:
    """A run's folder, created if missing (engine.run_folder names the files in it)."""
    return RunFolder(home_dir(home), run_id).create().path


def connect(home: str | Path | None = None, url: str | None = None):
    """Open (and migrate) the store of a data directory: the PostgreSQL database at `url` or
    $VISIONBOARD_DB when one is set (every process of a team, on every host, says the same),
    else the SQLite file in the data directory. The one place that decides."""
    path = home_dir(home)
    db = database.connect(database.configured_url(url), path / DB_NAME, path)
    if db.url:
        _measure_clock(db)
    migrate(db)
    return db


def _measure_clock(db) -> None:
    """Set this process's offset to the database server's clock (see _clock_offset)."""
    global _clock_offset
    before = datetime.now(UTC)
    server = database.server_time(db)
    after = datetime.now(UTC)
    _clock_offset = server - (before + (after - before) / 2)


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
    """AUTOINCREMENT: a deleted run's id is never given to a new run (scripts hold ids). (A
    PostgreSQL identity never gives an id twice: nothing to do there.)"""
    if database.dialect(db) is not database.SQLITE:
        return
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


def _m005_users(db: sqlite_utils.Database) -> None:
    """People: built-in accounts (an argon2 hash of the password) and identities from the
    team's OIDC provider (no password here), and the sign-in sessions of built-in accounts
    (only a hash of each browser's token)."""
    db["users"].create(
        {
            "username": str,
            "role": str,
            "password_hash": str,
            "disabled": int,
            "source": str,
            "email": str,
            "created_at": str,
        },
        pk="username",
        not_null={"role", "disabled", "source"},
        defaults={"disabled": 0, "source": "local", "email": ""},
    )
    db["sessions"].create(
        {"token_hash": str, "username": str, "created_at": str, "expires_at": str},
        pk="token_hash",
        foreign_keys=[("username", "users", "username")],
    )
    db["sessions"].create_index(["username"])


def _m006_ownership_audit(db: sqlite_utils.Database) -> None:
    """Who registered each dataset and imported each model's weights (runs say who queued them
    in `user`), and the audit trail: who did what to which run, dataset, weights or user."""
    db["datasets"].add_column("added_by", str)
    db["weights"].create(
        {"model": str, "path": str, "source": str, "added_by": str, "added_at": str}, pk="model"
    )
    # AUTOINCREMENT: a record's id is never given to another, even after pruning.
    db.execute(
        f"create table audit (id {database.dialect(db).autoincrement_pk}, at text not null, "
        "username text not null, action text not null, target_kind text not null, "
        "target_id text not null, detail text not null default '{}')"
    )
    db["audit"].create_index(["username"])
    db["audit"].create_index(["target_kind", "target_id"])


def _m007_api_tokens(db) -> None:
    """Per-user API tokens: only the SHA-256 of each token is kept (like sessions); `id` is
    the token's public name (listed, revoked by it). `local_admin`: a token of the single
    local admin of a server without accounts (no users row), good only while it has none."""
    db.execute(
        "create table api_tokens (id text primary key, token_hash text not null unique, "
        "username text not null, name text not null default '', local_admin integer not null "
        "default 0, created_at text not null, last_used_at text, revoked_at text)"
    )
    db.execute("create index api_tokens_username on api_tokens (username)")


def _m008_hosts(db) -> None:
    """Workers on several hosts: the devices each worker serves (`0,1`, or `cpu`), and the host
    a run is pinned to (NULL: the first free worker anywhere)."""
    db.execute("alter table workers add column devices text")
    db.execute("alter table runs add column on_host text")


def _m009_audit_kind_id(db) -> None:
    """runs_version's newest audit record of a run (`max(id) ... where target_kind = 'run'`)
    read from one index entry instead of a scan of the whole trail."""
    db.execute("create index audit_kind_id on audit (target_kind, id)")


MIGRATIONS = [
    _m001_initial,
    _m002_run_ids_never_reused,
    _m003_trainer_error_and_workers,
    _m004_trainer_process_and_served_run,
    _m005_users,
    _m006_ownership_audit,
    _m007_api_tokens,
    _m008_hosts,
    _m009_audit_kind_id,
]


def migrate(db) -> None:
    """Apply the migrations this database has not seen yet, each in its own transaction."""
    database.migrate(db, MIGRATIONS)


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
    db,
    config: dict[str, Any],
    name: str = "",
    tags: Iterable[str] = (),
    *,
    by: dict[str, Any],
    on_host: str | None = None,
) -> int:
    """Queue a run for `by` (a member or an admin), who owns it; `config` is a
    RunConfig.resolved() dict. `on_host`: only a worker on that host may take it (None: the
    first free worker). Returns the run id."""
    return _queue_run(db, config, name, tags, by, "queue", {}, on_host)


def _queue_run(
    db, config, name, tags, by, action: str, detail: dict[str, Any], on_host: str | None = None
) -> int:
    check_permission(by, "queue")
    on_host = (on_host or "").strip() or None
    if on_host:
        detail = {**detail, "on_host": on_host}
    dataset = str(config.get("dataset", ""))
    if looks_like_path(dataset) and get_dataset(db, dataset) is None:
        data_roots.confine(dataset, db.home, what="datasets")  # PathRefused: one message
    if not name:
        name = f"{config.get('model')} on {Path(dataset).name or dataset}"
    row = {
        "name": name,
        "task": config.get("task"),
        "model": config.get("model"),
        "dataset": dataset,
        "status": "queued",
        "config": json.dumps(config),
        "summary": "{}",
        "user": by["username"],  # the owner is who queues it, never a name typed in a form
        "tags": json.dumps(sorted(set(tags))),
        "note": "",
        "created_at": now(),
        "cancel_requested": 0,
        "resume_requested": 0,
        "on_host": on_host,
    }
    columns = ", ".join(f'"{column}"' for column in row)
    with db.conn:
        cursor = db.conn.execute(
            f"insert into runs ({columns}) values ({_marks(tuple(row))}) returning id",
            list(row.values()),
        )
        run_id = cursor.fetchone()[0]
        _audit(db, by, action, "run", run_id, {"name": name, **detail})
    return run_id


def looks_like_path(value: str) -> bool:
    """Whether a run's dataset value is a path (confined to the data roots when queued) rather
    than a dataset name. A bare word is a name: the submit makes every path absolute
    (preflight.resolve_paths), and whatever a name resolves to is confined again when read
    (engine.data.load_splits)."""
    separators = [os.sep] + ([os.altsep] if os.altsep else [])
    return value.startswith(("~", ".")) or any(sep in value for sep in separators)


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
    user: str | None = None,
    dataset: str | None = None,
) -> list[dict[str, Any]]:
    """Runs, newest first, filtered by status, task, model, tag, user, dataset and a name
    search (each with `worker_gone`)."""
    where, args = [], []
    if status:
        statuses = [status] if isinstance(status, str) else list(status)
        where.append(f"status in ({','.join('?' * len(statuses))})")
        args += statuses
    for col, value in (("task", task), ("model", model), ("user", user), ("dataset", dataset)):
        if value:
            where.append(f"{col} = ?")
            args.append(value)
    if tag:
        tags = database.dialect(db).json_values("runs.tags")
        where.append(f"exists (select 1 from {tags} where value = ?)")
        args.append(tag)
    if search:  # any case, as SQLite's LIKE (PostgreSQL's minds the case)
        where.append("lower(name) like lower(?)")
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


RUNS_VERSION_PARTS = ("runs", "newest", "queued", "running", "completed", "failed",
                      "cancel_requested", "started", "finished", "heartbeat", "edited")  # fmt: skip


def runs_version(db) -> dict[str, Any]:
    """A token that changes when any user queues, starts, cancels, resumes, finishes, deletes,
    renames, tags or notes a run, or a running one reports progress (its heartbeat; edits
    through the latest audit record): one small aggregate, so a page polling it redraws only
    when something changed. Compare tokens with ==."""
    sql = (
        "select count(*), max(id), count(case when status = 'queued' then 1 end), "
        "count(case when status = 'running' then 1 end), "
        "count(case when status = 'completed' then 1 end), "
        "count(case when status = 'failed' then 1 end), "
        "count(case when cancel_requested != 0 then 1 end), "
        "max(started_at), max(finished_at), max(heartbeat_at), "
        "(select max(id) from audit where target_kind = 'run') from runs"
    )
    return dict(zip(RUNS_VERSION_PARTS, db.execute(sql).fetchone()))


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


def claim_run(
    db, worker: str, run_id: int | None = None, host: str | None = None
) -> dict[str, Any] | None:
    """Atomically take the oldest queued run (or `run_id`) and mark it running (worker only);
    with `host`, only a run pinned to that host or to none. Of workers claiming at once, on
    any host, each run goes to one: SQLite lets one writer in (BEGIN IMMEDIATE), PostgreSQL
    locks the row and the others skip it (FOR UPDATE SKIP LOCKED), without waiting.
    This opens an attempt: the trainer's heartbeat_at starts at the claim, its error, process
    and stop reason empty."""
    row_lock = database.dialect(db).claim_lock
    with db.conn:
        if not row_lock:
            db.conn.execute("BEGIN IMMEDIATE")
        sql = "select id, summary from runs where status = 'queued'"
        args: list[Any] = []
        if run_id is not None:
            sql += " and id = ?"
            args.append(run_id)
        if host is not None:
            sql += " and (on_host is null or on_host = ?)"
            args.append(host)
        row = db.conn.execute(sql + " order by id limit 1" + row_lock, args).fetchone()
        if row is None:
            return None
        stamp = now()
        # The last attempt's stop reason goes too: an orphan's ending is read from it.
        summary = _decode({"summary": row[1]})["summary"]
        summary.pop("stop_reason", None)
        claimed = db.conn.execute(
            "update runs set status = 'running', worker = ?, started_at = ?, heartbeat_at = ?, "
            "finished_at = null, error = null, trainer_error = null, trainer_pid = null, "
            "trainer_host = null, summary = ? where id = ? and status = 'queued'",
            [worker, stamp, stamp, json.dumps(summary), row[0]],
        )
        if claimed.rowcount == 0:
            return None  # taken meanwhile
    RunFolder(db.home, row[0]).clear_trainers()  # the last attempt's processes, if any
    return get_run(db, row[0])


def set_status(
    db, run_id: int, status: str, error: str | None = None, worker: str | None = None, **fields
) -> bool:
    """Record where a run the worker holds ended up (worker only). With `worker` (as the
    worker always writes) it lands only while that worker still holds the running run: a late
    ending must never overwrite the next attempt, which another worker may have claimed after
    a settle and a resume. Returns whether it was written."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r}: expected one of {', '.join(STATUSES)}")
    values = {"status": status, "error": error, **fields}
    if status in FINISHED:
        values["finished_at"] = now()
    sql = f"update runs set {', '.join(f'{k} = ?' for k in values)} where id = ?"
    args = [*values.values(), run_id]
    if worker is not None:
        sql += " and status = 'running' and worker = ?"
        args.append(worker)
    with db.conn:
        return db.conn.execute(sql, args).rowcount > 0


def record_launch(db, run_id: int, worker: str, devices: str, pid: int, host: str) -> bool:
    """What the worker started (worker only): the devices it gave the run, e.g. `cuda:0,cuda:1`
    or `cpu x2`, and the launcher's pid and process group on `host` (each trainer process
    records itself too: RunFolder.record_trainer). Only on a run that worker still holds;
    returns whether it was written."""
    with db.conn:
        return (
            db.conn.execute(
                "update runs set devices = ?, trainer_pid = ?, trainer_host = ? "
                "where id = ? and status = 'running' and worker = ?",
                [devices, int(pid), host, run_id, worker],
            ).rowcount
            > 0
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


def check_action(run: dict[str, Any], action: str) -> None:
    """Raise RunStateError when the run's state does not allow `action`."""
    state = run_state(run)
    if state not in ACTIONS[action]:
        raise RunStateError(run["id"], state, action)


# -- who may do what: roles and ownership ---------------------------------------------------

# Besides the run actions of ACTIONS: what creates something new (the one who creates it owns
# it), what changes a dataset, and what only admins do.
CREATE_ACTIONS = ("queue", "add_dataset", "import_weights")
DATASET_ACTIONS = ("edit_dataset", "delete_dataset")
ADMIN_ACTIONS = ("manage_users", "read_audit")
ALL_ACTIONS = (*ACTIONS, *CREATE_ACTIONS, *DATASET_ACTIONS, *ADMIN_ACTIONS)
OWNER_ACTIONS = (*ACTIONS, *CREATE_ACTIONS, *DATASET_ACTIONS)

# The one rule of who may do what, beside ACTIONS (what a run's state allows): for each role,
# what it may do to what it owns (or creates) and to what others own. A run belongs to the
# user who queued it, a dataset to the one who registered it. Every guarded verb takes the
# acting user (`by`) and checks this before the state, so the dashboard, the CLI and any
# later API obey the same rule; allowed_actions() gives both rules at once for the buttons.
RIGHTS: dict[str, dict[str, tuple[str, ...]]] = {
    "admin": {"own": ALL_ACTIONS, "others": ALL_ACTIONS},
    "member": {"own": OWNER_ACTIONS, "others": ()},
    "viewer": {"own": (), "others": ()},
}
choices.check_implemented("role", choices.ROLES, RIGHTS)

ACTION_WORDS = {
    "rerun": "re-run",
    "queue": "queue runs",
    "add_dataset": "register datasets",
    "import_weights": "import weights",
    "edit_dataset": "re-register",
    "delete_dataset": "remove",
    "manage_users": "manage users",
    "read_audit": "read the audit trail",
}

# The server itself, when it acts on no one's behalf (it registers the sample datasets).
SERVER_USER = {"username": "visionboard", "role": "admin"}


# Not a PermissionError: that is an OSError, which file handling catches and would swallow.
class PermissionDenied(Exception):
    """An action the acting user's role or ownership does not allow; names the user, the role,
    the action, and the owner of what it was aimed at."""

    def __init__(self, user: dict[str, Any] | None, action: str, owner: str | None = None,
                 target: str = ""):  # fmt: skip
        user = user or {}
        self.username, self.role = user.get("username") or "", user.get("role") or ""
        self.action, self.owner, self.target = action, owner, target
        who = f"{self.username or 'nobody'} ({self.role or 'no role'})"
        what = ACTION_WORDS.get(action, action) + (f" {target}" if target else "")
        if target and owner is not None:
            what += f" (owned by {owner or 'nobody'})"
        if not user:
            why = "nobody is signed in"
        elif user.get("disabled"):
            why = "the account is disabled"
        elif self.role not in RIGHTS:
            why = f"role {self.role!r} is none of {', '.join(RIGHTS)}"
        elif action in RIGHTS[self.role]["own"]:  # allowed on their own: this is someone else's
            why = f"{self.role}s act on their own runs and datasets only"
        elif RIGHTS[self.role]["own"] or action in ADMIN_ACTIONS:
            why = f"only admins may {ACTION_WORDS.get(action, action)}"
        else:
            why = f"{self.role}s only read"
        super().__init__(f"{who} may not {what}: {why}")


def may(user: dict[str, Any] | None, action: str, owner: str | None = None) -> bool:
    """Whether `user` ({"username", "role", ...}) may take `action` on something `owner` owns
    (None: something new, which the user would own). A disabled account may do nothing."""
    if action not in ALL_ACTIONS:
        raise ValueError(f"action {action!r}: expected one of {', '.join(ALL_ACTIONS)}")
    if not user or user.get("disabled") or user.get("role") not in RIGHTS:
        return False
    # An unowned thing (a run from before sign-in, owner "") is nobody's: admins only.
    own = owner is None or (bool(owner) and owner == user.get("username"))
    return action in RIGHTS[user["role"]]["own" if own else "others"]


def check_permission(
    user: dict[str, Any] | None, action: str, owner: str | None = None, target: str = ""
) -> None:
    """Raise PermissionDenied unless `user` may take `action` (see may())."""
    if not may(user, action, owner):
        raise PermissionDenied(user, action, owner, target)


def state_actions(run: dict[str, Any]) -> set[str]:
    """The actions a run's state allows, whoever asks (ACTIONS)."""
    state = run_state(run)
    return {action for action, states in ACTIONS.items() if state in states}


def allowed_actions(run: dict[str, Any], user: dict[str, Any] | None) -> set[str]:
    """The actions `user` may take on `run` now (which buttons to show): its state's rule and
    the user's role and ownership rule."""
    return {action for action in state_actions(run) if may(user, action, run.get("user") or "")}


def _check_run_permission(db, run_id: int, action: str, by: dict[str, Any] | None) -> None:
    """Raise RunNotFound, or PermissionDenied unless `by` may take `action` on the run (a run's
    owner never changes, so reading it before the guarded write leaves no gap)."""
    row = db.conn.execute("select user from runs where id = ?", [run_id]).fetchone()
    if row is None:
        raise RunNotFound(run_id)
    check_permission(by, action, row[0] or "", f"run {run_id}")


# -- audit trail ----------------------------------------------------------------------------


def _audit(
    db, by: dict[str, Any] | None, action: str, kind: str, target: Any, detail: dict | None = None
) -> None:
    """Record who did what to what, inside the transaction of the verb that did it (so the
    trail holds every change made through the store, and none that was rolled back). A
    command-line user names the OS account too ("os_user"): its name may be VISIONBOARD_USER."""
    detail = dict(detail or {})
    if (by or {}).get("os_user"):
        detail["os_user"] = by["os_user"]
    db.conn.execute(
        "insert into audit (at, username, action, target_kind, target_id, detail) "
        "values (?, ?, ?, ?, ?, ?)",
        [now(), (by or {}).get("username") or "", action, kind, str(target),
         json.dumps(detail, default=str)],
    )  # fmt: skip


AUDIT_FILTERS = ("username", "action", "target_kind", "target_id")
AUDIT_TARGET_KINDS = ("run", "dataset", "weights", "user")


def list_audit(
    db,
    *,
    by: dict[str, Any] | None,
    since: str | None = None,
    limit: int | None = 1000,
    **filters: str | None,
) -> list[dict[str, Any]]:
    """The audit trail, newest first (admins only), filtered by username, action, target_kind
    and target_id (exact), and by time (`since`, an ISO time)."""
    check_permission(by, "read_audit")
    where, args = [], []
    for column, value in filters.items():
        if column not in AUDIT_FILTERS:
            raise ValueError(f"filter {column!r}: expected one of {', '.join(AUDIT_FILTERS)}")
        if value:
            where.append(f"{column} = ?")
            args.append(str(value))
    if since:
        where.append("at >= ?")
        args.append(since)
    sql = "select * from audit" + (" where " + " and ".join(where) if where else "")
    sql += " order by id desc" + (f" limit {int(limit)}" if limit else "")
    rows = list(db.query(sql, args))
    for row in rows:
        row["detail"] = json.loads(row["detail"] or "{}")
    return rows


def audit_values(db, column: str) -> list[str]:
    """Distinct values of an audit column (for the Admin page's filters)."""
    if column not in AUDIT_FILTERS:
        raise ValueError(f"column {column!r}: expected one of {', '.join(AUDIT_FILTERS)}")
    sql = f"select distinct {column} from audit where {column} != '' order by {column}"
    return [r[0] for r in db.execute(sql).fetchall()]


def _refuse(db, run_id: int, action: str):
    """Raise why a guarded write matched no row: no such run, or a status that forbids it."""
    row = db.conn.execute("select status from runs where id = ?", [run_id]).fetchone()
    if row is None:
        raise RunNotFound(run_id)
    raise RunStateError(run_id, row[0], action)


def _marks(values: tuple[str, ...]) -> str:
    return ",".join("?" * len(values))


def _update_if_allowed(
    db, run_id: int, action: str, values: dict[str, Any], by: dict[str, Any] | None
) -> None:
    """One UPDATE that checks the status and writes, so no other writer slips in between;
    the values that changed go to the audit trail."""
    allowed = ACTIONS[action]
    sets = ", ".join(f"{column} = ?" for column in values)
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        _check_run_permission(db, run_id, action, by)
        old = db.conn.execute(
            f"select {', '.join(values)} from runs where id = ?", [run_id]
        ).fetchone()
        cursor = db.conn.execute(
            f"update runs set {sets} where id = ? and status in ({_marks(allowed)})",
            [*values.values(), run_id, *allowed],
        )
        if cursor.rowcount == 0:
            _refuse(db, run_id, action)
        changed = {k: v for (k, v), was in zip(values.items(), old) if v != was}
        if changed:
            if "tags" in changed:
                changed["tags"] = json.loads(changed["tags"])
            _audit(db, by, action, "run", run_id, changed)


def request_cancel(db, run_id: int, *, by: dict[str, Any]) -> None:
    """Cancel a queued run at once (no worker has it); ask a running run's trainer to stop.
    An orphan whose trainer is gone is cancelled at once (settle_run reads the flag)."""
    # The two branches are the two statuses of ACTIONS["cancel"] (an orphan is running).
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        _check_run_permission(db, run_id, "cancel", by)
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
        _audit(db, by, "cancel", "run", run_id)
    settle_run(db, run_id)


def resume_run(db, run_id: int, *, by: dict[str, Any]) -> None:
    """Queue a failed or cancelled run (or an orphan) again; the trainer continues from its
    checkpoint. Refused with TrainerStillRunning while the last attempt's trainer lives."""
    _check_run_permission(db, run_id, "resume", by)  # a refusal changes nothing, not even this:
    settle_run(db, run_id)  # an orphan whose trainer finished is completed, not resumed
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        run = get_run(db, run_id)
        if run is None:
            raise RunNotFound(run_id)
        check_action(run, "resume")
        if trainer_alive(db, run):
            raise TrainerStillRunning(run)
        db.conn.execute(
            "update runs set status = 'queued', resume_requested = 1, cancel_requested = 0, "
            "error = null, finished_at = null where id = ?",
            [run_id],
        )
        _audit(db, by, "resume", "run", run_id)


def queue_rerun(db, run_id: int, *, by: dict[str, Any]) -> int:
    """Queue a new run with a run's config, name and tags, owned by `by`. Returns its id."""
    run = get_run(db, run_id)
    if run is None:
        raise RunNotFound(run_id)
    check_permission(by, "rerun", run["user"] or "", f"run {run_id}")
    check_action(run, "rerun")
    name = rerun_name(run["name"], run_id)
    detail = {"of": run_id}
    return _queue_run(db, run["config"], name, run["tags"], by, "rerun", detail, run["on_host"])


RERUN_SUFFIX = re.compile(r" \(re-run of #\d+\)$")


def rerun_name(name: str, run_id: int) -> str:
    """ "<name> (re-run of #8)": the copy says where it came from (a re-run of a re-run names
    its direct source once, not a growing chain)."""
    return f"{RERUN_SUFFIX.sub('', name or '')} (re-run of #{run_id})".strip()


def active_twins(db, config: dict[str, Any]) -> list[int]:
    """Ids of queued or running runs with exactly this config: queueing it again is most
    likely a double click, so the form asks first."""
    rows = db.query("select id, config from runs where status in ('queued', 'running')")
    return sorted(row["id"] for row in rows if json.loads(row["config"] or "{}") == config)


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


def edit_run(
    db,
    run_id: int,
    *,
    by: dict[str, Any],
    name: str | None = None,
    tags: Iterable[str] | None = None,
    note: str | None = None,
) -> None:
    """Change a run's name, tags and note (those given) in one write and one audit record."""
    values: dict[str, Any] = {}
    if name is not None:
        values["name"] = name
    if tags is not None:
        values["tags"] = json.dumps(sorted({t.strip() for t in tags if t and t.strip()}))
    if note is not None:
        values["note"] = note
    if values:
        _update_if_allowed(db, run_id, "edit", values, by)


def delete_run(db, run_id: int, *, by: dict[str, Any]) -> None:
    """Delete a run's rows and its folder. A running run must be cancelled first."""
    allowed = ACTIONS["delete"]
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        _check_run_permission(db, run_id, "delete", by)
        name = db.conn.execute("select name from runs where id = ?", [run_id]).fetchone()[0]
        db.conn.execute("delete from metrics where run_id = ?", [run_id])
        cursor = db.conn.execute(
            f"delete from runs where id = ? and status in ({_marks(allowed)})",
            [run_id, *allowed],
        )
        if cursor.rowcount == 0:
            _refuse(db, run_id, "delete")  # rolls the metrics back too
        _audit(db, by, "delete", "run", run_id, {"name": name})
    shutil.rmtree(RunFolder(db.home, run_id).path, ignore_errors=True)


def all_tags(db) -> list[str]:
    tags = database.dialect(db).json_values("runs.tags")
    rows = db.execute(f"select distinct value from runs, {tags} order by value").fetchall()
    return [r[0] for r in rows]


# -- workers ------------------------------------------------------------------------------


def beat_worker(
    db, name: str, host: str, pid: int, run_id: int | None = None, devices: str | None = None
) -> None:
    """A worker says it serves this data directory's queue, or only run `run_id` (worker only;
    first beat adds its row), on `host` with `devices` (`0,1`, or `cpu`)."""
    stamp = now()
    with db.conn:
        db.conn.execute(
            "insert into workers (name, host, pid, started_at, heartbeat_at, run_id, devices) "
            "values (?, ?, ?, ?, ?, ?, ?) "
            "on conflict (name) do update set heartbeat_at = excluded.heartbeat_at",
            [name, host, int(pid), stamp, stamp, run_id, devices],
        )


def remove_worker(db, name: str) -> None:
    """A worker that stops takes its row with it."""
    with db.conn:
        db.conn.execute("delete from workers where name = ?", [name])


def list_workers(db) -> list[dict[str, Any]]:
    return list(db.query("select * from workers order by started_at"))


def worker_hosts(db) -> list[str]:
    """The hosts of the live workers that serve the queue (where a run can be pinned)."""
    hosts = {w["host"] for w in list_workers(db) if w["run_id"] is None and worker_alive(w)}
    return sorted(hosts)


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

    def runs_in_group(fields: list[str] | None) -> bool:
        return fields is not None and int(fields[2]) == pgid and fields[0] not in ("Z", "X")

    # The leader (a launcher) mostly outlives the rest of its group: one read, where a scan of
    # every process costs milliseconds per call on a busy host (stop_trainers polls 20 times
    # a second).
    if runs_in_group(_proc_stat(pgid)):
        return True
    return any(runs_in_group(_proc_stat(pid)) for pid in os.listdir("/proc") if pid.isdigit())


def _proc_stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command's name (state first), None when no such
    process is there (or it exited meanwhile)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_started(pid: int) -> str | None:
    """A running process's start time as the kernel counts it ("" where there is no /proc),
    None when no such process runs (a zombie does not). With the pid, it names one process:
    a pid reused later has another start time."""
    if not sys.platform.startswith("linux"):
        return "" if pid_alive(pid) else None
    fields = _proc_stat(pid)
    return None if fields is None or fields[0] in ("Z", "X") else fields[19]


def trainer_processes(home: str | Path, run_id: int) -> list[int]:
    """The pids of the run's trainer processes (the current attempt's, as each recorded
    itself) that still run on this host."""
    here = host_name()
    return [
        pid
        for host, pid, started in RunFolder(home, run_id).trainer_records()
        if host == here and process_started(pid) == started
    ]


def trainers_alive(home: str | Path, run_id: int, pgid: int | None) -> bool:
    """Whether anything of the attempt runs here: the launcher's group or a trainer process
    (torchrun starts each of those in a session of its own)."""
    return bool((pgid and group_alive(pgid)) or trainer_processes(home, run_id))


def signal_trainers(home: str | Path, run_id: int, pgid: int | None, sig: int) -> None:
    """Send `sig` to the launcher's process group and to each trainer process's group (a
    trainer leads its own session: its data loader workers are in its group)."""
    for group in [pgid, *trainer_processes(home, run_id)]:
        if group:
            try:
                os.killpg(group, sig)
            except (ProcessLookupError, PermissionError):
                pass


def stop_trainers(home: str | Path, run_id: int, pgid: int | None, grace: float = 10.0) -> None:
    """Stop everything of the attempt on this host: SIGTERM, then SIGKILL what is left after
    `grace` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not trainers_alive(home, run_id, pgid):
            return
        signal_trainers(home, run_id, pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not trainers_alive(home, run_id, pgid):
                return
            time.sleep(0.05)


def _age(stamp: str | None) -> float:
    """Seconds since an ISO time; very large when there is none."""
    if not stamp:
        return 1e9
    return (_clock() - datetime.fromisoformat(stamp)).total_seconds()


def worker_alive(worker: dict[str, Any] | None) -> bool:
    """Whether a `workers` row belongs to a live worker."""
    if worker is None or _age(worker["heartbeat_at"]) > WORKER_PULSE_SECONDS:
        return False
    return worker["host"] != host_name() or pid_alive(worker["pid"])


def worker_running(db, run_id: int | None = None, host: str | None = None) -> bool:
    """Whether a live worker would start queued runs (or run `run_id`): one serving the queue,
    or one a `visionboard train` started for that run alone; with `host` (a pinned run's), one
    on that host."""
    return any(
        worker_alive(w)
        and (w["run_id"] is None or w["run_id"] == run_id)
        and (not host or w["host"] == host)
        for w in list_workers(db)
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


def trainer_alive(db, run: dict[str, Any]) -> bool:
    """Whether the last attempt's trainer may still run: its launcher's process group or a
    trainer process on this host, else (another host, or no launch recorded yet) a running
    run's recent heartbeat. A run claimed but never launched, whose worker is gone, with no
    beat since the claim, has no trainer at all."""
    if trainer_processes(db.home, run["id"]):
        return True
    if run.get("trainer_pid") and run.get("trainer_host") == host_name():
        return group_alive(run["trainer_pid"])
    if not run.get("trainer_pid") and run.get("worker_gone"):
        if run.get("heartbeat_at") == run.get("started_at"):
            return False  # its worker died between the claim and the launch
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
        alive = trainer_alive(db, run)
        if alive and not run["summary"].get("stop_reason"):
            return None  # it trains on: its ending is recorded when it comes
        status, error = _exit_status(db, run, None)
        # A group known to be gone is forgotten, so a later resume never checks a reused pid.
        db.conn.execute(
            "update runs set status = ?, error = ?, finished_at = ?, trainer_pid = ? "
            "where id = ? and status = 'running' and worker = ?",
            [status, error, now(), run["trainer_pid"] if alive else None, run_id, run["worker"]],
        )
    return status


def _exit_status(db, run: dict[str, Any], code: int | None) -> tuple[str, str | None]:
    """The one rule from a trainer's end to the run's status and error: the ending the trainer
    wrote (stop_reason, and trainer_error for a failure) comes first, so a cancel pressed after
    a finished run's last check leaves it completed and a crash after a cancel keeps its
    error; without one, the launcher's exit `code` (None: nobody saw the exit, the worker was
    gone) and the cancel flag say what happened."""
    ended = ENDINGS.get(run["summary"].get("stop_reason"))
    if ended and ended != "failed":
        return ended, None
    if not ended and run["cancel_requested"]:
        return "cancelled", None  # stopped (or killed) on the user's word
    if not ended and code == 0:
        return "completed", None
    if run["trainer_error"]:
        return "failed", run["trainer_error"]
    folder = RunFolder(db.home, run["id"]).path
    if code is None:
        why = (
            f"its worker ({run['worker']}) stopped and its trainer is gone "
            f"(last heartbeat {_age(run['heartbeat_at']):.0f} s ago)"
        )
        return "failed", why + disk.disk_full_note(folder) + "; resume it to continue"
    if code < 0:  # the trainer itself, started without a launcher (engine.launch.DIRECT)
        try:
            name = signal.Signals(-code).name
        except ValueError:  # a real-time signal has no name
            name = str(-code)
        # A kill nobody asked for is most often the kernel's, out of memory.
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        why = f"trainer killed by signal {name}{hint}; see {LOG}"
        return "failed", why + disk.disk_full_note(folder)
    return "failed", f"trainer exited with code {code}; see {LOG}" + disk.disk_full_note(folder)


def record_exit(db, run_id: int, worker: str, code: int) -> str | None:
    """The worker saw its launcher exit with `code`, every trainer process of the attempt
    stopped: record the run's end by the one rule (_exit_status). Only while `worker` holds
    the running run; returns the status recorded, None when refused."""
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        run = get_run(db, run_id)
        if run is None or run["status"] != "running" or run["worker"] != worker:
            return None
        status, error = _exit_status(db, run, code)
        db.conn.execute(
            "update runs set status = ?, error = ?, finished_at = ?, trainer_pid = null "
            "where id = ? and status = 'running' and worker = ?",
            [status, error, now(), run_id, worker],
        )
    return status


def settle_quietly(db, run_id: int | None = None) -> list[int]:
    """settle_run (or settle_orphans) for a reader: a full disk or a locked database stops no
    page or listing; the rows are shown as they are and settled at a later look."""
    try:
        if run_id is None:
            return settle_orphans(db)
        return [run_id] if settle_run(db, run_id) else []
    except (*database.OperationalError, OSError) as exc:
        if disk.is_disk_full(exc) or "locked" in str(exc):
            return []
        raise


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


RUN_BRIEF_KEYS = ("id", "name", "status", "task", "model", "dataset", "user", "tags",
                  "created_at", "finished_at")  # fmt: skip


def run_brief(run: dict[str, Any]) -> dict[str, Any]:
    """The public shape of one run in `visionboard runs --json` and the API's run list."""
    return {
        **{k: run[k] for k in RUN_BRIEF_KEYS},
        "worker_gone": run["worker_gone"],
        "summary": run["summary"],
    }


# -- users and sign-in sessions ----------------------------------------------------------

# Names people sign in with: a built-in account's name, or an identity provider's email.
USERNAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
SESSION_SECONDS = 14 * 24 * 3600  # a browser stays signed in two weeks, then signs in again


class UserError(ValueError):
    """A users verb refused; the message names the user and why."""


def _public_user(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """A users row as the rest of the program sees it: never the password hash."""
    if row is None:
        return None
    user = {k: v for k, v in dict(row).items() if k != "password_hash"}
    user["disabled"] = bool(user["disabled"])
    user["has_password"] = bool(row["password_hash"])
    return user


def _user_row(db, username: str) -> dict[str, Any] | None:
    rows = list(db.query("select * from users where username = ?", [username]))
    return rows[0] if rows else None


def _existing_user(db, username: str) -> dict[str, Any]:
    row = _user_row(db, username)
    if row is None:
        raise UserError(f"no user {username!r}")
    return row


def add_user(
    db,
    username: str,
    role: str,
    password: str | None = None,
    source: str = "local",
    email: str = "",
    *,
    by: dict[str, Any],
    disabled: bool = False,
) -> dict[str, Any]:
    """Add an account: a built-in one (`local`) needs a password, an `oidc` one has none.
    `disabled`: added, but signs nobody in until an admin enables it."""
    check_permission(by, "manage_users")
    if not USERNAME_PATTERN.fullmatch(username or ""):
        raise UserError(
            f"user name {username!r}: use letters, digits and . _ @ + - (starting with a "
            "letter or digit, at most 128 characters)"
        )
    choices.get_role(role)
    if source not in choices.USER_SOURCES:
        raise UserError(f"source {source!r}: expected one of {', '.join(choices.USER_SOURCES)}")
    if source == "local" and not password:
        raise UserError(f"user {username!r}: a built-in account needs a password")
    if source != "local" and password:
        raise UserError(f"user {username!r}: an {source} account signs in elsewhere, no password")
    password_hash = passwords.hash_password(password) if password else None
    try:
        with db.conn:
            db.conn.execute(
                "insert into users (username, role, password_hash, disabled, source, email, "
                "created_at) values (?, ?, ?, ?, ?, ?, ?)",
                [username, role, password_hash, int(disabled), source, email or "", now()],
            )
            detail = {"role": role, "source": source, **({"disabled": True} if disabled else {})}
            _audit(db, by, "add_user", "user", username, detail)
    except database.IntegrityError:
        raise UserError(f"user {username!r} already exists") from None
    return get_user(db, username)


def get_user(db, username: str) -> dict[str, Any] | None:
    return _public_user(_user_row(db, username))


def list_users(db) -> list[dict[str, Any]]:
    return [_public_user(r) for r in db.query("select * from users order by username")]


def count_users(db) -> int:
    """Accounts that can sign in (not disabled); none means the server has no sign-in."""
    return db.execute("select count(*) from users where disabled = 0").fetchone()[0]


def set_user_disabled(db, username: str, disabled: bool = True, *, by: dict[str, Any]) -> None:
    """Disable an account (its browsers are signed out at once) or enable it again."""
    check_permission(by, "manage_users")
    _existing_user(db, username)
    if disabled:
        _keep_an_admin(db, username, "disable")
    with db.conn:
        _audit(db, by, "disable_user" if disabled else "enable_user", "user", username)
        db.conn.execute(
            "update users set disabled = ? where username = ?", [int(disabled), username]
        )
        if disabled:
            db.conn.execute("delete from sessions where username = ?", [username])


def _keep_an_admin(db, username: str, change: str) -> None:
    """Refuse a change that would leave the accounts without an enabled admin (the CLI, as the
    server's local admin, could still repair it, but the dashboard could not)."""
    others = db.execute(
        "select count(*) from users where role = 'admin' and disabled = 0 and username != ?",
        [username],
    ).fetchone()[0]
    row = db.execute("select role, disabled from users where username = ?", [username]).fetchone()
    if row and row[0] == "admin" and not row[1] and others == 0:
        raise UserError(
            f"cannot {change} {username!r}: it is the last enabled admin; make another user "
            "admin first"
        )


def set_user_role(db, username: str, role: str, *, by: dict[str, Any]) -> None:
    check_permission(by, "manage_users")
    choices.get_role(role)
    was = _existing_user(db, username)["role"]
    if role != "admin":
        _keep_an_admin(db, username, f"make a {role} of")
    with db.conn:
        db.conn.execute("update users set role = ? where username = ?", [role, username])
        _audit(db, by, "set_role", "user", username, {"role": role, "was": was})


def set_password(db, username: str, password: str, *, by: dict[str, Any]) -> None:
    """A built-in account's new password (set by an admin, or by its owner); every browser
    signed in with the old one signs in again."""
    if not by or by.get("username") != username or by.get("disabled"):
        check_permission(by, "manage_users")
    row = _existing_user(db, username)
    if row["source"] != "local":
        raise UserError(
            f"user {username!r} signs in through the identity provider ({row['source']}), "
            "not with a password"
        )
    password_hash = passwords.hash_password(password)
    with db.conn:
        db.conn.execute(
            "update users set password_hash = ? where username = ?", [password_hash, username]
        )
        db.conn.execute("delete from sessions where username = ?", [username])
        _audit(db, by, "reset_password", "user", username)


# Guessing passwords: after this many wrong ones for a name within LOCK_SECONDS, that name
# cannot sign in for LOCK_SECONDS (counted from the last wrong one); a right one resets it.
MAX_SIGN_IN_FAILURES = 5
LOCK_SECONDS = 15 * 60


class SignInLocked(UserError):
    """Too many wrong passwords for a name lately; the message says when to try again."""


def sign_in_locked_until(db, username: str) -> datetime | None:
    """When `username` may sign in again, or None when it may now. The failures are the audit
    trail's `sign_in_failed` records since its last `sign_in` (any name counts, existing or
    not, so the lock tells nobody which names exist)."""
    last_ok = db.execute(  # by id, not time: a stamp has only whole seconds
        "select max(id) from audit where target_kind = 'user' and target_id = ? "
        "and action = 'sign_in'",
        [username],
    ).fetchone()[0]
    stamps = [
        row[0]
        for row in db.execute(
            "select at from audit where target_kind = 'user' and target_id = ? "
            "and action = 'sign_in_failed' and id > ? order by id desc limit ?",
            [username, last_ok or 0, MAX_SIGN_IN_FAILURES],
        )
    ]
    if len(stamps) < MAX_SIGN_IN_FAILURES:
        return None
    newest, oldest = datetime.fromisoformat(stamps[0]), datetime.fromisoformat(stamps[-1])
    until = newest + timedelta(seconds=LOCK_SECONDS)
    if (newest - oldest).total_seconds() > LOCK_SECONDS or _clock() >= until:
        return None
    return until


def verify_password(db, username: str, password: str) -> dict[str, Any] | None:
    """The user when `password` is theirs and the account may sign in, else None (the same
    None, in about the same time, for a wrong name, a wrong password or a disabled account).
    Every attempt is audited; SignInLocked while the name is locked out (even for the right
    password, or guessing would go on)."""
    until = sign_in_locked_until(db, username)
    if until:
        raise SignInLocked(
            f"too many wrong passwords for {username!r}: try again after "
            f"{until.strftime('%H:%M:%S')} UTC (about {LOCK_SECONDS // 60} minutes after the "
            "last attempt)"
        )
    row = _user_row(db, username)
    ok = passwords.verify_password(row["password_hash"] if row else None, password or "")
    if not ok or row["disabled"] or row["source"] != "local":
        with db.conn:
            _audit(db, None, "sign_in_failed", "user", username)
        return None
    with db.conn:
        if passwords.needs_rehash(row["password_hash"]):
            db.conn.execute(
                "update users set password_hash = ? where username = ?",
                [passwords.hash_password(password), username],
            )
        _audit(db, row, "sign_in", "user", username)
    return _public_user(row)


def oidc_username(email: str = "", sub: str = "") -> str:
    """The account name of an identity provider's user: their email, or without one their
    subject id made a valid name (`google-oauth2|123` -> `google-oauth2-123-<hash>`: the hash
    of the real id keeps two ids that clean up alike apart)."""
    email = (email or "").strip().lower()
    if email:
        return email
    sub = str(sub or "").strip()
    if USERNAME_PATTERN.fullmatch(sub):
        return sub
    clean = re.sub(r"[^A-Za-z0-9._@+-]+", "-", sub).lstrip("._@+-")[:100]
    if not clean:
        raise UserError(f"the identity provider gave neither an email nor a usable id ({sub!r})")
    return f"{clean}-{hashlib.sha256(sub.encode()).hexdigest()[:8]}"


def check_oidc_identity(
    email: str,
    email_verified: Any = None,
    allowed_domains: Iterable[str] = (),
    allowed_emails: Iterable[str] = (),
) -> None:
    """Refuse an identity provider's user this server does not let in: an email the provider
    says is unverified (anyone could claim a colleague's address), or, where an allow-list is
    configured, an email neither listed nor of a listed domain (no email: not allowed)."""
    email = (email or "").strip().lower()
    if email_verified is False or str(email_verified).lower() == "false":
        raise UserError(
            f"the identity provider has not verified the email {email!r}: verify it there first"
        )
    domains = {d.strip().lower().lstrip("@") for d in allowed_domains if d.strip()}
    emails = {e.strip().lower() for e in allowed_emails if e.strip()}
    if not domains and not emails:
        return
    if email and (email in emails or email.rpartition("@")[2] in domains):
        return
    raise UserError(
        f"{email or 'an account without an email'!r} is not allowed on this VisionBoard (its "
        "allowed_domains / allowed_emails): ask an admin to add it"
    )


def get_or_add_oidc_user(
    db, username: str, email: str = "", role: str = "viewer", *, disabled: bool = False
) -> dict:
    """The account of someone the identity provider signed in, added with `role` the first
    time (`disabled`: waiting for an admin to enable it). A built-in account of the same name
    is never taken over."""
    row = _user_row(db, username)
    if row is None:
        try:
            return add_user(
                db, username, role, source="oidc", email=email, by=SERVER_USER, disabled=disabled
            )
        except UserError:
            row = _existing_user(db, username)  # added meanwhile by another session
    if row["source"] != "oidc":
        raise UserError(
            f"user {username!r} is a built-in account: sign in with its password, or ask an "
            "admin to rename it"
        )
    return _public_user(row)


def open_session(db, username: str, seconds: float = SESSION_SECONDS) -> str:
    """Start a signed-in session for a browser; returns the token its cookie keeps."""
    _existing_user(db, username)
    token = passwords.new_token()
    stamp = _clock()
    expires = datetime.fromtimestamp(stamp.timestamp() + seconds, UTC)
    with db.conn:
        db.conn.execute("delete from sessions where expires_at <= ?", [now()])
        db.conn.execute(
            "insert into sessions (token_hash, username, created_at, expires_at) "
            "values (?, ?, ?, ?)",
            [
                passwords.hash_token(token),
                username,
                stamp.isoformat(timespec="seconds"),
                expires.isoformat(timespec="seconds"),
            ],
        )
    return token


def session_user(db, token: str | None) -> dict[str, Any] | None:
    """The user a browser's session token signs in: None when the token is unknown, expired,
    signed out, or its account disabled."""
    if not token:
        return None
    rows = list(
        db.query(
            "select users.* from sessions join users using (username) "
            "where token_hash = ? and expires_at > ? and users.disabled = 0",
            [passwords.hash_token(token), now()],
        )
    )
    return _public_user(rows[0]) if rows else None


def close_session(db, token: str | None) -> None:
    """Sign a browser out: its token no longer signs anyone in."""
    if token:
        with db.conn:
            db.conn.execute(
                "delete from sessions where token_hash = ?", [passwords.hash_token(token)]
            )


# -- datasets -----------------------------------------------------------------------------


def register_dataset(
    db,
    name: str,
    path: str,
    format: str,
    task: str,
    info: dict | None = None,
    *,
    by: dict[str, Any],
) -> None:
    """Register a dataset, owned by `by` (a member or an admin); registering a name again
    (after a new inspection) is its owner's or an admin's, and keeps its owner."""
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        row = db.conn.execute("select added_by from datasets where name = ?", [name]).fetchone()
        if row is None:
            check_permission(by, "add_dataset")
        else:
            check_permission(by, "edit_dataset", row[0] or "", f"dataset {name!r}")
        # Here, not only in the forms: a script or a later API calling the store cannot skip it.
        data_roots.confine(path, db.home, what="datasets")
        db.conn.execute(
            "insert into datasets (name, path, format, task, created_at, info, added_by) "
            "values (?, ?, ?, ?, ?, ?, ?) on conflict (name) do update set path = excluded.path, "
            "format = excluded.format, task = excluded.task, created_at = excluded.created_at, "
            "info = excluded.info",
            [name, str(path), format, task, now(), json.dumps(info or {}), by["username"]],
        )
        _audit(
            db,
            by,
            "add_dataset" if row is None else "edit_dataset",
            "dataset",
            name,
            {"path": str(path), "format": format, "task": task},
        )


def list_datasets(db) -> list[dict[str, Any]]:
    rows = list(db.query("select * from datasets order by name"))
    for r in rows:
        r["info"] = json.loads(r["info"] or "{}")
    return rows


def get_dataset(db, name: str) -> dict[str, Any] | None:
    rows = [r for r in list_datasets(db) if r["name"] == name]
    return rows[0] if rows else None


def delete_dataset(db, name: str, *, by: dict[str, Any]) -> None:
    """Forget a registered dataset (its files stay): its owner's or an admin's."""
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        row = db.conn.execute(
            "select added_by, path from datasets where name = ?", [name]
        ).fetchone()
        if row is None:
            return
        check_permission(by, "delete_dataset", row[0] or "", f"dataset {name!r}")
        db.conn.execute("delete from datasets where name = ?", [name])
        _audit(db, by, "delete_dataset", "dataset", name, {"path": row[1]})


def may_change_dataset(user: dict[str, Any] | None, dataset: dict[str, Any]) -> bool:
    """Whether `user` may register a dataset again or remove it (the buttons to show)."""
    return may(user, "delete_dataset", dataset.get("added_by") or "")


def resolve_dataset(db, name_or_path: str) -> str:
    """A registered dataset's path, or the argument itself when it names no registered one."""
    found = get_dataset(db, name_or_path)
    return found["path"] if found else name_or_path


# -- imported weights -----------------------------------------------------------------------


def record_weights(db, model: str, path: str, source: str, *, by: dict[str, Any]) -> None:
    """Record who imported weights for `model` (engine.weights writes the file, after checking
    may(by, "import_weights") before its work); the last import of a model is the one used."""
    check_permission(by, "import_weights")
    with db.conn:
        db.conn.execute(
            "insert into weights (model, path, source, added_by, added_at) values (?, ?, ?, ?, ?) "
            "on conflict (model) do update set path = excluded.path, source = excluded.source, "
            "added_by = excluded.added_by, added_at = excluded.added_at",
            [model, str(path), str(source), by["username"], now()],
        )
        _audit(db, by, "import_weights", "weights", model, {"path": str(path), "from": str(source)})


def list_imported_weights(db) -> dict[str, dict[str, Any]]:
    """model -> {"model", "path", "source", "added_by", "added_at"} of each import recorded."""
    return {row["model"]: row for row in db.query("select * from weights order by model")}


# -- API tokens -----------------------------------------------------------------------------
#
# Scripts call the automation API (engine/api) with `Authorization: Bearer <token>`. A token
# acts as its user with the user's current role (read from `users` at every call, so a role
# change, a disabled account or a revoked token counts at once); the database keeps only its
# SHA-256. A server without accounts has one user, its local admin: a token made for that
# user (`local_admin`) is good only while the server has no accounts (the caller says whether
# it has, as it alone knows about an identity provider), like the dashboard's local admin.

API_TOKEN_PREFIX = "vb_"
# last_used_at is written at most this often per token: not one write per API call.
TOKEN_TOUCH_SECONDS = 60.0


def _check_token_rights(by: dict[str, Any] | None, username: str) -> None:
    """Anyone signed in manages their own tokens (a viewer's token only reads); an admin
    manages everyone's."""
    if by and not by.get("disabled") and by.get("role") in RIGHTS:
        if by.get("username") == username:
            return
    check_permission(by, "manage_users")


def _public_token(row: dict[str, Any]) -> dict[str, Any]:
    token = {k: v for k, v in dict(row).items() if k != "token_hash"}
    token["local_admin"] = bool(token["local_admin"])
    token["revoked"] = token["revoked_at"] is not None
    return token


def add_api_token(
    db, username: str, name: str = "", *, by: dict[str, Any], local_admin: bool = False
) -> tuple[str, dict[str, Any]]:
    """A new API token for `username` (their own, or anyone's for an admin): (the token, shown
    once and never stored, its record). `local_admin`: the token of a server without accounts'
    local admin, who has no users row."""
    _check_token_rights(by, username)
    name = (name or "").strip()
    if len(name) > 100:
        raise UserError(f"token name {name[:20]!r}...: at most 100 characters")
    if local_admin:
        if count_users(db):
            raise UserError(
                "this server has accounts: a token belongs to one of them (name its user)"
            )
    else:
        row = _existing_user(db, username)
        if row["disabled"]:
            raise UserError(f"user {username!r} is disabled: enable the account first")
    token_id = passwords.new_token_id()
    token = f"{API_TOKEN_PREFIX}{token_id}_{passwords.new_token()}"
    with db.conn:
        db.execute(
            "insert into api_tokens (id, token_hash, username, name, local_admin, created_at) "
            "values (?, ?, ?, ?, ?, ?)",
            [token_id, passwords.hash_token(token), username, name, int(local_admin), now()],
        )
        _audit(db, by, "add_token", "user", username, {"token": token_id, "name": name})
    return token, get_api_token(db, token_id)


def get_api_token(db, token_id: str) -> dict[str, Any] | None:
    rows = list(db.query("select * from api_tokens where id = ?", [token_id]))
    return _public_token(rows[0]) if rows else None


def list_api_tokens(db, username: str | None = None, *, by: dict[str, Any]) -> list[dict[str, Any]]:
    """The tokens of `username` (theirs, or an admin's), or with None everyone's (admins);
    revoked ones included (`revoked`), never the token itself."""
    if username is None:
        check_permission(by, "manage_users")
        rows = db.query("select * from api_tokens order by created_at, id")
    else:
        _check_token_rights(by, username)
        rows = db.query(
            "select * from api_tokens where username = ? order by created_at, id", [username]
        )
    return [_public_token(r) for r in rows]


def revoke_api_token(db, token_id: str, *, by: dict[str, Any]) -> None:
    """A token stops working at once: its owner's or an admin's act. Revoking a revoked
    token changes nothing."""
    token = get_api_token(db, token_id)
    if token is None:
        raise UserError(f"no API token {token_id!r} (`visionboard tokens list` shows them)")
    _check_token_rights(by, token["username"])
    if token["revoked"]:
        return
    with db.conn:
        db.execute(
            "update api_tokens set revoked_at = ? where id = ? and revoked_at is null",
            [now(), token_id],
        )
        _audit(db, by, "revoke_token", "user", token["username"], {"token": token_id})


def api_token_user(db, token: str | None, local_mode: bool) -> dict[str, Any] | None:
    """The user an API token acts as, with their current role; None for no token, an unknown
    or revoked one, a disabled account, or a local admin's token on a server that has
    accounts now (`local_mode`: it has none)."""
    if not token:
        return None
    rows = list(
        db.query(
            "select t.id, t.username, t.local_admin, t.last_used_at, u.role, u.disabled, "
            "u.source, u.email from api_tokens t left join users u on u.username = t.username "
            "where t.token_hash = ? and t.revoked_at is null",
            [passwords.hash_token(token)],
        )
    )
    if not rows:
        return None
    row = rows[0]
    if row["local_admin"]:
        if not local_mode:
            return None
        user = {"username": row["username"], "role": "admin", "source": "local",
                "single_user": True}  # fmt: skip
    elif row["role"] is None or row["disabled"]:
        return None
    else:
        user = {"username": row["username"], "role": row["role"], "source": row["source"],
                "email": row["email"] or "", "disabled": False}  # fmt: skip
    if _age(row["last_used_at"]) > TOKEN_TOUCH_SECONDS:
        with db.conn:
            db.execute("update api_tokens set last_used_at = ? where id = ?", [now(), row["id"]])
    user["token"] = row["id"]
    return user
