"""Unit tests of dashboard.reports (summary card, binary threshold, mistakes, pages) and of
the pure helpers behind the run page's galleries and downloads."""

import pytest

from dashboard import images, reports
from engine.run_folder import download_name


def test_summary_facts_read_like_a_card():
    run = {
        "dataset": "/data/digits",
        "config": {"metric": "roc_auc"},
        "summary": {
            "metric": "f1",
            "eval_split": "val",
            "best_metric": 0.91234,
            "best_epoch": 7,
            "epochs_trained": 12,
            "stop_reason": "early stopping",
            "train_images": 1200,
            "val_images": 300,
            "test_images": 297,
            "classes": ["0", "1", "2"],
            "trainable_params": 1000,
            "total_params": 4000,
            "images_per_second": 812.345,
            "timings": {
                "launch_to_first_step": 6.04,
                "epochs": [
                    {"epoch": 1, "train": 3.0, "evaluate": 0.5, "checkpoint": 0.1, "save": 0.2},
                    {"epoch": 2, "train": 2.0, "evaluate": 0.3, "checkpoint": 0.1},
                ],
            },
        },
    }
    facts = dict(reports.summary_facts(run, "3m 05s"))
    assert facts == {
        "Best f1 (val)": "0.9123 at epoch 7",
        "Stop reason": "early stopping after 12 epoch(s)",
        "Duration": "3m 05s",
        "Dataset": "/data/digits",
        "Images": "1,200 train / 300 val / 297 test",
        "Classes": "3: 0, 1, 2",
        "Trainable parameters": "1,000 of 4,000 (25%)",
        "Images / s": "812.3",
        "Time spent": "first step after 6.0 s; per epoch 2.5 s train, 0.4 s evaluate, "
        "0.1 s checkpoint",
    }


def test_summary_facts_of_a_run_that_recorded_little_keep_their_shape():
    facts = reports.summary_facts({"config": {}, "summary": {}})
    assert [label for label, _ in facts][1:] == [
        "Stop reason",
        "Duration",
        "Dataset",
        "Images",
        "Classes",
        "Trainable parameters",
        "Images / s",
        "Time spent",
    ]
    assert all(value.startswith("—") for _, value in facts)


def test_binary_at_threshold_moves_the_matrix_and_scores():
    probs = [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45], [0.2, 0.8]]
    targets = [0, 0, 1, 1, 1]
    half = reports.binary_at_threshold(probs, targets, 0.5)
    assert half["confusion"] == [[2, 0], [1, 2]]
    assert half["precision"] == 1.0 and half["recall"] == pytest.approx(2 / 3)
    assert half["f1"] == pytest.approx(0.8)
    low = reports.binary_at_threshold(probs, targets, 0.4)
    assert low["confusion"] == [[1, 1], [0, 3]]
    assert low["confusion_normalized"] == [[0.5, 0.5], [0.0, 1.0]]
    # Full precision: 0.4171 is not rounded to 0.42 (which would drop the 0.4171 image).
    exact = reports.binary_at_threshold([[0.5829, 0.4171]], [1], 0.4171)
    assert exact["confusion"] == [[0, 0], [0, 1]] and exact["threshold"] == 0.4171
    with pytest.raises(ValueError, match="2 probability columns"):
        reports.binary_at_threshold([[0.2, 0.3, 0.5]], [0], 0.5)


def test_select_mistakes_filters_by_true_and_predicted_class_and_confidence():
    probs = [[0.2, 0.7, 0.1], [0.6, 0.1, 0.3], [0.1, 0.3, 0.6], [0.9, 0.05, 0.05]]
    targets = [0, 2, 1, 0]
    wrong = [0, 1, 2]  # most confident first, as engine.evaluate gives them
    assert reports.select_mistakes(wrong, probs, targets) == [0, 1, 2]
    assert reports.select_mistakes(wrong, probs, targets, true_classes=[2, 1]) == [1, 2]
    assert reports.select_mistakes(wrong, probs, targets, predicted_classes=[0]) == [1]
    assert reports.select_mistakes(wrong, probs, targets, confidence=(0.6, 0.65)) == [1, 2]
    assert reports.select_mistakes(wrong, probs, targets, [0], [2]) == []


def test_pages_cover_every_item_once():
    items = list(range(30))
    assert reports.page_count(30) == 3 and reports.page_count(0) == 1
    pages = [reports.page_of(items, p) for p in (1, 2, 3)]
    assert [len(p) for p in pages] == [12, 12, 6]
    assert sum(pages, []) == items
    assert reports.page_of(items, 9) == pages[2]  # past the end: the last page


def test_detections_above_keeps_scores_at_the_exact_threshold():
    pred = {"boxes": [[0, 0, 1, 1], [1, 1, 2, 2]], "labels": [0, 1], "scores": [0.4171, 0.41]}
    boxes, labels, scores = images.detections_above(pred, 0.4171)
    assert boxes == [[0, 0, 1, 1]] and labels == [0] and scores == [0.4171]
    assert images.detections_above(pred, 0.42) == ([], [], [])


def test_download_names_carry_the_run_id_and_a_safe_name():
    name = "efficientnet_b0 on digits"
    assert download_name(8, name, "x/export/model.onnx") == "run-8-efficientnet_b0-on-digits.onnx"
    assert download_name(8, name, "model.onnx.json") == "run-8-efficientnet_b0-on-digits.onnx.json"
    assert (
        download_name(8, name, "model.safetensors") == "run-8-efficientnet_b0-on-digits.safetensors"
    )
    assert download_name(3, "../a/b: c?", "model.json") == "run-3-a-b-c.json"
    assert download_name(3, "", "model.pt") == "run-3.pt"
    assert download_name(3, "x", "notes.txt") == "run-3-x-notes.txt"
