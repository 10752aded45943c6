import contextlib
import io
import json
import math

import numpy as np
import pytest

from engine.evaluate import (
    box_iou,
    classification_metrics,
    classification_report,
    detection_metrics,
    detection_report,
    is_better,
)

# ---------------------------------------------------------------------------------------------
# Classification

# 3-class toy. Rows are probabilities; argmax gives
#   targets  = 0 0 0 1 1 2 2 2 2
#   argmax   = 0 0 0 0 1 0 1 2 2
# so the confusion matrix (row = true, column = predicted) is
#   [[3, 0, 0],
#    [1, 1, 0],
#    [1, 1, 2]]
TOY_PROBS = np.array(
    [
        [0.8, 0.1, 0.1],
        [0.6, 0.2, 0.2],
        [0.5, 0.25, 0.25],
        [0.5, 0.4, 0.1],  # true 1, predicted 0 with 0.5
        [0.2, 0.7, 0.1],
        [0.6, 0.1, 0.3],  # true 2, predicted 0 with 0.6
        [0.1, 0.5, 0.4],  # true 2, predicted 1 with 0.5
        [0.1, 0.1, 0.8],
        [0.2, 0.2, 0.6],
    ]
)
TOY_TARGETS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])


def test_classification_toy_metrics_by_hand():
    m = classification_metrics(TOY_PROBS, TOY_TARGETS)
    # class 0: TP 3, FP 2 (one from class 1, one from class 2), FN 0
    p0, r0, f0 = 3 / 5, 3 / 3, 2 * 3 / (2 * 3 + 2 + 0)
    # class 1: TP 1, FP 1 (from class 2), FN 1
    p1, r1, f1_ = 1 / 2, 1 / 2, 2 * 1 / (2 * 1 + 1 + 1)
    # class 2: TP 2, FP 0, FN 2
    p2, r2, f2 = 2 / 2, 2 / 4, 2 * 2 / (2 * 2 + 0 + 2)
    assert m["accuracy"] == pytest.approx(6 / 9)
    assert m["precision"] == pytest.approx((p0 + p1 + p2) / 3)  # 0.7
    assert m["recall"] == pytest.approx((r0 + r1 + r2) / 3)  # 2/3
    assert m["f1"] == pytest.approx((f0 + f1_ + f2) / 3)  # 23/36
    picked = [0.8, 0.6, 0.5, 0.4, 0.7, 0.3, 0.4, 0.8, 0.6]  # probability of the true class
    assert m["log_loss"] == pytest.approx(-sum(math.log(p) for p in picked) / 9)
    assert set(m) == {
        "accuracy",
        "roc_auc",
        "f1",
        "precision",
        "recall",
        "log_loss",
        "average_precision",
    }
    assert all(isinstance(v, float) and 0 <= v for v in m.values())


def test_classification_toy_report_by_hand():
    report = classification_report(TOY_PROBS, TOY_TARGETS, ["cat", "dog", "owl"])
    json.dumps(report, allow_nan=False)  # strict JSON for the dashboard
    assert report["confusion"] == [[3, 0, 0], [1, 1, 0], [1, 1, 2]]
    assert np.allclose(
        report["confusion_normalized"], [[1, 0, 0], [1 / 2, 1 / 2, 0], [1 / 4, 1 / 4, 2 / 4]]
    )
    rows = {row["class"]: row for row in report["per_class"]}
    assert rows["cat"] == pytest.approx(
        {"class": "cat", "precision": 3 / 5, "recall": 1.0, "f1": 3 / 4, "support": 3}
    )
    assert rows["dog"]["precision"] == pytest.approx(1 / 2)
    assert rows["owl"]["recall"] == pytest.approx(1 / 2)
    assert rows["owl"]["f1"] == pytest.approx(2 / 3)
    assert rows["owl"]["support"] == 4
    # Wrong predictions, most confident first: sample 5 (0.6), then 3 and 6 (0.5 each, in order).
    assert report["wrong"] == [5, 3, 6]
    assert set(report["roc"]) == {"cat", "dog", "owl"}
    roc = report["roc"]["cat"]
    assert roc["fpr"][0] == 0 and roc["tpr"][-1] == 1 and 0 <= roc["auc"] <= 1
    assert report["pr"]["owl"]["recall"][0] == 1.0 and report["pr"]["owl"]["ap"] > 0


