"""The trainer on real digit images.

Most tests call the loop in this process (engine.train.main, device=cpu, one process). The few
marked slow start a real `accelerate launch` and check what only it can: two DDP processes
gathering every test image once (through the CLI and its worker), a cancel that stops both
processes at the same step, and a resume after the trainer is killed. A test kills only the
process group it started itself (or that its own worker started).
"""

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

from engine import evaluate, store, train
from engine.config import RunConfig
from engine.run_folder import RunFolder
from engine.worker import free_port, launch_command

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "model": "efficientnet_b0", "pretrained": False, "image_size": 32, "batch_size": 8,
    "num_workers": 0, "metric": "accuracy", "seed": 1, "warmup": True, "device": "cpu",
}  # fmt: skip


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits_imagefolder(
        tmp_path_factory.mktemp("data") / "digits", per_class=12, classes=range(3)
    )


def queue(home, dataset, **keys) -> int:
    config = RunConfig.from_dict({**TINY, "dataset": str(dataset), **keys}).resolved()
    return store.create_run(store.connect(home), config)


def train_here(home, run_id, *flags) -> int:
    """The trainer's entry point, in this process."""
    return train.main(["--run-id", str(run_id), "--home", str(home), *flags])


def visionboard(home, *args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "--home", str(home), *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )  # fmt: skip


def wait_for(condition, seconds, what):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {seconds} s"
        time.sleep(0.2)


# -- in this process --------------------------------------------------------------------------


def test_a_run_writes_metrics_summary_model_card_and_predictions(home, digits, capsys):
    run_id = queue(home, digits, epochs=2, early_stopping=False)
    assert train_here(home, run_id) == 0
    db = store.connect(home)
    summary = store.get_run(db, run_id)["summary"]
    assert summary["stop_reason"] == "epoch limit"
    assert summary["epochs_trained"] == 2 and summary["global_batch_size"] == 8
    assert summary["best_epoch"] in (1, 2) and summary["trainable_params"] > 0
    metrics = store.get_metrics(db, run_id)
    assert {
        "lr", "train_loss", "train_loss_step", "test_loss", "test_accuracy", "test_roc_auc",
        "test_f1", "test_precision", "test_recall", "test_log_loss", "test_average_precision",
    } <= {m["name"] for m in metrics}  # fmt: skip
    # The LR is logged every step: the warmup climbs during epoch 1 and reaches lr.
    lrs = [m["value"] for m in metrics if m["name"] == "lr" and m["epoch"] == 1]
    assert len(lrs) == summary["steps_per_epoch"]
    assert all(a < b for a, b in zip(lrs, lrs[1:])) and lrs[-1] == pytest.approx(0.001)
    steps = [m["step"] for m in metrics if m["name"] == "train_loss_step"]
    assert steps == list(range(1, 2 * summary["steps_per_epoch"] + 1))
    folder = RunFolder(home, run_id)
    card = folder.read_card()
    assert card["classes"] == ["0", "1", "2"] and card["image_size"] == 32
    assert card["best_epoch"] == summary["best_epoch"]
    assert folder.model.stat().st_size > 0
    predictions = folder.read_predictions()
    assert sorted(predictions["paths"]) == sorted(set(predictions["paths"]))
    assert len(predictions["paths"]) == summary["test_images"]
    assert "1 process(es)" in capsys.readouterr().out


def test_early_stopping_keeps_the_best_epoch(home, digits):
    # An improvement of 0.9 in accuracy is out of reach: epoch 1 stays the best, and with a
    # patience of 1 the run stops after epoch 2 instead of running to the limit of 6.
    run_id = queue(home, digits, epochs=6, early_stopping_patience=1, early_stopping_delta=0.9)
    assert train_here(home, run_id) == 0
    summary = store.get_run(store.connect(home), run_id)["summary"]
    assert summary["stop_reason"] == "early stop"
    assert (summary["epochs_trained"], summary["best_epoch"]) == (2, 1)
    # The kept model is the best epoch's, not the last.
    assert RunFolder(home, run_id).read_card()["best_epoch"] == 1


