"""Binary ranking curves and scores, per-class precision/recall/F1 and the confusion matrix.

Small numpy versions of the scikit-learn metrics that engine.evaluate needs, so the trainer
does not pay scikit-learn's import time. Each function follows the scikit-learn function of
the same name (1.9, no sample weights) and returns the same numbers; tests/test_ranking_metrics.py
checks them against scikit-learn itself.

Ranking functions take a binary problem: `positive` [N] (bool: the sample is of the positive
class) and `score` [N] (higher means more likely positive), at least one sample.
"""

from __future__ import annotations

import math

import numpy as np


def _counts_at_thresholds(positive, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positives when keeping score >= each distinct score, descending.

    scikit-learn's confusion_matrix_at_thresholds: (fps, tps, thresholds), counts as float64.
    """
    positive = np.asarray(positive, dtype=bool).reshape(-1)
    score = np.asarray(score, dtype=np.float64).reshape(-1)
    if len(score) == 0 or len(score) != len(positive):
        raise ValueError(
            f"need one score per sample and at least one sample, got {len(positive)} labels "
            f"and {len(score)} scores"
        )
    order = np.argsort(-score, kind="stable")
    score, positive = score[order], positive[order]
    # Only the last sample of a run of equal scores is a reachable threshold.
    last = np.append(np.flatnonzero(np.diff(score)), len(score) - 1)
    tps = np.cumsum(positive, dtype=np.float64)[last]
    fps = 1.0 + last - tps
    return fps, tps, score[last]


def roc_curve(positive, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) as scikit-learn's roc_curve with its defaults.

    drop_intermediate=True: points collinear with their neighbours are dropped. The curve
    starts at (0, 0) with threshold +inf. fpr is NaN without negatives, tpr NaN without
    positives (scikit-learn warns there; this stays silent).
    """
    fps, tps, thresholds = _counts_at_thresholds(positive, score)
    if len(fps) > 2:
        corner = np.logical_or(np.diff(fps, 2), np.diff(tps, 2))
        keep = np.concatenate([[True], corner, [True]])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps, tps = np.append(0.0, fps), np.append(0.0, tps)
    thresholds = np.append(np.inf, thresholds)
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(len(fps), np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(len(tps), np.nan)
    return fpr, tpr, thresholds


# numpy 2 renamed trapz to trapezoid; numpy 1.x (which torch still allows) has only trapz.
_trapezoid = getattr(np, "trapezoid", None) or np.trapz


def roc_auc_score(positive, score) -> float:
    """Area under roc_curve by the trapezoidal rule, as scikit-learn's binary roc_auc_score.

    NaN when `positive` holds a single class (scikit-learn also returns NaN, with a warning).
    """
    positive = np.asarray(positive, dtype=bool).reshape(-1)
    if positive.all() or not positive.any():
        return math.nan
    fpr, tpr, _ = roc_curve(positive, score)
    return float(_trapezoid(tpr, fpr))


def precision_recall_curve(positive, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) as scikit-learn's precision_recall_curve.

    drop_intermediate=False (its default): one point per distinct score, by increasing
    threshold, then a last point (precision 1, recall 0) with no threshold. Without
    positives, recall is 1 everywhere (scikit-learn's convention, without its warning).
    """
    fps, tps, thresholds = _counts_at_thresholds(positive, score)
    precision = tps / (tps + fps)  # every threshold keeps at least one sample
    recall = tps / tps[-1] if tps[-1] > 0 else np.ones(len(tps))
    return np.append(precision[::-1], 1.0), np.append(recall[::-1], 0.0), thresholds[::-1]


def average_precision_score(positive, score) -> float:
    """Step-function integral of the precision-recall curve, as scikit-learn's binary
    average_precision_score (no interpolation); 0 without positives."""
    precision, recall, _ = precision_recall_curve(positive, score)
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def _label_positions(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Index of each value in `labels`, -1 for a value that is not one of them."""
    if len(labels) == 0:
        return np.full(len(values), -1)
    order = np.argsort(labels, kind="stable")
    found = np.clip(np.searchsorted(labels[order], values), 0, len(labels) - 1)
    return np.where(labels[order][found] == values, order[found], -1)


def _encode(targets, predicted, labels) -> tuple[np.ndarray, np.ndarray, int]:
    targets, predicted = np.asarray(targets).reshape(-1), np.asarray(predicted).reshape(-1)
    if len(targets) != len(predicted):
        raise ValueError(f"{len(targets)} targets but {len(predicted)} predictions")
    if labels is None:  # scikit-learn's default: sorted labels of targets and predictions
        labels = np.union1d(targets, predicted)
    labels = np.asarray(labels).reshape(-1)
    return _label_positions(targets, labels), _label_positions(predicted, labels), len(labels)


def confusion_matrix(targets, predicted, labels=None) -> np.ndarray:
    """Counts [L, L] int64, row = true label, column = predicted label, in `labels` order.

    As scikit-learn's confusion_matrix: samples whose target or prediction is not in
    `labels` are left out; labels=None means the sorted labels seen in either array. Unlike
    scikit-learn it does not refuse `labels` that miss every target.
    """
    true, pred, count = _encode(targets, predicted, labels)
    both = (true >= 0) & (pred >= 0)
    flat = np.bincount(true[both] * count + pred[both], minlength=count * count)
    return flat.reshape(count, count).astype(np.int64)


def precision_recall_fscore_support(targets, predicted, labels=None, average=None):
    """(precision, recall, f1, support) per label, as scikit-learn's function with
    zero_division=0 and beta=1.

    A ratio with no denominator is 0. F1 is 2·tp / (true + predicted), as scikit-learn
    computes it. labels=None means the sorted labels seen in targets or predictions.
    average=None: arrays in `labels` order, support = samples with that target (int64);
    average="macro": the unweighted means as floats, support None.
    """
    if average not in (None, "macro"):
        raise ValueError(f"average must be None or 'macro', got {average!r}")
    true, pred, count = _encode(targets, predicted, labels)
    true_sum = np.bincount(true[true >= 0], minlength=count)
    pred_sum = np.bincount(pred[pred >= 0], minlength=count)
    tp_sum = np.bincount(true[(true >= 0) & (true == pred)], minlength=count)

    def ratio(numerator, denominator) -> np.ndarray:
        numerator, denominator = np.asarray(numerator, np.float64), np.asarray(denominator)
        return np.divide(numerator, denominator, out=np.zeros(count), where=denominator > 0)

    precision = ratio(tp_sum, pred_sum)
    recall = ratio(tp_sum, true_sum)
    f1 = ratio(2.0 * tp_sum, true_sum + pred_sum)
    if average == "macro":
        if count == 0:
            return math.nan, math.nan, math.nan, None
        return float(precision.mean()), float(recall.mean()), float(f1.mean()), None
    return precision, recall, f1, true_sum.astype(np.int64)