def test_binary_roc_auc_ap_and_log_loss_by_hand():
    targets = np.array([0, 0, 1, 1, 0, 1])
    p1 = np.array([0.1, 0.4, 0.35, 0.8, 0.5, 0.9])
    probs = np.stack([1 - p1, p1], axis=1)
    m = classification_metrics(probs, targets)
    # Positive scores .35 .8 .9 vs negative .1 .4 .5: pairs ranked right:
    # .35 > .1 (1), .8 > all (3), .9 > all (3) → 7 of 9.
    assert m["roc_auc"] == pytest.approx(7 / 9)
    # AP of class 1, scores descending: .9 P, .8 P, .5 N, .4 N, .35 P
    #   recall steps of 1/3 at precision 1, 1, 3/5.
    ap1 = 1 / 3 * 1 + 1 / 3 * 1 + 1 / 3 * 3 / 5
    # AP of class 0 (scores 1 - p1): .9 P, .65 N, .6 P, .5 P → precisions 1, 2/3, 3/4.
    ap0 = 1 / 3 * 1 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 4
    assert m["average_precision"] == pytest.approx((ap0 + ap1) / 2)
    picked = [0.9, 0.6, 0.35, 0.8, 0.5, 0.9]
    assert m["log_loss"] == pytest.approx(-sum(math.log(p) for p in picked) / 6)
    # argmax: 0 0 0 1 0 1 (a .5/.5 tie goes to class 0) vs targets 0 0 1 1 0 1 → 5 of 6 right.
    assert m["accuracy"] == pytest.approx(5 / 6)


def test_log_loss_clips_zero_probability():
    m = classification_metrics([[1.0, 0.0], [0.0, 1.0]], [1, 1])
    assert m["log_loss"] == pytest.approx(-math.log(1e-15) / 2)


def test_missing_class_in_test_split():
    # Class 1 never appears in the targets nor wins the argmax.
    probs = np.array([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.2, 0.3, 0.5], [0.5, 0.1, 0.4]])
    targets = np.array([0, 0, 2, 2])
    m = classification_metrics(probs, targets)
    # class 0: positives .7 .3 vs negatives .2 .5 → 3 of 4 pairs.
    # class 2: positives .5 .4 vs negatives .1 .4 → 3 pairs + one tie (1/2) = 3.5 of 4.
    assert m["roc_auc"] == pytest.approx((3 / 4 + 3.5 / 4) / 2)
    # argmax 0 2 2 0: classes 0 and 2 each have TP 1, FP 1, FN 1; class 1 is not averaged in.
    assert m["f1"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.5)
    assert not any(math.isnan(v) for v in m.values())

    report = classification_report(probs, targets, ["a", "b", "c"])
    json.dumps(report, allow_nan=False)
    assert report["confusion"][1] == [0, 0, 0]
    assert report["confusion_normalized"][1] == [0.0, 0.0, 0.0]
    assert report["roc"]["b"] == {"fpr": [], "tpr": [], "auc": None}
    assert report["pr"]["b"] == {"precision": [], "recall": [], "ap": None}
    assert report["per_class"][1]["support"] == 0
    assert report["roc"]["c"]["auc"] == pytest.approx(3.5 / 4)


def test_single_class_and_single_sample_do_not_crash():
    probs = np.array([[0.9, 0.1], [0.6, 0.4]])
    m = classification_metrics(probs, [0, 0])
    assert math.isnan(m["roc_auc"])  # nothing to rank against: undefined
    assert m["accuracy"] == 1.0 and m["average_precision"] == 1.0
    one = classification_metrics([[0.2, 0.3, 0.5]], [1])
    assert one["accuracy"] == 0.0 and math.isnan(one["roc_auc"])
    assert one["log_loss"] == pytest.approx(-math.log(0.3))
    report = classification_report([[0.2, 0.3, 0.5]], [1], ["a", "b", "c"])
    json.dumps(report, allow_nan=False)
    assert report["wrong"] == [0]
    empty = classification_metrics(np.zeros((0, 3)), [])
    assert all(math.isnan(v) for v in empty.values())


