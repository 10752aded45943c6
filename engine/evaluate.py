"""Metrics and evaluation reports for both tasks, and the best-epoch rule.

Classification works on class probabilities `probs` [N, C] (rows of a softmax) and 0-based
integer `targets` [N]; detection lives in engine.detection_metrics and is re-exported here.

A small test split often lacks a class or has a single image, so nothing here crashes on
that. A metric that is truly undefined is NaN in the metric dicts (floats, for the metrics
table) and None in the reports (strict JSON, for the dashboard):
- roc_auc is NaN when the targets hold a single class (no negative to rank against);
- every metric is NaN when there are no samples at all.
"""

from __future__ import annotations

import math

import numpy as np

from engine import choices
from engine.detection_metrics import box_iou, detection_metrics, detection_report, thin_indices
from engine.ranking_metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

__all__ = [
    "box_iou",
    "classification_metrics",
    "classification_report",
    "detection_metrics",
    "detection_report",
    "is_better",
]

# log_loss of a probability of 0 would be infinite; clip as scikit-learn did with eps=1e-15.
PROB_EPS = 1e-15


def _check_inputs(probs, targets) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    raw = np.asarray(targets).reshape(-1)
    if probs.ndim != 2:
        raise ValueError(f"probs must be [N, C] (one row per sample), got shape {probs.shape}")
    if probs.shape[1] < 1:
        raise ValueError("probs must have one column per class, got 0 columns")
    if len(raw) != len(probs):
        raise ValueError(f"probs has {len(probs)} rows but targets has {len(raw)} values")
    if not np.isfinite(probs).all():
        raise ValueError("probs contain NaN or infinity: the model diverged (try a lower lr)")
    targets = raw.astype(np.int64) if len(raw) else np.zeros(0, dtype=np.int64)
    num_classes = probs.shape[1]
    bad = (targets != raw) | (targets < 0) | (targets >= num_classes)
    if bad.any():
        raise ValueError(
            f"targets[{int(np.flatnonzero(bad)[0])}] = {raw[bad][0].item()!r}: targets are 0-based "
            f"class indices in 0..{num_classes - 1}"
        )
    return probs, targets


def classification_metrics(probs, targets) -> dict[str, float]:
    """Test-split metrics of a classifier: {name: float} for every classification metric.

    - accuracy: share of samples whose argmax is the target.
    - roc_auc: 2 classes: the binary AUC of class 1's probability; more: one-vs-rest AUC
      averaged over the classes present in `targets`. NaN when `targets` hold one class.
    - precision, recall, f1: macro averages over the classes present in the targets or the
      predictions (scikit-learn's default), 0 where a ratio has no denominator.
    - log_loss: mean of -log p(target), probabilities clipped to [1e-15, 1].
    - average_precision: one-vs-rest AP averaged over the classes present in `targets`.
    """
    probs, targets = _check_inputs(probs, targets)
    if len(targets) == 0:
        return {name: math.nan for name in choices.metrics_for("classification")}
    predicted = probs.argmax(axis=1)
    precision, recall, f1, _ = precision_recall_fscore_support(targets, predicted, average="macro")
    picked = np.clip(probs[np.arange(len(targets)), targets], PROB_EPS, 1.0)
    present = np.unique(targets)
    return {
        "accuracy": float((predicted == targets).mean()),
        "roc_auc": _roc_auc(probs, targets, present),
        "f1": float(f1),
        "precision": float(precision),
        "recall": float(recall),
        "log_loss": float(-np.log(picked).mean()),
        "average_precision": float(
            np.mean([average_precision_score(targets == c, probs[:, c]) for c in present])
        ),
    }


def _roc_auc(probs: np.ndarray, targets: np.ndarray, present: np.ndarray) -> float:
    if len(present) < 2:
        return math.nan
    if probs.shape[1] == 2:
        return float(roc_auc_score(targets == 1, probs[:, 1]))
    return float(np.mean([roc_auc_score(targets == c, probs[:, c]) for c in present]))


