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
from factories import ADMIN, write_digits_imagefolder
from safetensors.torch import load_file
from streamlit.testing.v1 import AppTest

from engine import evaluate, store, train
from engine.config import RunConfig
from engine.data import read_image
from engine.predict import load_predictor
from engine.run_folder import RunFolder
from engine.sample_datasets import digit_images, write_imagefolder
from engine.worker import free_port, launch_command

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "dashboard" / "app.py"
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
    return store.create_run(store.connect(home), config, by=ADMIN)


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
    # Progress from step timing (engine.metric_log): the last step, the speed, nothing left.
    assert summary["epoch_step"] == summary["steps_per_epoch"]
    assert summary["images_per_second"] > 0 and summary["eta_seconds"] == 0
    # Where the time went (engine.timings): set-up, then each epoch's parts.
    timings = summary["timings"]
    assert {"data_check", "model", "image_cache", "launch_to_first_step", "total"} <= set(timings)
    assert [e["epoch"] for e in timings["epochs"]] == [1, 2]
    assert all({"train", "evaluate", "checkpoint"} <= set(e) for e in timings["epochs"])
    assert "save" in timings["epochs"][summary["best_epoch"] - 1]  # the best model was saved
    assert timings["launched_at"] is None  # in this process: no worker stamped a launch
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


@pytest.fixture(scope="module")
def three_splits(tmp_path_factory):
    """train/, val/ and test/ class folders: 6, 3 and 3 images of each of three digits."""
    root = tmp_path_factory.mktemp("data") / "three"
    parts = {"train": [], "val": [], "test": []}
    seen: dict[int, int] = {}
    for image, digit in digit_images(per_class=12, size=32, classes=range(3)):
        n = seen[digit] = seen.get(digit, -1) + 1
        parts["train" if n < 6 else "val" if n < 9 else "test"].append((image, digit))
    for split, items in parts.items():
        write_imagefolder(root, items, split)
    return root


