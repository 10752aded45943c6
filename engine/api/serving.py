"""One finished run's model behind the batcher, and the prediction server of
`visionboard serve-model RUN`.

ModelServer wraps the run's Predictor (engine.predict: the same loading, preprocessing and
outputs as `visionboard predict` and the dashboard) in a Batcher; `predict_request` turns an
HTTP request into its answer and is shared by this server's `POST /predict` and the
automation API's `POST /api/runs/{id}/predict`.

Answers: classification {"run", "task", "predictions": [{"image", "label", "score", "top":
[{"label", "score"}, ...]}]} (top_k classes, best first, default 5); detection {"run", "task",
"threshold", "predictions": [{"image", "boxes": [{"label", "score", "box": [x1, y1, x2, y2]}]}]}
(original pixels, best first, scores >= the threshold: the run's saved one unless the request
gives `threshold`).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request

from engine.api.batcher import Batcher, QueueFull
from engine.api.inputs import (
    ApiError,
    Limits,
    decode_images,
    parse_threshold,
    parse_top_k,
    read_request,
)

DEFAULT_TOP_K = 5

# OpenAPI description of the two bodies POST /predict reads by hand (inputs.py).
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        },
                        "threshold": {"type": "number", "minimum": 0, "maximum": 1},
                        "top_k": {"type": "integer", "minimum": 1},
                    },
                    "required": ["images"],
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {
                                "oneOf": [
                                    {"type": "string", "format": "byte"},
                                    {
                                        "type": "object",
                                        "properties": {
                                            "name": {"type": "string"},
                                            "data": {"type": "string", "format": "byte"},
                                        },
                                    },
                                ]
                            },
                        },
                        "threshold": {"type": "number", "minimum": 0, "maximum": 1},
                        "top_k": {"type": "integer", "minimum": 1},
                    },
                    "required": ["images"],
                }
            },
        },
    },
    "responses": {
        "413": {"description": "a body, file or image over the limits, or too many images"},
        "422": {"description": "no image, a file that is no image, a bad threshold or top_k"},
        "503": {"description": "the queue is full: retry after Retry-After seconds"},
    },
}


class ModelServer:
    """A run's Predictor behind a Batcher: concurrent requests are predicted together."""

    def __init__(self, predictor, limits: Limits | None = None):
        self.predictor = predictor
        self.limits = limits or Limits()
        self.limits.check()
        self.batcher = Batcher(
            self._predict,
            max_batch=self.limits.max_batch,
            max_wait=self.limits.max_wait_ms / 1000,
            max_queue=self.limits.max_queue,
            name=f"batcher-run-{predictor.run_id}",
        )

    @classmethod
    def load(cls, run_id: int, home=None, device: str = "auto", limits: Limits | None = None):
        """PredictError when the run or its model is missing (engine.predict)."""
        from engine.predict import load_predictor

        return cls(load_predictor(run_id, home=home, device=device), limits)

    def _predict(self, images: list, threshold: float | None) -> list[dict]:
        return self.predictor.predict(images, threshold=threshold)

    def close(self, wait: bool = True) -> None:
        """Take no more requests; answer those waiting (`wait`: before this returns)."""
        self.batcher.close(30 if wait else 0)

    def health(self) -> dict[str, Any]:
        p = self.predictor
        return {"status": "ok", "run": p.run_id, "task": p.task, "device": str(p.device),
                "batching": self.batcher.stats()}  # fmt: skip

    async def predict(
        self, images: list, threshold: float | None, top_k: int | None, reserved: bool = False
    ) -> dict:
        """The answer for decoded images [(name, PIL image)] (see the module docstring);
        `reserved`: their room in the queue was reserved (read_images)."""
        p = self.predictor
        if p.task == "detection":
            threshold = p.default_threshold if threshold is None else threshold
        try:
            future = self.batcher.submit([image for _, image in images], threshold, reserved)
        except QueueFull as exc:
            raise _busy(exc) from None
        results = await asyncio.wrap_future(future)
        names = [name for name, _ in images]
        if p.task == "detection":
            predictions = [
                {"image": name, "boxes": [
                    {"label": label, "score": score, "box": box}
                    for box, score, label in zip(r["boxes"], r["scores"], r["labels"])
                ]}
                for name, r in zip(names, results)
            ]  # fmt: skip
            return {"run": p.run_id, "task": p.task, "threshold": threshold,
                    "predictions": predictions}  # fmt: skip
        k = top_k or min(DEFAULT_TOP_K, len(p.classes))
        predictions = []
        for name, r in zip(names, results):
            top = sorted(r["probs"].items(), key=lambda item: -item[1])[:k]
            predictions.append({"image": name, "label": r["label"], "score": r["score"],
                                "top": [{"label": c, "score": s} for c, s in top]})  # fmt: skip
        return {"run": p.run_id, "task": p.task, "predictions": predictions}

    def reserve(self, count: int) -> None:
        """Room in the queue for `count` images, or ApiError 503 now: a full server says so
        before it decodes (and holds) a request's images."""
        try:
            self.batcher.reserve(count)
        except QueueFull as exc:
            raise _busy(exc) from None


