"""Running an API app under uvicorn, the way `visionboard serve-model` and `visionboard api`
(and `visionboard serve` for the latter) start it."""

from __future__ import annotations


def run_app(app, host: str, port: int, log_level: str = "warning") -> None:
    """Serve until SIGINT or SIGTERM (uvicorn stops cleanly on both)."""
    import uvicorn

    # One process: the predictors and the batcher live in it (several would each load them).
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
