"""Dashboard render times on a busy data directory, against an empty one in the same run.

Seeds a temporary data directory with 1,000 runs and 100,000 metric rows (one long run holds
10,000 of them, the rest ~90 each), then renders with Streamlit's AppTest, as a browser
session would get them:
- the runs page over the 1,000 runs;
- the run page of the long run (its live charts, config and log).
Baseline: the runs page of an empty data directory, rendered the same way. Each time is the
median of --repeat renders after one warm-up (imports and caches excluded, as on a server
that is already up). Target: under one second each.

With --db postgresql://... both data directories keep their rows in that PostgreSQL database,
each in a schema of its own (bench_empty, bench_busy: made afresh, dropped at the end), as
with VISIONBOARD_DB set; the run folders stay in the temporary directories.

    .venv/bin/python bench/bench_dashboard.py [--runs 1000] [--metrics 100000] [--repeat 5]
        [--db postgresql://...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import database, store  # noqa: E402
from engine.config import RunConfig  # noqa: E402

APP = ROOT / "dashboard" / "app.py"
TARGET_S = 1.0
BIG_RUN_ROWS = 10_000
MODELS = ("efficientnet_b0", "efficientnet_b4", "efficientnet_b7", "resnet18")
STATUSES = ("completed",) * 6 + ("failed", "cancelled", "running", "queued")
# The worker that holds the running runs: this process, beating while it measures (runs of a
# worker gone would be settled by the first render and be finished ones after it).
WORKER = f"{store.host_name()}:{os.getpid()}"


def keep_worker_beating(home: Path, stop: threading.Event) -> None:
    db = store.connect(home, url=URLS.get(home))
    while not stop.is_set():
        store.beat_worker(db, WORKER, store.host_name(), os.getpid())
        stop.wait(5)
    store.remove_worker(db, WORKER)
    db.conn.close()


def seed(home: Path, n_runs: int, n_metrics: int) -> int:
    """Insert the runs and metric rows in bulk; returns the id of the long run."""
    db = store.connect(home)
    rng = random.Random(0)
    base = RunConfig.from_dict({"dataset": str(home / "datasets" / "digits")}).resolved()
    runs = []
    for i in range(n_runs):
        status = STATUSES[i % len(STATUSES)]
        config = dict(base, model=MODELS[i % len(MODELS)], lr=rng.choice([1e-2, 1e-3, 1e-4]))
        epochs = config["epochs"]
        done = rng.randint(1, epochs) if status != "queued" else 0
        summary = {
            "epoch": done,
            "epochs": epochs,
            "epochs_trained": done,
            "best_metric": rng.random(),
            "best_epoch": max(1, done - 2),
            "metric": config["metric"],
            "stop_reason": "epoch limit" if status == "completed" else status,
        }
        runs.append(
            {
                "id": i + 1,
                "name": f"run {i + 1}",
                "task": "classification",
                "model": config["model"],
                "dataset": config["dataset"],
                "status": status,
                "config": json.dumps(config),
                "summary": json.dumps(summary),
                "user": rng.choice(["ana", "bo", "cy"]),
                "tags": json.dumps(rng.sample(["baseline", "aug", "v2", "big"], 2)),
                "note": "",
                "created_at": store.now(),
                "started_at": store.now() if status != "queued" else None,
                "heartbeat_at": store.now() if status != "queued" else None,
                "finished_at": store.now() if status not in ("queued", "running") else None,
                "worker": WORKER if status != "queued" else None,
                "cancel_requested": 0,
                "resume_requested": 0,
            }
        )
    columns = list(runs[0])
    names = ", ".join(f'"{c}"' for c in columns)
    with db.conn:
        db.conn.executemany(
            f"insert into runs ({names}) values ({', '.join('?' * len(columns))})",
            [[run[c] for c in columns] for run in runs],
        )
        database.advance_sequences(db)  # the ids were given: new runs go on after them
    big = 1
    rows = []
    # The long run: 50 epochs x 96 steps of lr and train_loss_step, plus per-epoch metrics.
    step, epoch = 0, 1
    while len(rows) < BIG_RUN_ROWS:
        for _ in range(96):
            step += 1
            rows.append((big, "lr", step, epoch, 1e-3))
            rows.append((big, "train_loss_step", step, epoch, 1.0 / step))
        for name in ("train_loss", "test_loss", "test_roc_auc", "test_accuracy", "test_f1"):
            rows.append((big, name, step, epoch, rng.random()))
        epoch += 1
    rows = rows[:BIG_RUN_ROWS]
    store.update_summary(db, big, epochs=50, epoch=epoch - 1, steps_per_epoch=96, step=step)
    others = list(range(2, n_runs + 1)) or [big]
    for k in range(n_metrics - len(rows)):
        j = k // len(others)  # the j-th row of that run
        name = ("lr", "train_loss_step", "test_roc_auc")[j % 3]
        rows.append((others[k % len(others)], name, j, j // 30 + 1, 0.5))
    with db.conn:
        db.conn.executemany(
            "insert into metrics (run_id, name, step, epoch, value) values (?, ?, ?, ?, ?)", rows
        )
    (store.run_dir(big, home) / "train.log").write_text("".join(f"step {s}\n" for s in range(5000)))
    db.conn.close()
    return big


# The database of each data directory (None: its SQLite file), set by main for --db.
URLS: dict[Path, str | None] = {}


def use(home: Path) -> None:
    """Point this process at a data directory and its database, as VISIONBOARD_HOME and
    VISIONBOARD_DB would."""
    os.environ["VISIONBOARD_HOME"] = str(home)
    if URLS.get(home):
        os.environ[database.ENV] = URLS[home]
    else:
        os.environ.pop(database.ENV, None)


def schema_url(url: str, schema: str) -> str:
    """A fresh, empty schema in the database at `url`, and the URL that uses it."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"drop schema if exists {schema} cascade")
        conn.execute(f"create schema {schema}")
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def drop_schemas(url: str, *schemas: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f"drop schema if exists {schema} cascade")


