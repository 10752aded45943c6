"""`visionboard`: the command line, for people who live in a terminal and for scripts."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from engine import choices, database, sign_in, store
from engine.config import ConfigError, load_config
from engine.run_folder import RunFolder

ROOT = Path(__file__).resolve().parent.parent


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


# -- serve / worker -----------------------------------------------------------------------


def cmd_serve(args) -> int:
    from engine.sample_datasets import ensure_samples

    if args.api_port and args.api_port == args.port:
        return _fail(f"--api-port {args.api_port} is the dashboard's --port: give each its own")
    home = store.home_dir(args.home)
    db = store.connect(home)
    refused = open_host_refused(args.host, db, args.allow_anyone)
    if refused:
        return _fail(refused)
    ensure_samples(db, home)
    env = dict(os.environ, VISIONBOARD_HOME=str(home))
    if args.allow_anyone:
        env["VISIONBOARD_ALLOW_ANYONE"] = "1"  # the dashboard then serves remote browsers too

    def start_worker() -> subprocess.Popen:
        command = [sys.executable, "-m", "engine.cli", "--home", str(home), "worker"]
        return subprocess.Popen(command, env=env, cwd=ROOT)

    def start_api() -> subprocess.Popen:  # the automation API, in its own process (cmd_api)
        command = [sys.executable, "-m", "engine.cli", "--home", str(home), "api",
                   "--port", str(args.api_port), "--host", args.host, "--no-banner"]  # fmt: skip
        return subprocess.Popen(command + (["--allow-anyone"] if args.allow_anyone else []),
                                env=env, cwd=ROOT)  # fmt: skip

    def restarted(proc, started: float, start, what: str):
        """(proc, when started), started again if it stopped: the queue must keep a worker and
        scripts their API (not faster than every 5 s, so one that dies at once does not spin),
        and say so."""
        if proc.poll() is None:
            return proc, started
        time.sleep(max(0.0, 5.0 - (time.monotonic() - started)))
        code = proc.returncode
        proc, started = start(), time.monotonic()
        print(f"VisionBoard: the {what} stopped (exit code {code}); started a new one "
              f"(pid {proc.pid})", flush=True)  # fmt: skip
        return proc, started

    worker, worker_started = start_worker(), time.monotonic()
    api, api_started, api_quick_stops = None, 0.0, 0
    if args.api_port:
        api, api_started = start_api(), time.monotonic()
    app = subprocess.Popen(
        [
            sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard" / "app.py"),
            "--server.port", str(args.port), "--server.address", args.host,
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
        ],
        env=env,
        cwd=ROOT,
    )  # fmt: skip
    print(
        f"VisionBoard: http://{args.host}:{args.port}  (data in {home}; Ctrl-C stops)", flush=True
    )
    if api is not None:
        print(
            f"VisionBoard API: http://{args.host}:{args.api_port}/docs  (scripts send "
            "`Authorization: Bearer <token>`: `visionboard tokens add`)",
            flush=True,
        )
    problem = sign_in.oidc_problem()
    if problem:
        print(f"VisionBoard: {problem}", flush=True)
    if not sign_in.sign_in_configured(db):
        print(
            "VisionBoard: no accounts, so no sign-in: whoever opens it is an admin "
            "(`visionboard users add NAME --role admin` adds accounts)",
            flush=True,
        )
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops both, like Ctrl-C
    try:
        while app.poll() is None:
            worker, worker_started = restarted(worker, worker_started, start_worker, "worker")
            if api is not None and api.poll() is not None:
                # One that stops within seconds of starting, three times over, will not start
                # (its port taken, say): stop trying, and say so, rather than every 5 s.
                quick = time.monotonic() - api_started < 10
                api_quick_stops = api_quick_stops + 1 if quick else 0
                if api_quick_stops >= 3:
                    print(f"VisionBoard: the API stopped at start {api_quick_stops} times "
                          f"(exit code {api.returncode}; is port {args.api_port} taken?): not "
                          "started again", flush=True)  # fmt: skip
                    api = None
                else:
                    api, api_started = restarted(api, api_started, start_api, "API")
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        procs = [proc for proc in (app, worker, api) if proc is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


def open_host_refused(host: str, db, allow_anyone: bool) -> str | None:
    """Why listening on `host` is refused, or None. With no account, whoever uses VisionBoard
    is its admin: only this machine may (the dashboard, and the API's local admin tokens)."""
    if sign_in.is_loopback_host(host) or allow_anyone or sign_in.sign_in_configured(db):
        return None
    problem = sign_in.oidc_problem()
    return (
        f"--host {host} would let anyone who reaches this machine use VisionBoard as "
        "an admin: no account is configured. Add accounts first (`visionboard users add "
        "NAME --role admin`) or configure sign-in through your identity provider (an "
        "[auth] section in .streamlit/secrets.toml); or pass --allow-anyone if the network "
        "is trusted" + (f" ({problem})" if problem else "")
    )


def cmd_worker(args) -> int:
    from engine.launch import gpu_count
    from engine.worker import Worker, parse_devices

    if args.host_name:  # before the worker reads it; its trainers inherit it
        os.environ["VISIONBOARD_HOST"] = args.host_name
    try:
        devices = None if args.devices is None else parse_devices(args.devices, gpu_count())
    except ValueError as exc:
        return _fail(str(exc))
    worker = Worker(args.home, devices=devices)

    signal.signal(signal.SIGTERM, worker.stop_on_signal)
    signal.signal(signal.SIGINT, worker.stop_on_signal)
    gpus = ",".join(map(str, worker.gpus)) or "none"
    where = "PostgreSQL" if worker.db.url else "SQLite"
    print(
        f"worker {worker.id} serving {worker.home} ({where}; GPUs: {gpus})",
        flush=True,
    )
    orphans = store.list_runs(worker.db, status="running")
    for run in orphans:
        if run["worker_gone"]:
            print(
                f"run {run['id']}: its worker ({run['worker']}) is gone; recording its end",
                flush=True,
            )
    worker.run(once=args.once)
    return 0


# -- train --------------------------------------------------------------------------------


def cmd_train(args) -> int:
    db = store.connect(args.home)
    if args.resume is not None:
        run = store.get_run(db, args.resume)
        if run is None:
            return _fail(f"run {args.resume} not found")
        if args.config or args.set:
            return _fail(
                "--resume continues a run with its own config; drop the config file and --set "
                "(to change it, start a new run)"
            )
        try:
            store.resume_run(db, args.resume, by=cli_user())
        except (store.RunStateError, store.PermissionDenied) as exc:
            return _fail(str(exc))
        run_id = args.resume
        print(f"resuming run {run_id}: {run['name']}")
    else:
        if not args.config and not args.set:
            return _fail("give a config file (TOML or JSON) and/or --set key=value")
        try:
            cfg = load_config(args.config, args.set)
        except ConfigError as exc:
            return _fail(str(exc))
        from engine.preflight import RunRefused, submit_run

        # The New run form's check: a run it would refuse is refused here, before queueing.
        try:
            run_id = submit_run(cfg, db, tags=args.tag or [], by=cli_user(), on_host=args.on_host)
        except (RunRefused, store.PermissionDenied) as exc:
            return _fail(str(exc))
        print(f"queued run {run_id}: {store.get_run(db, run_id)['name']}")
    if args.no_follow:
        return 0
    return follow(db, run_id, store.home_dir(args.home))


def cli_user() -> dict:
    """Who acts from the command line: someone with a shell on the server is its admin. It may
    name itself (VISIONBOARD_USER, e.g. the person behind a shared login), but anyone can set
    that, so the audit trail also keeps the OS account it really runs as (os_user)."""
    try:
        os_user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (some containers)
        os_user = f"uid {os.getuid()}"
    return {"username": os.environ.get("VISIONBOARD_USER") or os_user, "role": "admin",
            "os_user": os_user}  # fmt: skip


def follow(db, run_id: int, home: Path) -> int:
    """Show a run's progress until it ends; start a worker for it when none would start it
    (none serves the queue, or the one that did is gone while the run waits)."""
    from tqdm import tqdm

    from engine.worker import Worker

    worker = thread = None
    crashed: list[BaseException] = []  # what stopped our worker, if it raised

    def work(worker: Worker) -> None:
        try:
            worker.run()
        except BaseException as exc:
            crashed.append(exc)
            raise  # the thread's traceback goes to stderr

    def start_worker_if_needed(run: dict) -> None:
        nonlocal worker, thread
        if run["on_host"] not in (None, "", store.host_name()):
            return  # pinned to another host: its workers start it
        if thread is not None and not thread.is_alive() and not crashed:
            thread = None  # it ended with nothing for it (another worker took the run)
        serving = store.worker_running(db, run_id, run["on_host"])  # one that may take it
        if thread is None and run["status"] == "queued" and not serving:
            worker = Worker(home, only_run=run_id)
            thread = threading.Thread(target=work, args=(worker,), daemon=True)
            thread.start()

    start_worker_if_needed(store.get_run(db, run_id))
    bar = tqdm(total=None, unit="step", dynamic_ncols=True)
    cancelling = False
    # A closed terminal or `kill` must cancel the run like Ctrl-C, not orphan its trainer.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    try:
        while True:
            try:
                store.settle_quietly(db, run_id)  # a run whose worker is gone gets its end
                run = store.get_run(db, run_id)
                start_worker_if_needed(run)
                summary = run["summary"]
                if summary.get("steps_per_epoch") and bar.total is None:
                    bar.total = summary["steps_per_epoch"] * summary.get("epochs", 1)
                    bar.refresh()
                if summary.get("step") is not None:
                    bar.n = min(summary["step"], bar.total or summary["step"])
                post = {"status": store.status_label(run)}
                if summary.get("current_epoch") or summary.get("epoch"):
                    post["epoch"] = (
                        f"{summary.get('current_epoch', summary.get('epoch'))}/{summary.get('epochs')}"
                    )
                if summary.get("best_metric") is not None:
                    post[f"best {summary.get('metric')}"] = f"{summary['best_metric']:.4f}"
                bar.set_postfix(post)
                if run["status"] in store.FINISHED:
                    break
                if crashed:
                    thread.join(5)  # its traceback printed before our message
                    bar.close()
                    return _fail(
                        f"run {run_id} is {run['status']}: the worker this command started "
                        f"stopped ({type(crashed[0]).__name__}: {crashed[0]}); start one with "
                        "`visionboard worker`, or see the traceback above"
                    )
                if thread is not None:
                    thread.join(1)  # our worker ends with the run: no second of waiting
                else:
                    time.sleep(1)
            except KeyboardInterrupt:
                if cancelling:
                    if thread is not None:  # our worker's trainer must not outlive us
                        bar.write("stopping the trainer now")
                        worker.stop_event.set()
                        thread.join(timeout=30)
                    break
                cancelling = True
                try:
                    store.request_cancel(db, run_id, by=cli_user())
                except store.RunStateError:
                    continue  # it ended meanwhile: the next look at its status stops here
                bar.write(
                    "cancelling (Ctrl-C again to stop at once; the run stops at its next step)"
                )
    finally:
        bar.close()
    if thread is not None:
        thread.join(timeout=30)
    run = store.get_run(db, run_id)
    print_summary(run)
    return 0 if run["status"] == "completed" else 1


def print_summary(run: dict) -> None:
    s = run["summary"]
    print(f"run {run['id']} {store.status_label(run)}: {run['name']}")
    if run.get("error"):
        print(f"  error: {run['error']}")
    for key in (
        "stop_reason",
        "best_metric",
        "best_epoch",
        "epochs_trained",
        "metric",
        "global_batch_size",
        "trainable_params",
    ):
        if s.get(key) is not None:
            print(f"  {key}: {s[key]}")
    print(f"  files: {RunFolder(store.home_dir(), run['id']).path}")


# -- runs ---------------------------------------------------------------------------------


def cmd_runs(args) -> int:
    db = store.connect(args.home)
    store.settle_quietly(db)  # whoever looks records the end of a run whose worker is gone
    action = args.action
    if action == "list":
        runs = store.list_runs(db, status=args.status)
        if args.json:
            print(json.dumps([store.run_brief(r) for r in runs], indent=2))
            return 0
        print_table(
            ["id", "name", "status", "task", "model", "best", "epochs", "user", "created"],
            [
                [
                    r["id"], r["name"][:40], store.status_label(r), r["task"], r["model"],
                    _fmt(r["summary"].get("best_metric")),
                    f"{r['summary'].get('epochs_trained', 0)}/{r['config'].get('epochs')}",
                    r["user"], (r["created_at"] or "")[:16],
                ]
                for r in runs
            ],
        )  # fmt: skip
        return 0
    if args.id is None:
        return _fail(f"runs {action} needs a run id")
    if store.get_run(db, args.id) is None:
        return _fail(f"run {args.id} not found")
    if action == "show":
        data = store.run_as_json(db, args.id)
        if args.json:
            print(json.dumps(data, indent=2))
        else:
            print_summary(store.get_run(db, args.id))
            print(json.dumps(data["config"], indent=2))
    elif action == "cancel":
        try:
            store.request_cancel(db, args.id, by=cli_user())
        except (store.RunStateError, store.PermissionDenied) as exc:
            return _fail(str(exc))
        print(f"cancel requested for run {args.id}")
    elif action == "delete":
        try:
            store.delete_run(db, args.id, by=cli_user())
        except (store.RunStateError, store.PermissionDenied) as exc:
            return _fail(str(exc))
        print(f"deleted run {args.id}")
    return 0


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4f}"


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


