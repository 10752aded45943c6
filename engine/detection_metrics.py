"""Detection metrics: COCO-style mAP, best-F1 operating point, and the report behind the dashboard.

Boxes are xyxy in pixels, labels are 0-based class indices (no background class). One image is
one entry of `preds` ({"boxes" [N,4], "scores" [N], "labels" [N]}) and of `targets`
({"boxes" [M,4], "labels" [M]}); arrays may be numpy arrays, lists or CPU tensors.

Matching follows pycocotools' COCOeval (area range "all", no crowd boxes, at most 100
detections per image and class): detections are taken by descending score, and each takes the
unmatched ground-truth box of its class with the highest IoU, if that IoU reaches the
threshold. An inverted box (x2 < x1 or y2 < y1) counts as empty: IoU 0 with everything
(COCOeval would instead ignore an unmatched one, its area being negative). AP is the mean of
the interpolated precision at 101 recall points; the tests check the numbers against COCOeval
itself.

Undefined values are NaN in `detection_metrics` (they go to the metrics table as floats) and
None in `detection_report` (it must be strict JSON for the dashboard).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# The same expressions COCOeval uses, so the thresholds are bit-identical.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_POINTS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETECTIONS = 100  # per image and class, as COCOeval's maxDets[-1]
# Curves in reports keep at most this many points: enough to draw, small enough to ship as JSON.
CURVE_POINTS = 1000
# Threshold reported when no score threshold gives a true positive (nothing to choose from).
DEFAULT_THRESHOLD = 0.5


def box_iou(a, b) -> np.ndarray:
    """IoU of every box in `a` [N,4] with every box in `b` [M,4] (xyxy) → [N,M] float64.

    Degenerate boxes (zero or negative width/height) have area 0; a pair whose union is 0
    has IoU 0.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def thin_indices(length: int, max_points: int = CURVE_POINTS) -> np.ndarray:
    """Indices of at most `max_points` evenly spread points of a curve, first and last kept."""
    if length <= max_points:
        return np.arange(length)
    return np.unique(np.linspace(0, length - 1, max_points).round().astype(np.int64))


# ---------------------------------------------------------------------------------------------
# Input checking