def test_a_requested_cancel_stops_at_the_first_check(home, digits):
    run_id = queue(home, digits, epochs=3)
    db = store.connect(home)
    store.claim_run(db, "test", run_id=run_id)
    store.request_cancel(db, run_id)
    assert train_here(home, run_id) == 0
    assert store.get_run(db, run_id)["summary"]["stop_reason"] == "cancelled"
    assert [m["step"] for m in store.get_metrics(db, run_id, ["lr"])] == [1]


AUGMENTED = {
    "augment_color": True, "augment_hflip": True, "augment_rotation": 15.0, "augment_crop": True,
}  # fmt: skip


def epoch_metrics(db, run_id, epochs) -> dict:
    """Every metric row of these epochs (step and epoch values alike), keyed by name and step."""
    return {
        (m["name"], m["step"]): m["value"]
        for m in store.get_metrics(db, run_id)
        if m["epoch"] in epochs
    }


@pytest.mark.parametrize("workers", [0, 2])
def test_a_cancelled_and_resumed_run_gives_the_uninterrupted_runs_metrics(
    home, digits, monkeypatch, workers
):
    # Shuffle and augmentation (in the loader's workers too) are random: a resume must draw
    # what the uninterrupted run drew, not start them over.
    keys = {**AUGMENTED, "epochs": 3, "early_stopping": False, "num_workers": workers}
    db = store.connect(home)
    whole = queue(home, digits, **keys)
    assert train_here(home, whole) == 0

    run_id = queue(home, digits, **keys)
    store.claim_run(db, "test", run_id=run_id)
    save_checkpoint = train.save_checkpoint

    def cancel_after_epoch_1(accelerator, folder, state, schedule):
        save_checkpoint(accelerator, folder, state, schedule)
        if state.epoch == 1:  # the user cancels while epoch 2 is under way
            store.request_cancel(db, run_id)

    monkeypatch.setattr(train, "save_checkpoint", cancel_after_epoch_1)
    assert train_here(home, run_id) == 0
    assert store.get_run(db, run_id)["summary"]["stop_reason"] == "cancelled"
    assert _checkpoint_epoch(RunFolder(home, run_id).checkpoint / "trainer.json") == 1
    monkeypatch.setattr(train, "save_checkpoint", save_checkpoint)
    store.set_status(db, run_id, "cancelled")  # what the worker records at the exit
    store.resume_run(db, run_id)
    store.claim_run(db, "test", run_id=run_id)
    assert train_here(home, run_id, "--resume") == 0
    assert store.get_run(db, run_id)["summary"]["epochs_trained"] == 3

    expected, resumed = epoch_metrics(db, whole, {2, 3}), epoch_metrics(db, run_id, {2, 3})
    assert {"train_loss", "test_loss", "test_accuracy", "lr"} <= {name for name, _ in expected}
    assert resumed.keys() == expected.keys()
    assert resumed == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_bad_dataset_fails_before_training_with_a_clear_error(home, tmp_path):
    run_id = queue(home, write_digits_imagefolder(tmp_path / "one", per_class=4, classes=[7]))
    assert train_here(home, run_id) == 1
    run = store.get_run(store.connect(home), run_id)
    assert "class" in run["trainer_error"] and run["summary"]["stop_reason"] == "failed"
    assert not (home / str(run_id) / "error.txt").exists()


