"""Errors of the dataset layer and the list of problems a reader found but could live with.

A `DatasetError` stops a run before training starts (its message names the file and the entry);
a problem (an unreadable image, a clipped box) is counted, listed and the run goes on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Beyond this many, problems are only counted: a list of 100 000 clipped boxes helps nobody.
MAX_PROBLEMS = 500
# Blocking problems named in one error message (all of them are in the data check's list).
MAX_LISTED = 50
# What a problem means for a run: blocking ones stop it before it is queued, warnings are
# worth a look (the run goes on without the file or box), info says what was left aside.
BLOCKING, WARNING, INFO = "blocking", "warning", "info"
SEVERITIES = (BLOCKING, WARNING, INFO)


class DatasetError(ValueError):
    """The dataset cannot be used as it is; the message says which file and entry, and why.

    `problems`: every blocking problem found before it was raised (the data check lists each).
    """

    def __init__(self, message: str, problems: list[dict[str, str]] | None = None):
        super().__init__(message)
        self.problems = problems or []


class ImageError(DatasetError):
    """One image file cannot be read; `.path` and `.reason` for listing it as a problem."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class Problems:
    """Collects {"severity", "kind", "file", "message"} entries, paths relative to the root.

    Blocking problems (`block`) are all kept, so one never hides another; a caller that must
    stop on them (training) calls `raise_blocking` once everything has been read.
    """

    def __init__(self, root: Path):
        self.root = root
        self.items: list[dict[str, str]] = []
        self.total = 0
        self.counts: dict[str, int] = {}  # e.g. skipped_images, boxes_clipped, boxes_dropped

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def rel(self, path: str | Path) -> str:
        return relative(path, self.root) if str(path) else ""  # "": the dataset as a whole

    def add(
        self, file: str | Path, message: str, kind: str = "other", severity: str = WARNING
    ) -> None:
        self.total += 1
        if len(self.items) < MAX_PROBLEMS or severity == BLOCKING:
            item = {"severity": severity, "kind": kind, "file": self.rel(file), "message": message}
            self.items.append(item)

    def block(self, file: str | Path, message: str, kind: str = "dataset") -> None:
        self.add(file, message, kind, BLOCKING)

    def extend(self, items: list[dict[str, str]]) -> None:
        """Problems listed by another reading of the dataset (paths already relative)."""
        self.total += len(items)
        self.items += [dict(p) for p in items]

    @contextmanager
    def entry(self, file: str | Path, kind: str = "bad_annotation") -> Iterator[None]:
        """Read one entry (an annotation, a label line, a CSV row) of `file`: a DatasetError
        inside is listed as a blocking problem and the rest of the block is skipped, so the
        reader goes on to the next entry and every bad one is listed, not only the first."""
        try:
            yield
        except DatasetError as exc:
            self.block(file, str(exc), kind)

    @property
    def blocking(self) -> list[dict[str, str]]:
        return [p for p in self.items if p["severity"] == BLOCKING]

    def raise_blocking(self) -> None:
        """DatasetError naming every blocking problem (see blocking_message)."""
        message = blocking_message(self.blocking)
        if message:
            raise DatasetError(message, self.blocking)

    def as_list(self) -> list[dict[str, str]]:
        if self.total > len(self.items):
            more = self.total - len(self.items)
            line = {  # most of what is cut is warnings: the line stays in their table
                "severity": WARNING,
                "kind": "more",
                "file": "",
                "message": f"... and {more} more problems",
            }
            return self.items + [line]
        return list(self.items)


class Where:
    """`Problems.rel(file)` and a suffix (" line 3") for a message, worked out only when one is
    written: resolving the path of every label file read was most of a clean dataset's load."""

    def __init__(self, problems: Problems, file: str | Path, suffix: str = ""):
        self.problems, self.file, self.suffix = problems, file, suffix

    def __str__(self) -> str:
        return self.problems.rel(self.file) + self.suffix

    def __add__(self, more: str) -> Where:
        return Where(self.problems, self.file, self.suffix + more)


def blocking_message(blocking: list[dict[str, str]]) -> str | None:
    """One message for a list of blocking problems: the first, then the others one a line
    (up to MAX_LISTED: a file with 10 000 bad boxes makes a message nobody reads)."""
    if not blocking:
        return None
    more = len(blocking) - 1
    if not more:
        return blocking[0]["message"]
    lines = [f"{blocking[0]['message']} (and {more} more blocking problem(s)):"]
    lines += [f"- {p['message']}" for p in blocking[1:MAX_LISTED]]
    if len(blocking) > MAX_LISTED:
        lines.append(
            f"- ... and {len(blocking) - MAX_LISTED} more: see `visionboard datasets inspect`"
        )
    return "\n".join(lines)


def relative(path: str | Path, root: Path) -> str:
    """`path` relative to `root` when it lies under it (short, readable messages), else as is."""
    path = Path(path)
    base = root if root.is_dir() else root.parent
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path)