# -- users --------------------------------------------------------------------------------


def read_new_password(args, username: str) -> str:
    """A new password: one line of stdin with --password-stdin (scripts), else typed twice."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass(f"password for {username}: ")
    if getpass.getpass("again: ") != first:
        raise store.UserError("the two passwords differ; nothing changed")
    return first


def cmd_users(args) -> int:
    db = store.connect(args.home)
    try:
        if args.action == "list":
            users = store.list_users(db)
            if args.json:
                print(json.dumps(users, indent=2))
                return 0
            print_table(
                ["user", "role", "source", "status", "email", "created"],
                [
                    [
                        u["username"], u["role"], u["source"],
                        "disabled" if u["disabled"] else "enabled", u["email"] or "",
                        (u["created_at"] or "")[:16],
                    ]
                    for u in users
                ],
            )  # fmt: skip
            return 0
        if not args.name:
            return _fail(f"users {args.action} needs a user NAME")
        if args.action == "add":
            if store.get_user(db, args.name):
                return _fail(f"user {args.name!r} already exists")
            store.add_user(db, args.name, args.role, read_new_password(args, args.name),
                           email=args.email or "", by=cli_user())  # fmt: skip
            print(f"added user {args.name} ({args.role})")
        elif args.action == "reset":
            if not store.get_user(db, args.name):
                return _fail(f"no user {args.name!r}")
            store.set_password(db, args.name, read_new_password(args, args.name), by=cli_user())
            print(f"new password set for {args.name}; their browsers sign in again")
        elif args.action in ("disable", "enable"):
            store.set_user_disabled(db, args.name, args.action == "disable", by=cli_user())
            print(f"user {args.name} {args.action}d")
        elif args.action == "role":
            if not args.role_name:
                return _fail(f"users role needs NAME and a ROLE ({', '.join(choices.ROLES)})")
            store.set_user_role(db, args.name, args.role_name, by=cli_user())
            print(f"user {args.name} is now {args.role_name}")
    except ValueError as exc:  # UserError, a weak password, an unknown role
        return _fail(str(exc))
    return 0


# -- audit --------------------------------------------------------------------------------


def cmd_audit(args) -> int:
    """Who did what and when (the store's audit trail), newest first."""
    db = store.connect(args.home)
    try:
        rows = store.list_audit(
            db,
            by=cli_user(),
            since=args.since,
            limit=args.limit,
            username=args.user,
            action=args.action,
            target_kind=args.kind,
            target_id=args.target,
        )
    except store.PermissionDenied as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print_table(
        ["at", "user", "action", "target", "detail"],
        [
            [r["at"], r["username"], r["action"], f"{r['target_kind']} {r['target_id']}",
             json.dumps(r["detail"])[:80] if r["detail"] else ""]
            for r in rows
        ],
    )  # fmt: skip
    return 0


# -- datasets / weights -------------------------------------------------------------------


def cmd_db(args) -> int:
    """Copy the current store (the SQLite file, or $VISIONBOARD_DB) into an empty PostgreSQL
    database, every table, ids kept; then point every process at it."""
    if not database.is_postgresql(args.to):
        return _fail(f"--to {args.to!r}: expected a PostgreSQL URL, postgresql://...")
    source = store.connect(args.home)
    if source.url == args.to:
        return _fail("--to names the database in use: give another, empty one")
    target = store.connect(args.home, url=args.to)
    try:
        copied = database.copy_rows(source, target)
    except database.CopyRefused as exc:
        return _fail(str(exc))
    for table, rows in copied.items():
        print(f"{table:<12}{rows:>10} rows")
    print(
        f"copied to {database.safe_url(args.to)}; set VISIONBOARD_DB to it (or pass --db) for "
        "the dashboard and every worker"
    )
    return 0


def cmd_datasets(args) -> int:
    db = store.connect(args.home)
    if args.action == "list":
        for d in store.list_datasets(db):
            print(f"{d['name']}\t{d['task']}\t{d['format']}\t{d['path']}")
        return 0
    from engine.data import inspect_dataset

    if not args.path:
        return _fail(f"datasets {args.action} needs a PATH")
    path = store.resolve_dataset(db, args.path)
    info = inspect_dataset(path, task=args.task, fmt=args.format)
    if args.action == "add":
        if info.get("error"):
            return _fail(f"{path}: {info['error']}")
        name = args.name or Path(path).name
        try:
            store.register_dataset(
                db, name, str(Path(path).resolve()), info["format"], info["task"], info,
                by=cli_user(),
            )  # fmt: skip
        except store.PermissionDenied as exc:
            return _fail(str(exc))
        print(f"registered dataset {name!r} ({info['task']}, {info['format']})")
        return 0
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"{info['path']}: {info.get('task')}, format {info.get('format')}")
        if info.get("error"):
            print(f"  error: {info['error']}")
        print(f"  images: {_splits_text(info.get('images'))}")
        for cls, counts in (info.get("images_per_class") or {}).items():
            boxes = (info.get("boxes_per_class") or {}).get(cls)
            line = f"  class {cls}: images {_splits_text(counts)}"
            print(line + (f"; boxes {_splits_text(boxes)}" if boxes is not None else ""))
        # Blocking problems come first (inspect_dataset sorts them), each line says its weight.
        for p in info.get("problems") or []:
            where = f"{p['file']}: " if p.get("file") else ""
            print(f"  {p.get('severity', 'warning')}: {where}{p['message']}")
        n = info.get("summary") or {}
        print(
            f"  {n.get('blocking', 0)} blocking, {n.get('warning', 0)} warnings, "
            f"{n.get('info', 0)} info"
        )
    return 1 if info.get("error") else 0


