"""engine.ranking_metrics gives scikit-learn's numbers, and the trainer no longer imports it."""

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from engine import ranking_metrics as rm
from engine.evaluate import classification_metrics, classification_report

ROOT = Path(__file__).resolve().parent.parent


def exact(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=0)  # NaN == NaN, shapes equal


def scores(rng, n: int, kind: str) -> np.ndarray:
    if kind == "distinct":
        return rng.random(n)
    if kind == "rounded":  # heavy ties
        return rng.random(n).round(1)
    if kind == "few":  # three distinct values
        return rng.integers(0, 3, n) / 2
    return np.full(n, 0.25)  # all equal


def binary_cases(single_class: bool = False):
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 5, 40, 300):
        for kind in ("distinct", "rounded", "few", "equal"):
            for _ in range(4):
                if single_class:
                    positive = np.full(n, rng.random() < 0.5)
                else:
                    positive = rng.random(n) < rng.uniform(0.05, 0.95)
                    if positive.all() or not positive.any():
                        continue
                yield positive, scores(rng, n, kind)


def sklearn_quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


@pytest.mark.parametrize("single_class", [False, True])
def test_ranking_functions_match_sklearn(single_class):
    count = 0
    for positive, score in binary_cases(single_class):
        for ours, theirs in [
            (rm.roc_curve, skm.roc_curve),
            (rm.precision_recall_curve, skm.precision_recall_curve),
        ]:
            for a, b in zip(ours(positive, score), sklearn_quiet(theirs, positive, score)):
                exact(a, b)
        if single_class:  # undefined: scikit-learn 1.9 returns NaN too (older ones raised)
            assert np.isnan(rm.roc_auc_score(positive, score))
        else:
            exact(rm.roc_auc_score(positive, score), skm.roc_auc_score(positive, score))
        exact(
            rm.average_precision_score(positive, score),
            sklearn_quiet(skm.average_precision_score, positive, score),
        )
        count += 1
    assert count > 50


def test_roc_curve_drops_collinear_points_and_starts_at_infinity():
    fpr, tpr, thresholds = rm.roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    exact(thresholds, [np.inf, 0.8, 0.4, 0.35, 0.1])
    # A perfect ranking: of the points between the ends, only the corner (0, 1) stays.
    fpr, tpr, thresholds = rm.roc_curve([1, 1, 1, 0, 0, 0], [6, 5, 4, 3, 2, 1])
    exact(fpr, [0, 0, 0, 1])
    exact(tpr, [0, 1 / 3, 1, 1])
    exact(thresholds, [np.inf, 6, 4, 1])
    assert rm.roc_auc_score([1, 1, 1, 0, 0, 0], [6, 5, 4, 3, 2, 1]) == 1.0


def label_cases():
    rng = np.random.default_rng(1)
    for classes in (2, 6):
        for n in (1, 2, 3, 10, 200):
            for _ in range(6):
                present = rng.choice(classes, size=rng.integers(1, classes + 1), replace=False)
                targets = rng.choice(present, n)
                predicted = rng.integers(0, classes, n)
                yield classes, targets, predicted


def test_label_metrics_match_sklearn():
    rng = np.random.default_rng(2)
    for classes, targets, predicted in label_cases():
        full = list(range(classes))
        shuffled = list(rng.permutation(classes + 1))  # one label never seen, order mixed
        subset = sorted({int(targets[0])} | set(rng.choice(classes, 1).tolist()))
        for labels in (None, full, shuffled, subset):
            exact(
                rm.confusion_matrix(targets, predicted, labels=labels),
                sklearn_quiet(skm.confusion_matrix, targets, predicted, labels=labels),
            )
            ours = rm.precision_recall_fscore_support(targets, predicted, labels=labels)
            theirs = skm.precision_recall_fscore_support(
                targets, predicted, labels=labels, zero_division=0
            )
            for a, b in zip(ours, theirs):
                exact(a, b)
            assert ours[3].dtype == np.int64
            ours = rm.precision_recall_fscore_support(
                targets, predicted, labels=labels, average="macro"
            )
            theirs = skm.precision_recall_fscore_support(
                targets, predicted, labels=labels, average="macro", zero_division=0
            )
            assert ours == theirs
    assert rm.confusion_matrix([0, 1], [1, 1], labels=[0, 1]).dtype == np.int64


def sklearn_evaluate(probs, targets):
    """What engine.evaluate computed with scikit-learn before ranking_metrics existed."""
    predicted = probs.argmax(axis=1)
    present = np.unique(targets)
    p, r, f1, _ = skm.precision_recall_fscore_support(
        targets, predicted, average="macro", zero_division=0
    )
    if len(present) < 2:
        auc = np.nan
    elif probs.shape[1] == 2:
        auc = skm.roc_auc_score(targets == 1, probs[:, 1])
    else:
        auc = np.mean([skm.roc_auc_score(targets == c, probs[:, c]) for c in present])
    ap = np.mean([skm.average_precision_score(targets == c, probs[:, c]) for c in present])
    return {"roc_auc": auc, "precision": p, "recall": r, "f1": f1, "average_precision": ap}


def test_evaluate_gives_the_sklearn_numbers_binary_and_one_vs_rest():
    rng = np.random.default_rng(3)
    for classes, targets, _ in label_cases():
        for kind in ("distinct", "rounded", "equal"):
            probs = scores(rng, len(targets) * classes, kind).reshape(len(targets), classes)
            metrics = classification_metrics(probs, targets)
            for name, value in sklearn_quiet(sklearn_evaluate, probs, targets).items():
                exact(metrics[name], value)
            report = classification_report(probs, targets, [str(c) for c in range(classes)])
            for c in range(classes):
                positive = targets == c
                if positive.any() and not positive.all():
                    fpr, tpr, _ = skm.roc_curve(positive, probs[:, c])
                    exact(report["roc"][str(c)]["fpr"], fpr)
                    exact(report["roc"][str(c)]["tpr"], tpr)
                if positive.any():
                    precision, recall, _ = skm.precision_recall_curve(positive, probs[:, c])
                    exact(report["pr"][str(c)]["precision"], precision)
                    exact(report["pr"][str(c)]["recall"], recall)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="at least one sample"):
        rm.roc_curve([], [])
    with pytest.raises(ValueError, match="2 targets but 1 predictions"):
        rm.confusion_matrix([0, 1], [0])
    with pytest.raises(ValueError, match="average must be None or 'macro'"):
        rm.precision_recall_fscore_support([0], [0], average="micro")


def test_trainer_does_not_import_sklearn():
    code = "import sys, engine.train; print('sklearn' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