def classification_report(probs, targets, classes: list[str]) -> dict:
    """Everything the evaluation page shows for a classification run, as strict JSON.

    Keys:
    - "confusion": C x C counts, row = true class, column = predicted class (argmax).
    - "confusion_normalized": each row divided by its total (share of that true class);
      a class with no sample keeps a row of zeros.
    - "per_class": [{"class", "precision", "recall", "f1", "support"}], 0 where a ratio has no
      denominator; support = samples of that class.
    - "roc": {class: {"fpr", "tpr", "auc"}} one-vs-rest; "pr": {class: {"precision", "recall",
      "ap"}} one-vs-rest. A class absent from the targets (or the only one present, for ROC)
      has empty curves and None. Curves are thinned evenly to at most 1000 points.
    - "wrong": indices of misclassified samples, most confident wrong prediction first.
    """
    probs, targets = _check_inputs(probs, targets)
    classes = [str(c) for c in classes]
    num_classes = probs.shape[1]
    if len(classes) != num_classes:
        raise ValueError(f"{len(classes)} class names for {num_classes} probability columns")
    labels = list(range(num_classes))
    predicted = probs.argmax(axis=1)
    confusion = confusion_matrix(targets, predicted, labels=labels)
    totals = confusion.sum(axis=1, keepdims=True)
    normalized = np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predicted, labels=labels
    )
    per_class = [
        {
            "class": name,
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "support": int(support[c]),
        }
        for c, name in enumerate(classes)
    ]
    wrong = np.flatnonzero(predicted != targets)
    confidence = probs[wrong, predicted[wrong]]
    wrong = wrong[np.argsort(-confidence, kind="mergesort")]
    return {
        "confusion": confusion.tolist(),
        "confusion_normalized": normalized.tolist(),
        "per_class": per_class,
        "roc": {name: _roc_curve(targets == c, probs[:, c]) for c, name in enumerate(classes)},
        "pr": {name: _pr_curve(targets == c, probs[:, c]) for c, name in enumerate(classes)},
        "wrong": [int(i) for i in wrong],
    }


def _roc_curve(positive: np.ndarray, score: np.ndarray) -> dict:
    if positive.all() or not positive.any():
        return {"fpr": [], "tpr": [], "auc": None}
    fpr, tpr, _ = roc_curve(positive, score)
    keep = thin_indices(len(fpr))
    return {
        "fpr": fpr[keep].tolist(),
        "tpr": tpr[keep].tolist(),
        "auc": float(roc_auc_score(positive, score)),
    }


def _pr_curve(positive: np.ndarray, score: np.ndarray) -> dict:
    if not positive.any():
        return {"precision": [], "recall": [], "ap": None}
    precision, recall, _ = precision_recall_curve(positive, score)
    keep = thin_indices(len(precision))
    return {
        "precision": precision[keep].tolist(),
        "recall": recall[keep].tolist(),
        "ap": float(average_precision_score(positive, score)),
    }


def is_better(value: float, best: float | None, mode: str, delta: float = 0.0) -> bool:
    """Whether `value` improves on `best` by at least `delta` (early stopping, best epoch).

    mode "max": value >= best + delta; mode "min": value <= best - delta; an improvement must
    also be strictly positive, so an unchanged metric never counts, even with delta 0.
    No best yet (None) → True. A NaN value never improves on a number; any number improves
    on a NaN best.
    """
    if mode not in choices.METRIC_MODES:
        valid = " or ".join(map(repr, choices.METRIC_MODES))
        raise ValueError(f"mode must be {valid}, got {mode!r}")
    if delta < 0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    if best is None:
        return True
    value, best = float(value), float(best)
    if math.isnan(value):
        return False
    if math.isnan(best):
        return True
    gain = value - best if mode == "max" else best - value
    # The tolerance keeps 0.801 - 0.800 (= 0.000999...) an improvement of delta 0.001.
    return gain > 0 and gain >= delta - 1e-12
