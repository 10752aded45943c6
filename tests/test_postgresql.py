"""PostgreSQL: workers on two hosts sharing one queue, copying a SQLite store over, and what
the dialect layer translates. (Every store test of test_store.py runs on both databases.)"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from factories import ADMIN

from engine import cli, database, disk, store
from engine.run_folder import RunFolder

FAKE = Path(__file__).resolve().parent / "fake_trainer.py"
BASE = {"task": "classification", "model": "m", "dataset": "d"}


def start_worker(home: Path, url: str, host: str, log: Path) -> subprocess.Popen:
    """A real `visionboard worker` process as if on `host` with four GPUs, launching a shell
    for a trainer (tests/fake_trainer.py cli-shell: it notes each start in the run's folder);
    in a process group of its own, so the test stops exactly what it started."""
    command = [sys.executable, str(FAKE), "cli-shell", "0.2", "--home", str(home), "--db", url,
               "worker", "--host-name", host, "--devices", "0,1,2,3"]  # fmt: skip
    return subprocess.Popen(
        command, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def test_two_workers_on_two_hosts_run_each_queued_run_once(home, postgresql_url, monkeypatch):
    monkeypatch.setenv(database.ENV, postgresql_url)
    db = store.connect(home)
    free = [store.create_run(db, BASE, by=ADMIN) for _ in range(36)]
    pinned = [store.create_run(db, BASE, by=ADMIN, on_host="host-b") for _ in range(4)]
    workers = [
        start_worker(home, postgresql_url, h, home / f"{h}.log") for h in ("host-a", "host-b")
    ]
    try:
        deadline = time.monotonic() + 120
        seen_workers = {}
        while time.monotonic() < deadline:
            seen_workers.update({w["host"]: w for w in store.list_workers(db)})
            if store.count_runs(db, store.FINISHED) == 40:
                break
            assert all(w.poll() is None for w in workers), (home / "host-a.log").read_text()
            time.sleep(0.2)
    finally:
        for worker in workers:
            os.killpg(worker.pid, signal.SIGTERM)
        for worker in workers:
            worker.wait(30)
    runs = {r["id"]: r for r in store.list_runs(db)}
    assert len(runs) == 40 and {r["status"] for r in runs.values()} == {"completed"}
    for run_id in runs:  # each start of a trainer wrote a line
        assert len((RunFolder(home, run_id).path / "launches").read_text().split()) == 1, run_id
    hosts = {run_id: runs[run_id]["worker"].split(":")[0] for run_id in runs}
    assert {hosts[i] for i in pinned} == {"host-b"}  # pinned runs went to their host only
    assert {hosts[i] for i in free} == {"host-a", "host-b"}  # both shared the free ones
    assert {runs[i]["devices"] for i in runs} <= {f"cuda:{g}" for g in range(4)}
    assert {(h, w["devices"]) for h, w in seen_workers.items()} == {
        ("host-a", "0,1,2,3"),
        ("host-b", "0,1,2,3"),
    }
    assert store.list_workers(db) == []  # each stopped worker took its row with it


def fill_sqlite_store(db, home: Path) -> None:
    """A store with a row in every table, written the way the program writes them."""
    store.add_user(db, "ada", "admin", "correct horse", by=ADMIN)
    store.open_session(db, "ada")
    folder = home / "datasets" / "shapes"
    folder.mkdir(parents=True)
    store.register_dataset(db, "shapes", str(folder), "imagefolder", "classification",
                           {"images": 3}, by=ADMIN)  # fmt: skip
    store.record_weights(db, "resnet18", str(home / "r18.pth"), "upload", by=ADMIN)
    store.add_api_token(db, "ada", "ci", by=ADMIN)
    store.beat_worker(db, "gpu1:7", "gpu1", 7, None, "0,1")
    first = store.create_run(db, BASE, tags=["a", "b"], by=ADMIN)
    second = store.create_run(db, BASE, name="50% done 'quoted' ?", by=ADMIN, on_host="gpu1")
    third = store.create_run(db, BASE, by=ADMIN)
    store.claim_run(db, "gpu1:7", run_id=first)
    store.update_summary(db, first, best_metric=0.875, stop_reason="epoch limit")
    for step in range(1, 40):
        store.add_metrics(db, first, step, 1 + step // 10, {"lr": 1e-3 / step, "loss": 1 / 3})
    store.add_metrics(db, second, 1, 1, {"lr": 0.1})
    store.delete_run(db, third, by=ADMIN)  # its id is never given again, on either side


def rows(db, table: str) -> list[tuple]:
    names = [c for c in database.columns(db, table)]
    if database.dialect(db) is database.SQLITE and "rowid" not in names and table == "metrics":
        names = ["rowid", *names]
    cols = ", ".join(f'"{c}"' if c != "rowid" else "rowid" for c in names)
    return sorted(
        (tuple(r) for r in db.execute(f'select {cols} from "{table}"').fetchall()), key=repr
    )


def test_db_copy_moves_every_table_row_by_row(home, postgresql_url, monkeypatch, capsys):
    monkeypatch.delenv(database.ENV, raising=False)
    source = store.connect(home)
    fill_sqlite_store(source, home)

    assert cli.main(["db", "copy", "--to", postgresql_url]) == 0
    assert "copied to postgresql://" in capsys.readouterr().out
    target = store.connect(home, url=postgresql_url)
    tables = database.table_names(source)
    assert set(tables) == set(database.table_names(target))
    for table in tables:
        assert rows(source, table) == rows(target, table), table
    assert len(rows(target, "metrics")) == 79
    # The copy reads as the original through the store, and new ids go on past the copied.
    assert store.list_runs(target) == store.list_runs(source)
    assert store.get_metrics(target, 1) == store.get_metrics(source, 1)
    assert store.verify_password(target, "ada", "correct horse")["role"] == "admin"
    assert store.create_run(target, BASE, by=ADMIN) == 4 == store.create_run(source, BASE, by=ADMIN)
    store.add_metrics(target, 4, 1, 1, {"lr": 0.5})  # the metrics' rowid drew past too
    # A second copy would mix two stores: refused, nothing written.
    assert cli.main(["db", "copy", "--to", postgresql_url]) == 2
    assert "not empty" in capsys.readouterr().err
    assert store.count_runs(target) == 3


def test_bad_database_urls_are_named_without_a_traceback(home, postgresql_server, capsys):
    assert cli.main(["--db", "mysql://db/visionboard", "runs"]) == 2
    assert "expected a PostgreSQL URL" in capsys.readouterr().err
    missing = postgresql_server.replace("postgres@", "ghost:hunter2@") + "&connect_timeout=5"
    assert cli.main(["--db", missing, "runs"]) == 2
    err = capsys.readouterr().err
    assert "cannot connect to postgresql://ghost:***@" in err and "hunter2" not in err
    assert cli.main(["db", "copy", "--to", "sqlite:///x.db"]) == 2
    assert "expected a PostgreSQL URL" in capsys.readouterr().err


def test_the_dialect_translates_placeholders_percent_and_user():
    sql = "select user, name from runs where id = ? and name like '50% ?' and \"user\" = ?"
    assert database.to_postgresql(sql) == (
        'select "user", name from runs where id = %s and name like \'50%% ?\' and "user" = %s'
    )
    assert database.to_postgresql("select username from users") == "select username from users"


def test_postgresql_disk_full_is_a_full_disk():
    full = psycopg.errors.lookup("53100")("could not extend file: No space left on device")
    assert disk.is_disk_full(full)
    assert "disk full" in disk.disk_full_message(full, "/")
    assert not disk.is_disk_full(psycopg.errors.lookup("40P01")("deadlock detected"))


@pytest.mark.parametrize("pid_alive", [True, False])
def test_a_pid_is_checked_on_its_own_host_only(store_db, monkeypatch, pid_alive):
    """A worker on another host is judged by its pulse alone (its pid means nothing here); on
    this host a dead pid says at once that it is gone."""
    db = store_db
    pid = os.getpid() if pid_alive else 999999
    monkeypatch.setenv("VISIONBOARD_HOST", "host-a")
    store.beat_worker(db, "host-b:1", "host-b", pid)
    store.beat_worker(db, "host-a:1", "host-a", pid)
    alive = {w["name"]: store.worker_alive(w) for w in store.list_workers(db)}
    assert alive == {"host-b:1": True, "host-a:1": pid_alive}
    with db.conn:
        db.conn.execute("update workers set heartbeat_at = '2000-01-01T00:00:00+00:00'")
    assert not any(store.worker_alive(w) for w in store.list_workers(db))
    assert store.worker_hosts(db) == []


def test_literal_percent_reads_alike_with_and_without_parameters(store_db):
    assert store_db.execute("select '50% ?'").fetchone()[0] == "50% ?"
    assert tuple(store_db.execute("select '50%', ?", [7]).fetchone()) == ("50%", 7)


def test_a_connection_the_server_dropped_is_opened_again(home, postgresql_url, monkeypatch):
    monkeypatch.setenv(database.ENV, postgresql_url)
    db = store.connect(home)
    run_id = store.create_run(db, BASE, by=ADMIN)
    backend = db.execute("select pg_backend_pid()").fetchone()[0]
    with psycopg.connect(postgresql_url, autocommit=True) as admin:
        admin.execute("select pg_terminate_backend(%s)", [backend])
    with pytest.raises(psycopg.OperationalError) as lost:
        store.heartbeat(db, run_id)
    assert database.is_connection_lost(lost.value)  # a worker tries again at its next poll
    store.heartbeat(db, run_id)  # a new connection
    assert store.get_run(db, run_id)["heartbeat_at"]
    assert db.execute("select pg_backend_pid()").fetchone()[0] != backend


def test_processes_opening_a_new_database_at_once_migrate_it_once(home, postgresql_url):
    errors = []

    def open_store():
        try:
            store.connect(home, url=postgresql_url).conn.close()
        except Exception as exc:  # any failure is the finding
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    db = store.connect(home, url=postgresql_url)
    assert database.schema_version(db) == len(store.MIGRATIONS)
    assert db.execute("select count(*) from visionboard_schema").fetchone()[0] == 1


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://ada:hunter2@/db?foo=bar",  # an option libpq does not know
        "postgresql://ada:hun/ter2@127.0.0.1:1/db",  # a password with a slash
        "postgresql://ada@127.0.0.1:1/db?password=hunter2&connect_timeout=5",
        "mysql://ada:hunter2@db/visionboard",  # not PostgreSQL at all
    ],
)
def test_a_url_that_does_not_connect_is_named_without_its_password(home, capsys, url):
    assert cli.main(["--db", url, "runs"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert "hunter2" not in err and "ter2" not in err and "***" in err, err


def test_runs_claimed_at_once_by_many_connections_go_to_one_each(home, postgresql_url, monkeypatch):
    """Eight claimers race for 24 runs; a trigger makes every UPDATE of runs sleep (the
    database widens the window between a claimer's SELECT and its UPDATE's commit, the
    product code is as shipped): each run is claimed exactly once, none left behind."""
    monkeypatch.setenv(database.ENV, postgresql_url)
    db = store.connect(home)
    ids = [store.create_run(db, BASE, by=ADMIN) for _ in range(24)]
    db.execute(
        "create function slow_update() returns trigger language plpgsql as "
        "$$ begin perform pg_sleep(0.03); return new; end $$"
    )
    db.execute(
        "create trigger slow before update on runs for each row execute function slow_update()"
    )
    claimed: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def claimer(number: int) -> None:
        own = store.connect(home)
        try:
            start.wait()
            while run := store.claim_run(own, f"host-{number}:1"):
                claimed.append(run["id"])
        except BaseException as exc:  # any failure is the finding
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(claimed) == ids  # each once: no run twice, none left queued
    assert {store.get_run(db, i)["status"] for i in ids} == {"running"}


def test_hosts_with_clocks_apart_judge_pulses_by_the_servers_clock(
    home, postgresql_url, monkeypatch
):
    """A host whose clock is two minutes slow writes its worker's pulse on the database
    server's clock: another host (clock right) sees that worker alive, and a pulse two
    minutes old is old for the slow host too."""
    from datetime import datetime, timedelta

    class SlowClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) - timedelta(seconds=120)

    monkeypatch.setattr(store, "_clock_offset", store._clock_offset)  # put back afterwards
    monkeypatch.setattr(store, "datetime", SlowClock)
    slow_host = store.connect(home, url=postgresql_url)
    store.beat_worker(slow_host, "host-b:1", "host-b", 1)
    stale = (datetime.now().astimezone() - timedelta(seconds=120)).isoformat(timespec="seconds")
    store.beat_worker(slow_host, "host-c:1", "host-c", 1)
    with slow_host.conn:
        slow_host.conn.execute(
            "update workers set heartbeat_at = ? where name = 'host-c:1'", [stale]
        )
    assert [w["name"] for w in store.list_workers(slow_host) if store.worker_alive(w)] == [
        "host-b:1"
    ]
    monkeypatch.setattr(store, "datetime", datetime)
    right_host = store.connect(home, url=postgresql_url)
    assert store.worker_hosts(right_host) == ["host-b"]


def test_a_migration_that_fails_halfway_leaves_nothing_behind(home, postgresql_url):
    """DDL is transactional on PostgreSQL: a step that fails after creating a table leaves
    neither the table nor a newer version, and the lock is free for the next try."""
    db = database.connect(postgresql_url, home / "unused.db", home)

    def first(db):
        db.execute("create table first_table (id integer)")

    def broken(db):
        db.execute("create table second_table (id integer)")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        database.migrate(db, [first, broken])
    assert database.schema_version(db) == 1
    assert "second_table" not in db.table_names() and "first_table" in db.table_names()
    other = database.connect(postgresql_url, home / "unused.db", home)
    assert other.execute(f"select pg_try_advisory_xact_lock({database.WRITE_LOCK})").fetchone()[0]
    database.migrate(other, [first, lambda db: db.execute("create table second_table (id int)")])
    assert database.schema_version(other) == 2 and "second_table" in other.table_names()


def test_a_second_machine_joins_a_run_of_the_postgresql_store(
    home, postgresql_url, monkeypatch, capsys
):
    from engine.launch import main

    monkeypatch.setenv(database.ENV, postgresql_url)
    run = {**BASE, "num_machines": 2, "main_process_ip": "10.0.0.1", "device": "cpu"}
    run_id = store.create_run(store.connect(home), run, by=ADMIN)
    monkeypatch.delenv(database.ENV)  # the other machine names it on the command line
    argv = ["--run-id", str(run_id), "--machine-rank", "1", "--home", str(home), "--print"]
    assert main([*argv, "--db", postgresql_url]) == 0
    assert "--machine_rank 1" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="cannot connect to postgresql://ghost:\\*\\*\\*@"):
        main([*argv, "--db", postgresql_url.replace("postgres@", "ghost:pw@")])


def test_a_copy_between_two_postgresql_databases_never_gives_a_deleted_id_again(
    home, postgresql_url, postgresql_server, monkeypatch
):
    source = store.connect(home, url=postgresql_url)
    ids = [store.create_run(source, BASE, by=ADMIN) for _ in range(3)]
    store.delete_run(source, ids[-1], by=ADMIN)
    with psycopg.connect(postgresql_server, autocommit=True) as conn:
        conn.execute(f"create schema copy_target_{os.getpid()}")
    target_url = f"{postgresql_server}&options=-csearch_path%3Dcopy_target_{os.getpid()}"
    monkeypatch.setenv(database.ENV, postgresql_url)
    assert cli.main(["db", "copy", "--to", target_url]) == 0
    target = store.connect(home, url=target_url)
    assert store.create_run(target, BASE, by=ADMIN) == ids[-1] + 1


def test_a_copy_to_a_server_that_is_down_says_so(home, capsys):
    url = "postgresql://ada:hunter2@127.0.0.1:1/visionboard?connect_timeout=5"
    assert cli.main(["db", "copy", "--to", url]) == 2
    err = capsys.readouterr().err
    assert "cannot connect to postgresql://ada:***@127.0.0.1:1/" in err and "hunter2" not in err