def _busy(exc: QueueFull) -> ApiError:
    return ApiError(503, str(exc), {"Retry-After": str(exc.retry_after)})


async def predict_request(server: ModelServer, request) -> dict:
    """Read, check and decode a request's images and parameters, then predict them."""
    return await server.predict(*await read_images(server, request), reserved=True)


async def read_images(server: ModelServer, request) -> tuple[list, float | None, int | None]:
    """A request's decoded images [(name, image)], threshold and top_k, checked against the
    server's run and limits (ApiError), their room in the queue reserved before they are
    decoded: the caller submits them with reserved=True."""
    from starlette.concurrency import run_in_threadpool

    files, params = await read_request(request, server.limits)
    p = server.predictor
    threshold = parse_threshold(params.get("threshold"))
    top_k = parse_top_k(params.get("top_k"), len(p.classes))
    if threshold is not None and p.task != "detection":
        raise ApiError(422, f"threshold: run {p.run_id} is a classifier; threshold is for "
                       "detection runs (top_k chooses how many classes come back)")  # fmt: skip
    if top_k is not None and p.task == "detection":
        raise ApiError(422, f"top_k: run {p.run_id} is a detector; top_k is for classification "
                       "runs (threshold chooses which boxes come back)")  # fmt: skip
    server.reserve(len(files))
    try:
        images = await run_in_threadpool(decode_images, files, server.limits.max_pixels, p.read)
    except BaseException:
        server.batcher.release(len(files))
        raise
    return images, threshold, top_k


def add_error_handlers(app) -> None:
    """ApiError -> its status and {"detail": message, ...}; anything unexpected -> 500 with
    its message (never a traceback)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return JSONResponse(
            {"detail": exc.message, **exc.extra}, status_code=exc.status, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        errors = exc.errors()
        where = [".".join(str(part) for part in e.get("loc", ())) for e in errors]
        detail = "; ".join(f"{w}: {e.get('msg')}" for w, e in zip(where, errors))
        status = 400 if any(e.get("type") == "json_invalid" for e in errors) else 422
        fields = [{"field": w, "message": str(e.get("msg"))} for w, e in zip(where, errors)]
        return JSONResponse({"detail": detail, "errors": fields}, status_code=status)

    @app.exception_handler(Exception)
    async def unexpected(request, exc: Exception):
        return JSONResponse(
            {"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500
        )


def create_model_app(server: ModelServer):
    """The prediction server of one run: POST /predict, GET /health, GET /model, /docs."""
    p = server.predictor

    @asynccontextmanager
    async def lifespan(app):
        yield
        server.close()

    app = FastAPI(
        title=f"VisionBoard run {p.run_id}",
        description=f"Predictions of run {p.run_id} ({p.task}, {len(p.classes)} classes: "
        f"{', '.join(p.classes[:20])}{', ...' if len(p.classes) > 20 else ''}).",
        lifespan=lifespan,
    )
    add_error_handlers(app)

    @app.post("/predict", openapi_extra=PREDICT_BODY, summary="Predict images")
    async def predict(request: Request) -> dict:
        """Classes with scores (top_k), or boxes with labels and scores at the threshold."""
        return await predict_request(server, request)

    @app.get("/health", summary="The server is up")
    def health() -> dict:
        return server.health()

    @app.get("/model", summary="The run's model card")
    def model() -> dict:
        return p.card

    return app
