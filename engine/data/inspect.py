"""inspect_dataset: what a dataset holds and what is wrong with it, as plain JSON-able data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.data.errors import DatasetError
from engine.data.formats import detect_format, detect_task
from engine.data.load import load_splits


def inspect_dataset(
    path: str | Path,
    task: str | None = None,
    fmt: str = "auto",
    test_ratio: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """Images, classes, boxes per class, splits and problems; never raises for bad data.

    A dataset that cannot be used gets its reason in "error" (and whatever was known before).
    """
    report: dict[str, Any] = {
        "path": str(path),
        "task": task,
        "format": None if fmt in ("auto", None, "") else fmt,
        "classes": [],
        "split_source": None,
        "images": {"train": 0, "test": 0},
        "images_per_class": {},
        "problems": [],
        "error": None,
    }
    try:
        if report["format"] is None:
            report["format"] = detect_format(path)
        if task is None:
            report["task"] = detect_task(path, report["format"])
        splits = load_splits(path, report["task"], report["format"], test_ratio, seed)
    except DatasetError as exc:
        report["error"] = str(exc)
        return report
    except Exception as exc:  # a reader bug must not take the dashboard page down with it
        report["error"] = f"unexpected error while reading the dataset: {exc!r}"
        return report
    report["path"] = str(splits.root)
    report["classes"] = list(splits.classes)
    report["split_source"] = splits.split_source
    report.update(splits.counts)
    report["problems"] = splits.problems
    return report
