"""inspect_dataset: what a dataset holds and everything wrong with it, as plain JSON-able data.

Every problem is {"severity", "kind", "file", "message"}: `blocking` ones stop a run before it
is queued (an empty class, a malformed annotation file), `warning` ones are worth a look (an
unreadable image the run skips, a clipped box, leakage between splits, a placeholder image),
`info` ones say what was left aside (stray files). None hides another: the dataset is read
in full even when the first blocking problem is found, and the data check (engine.data.checks)
runs on whatever could be read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.data.checks import check_loose_files, check_splits
from engine.data.errors import BLOCKING, SEVERITIES, DatasetError, Problems, blocking_message
from engine.data.formats import detect_layout, layout_task
from engine.data.load import confine_dataset, read_splits


def inspect_dataset(
    path: str | Path,
    task: str | None = None,
    fmt: str = "auto",
    test_ratio: float = 0.2,
    seed: int = 0,
    deep: bool = True,
) -> dict[str, Any]:
    """Images, classes, boxes per class, splits and problems; never raises for bad data.

    `deep` runs the data check across files (hashes every image: leakage, duplicates,
    placeholders) and lists the files no reader took (walks the whole tree); without it only
    what the readers find is listed, which is all that can block a run. "error" holds the
    blocking problems in one message (None when there are none).
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
        "ignored": [],
        "summary": dict.fromkeys(SEVERITIES, 0),
        "error": None,
    }
    root = Path(path).expanduser()
    problems = Problems(root)
    try:
        confine_dataset(root)  # before the format is guessed from what the path holds
        # Detected once (the task narrows the layouts), and read where it was found.
        report["format"], found_root = detect_layout(root, task, fmt)
        if task is None:
            report["task"] = layout_task(found_root, report["format"])
        splits = read_splits(
            found_root,
            report["task"],
            report["format"],
            test_ratio,
            seed,
            strict=False,
            list_ignored=deep,
        )
    except DatasetError as exc:
        if exc.problems:  # the bad entries read before a dataset-wide error, and that error
            problems.extend(exc.problems)
        else:
            problems.block("", str(exc))
        if deep:
            check_loose_files(root, problems)
        return _finish(report, problems.as_list())
    except Exception as exc:  # a reader bug must not take the dashboard page down with it
        problems.block("", f"unexpected error while reading the dataset: {exc!r}")
        return _finish(report, problems.as_list())
    report["path"] = str(splits.root)
    report["classes"] = list(splits.classes)
    report["split_source"] = splits.split_source
    report.update(splits.counts)
    found = list(splits.problems)
    if deep:
        checks = Problems(splits.root)
        check_splits(splits, checks)
        found += checks.as_list()
    return _finish(report, found)


def _finish(report: dict[str, Any], problems: list[dict[str, str]]) -> dict[str, Any]:
    """Blocking problems first, then warnings, then info; counted; "error" from the blocking."""
    problems = sorted(problems, key=lambda p: SEVERITIES.index(p.get("severity", "warning")))
    report["problems"] = problems
    report["ignored"] = [p["file"] for p in problems if p.get("kind") == "ignored"]
    for p in problems:
        if p.get("kind") != "more":
            report["summary"][p["severity"]] += 1
    report["error"] = blocking_message([p for p in problems if p["severity"] == BLOCKING])
    return report