# -- real launches ----------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_through_the_cli_gather_every_test_image_once(home, digits):
    sets = {**TINY, "dataset": digits, "epochs": 1, "num_processes": 2}
    args = [f"--set={k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in sets.items()]
    result = visionboard(home, "train", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "completed" in result.stdout and "stop_reason: epoch limit" in result.stdout
    shown = json.loads(visionboard(home, "runs", "show", "1", "--json").stdout)
    assert shown["status"] == "completed"
    summary = shown["summary"]
    assert summary["num_processes"] == 2 and summary["global_batch_size"] == 16
    assert "2 process(es)" in (home / "1" / "train.log").read_text()
    predictions = RunFolder(home, 1).read_predictions()
    assert len(predictions["paths"]) == len(set(predictions["paths"])) == summary["test_images"]
    # The recorded metric is the metric of all gathered predictions, nothing dropped or doubled.
    recomputed = evaluate.classification_metrics(
        np.array(predictions["probs"]), np.array(predictions["targets"])
    )
    recorded = [m for m in shown["metrics"] if m["name"] == "test_accuracy"]
    # Only the main process writes: one row per epoch metric.
    assert len(recorded) == 1
    assert recorded[0]["value"] == pytest.approx(recomputed["accuracy"], abs=1e-6)


@pytest.mark.slow
def test_cancel_stops_both_processes_at_the_same_step(home, digits, tmp_path):
    run_id = queue(home, digits, epochs=200, early_stopping=False, num_processes=2)
    db = store.connect(home)
    run = store.claim_run(db, "test", run_id=run_id)
    cmd, env = launch_command(run, home, [], free_port())
    with open(tmp_path / "train.log", "w") as log:
        trainer = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )
    try:
        wait_for(lambda: store.get_metrics(db, run_id, ["lr"]), 240, "training step")
        store.request_cancel(db, run_id)
        # Both processes leave the loop at the same step: no collective is left waiting.
        assert trainer.wait(60) == 0, (tmp_path / "train.log").read_text()
    finally:
        if trainer.poll() is None:
            os.killpg(trainer.pid, signal.SIGKILL)
            trainer.wait()
    assert store.get_run(db, run_id)["summary"]["stop_reason"] == "cancelled"


@pytest.mark.slow
def test_a_killed_trainer_resumes_from_its_checkpoint(home, digits, capsys):
    run_id = queue(home, digits, epochs=6, early_stopping=False)
    worker = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "--home", str(home), "worker"], cwd=ROOT
    )
    db = store.connect(home)
    try:
        trainer_state = RunFolder(home, run_id).checkpoint / "trainer.json"
        wait_for(lambda: _checkpoint_epoch(trainer_state) >= 1, 240, "checkpoint")
        # The trainer is our worker's child, in a process group of its own.
        children = subprocess.run(
            ["pgrep", "-P", str(worker.pid)], capture_output=True, text=True
        ).stdout.split()
        trainers = [pid for pid in children if b"engine.train" in _cmdline(pid)]
        assert len(trainers) == 1, children
        os.killpg(int(trainers[0]), signal.SIGKILL)
        wait_for(lambda: store.get_run(db, run_id)["status"] != "running", 30, "recorded end")
        run = store.get_run(db, run_id)
        assert run["status"] == "failed" and "SIGKILL" in run["error"]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    capsys.readouterr()
    assert train_here(home, run_id, "--resume") == 0
    resumed = re.search(r"resuming after epoch (\d+)", capsys.readouterr().out)
    assert resumed and 1 <= int(resumed.group(1)) < 6
    run = store.get_run(db, run_id)
    assert run["summary"]["stop_reason"] == "epoch limit"
    assert run["summary"]["epochs_trained"] == 6
    metrics = store.get_metrics(db, run_id)
    epoch_rows = [(m["name"], m["epoch"]) for m in metrics if m["name"] == "test_accuracy"]
    assert epoch_rows == [("test_accuracy", epoch) for epoch in range(1, 7)]
    steps = [m["step"] for m in metrics if m["name"] == "lr"]
    assert len(steps) == len(set(steps)) == 6 * run["summary"]["steps_per_epoch"]


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""  # exited meanwhile


def _checkpoint_epoch(path):
    try:
        return json.loads(path.read_text())["epoch"]
    except (OSError, ValueError):
        return 0  # not written yet, or being swapped for the next epoch's