def _splits_text(counts) -> str:
    if not isinstance(counts, dict):
        return str(counts)
    return " / ".join(f"{split} {n}" for split, n in counts.items())


def cmd_weights(args) -> int:
    from engine import weights

    try:
        if args.action == "list":
            rows = weights.list_weights(args.home)
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                print_table(
                    ["model", "available", "source", "added by", "path"],
                    [
                        [
                            r["model"],
                            "yes" if r["available"] else "no",
                            r["source"] or "",
                            r["added_by"] or "",
                            r["path"] or "",
                        ]
                        for r in rows
                    ],
                )
        elif args.action == "pull":
            print(f"{args.model}: {weights.pull_weights(args.model)}")
        elif args.action == "import":
            if not args.file:
                return _fail("weights import needs MODEL and FILE")
            path = weights.import_weights(args.model, args.file, args.home, by=cli_user())
            print(f"{args.model}: imported to {path}")
    except (ValueError, OSError, RuntimeError, store.PermissionDenied) as exc:
        return _fail(str(exc))
    return 0


# -- predict / export ---------------------------------------------------------------------


def cmd_predict(args) -> int:
    from engine.predict import PredictError, predict_files

    try:
        result = predict_files(
            args.run, args.files, out=args.out, batch_size=args.batch_size, home=args.home
        )
    except PredictError as exc:
        return _fail(str(exc))
    print(
        f"{result['predicted']} image(s) predicted, {result['failed']} unreadable"
        + (f" -> {args.out}" if args.out else ""),
        file=sys.stderr,
    )
    return 0