def test_classification_bad_input_names_the_problem():
    with pytest.raises(ValueError, match=r"targets\[1\] = 3.*0\.\.2"):
        classification_metrics(TOY_PROBS[:2], [0, 3])
    with pytest.raises(ValueError, match="9 rows but targets has 2"):
        classification_metrics(TOY_PROBS, [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics([[math.nan, 1.0]], [0])
    with pytest.raises(ValueError, match="2 class names for 3"):
        classification_report(TOY_PROBS, TOY_TARGETS, ["a", "b"])


def test_is_better():
    assert is_better(0.5, None, "max", 0.001)
    assert is_better(0.802, 0.8, "max", 0.001)
    assert is_better(0.801, 0.8, "max", 0.001)  # exactly delta, despite float rounding
    assert not is_better(0.8005, 0.8, "max", 0.001)
    assert not is_better(0.8, 0.8, "max", 0.0)  # unchanged is no improvement
    assert is_better(0.3, 0.5, "min", 0.1)
    assert not is_better(0.45, 0.5, "min", 0.1)
    assert not is_better(0.9, 0.5, "min", 0.0)
    assert not is_better(math.nan, 0.5, "max", 0.0)
    assert is_better(0.1, math.nan, "max", 0.0)
    with pytest.raises(ValueError, match="'max' or 'min'"):
        is_better(1.0, 0.0, "up", 0.0)


# ---------------------------------------------------------------------------------------------
# Detection


def test_box_iou_edge_cases():
    a = np.array([[0, 0, 10, 10]])
    assert box_iou(a, a)[0, 0] == 1.0
    assert box_iou(a, [[20, 20, 30, 30]])[0, 0] == 0.0  # disjoint
    assert box_iou(a, [[10, 0, 20, 10]])[0, 0] == 0.0  # touching edges share no area
    assert box_iou(a, [[5, 0, 15, 10]])[0, 0] == pytest.approx(50 / 150)  # half shifted
    assert box_iou(a, [[0, 0, 5, 5]])[0, 0] == pytest.approx(25 / 100)  # contained
    assert box_iou([[3, 3, 3, 3]], [[3, 3, 3, 3]])[0, 0] == 0.0  # zero area: no 0/0
    assert box_iou(np.zeros((0, 4)), a).shape == (0, 1)
    iou = box_iou([[0, 0, 10, 10], [0, 0, 20, 20]], [[0, 0, 10, 10], [0, 0, 10, 20], [5, 5, 6, 6]])
    assert iou.shape == (2, 3)
    assert iou[1] == pytest.approx([100 / 400, 200 / 400, 1 / 400])


def test_perfect_detections():
    targets = [
        {"boxes": [[0, 0, 10, 10], [20, 20, 40, 30]], "labels": [0, 1]},
        {"boxes": [[5, 5, 25, 25]], "labels": [1]},
    ]
    preds = [
        {"boxes": t["boxes"], "scores": s, "labels": t["labels"]}
        for t, s in zip(targets, [[0.9, 0.8], [0.7]])
    ]
    m = detection_metrics(preds, targets, num_classes=2)
    assert m["map"] == 1.0 and m["map_50"] == 1.0
    assert m["precision"] == 1.0 and m["recall"] == 1.0 and m["f1"] == 1.0
    assert m["threshold"] == 0.7  # the lowest score still keeps every detection
    assert m["ap_per_class"] == {0: {"ap": 1.0, "ap_50": 1.0}, 1: {"ap": 1.0, "ap_50": 1.0}}


def test_one_false_positive_and_one_miss_by_hand():
    targets = [
        {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "labels": [0, 1]},
        {"boxes": [[0, 0, 10, 10]], "labels": [0]},  # never detected
    ]
    preds = [
        {
            "boxes": [[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]],
            "scores": [0.9, 0.8, 0.6],  # TP, FP (nothing there), TP
            "labels": [0, 0, 1],
        },
        {"boxes": np.zeros((0, 4)), "scores": [], "labels": []},
    ]
    m = detection_metrics(preds, targets, num_classes=2)
    # 3 ground-truth boxes. Keeping score >= .9: P 1/1, R 1/3, F1 2*(1/3)/(4/3) = 1/2
    #                       keeping score >= .8: P 1/2, R 1/3, F1 2*(1/6)/(5/6) = 2/5
    #                       keeping score >= .6: P 2/3, R 2/3, F1 2/3  ← best
    assert m["threshold"] == 0.6
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    # Class 0 (2 GT): TP at recall 1/2 with precision 1, then a FP: interpolated precision is 1
    # for the 51 recall points 0, .01, ..., .50 and 0 for the 50 above → AP 51/101 at every IoU.
    assert m["ap_per_class"][0]["ap_50"] == pytest.approx(51 / 101)
    assert m["ap_per_class"][0]["ap"] == pytest.approx(51 / 101)
    assert m["ap_per_class"][1] == {"ap": 1.0, "ap_50": 1.0}
    assert m["map"] == pytest.approx((51 / 101 + 1) / 2)
    assert m["map_50"] == pytest.approx((51 / 101 + 1) / 2)


def test_iou_exactly_half_matches_only_at_half():
    # IoU of [0,0,10,10] with [0,0,10,20] is 100/200 = 0.5: a hit at .5, a miss at .55 and up.
    targets = [{"boxes": [[0, 0, 10, 20]], "labels": [0]}]
    preds = [{"boxes": [[0, 0, 10, 10]], "scores": [0.9], "labels": [0]}]
    m = detection_metrics(preds, targets, num_classes=1)
    assert m["map_50"] == 1.0
    assert m["map"] == pytest.approx(0.1)  # 1 of 10 IoU thresholds
    assert m["f1"] == 1.0


def test_no_predictions_and_no_ground_truth():
    targets = [{"boxes": [[0, 0, 10, 10]], "labels": [1]}]
    preds = [{"boxes": [], "scores": [], "labels": []}]
    m = detection_metrics(preds, targets, num_classes=2)
    assert (m["map"], m["map_50"], m["precision"], m["recall"], m["f1"]) == (0, 0, 0, 0, 0)
    assert m["threshold"] == 0.5
    assert math.isnan(m["ap_per_class"][0]["ap"])  # class 0 has no ground truth
    # Only wrong detections: still zeros and the default threshold.
    wrong = [{"boxes": [[30, 30, 40, 40]], "scores": [0.9], "labels": [1]}]
    m = detection_metrics(wrong, targets, num_classes=2)
    assert (m["precision"], m["recall"], m["f1"], m["threshold"]) == (0, 0, 0, 0.5)
    # No ground truth at all: mAP and recall are undefined.
    m = detection_metrics(wrong, [{"boxes": [], "labels": []}], num_classes=2)
    assert math.isnan(m["map"]) and math.isnan(m["recall"]) and math.isnan(m["f1"])
    report = detection_report(wrong, [{"boxes": [], "labels": []}], ["a", "b"])
    json.dumps(report, allow_nan=False)
    assert report["map"] is None and report["recall"] is None
    assert report["confusion"][2] == [0, 1, 0]  # the detection is "not an object"


def test_detection_report_confusion_cells():
    targets = [
        {"boxes": [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], "labels": [0, 1, 2]},
        {"boxes": [[0, 0, 10, 10]], "labels": [1]},
    ]
    preds = [
        {
            "boxes": [
                [0, 0, 10, 10],  # class 0 on the class-0 box → (0, 0)
                [20, 0, 30, 10],  # class 2 on the class-1 box → wrong class (1, 2)
                [80, 80, 90, 90],  # class 1 on nothing → not an object (bg, 1)
                [0, 0, 10, 10],  # second class-0 on the class-0 box → duplicate (bg, 0)
                [40, 0, 50, 10],  # right class on the class-2 box but score < .5: ignored
            ],
            "scores": [0.9, 0.8, 0.7, 0.6, 0.3],
            "labels": [0, 2, 1, 0, 2],
        },
        {
            # A wrong class scoring higher must not steal the box from the right class.
            "boxes": [[0, 0, 10, 10], [1, 1, 10, 10]],
            "scores": [0.95, 0.85],
            "labels": [0, 1],
        },
    ]
    report = detection_report(preds, targets, ["a", "b", "c"], score_threshold=0.5)
    json.dumps(report, allow_nan=False)
    assert report["labels"] == ["a", "b", "c", "background"]
    assert report["row_labels"][-1] == "not an object"
    assert report["column_labels"][-1] == "not detected"
    #               predicted: a  b  c  not detected
    assert report["confusion"] == [
        [1, 0, 0, 0],  # true a
        [0, 1, 1, 0],  # true b: once right (image 2), once taken for c
        [0, 0, 0, 1],  # true c: only a detection below the score threshold
        [2, 1, 0, 0],  # not an object: duplicate a, image 2's a, the stray b
    ]
    rows = {row["class"]: row for row in report["per_class"]}
    # Class a: 1 GT, 3 detections >= .5 (one TP) → precision 1/3, recall 1.
    assert rows["a"]["gt"] == 1 and rows["a"]["detections"] == 3
    assert rows["a"]["precision"] == pytest.approx(1 / 3) and rows["a"]["recall"] == 1.0
    assert rows["c"]["detections"] == 1 and rows["c"]["precision"] == 0.0
    assert rows["c"]["recall"] == 0.0
    # Pooled at .5: 6 detections, 2 TP (a in image 1, b in image 2), 4 GT.
    assert report["precision"] == pytest.approx(2 / 6)
    assert report["recall"] == pytest.approx(2 / 4)
    assert report["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    # PR curve: one point per distinct score, descending; at .3 the class-c box is found too.
    curve = report["pr_curve"]
    assert curve["thresholds"] == [0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.3]
    assert curve["recall"][-1] == pytest.approx(3 / 4)
    assert curve["precision"][-1] == pytest.approx(3 / 7)


def test_detection_bad_input_names_the_entry():
    good = {"boxes": [[0, 0, 1, 1]], "labels": [0]}
    with pytest.raises(ValueError, match="preds has 2 images but targets has 1"):
        detection_metrics([{**good, "scores": [1]}] * 2, [good], 1)
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\] has 3.*0\.\.1"):
        detection_metrics([{**good, "scores": [1]}], [{**good, "labels": [3]}], 2)
    with pytest.raises(ValueError, match=r"preds\[0\] has 1 boxes but 2 scores"):
        detection_metrics([{**good, "scores": [1, 2]}], [good], 1)
    with pytest.raises(ValueError, match=r"preds\[0\] lacks 'scores'"):
        detection_metrics([good], [good], 1)
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\] must be \[N, 4\]"):
        detection_metrics([{**good, "scores": [1]}], [{"boxes": [[0, 1, 2]], "labels": [0]}], 1)


def _random_case(seed: int, num_images: int = 12, num_classes: int = 4):
    """GT boxes of classes 0..2 (class 3 only ever predicted), predictions near them or not."""
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(num_images):
        n = int(rng.integers(0, 5))
        xy = rng.uniform(0, 80, (n, 2))
        wh = rng.uniform(5, 40, (n, 2))
        gt_boxes = np.concatenate([xy, xy + wh], axis=1)
        gt_labels = rng.integers(0, num_classes - 1, n)
        jitter = rng.normal(0, 4, gt_boxes.shape)
        near = gt_boxes + jitter
        near_labels = np.where(rng.random(n) < 0.8, gt_labels, rng.integers(0, num_classes, n))
        m = int(rng.integers(0, 4))
        xy = rng.uniform(0, 80, (m, 2))
        stray = np.concatenate([xy, xy + rng.uniform(5, 40, (m, 2))], axis=1)
        boxes = np.concatenate([near, stray, near[: n // 2] + 2])  # + some duplicates
        # Valid boxes only: COCOeval ignores unmatched inverted boxes (negative area).
        boxes = np.concatenate(
            [np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])], axis=1
        )
        labels = np.concatenate([near_labels, rng.integers(0, num_classes, m), gt_labels[: n // 2]])
        scores = rng.random(len(boxes)).round(2)  # rounded: ties across images, as in practice
        preds.append({"boxes": boxes, "scores": scores, "labels": labels})
        targets.append({"boxes": gt_boxes, "labels": gt_labels})
    return preds, targets


def _cocoeval(preds, targets, num_classes):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    images, annotations, results = [], [], []
    for i, (p, t) in enumerate(zip(preds, targets)):
        images.append({"id": i + 1, "width": 200, "height": 200})
        for box, label in zip(t["boxes"], t["labels"]):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(label) + 1,
                    "bbox": xywh(box),
                    "area": float(w * h),
                    "iscrowd": 0,
                }
            )
        for box, score, label in zip(p["boxes"], p["scores"], p["labels"]):
            results.append(
                {
                    "image_id": i + 1,
                    "category_id": int(label) + 1,
                    "bbox": xywh(box),
                    "score": float(score),
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)],
        }
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_matches_pycocotools(seed):
    preds, targets = _random_case(seed)
    m = detection_metrics(preds, targets, num_classes=4)
    coco = _cocoeval(preds, targets, num_classes=4)
    assert m["map"] == pytest.approx(coco.stats[0], abs=1e-6)
    assert m["map_50"] == pytest.approx(coco.stats[1], abs=1e-6)
    # precision[T, R, K, area "all", maxDets 100]: -1 where the class has no ground truth.
    precision = coco.eval["precision"][:, :, :, 0, -1]
    for c in range(4):
        if (precision[:, :, c] < 0).all():
            assert math.isnan(m["ap_per_class"][c]["ap"])
        else:
            assert m["ap_per_class"][c]["ap"] == pytest.approx(precision[:, :, c].mean(), abs=1e-6)
            assert m["ap_per_class"][c]["ap_50"] == pytest.approx(
                precision[0, :, c].mean(), abs=1e-6
            )
    assert 0 < m["map"] < m["map_50"] < 1  # a case that exercises partial matches
    assert math.isnan(m["ap_per_class"][3]["ap"])  # class 3 has no ground truth


def test_detection_accepts_tensors():
    torch = pytest.importorskip("torch")
    targets = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([0])}]
    preds = [
        {
            "boxes": torch.tensor([[0.0, 0, 10, 10]]),
            "scores": torch.tensor([0.8]),
            "labels": torch.tensor([0]),
        }
    ]
    assert detection_metrics(preds, targets, 1)["f1"] == 1.0


