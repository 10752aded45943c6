"""Errors of the dataset layer and the list of problems a reader found but could live with.

A `DatasetError` stops a run before training starts (its message names the file and the entry);
a problem (an unreadable image, a clipped box) is counted, listed and the run goes on.
"""

from __future__ import annotations

from pathlib import Path

# Beyond this many, problems are only counted: a list of 100 000 clipped boxes helps nobody.
MAX_PROBLEMS = 500


class DatasetError(ValueError):
    """The dataset cannot be used as it is; the message says which file and entry, and why."""


class ImageError(DatasetError):
    """One image file cannot be read; `.path` and `.reason` for listing it as a problem."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class Problems:
    """Collects {"file", "message"} entries with paths relative to the dataset root."""

    def __init__(self, root: Path):
        self.root = root
        self.items: list[dict[str, str]] = []
        self.total = 0
        self.counts: dict[str, int] = {}  # e.g. skipped_images, boxes_clipped, boxes_dropped

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def rel(self, path: str | Path) -> str:
        return relative(path, self.root)

    def add(self, file: str | Path, message: str) -> None:
        self.total += 1
        if len(self.items) < MAX_PROBLEMS:
            self.items.append({"file": self.rel(file), "message": message})

    def as_list(self) -> list[dict[str, str]]:
        if self.total > len(self.items):
            more = self.total - len(self.items)
            return self.items + [{"file": "", "message": f"... and {more} more problems"}]
        return list(self.items)


def relative(path: str | Path, root: Path) -> str:
    """`path` relative to `root` when it lies under it (short, readable messages), else as is."""
    path = Path(path)
    base = root if root.is_dir() else root.parent
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path)