def cmd_export(args) -> int:
    from engine.export import ExportError, export_run

    try:
        path = export_run(args.run, args.format, out=args.out, home=args.home)
    except ExportError as exc:
        return _fail(str(exc))
    print(f"exported run {args.run} as {args.format}: {path}")
    return 0


# -- HTTP API: prediction server, automation API, tokens ----------------------------------


def serving_limits(args):
    """The prediction limits of `serve-model` and `api` from their flags; ValueError if bad."""
    from engine.api.inputs import MB, Limits

    limits = Limits(
        max_images=args.max_images,
        max_file_bytes=int(args.max_file_mb * MB),
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
    )
    limits.check()
    return limits


def cmd_serve_model(args) -> int:
    from engine.api.server import run_app
    from engine.api.serving import ModelServer, create_model_app
    from engine.predict import PredictError

    try:
        server = ModelServer.load(args.run, args.home, args.device, serving_limits(args))
    except (PredictError, ValueError) as exc:
        return _fail(str(exc))
    where = f"http://{args.host}:{args.port}"
    print(f"VisionBoard run {args.run} ({server.predictor.task}, {server.predictor.device}): "
          f"POST {where}/predict, docs at {where}/docs  (Ctrl-C stops)", flush=True)  # fmt: skip
    if not sign_in.is_loopback_host(args.host):
        print("VisionBoard: the prediction server asks for no token: whoever reaches "
              f"{args.host}:{args.port} can use this model", flush=True)  # fmt: skip
    run_app(create_model_app(server), args.host, args.port)
    return 0