def test_report_curves_are_thinned():
    rng = np.random.default_rng(0)
    # 40 images x 60 detections on a grid (no overlaps), every other one on a GT box.
    x = np.arange(60) * 20.0
    boxes = np.stack([x, x * 0, x + 10, x * 0 + 10], axis=1)
    targets = [{"boxes": boxes[::2], "labels": np.zeros(30)} for _ in range(40)]
    preds = [{"boxes": boxes, "scores": rng.random(60), "labels": np.zeros(60)} for _ in range(40)]
    curve = detection_report(preds, targets, ["a"])["pr_curve"]
    assert 900 <= len(curve["recall"]) <= 1000  # from 2400 distinct scores
    # The last point keeps every detection: all boxes found, half the detections right.
    assert curve["recall"][-1] == 1.0 and curve["precision"][-1] == pytest.approx(0.5)
    assert curve["thresholds"] == sorted(curve["thresholds"], reverse=True)

    n = 3000
    targets = rng.integers(0, 2, n)
    p1 = rng.random(n)
    report = classification_report(np.stack([1 - p1, p1], axis=1), targets, ["a", "b"])
    assert len(report["pr"]["b"]["recall"]) <= 1000
    assert report["pr"]["b"]["recall"][0] == 1.0 and report["pr"]["b"]["recall"][-1] == 0.0
