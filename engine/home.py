"""The data directory: where the database, the run folders and the datasets live."""

from __future__ import annotations

import os
from pathlib import Path


def home_dir(home: str | Path | None = None) -> Path:
    """The data directory: `home`, else $VISIONBOARD_HOME, else ./runs (created if missing)."""
    path = Path(home or os.environ.get("VISIONBOARD_HOME") or "runs")
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()