def cmd_api(args) -> int:
    from engine.api.automation import create_api_app
    from engine.api.server import run_app
    from engine.predict import PredictError, resolve_device

    home = store.home_dir(args.home)
    db = store.connect(home)
    refused = open_host_refused(args.host, db, args.allow_anyone)
    if refused:
        return _fail(refused)
    try:
        limits = serving_limits(args)
        resolve_device(args.device)  # its models load at the first prediction: check it now
    except (ValueError, PredictError) as exc:
        return _fail(str(exc))
    from engine.sample_datasets import ensure_samples

    try:  # listed at once, as `serve` and the dashboard list them; the API serves without
        ensure_samples(db, home)
    except OSError as exc:  # a full or read-only disk: no samples, but the API still serves
        print(f"visionboard api: sample datasets not built ({exc})", file=sys.stderr)
    app = create_api_app(home, limits=limits, device=args.device)  # sign_in's rule decides
    if not args.no_banner:  # `serve`, which starts it, says where it is itself
        print(f"VisionBoard API: http://{args.host}:{args.port}/docs  (data in {home}; every "
              "call needs `Authorization: Bearer <token>`: `visionboard tokens add`)", flush=True)  # fmt: skip
    run_app(app, args.host, args.port)
    return 0


def cmd_tokens(args) -> int:
    """API tokens: with accounts, each is an account's (--user); without, the local admin's."""
    db = store.connect(args.home)
    me = cli_user()
    local = not sign_in.sign_in_configured(db)
    try:
        if args.action == "add":
            user = args.user or me["username"]
            if local and user != me["username"]:
                return _fail(
                    f"--user {user}: this server has no accounts, so a token is its local "
                    f"admin's ({me['username']}); add accounts first (`visionboard users add`)"
                )
            if not local and store.get_user(db, user) is None:
                return _fail(
                    f"no account {user!r}: --user names the account whose token it is "
                    "(`visionboard users list`)"
                )
            token, record = store.add_api_token(db, user, args.name, by=me, local_admin=local)
            role = "admin" if local else store.get_user(db, user)["role"]
            print(token)
            print(
                f"token {record['id']} of {user} ({role}{', local admin' if local else ''}): "
                "shown this once; scripts send it as `Authorization: Bearer <token>`",
                file=sys.stderr,
            )
        elif args.action == "list":
            rows = store.list_api_tokens(db, args.user, by=me)
            if args.json:
                print(json.dumps(rows, indent=2))
                return 0
            print_table(
                ["id", "user", "name", "created", "last used", "status"],
                [
                    [t["id"], t["username"], t["name"], (t["created_at"] or "")[:16],
                     (t["last_used_at"] or "")[:16], "revoked" if t["revoked"] else "active"]
                    for t in rows
                ],
            )  # fmt: skip
        elif args.action == "revoke":
            if not args.id:
                return _fail("tokens revoke needs a token ID (`visionboard tokens list`)")
            store.revoke_api_token(db, args.id, by=me)
            print(f"token {args.id} revoked")
    except (ValueError, store.PermissionDenied) as exc:
        return _fail(str(exc))
    return 0


