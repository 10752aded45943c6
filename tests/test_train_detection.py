"""A short Faster R-CNN ResNet-50-FPN run (min_size 128) in one and in two processes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from factories import write_detection_set

from engine import store

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def boxes_set(tmp_path_factory):
    return write_detection_set(
        tmp_path_factory.mktemp("det") / "coco", "coco", n_images=10, canvas=96, classes=2
    )


@pytest.mark.parametrize("processes", [1, 2])
def test_detection_run_end_to_end(home, boxes_set, processes):
    sets = [
        f"dataset={boxes_set}", "task=detection", "model=fasterrcnn_resnet50_fpn",
        "pretrained=false", "min_size=128", "max_size=128", "batch_size=2", "epochs=1",
        "num_workers=0", "augment_hflip=true", f"num_processes={processes}", "device=cpu",
        "lr=0.005", "optimizer=sgd",
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "engine.cli", "--home", str(home), "train"]
    for item in sets:
        cmd += ["--set", item]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    db = store.connect(home)
    run = store.get_run(db, 1)
    assert run["status"] == "completed"
    assert run["summary"]["num_processes"] == processes
    assert run["summary"]["global_batch_size"] == 2 * processes
    names = {m["name"] for m in store.get_metrics(db, 1)}
    assert {"train_loss", "train_loss_classifier", "train_loss_box_reg", "train_loss_objectness",
            "train_loss_rpn_box_reg", "test_map", "test_map_50", "test_f1", "test_precision",
            "test_recall", "lr"} <= names  # fmt: skip
    predictions = json.loads((home / "1" / "predictions.json").read_text())
    # Every test image evaluated exactly once across the processes.
    assert (
        len(predictions["paths"]) == len(set(predictions["paths"])) == run["summary"]["test_images"]
    )
    card = json.loads((home / "1" / "model.json").read_text())
    assert card["task"] == "detection" and card["classes"] == ["0", "1"]
    assert card["threshold"] is not None and card["min_size"] == 128
