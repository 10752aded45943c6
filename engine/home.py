"""The data directory (where the database, the run folders and the datasets live), and the
name of this host."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def home_dir(home: str | Path | None = None) -> Path:
    """The data directory: `home`, else $VISIONBOARD_HOME, else ./runs (created if missing)."""
    path = Path(home or os.environ.get("VISIONBOARD_HOME") or "runs")
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def host_name() -> str:
    """This machine's name as workers, trainers and liveness checks record it:
    $VISIONBOARD_HOST, else the host name (a pid is checked only on its own host)."""
    return os.environ.get("VISIONBOARD_HOST") or socket.gethostname()