# -- parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    home = argparse.ArgumentParser(add_help=False)
    home.add_argument(
        "--home",
        default=argparse.SUPPRESS,
        help="data directory (default: $VISIONBOARD_HOME or ./runs)",
    )
    home.add_argument(
        "--db",
        default=argparse.SUPPRESS,
        metavar="URL",
        help="PostgreSQL database, postgresql://... (default: $VISIONBOARD_DB, else the SQLite "
        "file in the data directory)",
    )
    parser = argparse.ArgumentParser(
        prog="visionboard",
        description="VisionBoard: train image classifiers and detectors.",
        parents=[home],
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", parents=[home], help="start the dashboard and a worker")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument(
        "--host",
        default="localhost",
        help="address to listen on; another than localhost needs accounts (or --allow-anyone)",
    )
    p.add_argument(
        "--allow-anyone",
        action="store_true",
        help="serve other machines without sign-in: everyone who reaches it is an admin",
    )
    p.add_argument(
        "--api-port", type=int, default=8502, help="port of the automation API (0: none)"
    )
    p.set_defaults(func=cmd_serve)

    serving = argparse.ArgumentParser(add_help=False)
    serving.add_argument("--device", default="auto", choices=list(choices.DEVICES))
    serving.add_argument("--max-images", type=int, default=16, help="images in one request")
    serving.add_argument("--max-file-mb", type=float, default=10.0, help="size of one image")
    serving.add_argument("--max-batch", type=int, default=16, help="images predicted at once")
    serving.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="how long a batch waits for requests"
    )
    serving.add_argument(
        "--max-queue", type=int, default=64, help="images waiting; past it, 503 Retry-After"
    )

    p = sub.add_parser(
        "serve-model", parents=[home, serving], help="serve a run's model over HTTP (/predict)"
    )
    p.add_argument("run", type=int)
    p.add_argument("--port", type=int, default=8503)
    p.add_argument("--host", default="localhost")
    p.set_defaults(func=cmd_serve_model)

    p = sub.add_parser("api", parents=[home, serving], help="the automation API alone")
    p.add_argument("--port", type=int, default=8502)
    p.add_argument("--host", default="localhost")
    p.add_argument("--allow-anyone", action="store_true", help="another host without accounts")
    p.add_argument("--no-banner", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_api, device="cpu")

    p = sub.add_parser("tokens", parents=[home], help="API tokens: add, list, revoke")
    p.add_argument("action", choices=["add", "list", "revoke"])
    p.add_argument("id", nargs="?", help="token id (revoke)")
    p.add_argument("--user", help="whose token (an account; default: you)")
    p.add_argument("--name", default="", help="a name to recognise the token by (add)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tokens)

    p = sub.add_parser("worker", parents=[home], help="train queued runs")
    p.add_argument("--once", action="store_true", help="stop when the queue is empty")
    p.add_argument(
        "--devices", metavar="GPUS", help="GPUs it may use, e.g. 0,1, or cpu (default: all)"
    )
    p.add_argument(
        "--host-name",
        metavar="NAME",
        help="this host's name for pinned runs and liveness (default: $VISIONBOARD_HOST or "
        "the host name)",
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("train", parents=[home], help="queue a run and follow it")
    p.add_argument("config", nargs="?", help="TOML or JSON config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    p.add_argument("--resume", type=int, metavar="ID", help="continue a failed or cancelled run")
    p.add_argument("--tag", action="append", help="tag the run")
    p.add_argument("--no-follow", action="store_true", help="queue and return")
    p.add_argument(
        "--on-host", metavar="NAME", help="only a worker on this host may train it (default: any)"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("db", parents=[home], help="the database: copy it to PostgreSQL")
    p.add_argument("action", choices=["copy"])
    p.add_argument("--to", required=True, metavar="URL", help="an empty PostgreSQL database")
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("runs", parents=[home], help="list, show, cancel or delete runs")
    p.add_argument(
        "action", nargs="?", default="list", choices=["list", "show", "cancel", "delete"]
    )
    p.add_argument("id", nargs="?", type=int)
    p.add_argument("--json", action="store_true")
    p.add_argument("--status", choices=store.STATUSES)
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("users", parents=[home], help="built-in accounts: add, list, disable...")
    p.add_argument("action", choices=["list", "add", "reset", "disable", "enable", "role"])
    p.add_argument("name", nargs="?", help="user name")
    p.add_argument("role_name", nargs="?", metavar="ROLE", help="the new role (role)")
    p.add_argument(
        "--role", default="member", choices=list(choices.ROLES), help="role of a new user (add)"
    )
    p.add_argument("--email", help="email of a new user (add)")
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin (add, reset)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("audit", parents=[home], help="who did what and when (newest first)")
    p.add_argument("--user", help="only what this user did")
    p.add_argument("--action", help="only this action (queue, cancel, delete, add_user, ...)")
    p.add_argument("--kind", choices=store.AUDIT_TARGET_KINDS, help="target kind")
    p.add_argument("--target", help="only this run id, dataset name, model or user name")
    p.add_argument("--since", help="only from this time on (ISO, e.g. 2025-01-31)")
    p.add_argument("--limit", type=int, default=200, help="at most this many records")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("datasets", parents=[home], help="inspect, add or list datasets")
    p.add_argument("action", choices=["inspect", "add", "list"])
    p.add_argument("path", nargs="?")
    p.add_argument("--format", default=choices.AUTO_FORMAT, choices=choices.format_names())
    p.add_argument("--task", choices=list(choices.TASKS))
    p.add_argument("--name", help="name to register the dataset under (add)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("predict", parents=[home], help="predict images with a finished run's model")
    p.add_argument("run", type=int)
    p.add_argument("files", nargs="+", help="image files or folders")
    p.add_argument(
        "--out", help="write predictions to a .csv or .jsonl file (default: CSV on stdout)"
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", parents=[home], help="export a run's model")
    p.add_argument("run", type=int)
    p.add_argument("--format", required=True, choices=list(choices.EXPORT_FORMATS))
    p.add_argument("--out", help="output file (default: in the run's folder)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("weights", parents=[home], help="pre-trained weights: list, pull, import")
    p.add_argument("action", choices=["list", "pull", "import"])
    p.add_argument("model", nargs="?")
    p.add_argument("file", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_weights)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.home = getattr(args, "home", None)
    if args.home:
        os.environ["VISIONBOARD_HOME"] = str(Path(args.home).resolve())
    if args.command == "weights" and args.action in ("pull", "import") and not args.model:
        return _fail(f"weights {args.action} needs a MODEL")
    if getattr(args, "db", None):  # the workers and trainers this starts inherit it
        os.environ[database.ENV] = args.db
    try:
        database.configured_url()
        return args.func(args)
    except database.DatabaseURLError as exc:
        return _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
