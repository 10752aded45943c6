"""What the run page's reports show, as plain data: the summary card, a binary decision
threshold, the mistakes picked by filters, and gallery pages.

Pure functions (no Streamlit, no torch), so each one is unit-tested on its own and the run
page stays thin.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

GALLERY_PAGE = 12  # pictures per gallery page


def summary_facts(run: Mapping[str, Any], duration: str = "") -> list[tuple[str, str]]:
    """(label, value) pairs a reviewer reads first: best metric and epoch, why it stopped,
    how long it took, on what data, how many parameters were trained and how fast.

    `duration` is the run's formatted duration (dashboard.state owns the clock). Facts the
    run has not recorded read "—", so the card keeps its shape for every run.
    """
    summary = run.get("summary") or {}
    config = run.get("config") or {}
    metric = summary.get("metric") or config.get("metric") or "metric"
    split = summary.get("eval_split") or "test"
    best = summary.get("best_metric")
    best_text = "—" if best is None else f"{best:.4f}"
    if summary.get("best_epoch"):
        best_text += f" at epoch {summary['best_epoch']}"
    trained = summary.get("epochs_trained")
    stop = summary.get("stop_reason") or "—"
    if summary.get("stop_reason") and trained is not None:
        stop += f" after {trained} epoch(s)"
    images = [
        f"{summary[k]:,} {k.removesuffix('_images')}"
        for k in ("train_images", "val_images", "test_images")
        if summary.get(k) is not None
    ]
    classes = summary.get("classes") or []
    shown = ", ".join(str(c) for c in classes[:8]) + (" …" if len(classes) > 8 else "")
    trainable, total = summary.get("trainable_params"), summary.get("total_params")
    params = "—" if trainable is None else f"{trainable:,}"
    if trainable is not None and total:
        params += f" of {total:,} ({trainable / total:.0%})"
    speed = summary.get("images_per_second")
    return [
        (f"Best {metric} ({split})", best_text),
        ("Stop reason", stop),
        ("Duration", duration or "—"),
        ("Dataset", str(run.get("dataset") or config.get("dataset") or "—")),
        ("Images", " / ".join(images) or "—"),
        ("Classes", f"{len(classes)}: {shown}" if classes else "—"),
        ("Trainable parameters", params),
        ("Images / s", "—" if speed is None else f"{speed:.1f}"),
        ("Time spent", timing_text(summary.get("timings"))),
    ]


def timing_text(timings: Mapping[str, Any] | None) -> str:
    """Where a run's time went (summary["timings"], engine.timings), in one line: the first
    step after the launch, then each part of an epoch on average."""
    if not timings:
        return "—"
    parts = []
    if timings.get("launch_to_first_step") is not None:
        parts.append(f"first step after {timings['launch_to_first_step']:.1f} s")
    epochs = timings.get("epochs") or []
    if epochs:
        each = ", ".join(
            f"{sum(e.get(key, 0.0) for e in epochs) / len(epochs):.1f} s {key}"
            for key in ("train", "evaluate", "checkpoint")
        )
        parts.append(f"per epoch {each}")
    return "; ".join(parts) or "—"


def binary_at_threshold(
    probs: Sequence[Sequence[float]], targets: Sequence[int], threshold: float
) -> dict[str, Any]:
    """Binary classification decided at `threshold` on class 1's probability (>= is class 1),
    the threshold used as given, never rounded.

    Returns {"confusion": 2 x 2 counts (row = true, column = predicted), "confusion_normalized"
    (share of each true class), "precision", "recall", "f1" of class 1 (0 where a ratio has no
    denominator), "threshold"}.
    """
    if any(len(p) != 2 for p in probs):
        raise ValueError("a decision threshold needs 2 probability columns per image")
    threshold = float(threshold)
    confusion = [[0, 0], [0, 0]]
    for p, truth in zip(probs, targets):
        confusion[int(truth)][1 if p[1] >= threshold else 0] += 1
    (_, fp), (fn, tp) = confusion
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    normalized = [[v / sum(row) if sum(row) else 0.0 for v in row] for row in confusion]
    return {
        "confusion": confusion,
        "confusion_normalized": normalized,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "threshold": threshold,
    }


def select_mistakes(
    wrong: Sequence[int],
    probs: Sequence[Sequence[float]],
    targets: Sequence[int],
    true_classes: Sequence[int] | None = None,
    predicted_classes: Sequence[int] | None = None,
    confidence: tuple[float, float] = (0.0, 1.0),
) -> list[int]:
    """The misclassified images (`wrong`, in its order) whose true class is in
    `true_classes`, whose predicted class (argmax) is in `predicted_classes` (None or empty:
    any), and whose predicted class's probability lies in the `confidence` range (inclusive)."""
    low, high = (float(v) for v in confidence)
    kept = []
    for i in wrong:
        p = probs[i]
        guess = max(range(len(p)), key=p.__getitem__)
        if true_classes and targets[i] not in true_classes:
            continue
        if predicted_classes and guess not in predicted_classes:
            continue
        if low <= p[guess] <= high:
            kept.append(i)
    return kept


def page_count(total: int, size: int = GALLERY_PAGE) -> int:
    """Pages needed for `total` items (at least 1, so a page picker always has a page)."""
    return max(1, math.ceil(total / size))


def page_of(items: Sequence[Any], page: int, size: int = GALLERY_PAGE) -> list[Any]:
    """Items of the 1-based `page`; a page past the end is clamped to the last one."""
    page = min(max(1, int(page)), page_count(len(items), size))
    return list(items[(page - 1) * size : page * size])
