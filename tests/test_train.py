"""End-to-end runs through the CLI, the worker and `accelerate launch` on real digit images."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from factories import write_digits_imagefolder

from engine import evaluate, store

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "model=efficientnet_b0", "pretrained=false", "image_size=32", "batch_size=8",
    "num_workers=0", "metric=accuracy", "seed=1", "warmup=true",
]  # fmt: skip


def visionboard(home, *args, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "--home", str(home), *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )  # fmt: skip


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits_imagefolder(
        tmp_path_factory.mktemp("data") / "digits", per_class=12, classes=range(3)
    )


def train(home, digits, *sets):
    args = ["train", "--set", f"dataset={digits}"]
    for item in TINY + list(sets):
        args += ["--set", item]
    return visionboard(home, *args)


def test_one_process_end_to_end(home, digits):
    result = train(home, digits, "epochs=2", "early_stopping=false")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "completed" in result.stdout and "stop_reason: epoch limit" in result.stdout
    shown = json.loads(visionboard(home, "runs", "show", "1", "--json").stdout)
    assert shown["status"] == "completed"
    summary = shown["summary"]
    assert summary["epochs_trained"] == 2 and summary["global_batch_size"] == 8
    assert summary["best_epoch"] in (1, 2) and summary["trainable_params"] > 0
    names = {m["name"] for m in shown["metrics"]}
    assert {
        "lr",
        "train_loss",
        "test_loss",
        "test_accuracy",
        "test_roc_auc",
        "test_f1",
        "test_precision",
        "test_recall",
        "test_log_loss",
        "test_average_precision",
    } <= names
    # The LR is logged every step: the warmup climbs during epoch 1 and reaches lr.
    lrs = [m["value"] for m in shown["metrics"] if m["name"] == "lr" and m["epoch"] == 1]
    assert len(lrs) == summary["steps_per_epoch"]
    assert all(a < b for a, b in zip(lrs, lrs[1:])) and lrs[-1] == pytest.approx(0.001)
    run_dir = home / "1"
    card = json.loads((run_dir / "model.json").read_text())
    assert card["classes"] == ["0", "1", "2"] and card["image_size"] == 32
    assert (run_dir / "model.safetensors").stat().st_size > 0
    assert "1 process(es)" in (run_dir / "train.log").read_text()
    listed = json.loads(visionboard(home, "runs", "--json").stdout)
    assert [r["id"] for r in listed] == [1]


def test_two_processes_gather_every_test_image_once(home, digits):
    result = train(home, digits, "epochs=1", "num_processes=2", "device=cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    db = store.connect(home)
    run = store.get_run(db, 1)
    assert run["summary"]["num_processes"] == 2
    assert run["summary"]["global_batch_size"] == 16
    log = (home / "1" / "train.log").read_text()
    assert "2 process(es)" in log
    predictions = json.loads((home / "1" / "predictions.json").read_text())
    assert len(predictions["paths"]) == run["summary"]["test_images"]
    assert len(set(predictions["paths"])) == len(predictions["paths"])
    # The recorded metric is the metric of all gathered predictions, nothing dropped or doubled.
    recomputed = evaluate.classification_metrics(
        np.array(predictions["probs"]), np.array(predictions["targets"])
    )
    recorded = {m["name"]: m["value"] for m in store.get_metrics(db, 1) if m["epoch"] == 1}
    assert recorded["test_accuracy"] == pytest.approx(recomputed["accuracy"], abs=1e-6)
    # Only the main process writes: one row per epoch metric.
    assert sum(1 for m in store.get_metrics(db, 1) if m["name"] == "test_accuracy") == 1


def _kill_trainer(run_id):
    out = subprocess.run(
        ["pgrep", "-f", f"accelerate.commands.launch.*--run-id {run_id}"],
        capture_output=True,
        text=True,
    )
    for pid in out.stdout.split():
        os.killpg(int(pid), signal.SIGKILL)
    return bool(out.stdout.split())


def _checkpoint_epoch(path):
    try:
        return json.loads(path.read_text())["epoch"]
    except (OSError, ValueError):
        return 0  # not written yet, or being swapped for the next epoch's


def test_resume_after_the_trainer_is_killed(home, digits):
    result = visionboard(
        home,
        "train",
        "--no-follow",
        *sum(
            [
                ["--set", s]
                for s in TINY + [f"dataset={digits}", "epochs=6", "early_stopping=false"]
            ],
            [],
        ),
    )
    assert result.returncode == 0, result.stderr
    worker = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "--home", str(home), "worker"], cwd=ROOT
    )
    try:
        trainer_json = home / "1" / "checkpoint" / "trainer.json"
        deadline = time.time() + 180
        while _checkpoint_epoch(trainer_json) < 1:
            assert time.time() < deadline, "no checkpoint after 180 s"
            time.sleep(0.2)
        assert _kill_trainer(1)
        db = store.connect(home)
        deadline = time.time() + 30
        while store.get_run(db, 1)["status"] == "running":
            assert time.time() < deadline
            time.sleep(0.2)
        run = store.get_run(db, 1)
        assert run["status"] == "failed" and "SIGKILL" in run["error"]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    result = visionboard(home, "train", "--resume", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    run = store.get_run(db, 1)
    assert run["status"] == "completed" and run["summary"]["epochs_trained"] == 6
    resumed = re.search(r"resuming after epoch (\d+)", (home / "1" / "train.log").read_text())
    assert resumed and 1 <= int(resumed.group(1)) < 6
    metrics = store.get_metrics(db, 1)
    epoch_rows = [(m["name"], m["epoch"]) for m in metrics if m["name"] == "test_accuracy"]
    assert epoch_rows == [("test_accuracy", epoch) for epoch in range(1, 7)]
    steps = [m["step"] for m in metrics if m["name"] == "lr"]
    assert len(steps) == len(set(steps)) == 6 * run["summary"]["steps_per_epoch"]


def test_cancel_stops_the_run_cleanly(home, digits):
    assert (
        visionboard(
            home,
            "train",
            "--no-follow",
            *sum(
                [
                    ["--set", s]
                    for s in TINY + [f"dataset={digits}", "epochs=200", "early_stopping=false"]
                ],
                [],
            ),
        ).returncode
        == 0
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "--home", str(home), "worker"], cwd=ROOT
    )
    try:
        db = store.connect(home)
        deadline = time.time() + 120
        while not store.get_metrics(db, 1, ["lr"]):
            assert time.time() < deadline
            time.sleep(0.2)
        assert visionboard(home, "runs", "cancel", "1").returncode == 0
        deadline = time.time() + 60
        while store.get_run(db, 1)["status"] == "running":
            assert time.time() < deadline
            time.sleep(0.2)
        run = store.get_run(db, 1)
        assert run["status"] == "cancelled" and run["summary"]["stop_reason"] == "cancelled"
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)


def test_bad_dataset_fails_before_training_with_a_clear_error(home, tmp_path):
    data = write_digits_imagefolder(tmp_path / "one", per_class=4, classes=[7])
    result = train(home, data, "epochs=1")
    assert result.returncode == 1
    run = store.get_run(store.connect(home), 1)
    assert run["status"] == "failed"
    assert "class" in run["error"] and run["summary"]["stop_reason"] == "failed"


def test_early_stopping_keeps_the_best_epoch(home, digits):
    # An improvement of 0.9 in accuracy is out of reach: epoch 1 stays the best, and with a
    # patience of 1 the run stops after epoch 2 instead of running to the limit of 6.
    result = train(
        home, digits, "epochs=6", "early_stopping_patience=1", "early_stopping_delta=0.9"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    run = store.get_run(store.connect(home), 1)
    summary = run["summary"]
    assert summary["stop_reason"] == "early stop"
    assert (summary["epochs_trained"], summary["best_epoch"]) == (2, 1)
    card = json.loads((home / "1" / "model.json").read_text())
    assert card["best_epoch"] == 1  # the kept model is the best epoch's, not the last
