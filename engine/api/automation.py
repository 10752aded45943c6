"""The automation API: scripts list, show, queue, cancel and resume runs, read metrics, list
datasets and predict with any run's model, as the user whose API token they send.

`visionboard serve` starts it beside the dashboard (--api-port, 8502), `visionboard api`
alone. Every call but GET /api/health needs `Authorization: Bearer <token>` (tokens are made
on the dashboard's API tokens page or with `visionboard tokens add`); the token acts as its
user, with that user's current role, through the same store verbs as the dashboard and the
CLI (`by=` the token's user), so the same rules hold: 401 no, unknown or revoked token (or a
disabled account), 403 PermissionDenied, 404 RunNotFound, 409 RunStateError (or a run with no
model to predict with), 422 a config that `visionboard train` would refuse, naming the field.
Errors are {"detail": message} (and "errors": [{"field", "message"}] for configs).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from engine import data_roots, sign_in, store
from engine.api.batcher import BatcherClosed
from engine.api.inputs import ApiError, Limits
from engine.api.serving import PREDICT_BODY, ModelServer, add_error_handlers, read_images
from engine.config import ConfigError, RunConfig
from engine.run_folder import RunFolder

API_PREFIX = "/api"


class QueueRequest(BaseModel):
    """POST /api/runs: a config as `visionboard train` reads it (the keys of a config file)."""

    config: dict[str, Any] = Field(description="run config keys, e.g. dataset, model, epochs")
    tags: list[str] = Field(default_factory=list)


class PredictorCache:
    """The last few runs' ModelServers (loading a model takes seconds); a run whose model file
    changed since (a running run's new best epoch) is loaded again. Each run loads under a lock
    of its own (two requests for a cold run load it once) while the cache's lock guards only
    the dicts, so a cold model never stalls the predictions of runs already loaded. At most
    `size` loads go at once (the cache's bound holds models in memory while they load too)."""

    def __init__(self, home: Path, device: str, limits: Limits, size: int = 2):
        self.home, self.device, self.limits, self.size = home, device, limits, size
        self._servers: OrderedDict[tuple[int, int], ModelServer] = OrderedDict()
        self._loads: dict[int, _RunLoad] = {}  # runs being loaded or waited for
        self._lock = threading.Lock()
        self._loading = threading.Semaphore(size)
        self._closed = False

    def _cached(self, key: tuple[int, int]) -> ModelServer | None:
        with self._lock:
            server = self._servers.get(key)
            if server is not None:
                self._servers.move_to_end(key)
            return server

    def get(self, run_id: int) -> ModelServer:
        model = RunFolder(self.home, run_id).model
        key = (run_id, model.stat().st_mtime_ns if model.is_file() else 0)
        if (server := self._cached(key)) is not None:
            return server
        with self._lock:
            load = self._loads.setdefault(run_id, _RunLoad())
            load.users += 1
        try:
            with load.lock:
                if (server := self._cached(key)) is not None:  # the request before loaded it
                    return server
                with self._loading:
                    if self._closed:
                        raise BatcherClosed("the API is shutting down")
                    server = ModelServer.load(run_id, self.home, self.device, self.limits)
                evicted = []
                with self._lock:
                    closed = self._closed
                    if not closed:
                        self._servers[key] = server
                        while len(self._servers) > self.size:
                            evicted.append(self._servers.popitem(last=False)[1])
                if closed:  # loaded while the API stopped: nobody will close it later
                    server.close(wait=False)
                    raise BatcherClosed("the API is shutting down")
                for old in evicted:
                    # at once it takes no more requests; its thread answers those waiting
                    old.close(wait=False)
                return server
        finally:
            with self._lock:
                load.users -= 1
                if not load.users:
                    del self._loads[run_id]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            servers = list(self._servers.values())
            self._servers.clear()
        for server in servers:
            server.close()


class _RunLoad:
    """One run's load lock and how many requests hold or wait for it (the entry goes with
    the last, so the cache keeps no lock per run it ever saw)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.users = 0


class AskedLocalMode:
    """`local_mode` for store.api_token_user, worked out only when it asks (for a local admin's
    token), each time: the accounts counted then, so the first account stops those tokens at
    once, and every other request pays nothing for it. Only for a client on this machine: the
    local admin is whoever has a shell here, as the dashboard's local user is a browser here,
    so a secrets file half-edited on a server open to the network lends nobody its rights."""

    def __init__(self, local_mode: Callable[[Any], bool], db, client_host: str | None):
        self.local_mode, self.db, self.client_host = local_mode, db, client_host

    def __bool__(self) -> bool:
        if not sign_in.is_loopback_host(self.client_host or ""):
            return False
        return bool(self.local_mode(self.db))


def add_store_error_handlers(app) -> None:
    """The store's refusals as HTTP answers."""

    def handler(status: int, fields: Callable[[Exception], dict] | None = None):
        async def answer(request, exc):
            return JSONResponse({"detail": str(exc), **(fields(exc) if fields else {})}, status)

        return answer

    def field_errors(exc) -> dict:
        errors = getattr(exc, "errors", None) or getattr(exc, "problems", [])
        return {"errors": [{"field": e.field, "message": str(e)} for e in errors]}

    from engine.predict import PredictError
    from engine.preflight import RunRefused

    app.add_exception_handler(store.PermissionDenied, handler(403))
    app.add_exception_handler(store.RunNotFound, handler(404))
    app.add_exception_handler(store.RunStateError, handler(409))
    app.add_exception_handler(PredictError, handler(409))
    app.add_exception_handler(ConfigError, handler(422, field_errors))
    app.add_exception_handler(RunRefused, handler(422, field_errors))
    app.add_exception_handler(data_roots.PathRefused, handler(422))
    app.add_exception_handler(store.UserError, handler(422))


def create_api_app(
    home: str | Path | None = None,
    local_mode: Callable[[Any], bool] | None = None,
    limits: Limits | None = None,
    device: str = "cpu",
    cache_size: int = 2,
) -> FastAPI:
    """The automation API of a data directory. `local_mode(db)`: whether the server has no
    sign-in (its local admin's tokens work then); default: engine.sign_in's rule, as the
    dashboard and the CLI decide it."""
    home = store.home_dir(home)
    limits = limits or Limits()
    limits.check()
    local_mode = local_mode or (lambda db: not sign_in.sign_in_configured(db))
    cache = PredictorCache(home, device, limits, cache_size)
    connections = threading.local()

    def get_db():
        """One connection per thread: FastAPI runs each call in a thread of its pool."""
        if getattr(connections, "db", None) is None:
            connections.db = store.connect(home)
        return connections.db

    def current_user(request: Request) -> dict[str, Any]:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "missing `Authorization: Bearer <token>` header: make a token on the "
                "dashboard's API tokens page or with `visionboard tokens add`",
                {"WWW-Authenticate": "Bearer"},
            )
        db = get_db()
        client = request.client.host if request.client else None
        user = store.api_token_user(db, token.strip(), AskedLocalMode(local_mode, db, client))
        if user is None:
            raise ApiError(
                401,
                "invalid API token: unknown, revoked, or its account is disabled",
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return user

    @asynccontextmanager
    async def lifespan(app):
        yield
        cache.close()

    app = FastAPI(
        title="VisionBoard automation API",
        description="Runs, metrics, datasets and predictions for scripts. Every call but "
        "/api/health needs `Authorization: Bearer <token>` (`visionboard tokens add`).",
        lifespan=lifespan,
    )
    add_error_handlers(app)
    add_store_error_handlers(app)
    app.state.cache = cache
    authed = [Depends(current_user)]

    @app.get(f"{API_PREFIX}/health", summary="The API is up (no token needed)")
    def health() -> dict:
        return {"status": "ok"}

    @app.get(f"{API_PREFIX}/me", summary="Who the token acts as")
    def me(user: dict = Depends(current_user)) -> dict:
        return user

    @app.get(f"{API_PREFIX}/runs", summary="List runs, newest first", dependencies=authed)
    def list_runs(status: str | None = None, limit: int = Query(500, ge=1, le=10_000)) -> list:
        if status is not None and status not in store.STATUSES:
            raise ApiError(422, f"status {status!r}: expected one of {', '.join(store.STATUSES)}")
        db = get_db()
        store.settle_quietly(db)  # whoever looks records the end of a run whose worker is gone
        return [store.run_brief(r) for r in store.list_runs(db, status=status, limit=limit)]

    @app.get(f"{API_PREFIX}/runs/{{run_id}}", summary="A run: config, status, summary, metrics",
             dependencies=authed)  # fmt: skip
    def show_run(run_id: int) -> dict:
        db = get_db()
        store.settle_quietly(db, run_id)
        data = store.run_as_json(db, run_id)
        if data is None:
            raise store.RunNotFound(run_id)
        return data

    @app.get(f"{API_PREFIX}/runs/{{run_id}}/metrics", summary="A run's metric history",
             dependencies=authed)  # fmt: skip
    def metrics(run_id: int, name: list[str] | None = Query(None)) -> dict:
        db = get_db()
        if store.get_run(db, run_id) is None:
            raise store.RunNotFound(run_id)
        return {"run": run_id, "names": store.metric_names(db, run_id),
                "metrics": store.get_metrics(db, run_id, name)}  # fmt: skip

    @app.post(f"{API_PREFIX}/runs", status_code=201, summary="Queue a run")
    def queue_run(body: QueueRequest = Body(...), user: dict = Depends(current_user)) -> dict:
        """The config is checked as `visionboard train` checks it; 422 names each bad field."""
        from engine.preflight import submit_run

        db = get_db()
        store.check_permission(user, "queue")  # before the checks: a viewer learns nothing
        cfg = RunConfig.from_dict(body.config)
        run_id = submit_run(cfg, db, tags=body.tags, by=user)
        return store.run_brief(store.get_run(db, run_id))

    @app.post(f"{API_PREFIX}/runs/{{run_id}}/cancel", summary="Cancel a queued or running run")
    def cancel_run(run_id: int, user: dict = Depends(current_user)) -> dict:
        db = get_db()
        store.request_cancel(db, run_id, by=user)
        return store.run_brief(store.get_run(db, run_id))

    @app.post(f"{API_PREFIX}/runs/{{run_id}}/resume", summary="Resume a failed or cancelled run")
    def resume_run(run_id: int, user: dict = Depends(current_user)) -> dict:
        db = get_db()
        store.resume_run(db, run_id, by=user)
        return store.run_brief(store.get_run(db, run_id))

    @app.get(f"{API_PREFIX}/datasets", summary="Registered datasets", dependencies=authed)
    def datasets() -> list:
        keep = ("classes", "images", "format", "task")
        return [
            {**{k: v for k, v in d.items() if k != "info"},
             "info": {k: d["info"][k] for k in keep if k in d["info"]}}
            for d in store.list_datasets(get_db())
        ]  # fmt: skip

    @app.get(f"{API_PREFIX}/runs/{{run_id}}/model", summary="A run's model card",
             dependencies=authed)  # fmt: skip
    def model_card(run_id: int) -> dict:
        from engine.predict import PredictError
        from engine.run_folder import CardError

        if store.get_run(get_db(), run_id) is None:
            raise store.RunNotFound(run_id)
        try:
            return RunFolder(home, run_id).read_card()
        except CardError as exc:
            raise PredictError(f"run {run_id} has no model card yet ({exc})") from None

    @app.post(f"{API_PREFIX}/runs/{{run_id}}/predict", openapi_extra=PREDICT_BODY,
              summary="Predict images with a run's model", dependencies=authed)  # fmt: skip
    async def predict(run_id: int, request: Request) -> dict:
        def server() -> ModelServer:
            if store.get_run(get_db(), run_id) is None:
                raise store.RunNotFound(run_id)
            return cache.get(run_id)

        # The model may be unloaded (another run's took its place in the cache) while this
        # request's images are read: its batcher is closed then, and the run's loaded again.
        images = None
        for _ in range(3):
            try:
                found = await run_in_threadpool(server)
                if images is None:  # its room reserved in this server's queue
                    images = await read_images(found, request)
                    return await found.predict(*images, reserved=True)
                return await found.predict(*images)
            except BatcherClosed:
                continue
        raise ApiError(503, f"run {run_id}'s model was unloaded meanwhile: retry",
                       {"Retry-After": "1"})  # fmt: skip

    return app
