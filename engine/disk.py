"""Free space: what a full disk is called, and the check before a large write.

The trainer checks the space before it writes a model or a checkpoint, so a full disk stops
the run with a cause that names it ("disk full: 3 MB free in DIR, at least 85 MB needed")
while RESERVE_BYTES are still free for the database, the log and that status. Whatever still
runs into ENOSPC (or SQLite's "database or disk is full", or PostgreSQL's disk_full, SQLSTATE
53100, when the database server's disk fills) is recognised by is_disk_full and
described by disk_full_message, by the trainer and by the worker alike.
"""

from __future__ import annotations

import errno
import math
import shutil
import sqlite3
from pathlib import Path

MB = 1024 * 1024
# Left free after any large write of ours: the database's status writes and the log need room.
RESERVE_BYTES = 64 * MB
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
POSTGRESQL_DISK_FULL = "53100"  # SQLSTATE of psycopg.errors.DiskFull


class DiskFull(OSError):
    """Too little space for a write we are about to make; the message says how much."""

    def __init__(self, directory: str | Path, free: int, needed: int):
        self.directory, self.free, self.needed = Path(directory), free, needed
        super().__init__(
            errno.ENOSPC,
            f"disk full: {free // MB} MB free in {directory}, "
            f"at least {math.ceil(needed / MB)} MB needed",
        )

    def __str__(self) -> str:
        return self.strerror


def free_bytes(path: str | Path) -> int:
    """Free space of the file system holding `path` (or its nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path.parent != path:
        path = path.parent
    return shutil.disk_usage(path).free


def require_space(directory: str | Path, needed: int) -> None:
    """Raise DiskFull unless `needed` bytes fit in `directory` with RESERVE_BYTES to spare."""
    free = free_bytes(directory)
    if free < needed + RESERVE_BYTES:
        raise DiskFull(directory, free, needed + RESERVE_BYTES)


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC (or a full quota) from a write, SQLite's SQLITE_FULL, or PostgreSQL's disk_full."""
    if getattr(exc, "sqlstate", None) == POSTGRESQL_DISK_FULL:
        return True
    if isinstance(exc, OSError):
        return exc.errno in FULL_ERRNOS
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or (
            "disk is full" in str(exc)
        )
    return False


def disk_full_message(exc: BaseException, directory: str | Path) -> str | None:
    """A full disk in words ("disk full: N MB free in DIR ..."), None for any other error."""
    if isinstance(exc, DiskFull):
        return str(exc)
    if not is_disk_full(exc):
        return None
    return f"disk full: {free_bytes(directory) // MB} MB free in {directory} ({exc})"


def disk_full_note(directory: str | Path) -> str:
    """'; disk full: N MB free in DIR' when less than RESERVE_BYTES are free, else ''. For a
    process that died without saying why: a full disk is the likely cause worth naming."""
    try:
        free = free_bytes(directory)
    except OSError:
        return ""
    return f"; disk full: {free // MB} MB free in {directory}" if free < RESERVE_BYTES else ""


def model_bytes(model) -> int:
    """Bytes of a model's weights and buffers as written to a file."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def checkpoint_bytes(model, optimizer) -> int:
    """Bytes of a checkpoint: the model plus the optimizer's state (Adam keeps two tensors per
    weight; before its first step it has none yet, so count those it will have)."""
    state = optimizer.state_dict().get("state", {})
    held = sum(
        t.numel() * t.element_size()
        for values in state.values()
        for t in values.values()
        if hasattr(t, "element_size")
    )
    return model_bytes(model) + max(held, 2 * model_bytes(model))
