"""A short Faster R-CNN ResNet-50-FPN run (min_size 128): one process in this process, and two
through the CLI and `accelerate launch` (the gather of detection records across processes)."""

import subprocess
import sys
from pathlib import Path

import pytest
from factories import ADMIN, write_detection_set

from engine import store, train
from engine.config import RunConfig
from engine.run_folder import RunFolder

ROOT = Path(__file__).resolve().parent.parent
DETECTION = {
    "task": "detection", "model": "fasterrcnn_resnet50_fpn", "pretrained": False,
    "min_size": 128, "max_size": 128, "batch_size": 2, "epochs": 1, "num_workers": 0,
    "augment_hflip": True, "device": "cpu", "lr": 0.005, "optimizer": "sgd",
}  # fmt: skip
LOSSES = {"train_loss", "train_loss_classifier", "train_loss_box_reg", "train_loss_objectness",
          "train_loss_rpn_box_reg"}  # fmt: skip
TEST_METRICS = {"test_map", "test_map_50", "test_f1", "test_precision", "test_recall"}


@pytest.fixture(scope="module")
def boxes_set(tmp_path_factory):
    return write_detection_set(
        tmp_path_factory.mktemp("det") / "coco", "coco", n_images=10, canvas=96, classes=2
    )


def check_run(home, run_id, processes):
    db = store.connect(home)
    summary = store.get_run(db, run_id)["summary"]
    assert summary["stop_reason"] == "epoch limit"
    assert summary["num_processes"] == processes
    assert summary["global_batch_size"] == 2 * processes
    assert LOSSES | TEST_METRICS | {"lr"} <= set(store.metric_names(db, run_id))
    folder = RunFolder(home, run_id)
    predictions = folder.read_predictions()
    # Every test image evaluated exactly once across the processes.
    assert len(predictions["paths"]) == len(set(predictions["paths"])) == summary["test_images"]
    card = folder.read_card()
    assert card["task"] == "detection" and card["classes"] == ["0", "1"]
    assert card["threshold"] is not None and card["min_size"] == 128


def test_detection_run_in_one_process(home, boxes_set):
    config = RunConfig.from_dict({**DETECTION, "dataset": str(boxes_set)}).resolved()
    run_id = store.create_run(store.connect(home), config, by=ADMIN)
    assert train.main(["--run-id", str(run_id), "--home", str(home)]) == 0
    check_run(home, run_id, 1)


@pytest.mark.slow
def test_detection_run_in_two_processes_through_the_cli(home, boxes_set):
    sets = {**DETECTION, "dataset": boxes_set, "num_processes": 2}
    cmd = [sys.executable, "-m", "engine.cli", "--home", str(home), "train"]
    cmd += [f"--set={k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in sets.items()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert store.get_run(store.connect(home), 1)["status"] == "completed"
    check_run(home, 1, 2)