class LocalBrowser:
    """The connection of a browser on the server itself (AppTest has none, and a server
    without accounts serves only a local browser: dashboard.auth.not_local_reason)."""

    remote_ip = "127.0.0.1"
    headers = [("Host", "localhost:8501")]


def render(home: Path, page: str | None = None, query: dict | None = None) -> float:
    """Seconds of one render in a fresh session: of the runs page (the default) with the router,
    or of `page` after switching to it (the first, default page's run is not counted)."""
    from streamlit.testing.v1 import AppTest

    from dashboard import auth

    auth.client_context = LocalBrowser
    use(home)
    at = AppTest.from_file(str(APP), default_timeout=120)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    if page is None:
        start = time.perf_counter()
        at.run()
    else:
        at.run()
        at.switch_page(page)
        start = time.perf_counter()
        at.run()
    elapsed = time.perf_counter() - start
    if at.exception:
        raise RuntimeError(f"{page or 'runs'}: {at.exception[0].value}")
    # Check that the page drew what is measured (a page that stopped early would be fast).
    if page is None:
        shown = sum(len(d.value) for d in at.dataframe if d.key == "runs_table")
        total = len(store.list_runs(store.connect(home), limit=1000))
        assert shown == total, f"runs table shows {shown} of {total} runs"
    else:
        points = sum(
            len(t.get("x", []))
            for c in at.get("plotly_chart")
            for t in json.loads(c.proto.spec)["data"]
        )
        assert len(at.get("plotly_chart")) == 3 and points >= BIG_RUN_ROWS - 300, points
    return elapsed


def median_render(repeat: int, *args, **kwargs) -> float:
    render(*args, **kwargs)  # warm-up: imports, cached connection, cached reports
    return statistics.median(render(*args, **kwargs) for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--metrics", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--db", metavar="URL", help="a PostgreSQL database (default: SQLite)")
    args = parser.parse_args()
    os.environ["VISIONBOARD_SAMPLES"] = "0"  # the page renders, not the one-off sample set-up

    with tempfile.TemporaryDirectory() as tmp:
        empty, busy = Path(tmp) / "empty", Path(tmp) / "busy"
        if args.db:
            URLS[empty] = schema_url(args.db, "bench_empty")
            URLS[busy] = schema_url(args.db, "bench_busy")
        use(busy)
        start = time.perf_counter()
        big = seed(busy, args.runs, args.metrics)
        print(
            f"seeded {args.runs} runs, {args.metrics} metric rows in "
            f"{time.perf_counter() - start:.1f}s (run #{big} holds {BIG_RUN_ROWS})"
        )
        stop = threading.Event()
        beating = threading.Thread(target=keep_worker_beating, args=(busy, stop), daemon=True)
        beating.start()
        store.home_dir(empty)
        use(empty)
        store.connect(empty).conn.close()

        start = time.perf_counter()
        render(empty)
        print(f"first render (imports, cold caches): {time.perf_counter() - start:.2f}s")
        baseline = median_render(args.repeat, empty)
        runs_page = median_render(args.repeat, busy)
        run_page = median_render(args.repeat, busy, "pages/run.py", {"run": str(big)})
        stop.set()
        beating.join()
    if args.db:
        drop_schemas(args.db, "bench_empty", "bench_busy")
    print(f"database: {'PostgreSQL' if args.db else 'SQLite'}")

    print(f"\n{'page':<34}{'seconds':>9}{'/ target':>10}{'/ baseline':>12}")
    rows = [
        ("runs page, empty db (baseline)", baseline),
        (f"runs page, {args.runs} runs", runs_page),
        (f"run page, {BIG_RUN_ROWS} metric rows", run_page),
    ]
    for label, seconds in rows:
        print(f"{label:<34}{seconds:>9.3f}{seconds / TARGET_S:>10.2f}{seconds / baseline:>12.2f}")
    ok = runs_page < TARGET_S and run_page < TARGET_S
    print(f"\ntarget < {TARGET_S:.0f} s each: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