@dataclass
class _Image:
    boxes: np.ndarray  # [N,4] float64
    labels: np.ndarray  # [N] int64
    scores: np.ndarray | None  # [N] float64 for predictions, None for ground truth


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, possibly on a GPU
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _read_entry(entry, where: str, num_classes: int, with_scores: bool) -> _Image:
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a dict with 'boxes' and 'labels', got {type(entry)}")
    keys = ("boxes", "labels", "scores") if with_scores else ("boxes", "labels")
    missing = [key for key in keys if key not in entry]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(repr(k) for k in missing)}")
    boxes = _to_numpy(entry["boxes"]).astype(np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}['boxes'] must be [N, 4] xyxy, got shape {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError(f"{where}['boxes'] contains NaN or infinity")
    raw_labels = _to_numpy(entry["labels"]).reshape(-1)
    labels = raw_labels.astype(np.int64)
    if len(labels) != len(boxes):
        raise ValueError(f"{where} has {len(boxes)} boxes but {len(labels)} labels")
    if len(labels) and (
        (labels != raw_labels).any() or labels.min() < 0 or labels.max() >= num_classes
    ):
        bad = raw_labels[(labels != raw_labels) | (labels < 0) | (labels >= num_classes)][0].item()
        raise ValueError(
            f"{where}['labels'] has {bad!r}: labels are 0-based class indices "
            f"in 0..{num_classes - 1}"
        )
    scores = None
    if with_scores:
        scores = _to_numpy(entry["scores"]).astype(np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"{where} has {len(boxes)} boxes but {len(scores)} scores")
        if not np.isfinite(scores).all():
            raise ValueError(f"{where}['scores'] contains NaN or infinity")
    return _Image(boxes, labels, scores)


def _read_inputs(preds, targets, num_classes: int) -> tuple[list[_Image], list[_Image]]:
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    preds, targets = list(preds), list(targets)
    if len(preds) != len(targets):
        raise ValueError(
            f"preds has {len(preds)} images but targets has {len(targets)}: "
            "one entry per image in both, in the same order"
        )
    pred_images = [_read_entry(p, f"preds[{i}]", num_classes, True) for i, p in enumerate(preds)]
    gt_images = [_read_entry(t, f"targets[{i}]", num_classes, False) for i, t in enumerate(targets)]
    return pred_images, gt_images


# ---------------------------------------------------------------------------------------------
# Matching


@dataclass
class _ClassMatches:
    """All detections of one class over the dataset, in COCOeval's accumulation order."""

    scores: np.ndarray  # [D] descending
    matched: np.ndarray  # [T, D] bool: detection is a true positive at IoU threshold t
    num_gt: int


def _match_image(ious: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """[T, D] true-positive flags for detections (rows of `ious`, sorted by score) vs GT."""
    num_dets, num_gt = ious.shape
    matched = np.zeros((len(thresholds), num_dets), dtype=bool)
    if num_gt == 0:
        return matched
    best_iou = ious.max(axis=1)
    for t, threshold in enumerate(thresholds):
        floor = min(threshold, 1 - 1e-10)  # as COCOeval, so IoU 1.0 still matches at t=1
        gt_taken = np.zeros(num_gt, dtype=bool)
        for d in np.flatnonzero(best_iou >= floor):
            candidates = np.where(gt_taken, -1.0, ious[d])
            # COCOeval keeps the *last* GT among equal IoUs; reversed argmax does the same.
            g = num_gt - 1 - int(np.argmax(candidates[::-1]))
            if candidates[g] >= floor:
                gt_taken[g] = True
                matched[t, d] = True
    return matched


def _match_dataset(
    preds: list[_Image], targets: list[_Image], num_classes: int, thresholds: np.ndarray
) -> list[_ClassMatches]:
    per_class_scores: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    per_class_matched: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    num_gt = np.zeros(num_classes, dtype=np.int64)
    for pred, gt in zip(preds, targets):
        for c in np.union1d(pred.labels, gt.labels).astype(np.int64):
            gt_boxes = gt.boxes[gt.labels == c]
            num_gt[c] += len(gt_boxes)
            in_class = np.flatnonzero(pred.labels == c)
            order = in_class[np.argsort(-pred.scores[in_class], kind="mergesort")][:MAX_DETECTIONS]
            ious = box_iou(pred.boxes[order], gt_boxes)
            per_class_scores[c].append(pred.scores[order])
            per_class_matched[c].append(_match_image(ious, thresholds))
    result = []
    for c in range(num_classes):
        if per_class_scores[c]:
            scores = np.concatenate(per_class_scores[c])
            matched = np.concatenate(per_class_matched[c], axis=1)
        else:
            scores = np.zeros(0)
            matched = np.zeros((len(thresholds), 0), dtype=bool)
        # Stable sort, so ties keep image order: the order COCOeval accumulates in.
        order = np.argsort(-scores, kind="mergesort")
        result.append(_ClassMatches(scores[order], matched[:, order], int(num_gt[c])))
    return result


# ---------------------------------------------------------------------------------------------
# Curves


def _coco_ap(matched: np.ndarray, num_gt: int) -> float:
    """101-point interpolated AP of detections sorted by score; NaN without ground truth."""
    if num_gt == 0:
        return math.nan
    tp = np.cumsum(matched).astype(np.float64)
    fp = np.cumsum(~matched).astype(np.float64)
    recall = tp / num_gt
    # COCOeval adds np.spacing(1) to the denominator; it is never 0 here (each prefix holds a
    # detection) and leaving it out keeps perfect detections at exactly 1.0 (differs by ~1e-16).
    precision = tp / (tp + fp)
    # Precision envelope: the best precision reachable at this recall or beyond.
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    index = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.zeros(len(RECALL_POINTS))
    reached = index < len(precision)
    sampled[reached] = precision[index[reached]]
    return float(sampled.mean())


def _operating_points(scores: np.ndarray, matched: np.ndarray, num_gt: int) -> dict:
    """Precision/recall when keeping detections with score >= each distinct score (descending).

    `scores` must be sorted descending. Recall is NaN without ground truth.
    """
    tp = np.cumsum(matched).astype(np.float64)
    kept = np.arange(1, len(scores) + 1, dtype=np.float64)
    # Only the last detection of a run of equal scores is a reachable threshold.
    last = np.ones(len(scores), dtype=bool)
    last[:-1] = scores[:-1] != scores[1:]
    tp, kept = tp[last], kept[last]
    precision = tp / kept
    recall = tp / num_gt if num_gt else np.full(len(tp), math.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {"thresholds": scores[last], "precision": precision, "recall": recall, "f1": f1}


def _pool_classes(classes: list[_ClassMatches], row: int) -> tuple[np.ndarray, np.ndarray, int]:
    """All classes' detections at IoU-threshold row `row`, sorted by score (micro pooling)."""
    scores = np.concatenate([m.scores for m in classes])
    matched = np.concatenate([m.matched[row] for m in classes])
    order = np.argsort(-scores, kind="mergesort")
    return scores[order], matched[order], sum(m.num_gt for m in classes)


def _counts_at(scores, matched, num_gt: int, score_threshold: float) -> dict:
    """Precision, recall, F1 keeping detections with score >= score_threshold.

    Precision with no detection kept is 0 (sklearn's zero_division=0); recall and F1 without
    ground truth are NaN.
    """
    keep = scores >= score_threshold
    tp = int(matched[keep].sum())
    detections = int(keep.sum())
    precision = tp / detections if detections else 0.0
    recall = tp / num_gt if num_gt else math.nan
    return {"precision": precision, "recall": recall, "f1": _f1(precision, recall)}


def _f1(precision: float, recall: float) -> float:
    if math.isnan(recall):
        return math.nan
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# Public API


def detection_metrics(preds, targets, num_classes: int) -> dict:
    """COCO-style mAP and the best-F1 operating point of a detector on a test split.

    Returns {"map": mAP@[.5:.95], "map_50": mAP@.5, "ap_per_class": {class_index: {"ap",
    "ap_50"}}, "precision", "recall", "f1", "threshold"}.

    - mAP is the mean over classes that have ground truth; a class without ground truth has
      AP NaN in "ap_per_class" and is left out of the mean.
    - precision/recall/f1 pool all classes (micro): at IoU 0.5, keeping detections with
      score >= "threshold", where "threshold" is the score that maximises F1 (the highest such
      score on ties).
    - No true positive at any threshold (no predictions at all, or all wrong): precision,
      recall and f1 are 0 and threshold is 0.5.
    - No ground truth at all: map, map_50, recall and f1 are NaN, precision 0, threshold 0.5.
    """
    pred_images, gt_images = _read_inputs(preds, targets, num_classes)
    classes = _match_dataset(pred_images, gt_images, num_classes, IOU_THRESHOLDS)
    ap_per_class, ap, ap_50 = _ap_table(classes)
    scores, matched, num_gt = _pool_classes(classes, row=0)  # row 0 is IoU 0.5
    result = {
        "map": _nanmean(ap),
        "map_50": _nanmean(ap_50),
        "ap_per_class": ap_per_class,
        "precision": 0.0,
        "recall": 0.0 if num_gt else math.nan,
        "f1": 0.0 if num_gt else math.nan,
        "threshold": DEFAULT_THRESHOLD,
    }
    points = _operating_points(scores, matched, num_gt)
    if num_gt and len(points["f1"]) and points["f1"].max() > 0:
        best = int(np.argmax(points["f1"]))  # first = highest threshold among ties
        result.update(
            precision=float(points["precision"][best]),
            recall=float(points["recall"][best]),
            f1=float(points["f1"][best]),
            threshold=float(points["thresholds"][best]),
        )
    return result


def detection_report(
    preds, targets, classes: list[str], iou_threshold: float = 0.5, score_threshold: float = 0.5
) -> dict:
    """Everything the evaluation page shows for a detection run, as strict JSON (None = undefined).

    Keys:
    - "confusion": (K+1)x(K+1) counts, K = len(classes), over detections with
      score >= score_threshold. Row = true class, column = predicted class; index K is
      "background" on both axes:
        * (c, c): a detection of class c matched a class-c box at IoU >= iou_threshold;
        * (t, p), t != p: a detection of class p matched no class-p box but overlaps a still
          unmatched class-t box at IoU >= iou_threshold (wrong class);
        * (K, p): a class-p detection that matches no box ("not an object": background
          or a duplicate);
        * (t, K): a class-t box that no detection matched ("not detected");
        * (K, K) is always 0.
      Matching per image: first same-class (as for AP: by descending score, each detection
      takes the unmatched box with the highest IoU), then the remaining detections against the
      remaining boxes of other classes, the same way. Each box is matched at most once.
    - "labels": classes + ["background"]; "row_labels": classes + ["not an object"];
      "column_labels": classes + ["not detected"].
    - "pr_curve": {"precision", "recall", "thresholds"}: all classes pooled at IoU
      iou_threshold, one point per distinct score (descending), keeping score >= threshold;
      thinned evenly to at most 1000 points (first and last kept).
    - "per_class": [{"class", "ap", "ap_50", "precision", "recall", "gt", "detections"}]:
      ap = AP@[.5:.95], ap_50 = AP@.5 (None without ground truth); precision/recall at
      iou_threshold and score_threshold; gt = ground-truth boxes; detections = detections with
      score >= score_threshold.
    - "precision", "recall", "f1": all classes pooled at iou_threshold and score_threshold.
    - "map", "map_50", "iou_threshold", "score_threshold".
    """
    classes = [str(c) for c in classes]
    num_classes = len(classes)
    pred_images, gt_images = _read_inputs(preds, targets, num_classes)
    thresholds = np.append(IOU_THRESHOLDS, iou_threshold)  # last row: the report's threshold
    matches = _match_dataset(pred_images, gt_images, num_classes, thresholds)
    _, ap, ap_50 = _ap_table(matches)

    per_class = []
    for c, m in enumerate(matches):
        counts = _counts_at(m.scores, m.matched[-1], m.num_gt, score_threshold)
        per_class.append(
            {
                "class": classes[c],
                "ap": _json_float(ap[c]),
                "ap_50": _json_float(ap_50[c]),
                "precision": counts["precision"],
                "recall": _json_float(counts["recall"]),
                "gt": m.num_gt,
                "detections": int((m.scores >= score_threshold).sum()),
            }
        )
    scores, matched, num_gt = _pool_classes(matches, row=-1)
    points = _operating_points(scores, matched, num_gt)
    keep = thin_indices(len(points["thresholds"]))
    overall = _counts_at(scores, matched, num_gt, score_threshold)
    return {
        "confusion": _confusion(
            pred_images, gt_images, num_classes, iou_threshold, score_threshold
        ).tolist(),
        "labels": classes + ["background"],
        "row_labels": classes + ["not an object"],
        "column_labels": classes + ["not detected"],
        "pr_curve": {
            "precision": [float(v) for v in points["precision"][keep]],
            "recall": [_json_float(v) for v in points["recall"][keep]],
            "thresholds": [float(v) for v in points["thresholds"][keep]],
        },
        "per_class": per_class,
        "precision": overall["precision"],
        "recall": _json_float(overall["recall"]),
        "f1": _json_float(overall["f1"]),
        "map": _json_float(_nanmean(ap)),
        "map_50": _json_float(_nanmean(ap_50)),
        "iou_threshold": float(iou_threshold),
        "score_threshold": float(score_threshold),
    }


# ---------------------------------------------------------------------------------------------
# Helpers


def _ap_table(classes: list[_ClassMatches]) -> tuple[dict, np.ndarray, np.ndarray]:
    ap = np.array([np.mean([_coco_ap(row, m.num_gt) for row in m.matched[:10]]) for m in classes])
    ap_50 = np.array([_coco_ap(m.matched[0], m.num_gt) for m in classes])
    table = {c: {"ap": float(ap[c]), "ap_50": float(ap_50[c])} for c in range(len(classes))}
    return table, ap, ap_50


def _nanmean(values: np.ndarray) -> float:
    present = values[~np.isnan(values)]
    return float(present.mean()) if len(present) else math.nan


def _json_float(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _greedy_pairs(ious: np.ndarray, det_free: np.ndarray, gt_free: np.ndarray, floor: float):
    """Match free detections (rows, in score order) to free GT; yields (det, gt) pairs."""
    for d in np.flatnonzero(det_free):
        candidates = np.where(gt_free, ious[d], -1.0)
        if len(candidates) == 0:
            return
        g = len(candidates) - 1 - int(np.argmax(candidates[::-1]))
        if candidates[g] >= floor:
            det_free[d] = False
            gt_free[g] = False
            yield d, g


def _confusion(preds, targets, num_classes, iou_threshold, score_threshold) -> np.ndarray:
    background = num_classes
    confusion = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    floor = min(iou_threshold, 1 - 1e-10)
    for pred, gt in zip(preds, targets):
        keep = np.flatnonzero(pred.scores >= score_threshold)
        keep = keep[np.argsort(-pred.scores[keep], kind="mergesort")]
        det_labels = pred.labels[keep]
        ious = box_iou(pred.boxes[keep], gt.boxes)
        det_free = np.ones(len(keep), dtype=bool)
        gt_free = np.ones(len(gt.labels), dtype=bool)
        # Same class first, so a correct detection is never stolen by a wrong-class one.
        same_class = np.where(det_labels[:, None] == gt.labels[None, :], ious, -1.0)
        for d, g in _greedy_pairs(same_class, det_free, gt_free, floor):
            confusion[gt.labels[g], det_labels[d]] += 1
        for d, g in _greedy_pairs(ious, det_free, gt_free, floor):
            confusion[gt.labels[g], det_labels[d]] += 1
        np.add.at(confusion, (background, det_labels[det_free]), 1)
        np.add.at(confusion, (gt.labels[gt_free], background), 1)
    return confusion