def test_val_picks_the_best_epoch_and_test_reports_the_best_model_at_the_end(
    home, three_splits, capsys, monkeypatch
):
    # As in test_early_stopping_keeps_the_best_epoch: epoch 1 is the best, epoch 2 the last.
    run_id = queue(
        home, three_splits, epochs=6, early_stopping_patience=1, early_stopping_delta=0.9, lr=0.01
    )
    assert train_here(home, run_id) == 0
    db = store.connect(home)
    summary = store.get_run(db, run_id)["summary"]
    assert (summary["epochs_trained"], summary["best_epoch"]) == (2, 1)
    assert summary["eval_split"] == "val"
    assert (summary["train_images"], summary["val_images"], summary["test_images"]) == (18, 9, 9)
    folder = RunFolder(home, run_id)
    # Each epoch was judged on val: the kept predictions are val's, and their metric is the one
    # recorded for the best epoch (under the public name test_accuracy).
    per_epoch = folder.read_predictions()
    assert per_epoch["split"] == "val" and len(per_epoch["paths"]) == 9
    assert all(Path(p).parts[-3] == "val" for p in per_epoch["paths"])
    recorded = {m["epoch"]: m["value"] for m in store.get_metrics(db, run_id, ["test_accuracy"])}
    val_accuracy = evaluate.classification_metrics(
        np.array(per_epoch["probs"]), np.array(per_epoch["targets"])
    )["accuracy"]
    assert recorded[1] == pytest.approx(val_accuracy, abs=1e-6)
    card = folder.read_card()
    assert card["metrics_split"] == "val" and card["best_epoch"] == 1
    # The final report: the best epoch's model (not the last one) on every test image, once.
    final = summary["final_test"]
    assert (final["split"], final["best_epoch"], final["images"]) == ("test", 1, 9)
    assert card["final_test"] == final
    predictions = folder.read_predictions(final=True)
    assert predictions["split"] == "test"
    assert sorted(predictions["paths"]) == sorted(str(p) for p in three_splits.glob("test/*/*"))
    recomputed = evaluate.classification_metrics(
        np.array(predictions["probs"]), np.array(predictions["targets"])
    )
    assert final["metrics"]["accuracy"] == pytest.approx(recomputed["accuracy"], abs=1e-6)
    best = load_predictor(run_id, home=home, device="cpu")
    pictures = [read_image(p) for p in predictions["paths"]]
    best_probs = [list(e["probs"].values()) for e in best.predict(pictures)]
    assert np.allclose(best_probs, predictions["probs"], atol=1e-5)
    # The last epoch's weights (the checkpoint's) predict otherwise: the check can tell them apart.
    last = load_file(str(folder.checkpoint / "model.safetensors"))
    best.model.load_state_dict(last)
    last_probs = [list(e["probs"].values()) for e in best.predict(pictures)]
    assert not np.allclose(last_probs, predictions["probs"], atol=1e-5)
    assert "final report on the test split (best epoch 1)" in capsys.readouterr().out
    # The run page shows it, labelled, with the same report widgets as the per-epoch one.
    monkeypatch.setenv("VISIONBOARD_SAMPLES", "0")  # no sample datasets to prepare
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["run"] = str(run_id)
    at.run()
    at.switch_page("pages/run.py").run()
    assert not at.exception, [e.value for e in at.exception]
    headers = [h.value for h in at.header]
    assert "Evaluation on the val split (best epoch 1)" in headers
    assert "Final report on the test split (best epoch 1)" in headers
    table = next(d.value for d in at.dataframe if "metric" in d.value.columns)
    assert dict(zip(table["metric"], table["value"]))["accuracy"] == pytest.approx(
        final["metrics"]["accuracy"]
    )
    charts = {c.key: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    assert sum(map(sum, charts["final_chart_confusion"]["data"][0]["z"])) == 9
    assert sum(map(sum, charts["chart_confusion"]["data"][0]["z"])) == 9


def test_without_val_the_test_split_is_the_per_epoch_one_and_no_final_report(home, digits):
    run_id = queue(home, digits, epochs=1)
    assert train_here(home, run_id) == 0
    summary = store.get_run(store.connect(home), run_id)["summary"]
    assert summary["eval_split"] == "test" and summary["val_images"] == 0
    assert summary["final_test"] is None
    folder = RunFolder(home, run_id)
    assert folder.read_predictions()["split"] == "test"
    assert not folder.final_predictions.exists()


def test_a_cancelled_run_makes_no_final_report(home, three_splits):
    run_id = queue(home, three_splits, epochs=3)
    db = store.connect(home)
    store.claim_run(db, "test", run_id=run_id)
    store.request_cancel(db, run_id, by=ADMIN)
    assert train_here(home, run_id) == 0
    summary = store.get_run(db, run_id)["summary"]
    assert summary["stop_reason"] == "cancelled" and summary["final_test"] is None
    assert not RunFolder(home, run_id).final_predictions.exists()


def test_a_requested_cancel_stops_at_the_first_check(home, digits):
    run_id = queue(home, digits, epochs=3)
    db = store.connect(home)
    store.claim_run(db, "test", run_id=run_id)
    store.request_cancel(db, run_id, by=ADMIN)
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
    keys["cache_images"] = "off"  # with every image cached, the loader has no workers
    db = store.connect(home)
    whole = queue(home, digits, **keys)
    assert train_here(home, whole) == 0

    run_id = queue(home, digits, **keys)
    store.claim_run(db, "test", run_id=run_id)
    save_checkpoint = train.save_checkpoint

    def cancel_after_epoch_1(accelerator, folder, state, schedule):
        save_checkpoint(accelerator, folder, state, schedule)
        if state.epoch == 1:  # the user cancels while epoch 2 is under way
            store.request_cancel(db, run_id, by=ADMIN)

    monkeypatch.setattr(train, "save_checkpoint", cancel_after_epoch_1)
    assert train_here(home, run_id) == 0
    assert store.get_run(db, run_id)["summary"]["stop_reason"] == "cancelled"
    assert _checkpoint_epoch(RunFolder(home, run_id).checkpoint / "trainer.json") == 1
    monkeypatch.setattr(train, "save_checkpoint", save_checkpoint)
    store.set_status(db, run_id, "cancelled")  # what the worker records at the exit
    store.resume_run(db, run_id, by=ADMIN)
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
def test_two_processes_report_the_best_model_on_every_test_image_once(home, three_splits):
    # 9 val and 9 test images over 2 processes: each split's last batch is padded, and the
    # padding must be dropped from the per-epoch and the final report alike.
    sets = {**TINY, "dataset": three_splits, "epochs": 2, "num_processes": 2, "batch_size": 4}
    args = [f"--set={k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in sets.items()]
    result = visionboard(home, "train", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = store.get_run(store.connect(home), 1)["summary"]
    assert summary["eval_split"] == "val" and summary["final_test"]["images"] == 9
    folder = RunFolder(home, 1)
    for predictions, split in (
        (folder.read_predictions(), "val"),
        (folder.read_predictions(True), "test"),
    ):
        assert len(predictions["paths"]) == len(set(predictions["paths"])) == 9
        assert {Path(p).parts[-3] for p in predictions["paths"]} == {split}
    final = folder.read_predictions(final=True)
    recomputed = evaluate.classification_metrics(
        np.array(final["probs"]), np.array(final["targets"])
    )
    assert summary["final_test"]["metrics"]["accuracy"] == pytest.approx(recomputed["accuracy"])


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
        store.request_cancel(db, run_id, by=ADMIN)
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
        # Our worker started the launcher in a process group of its own and recorded its pid;
        # with one CPU process the trainer is in that group.
        launcher = store.get_run(db, run_id)["trainer_pid"]
        assert launcher and os.getpgid(launcher) == launcher
        os.killpg(launcher, signal.SIGKILL)
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


def _checkpoint_epoch(path):
    try:
        return json.loads(path.read_text())["epoch"]
    except (OSError, ValueError):
        return 0  # not written yet, or being swapped for the next epoch's
