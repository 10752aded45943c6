"""MetricLog: step losses stay on the device until a flush, and the cancel check is one
collective at steps every process agrees on."""

from types import SimpleNamespace

import pytest
import torch
from factories import ADMIN

from engine import metric_log, store
from engine.metric_log import Cancelled, MetricLog, next_interval


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def process(main=True, processes=1):
    return SimpleNamespace(
        is_main_process=main, num_processes=processes, device=torch.device("cpu")
    )


@pytest.fixture
def run_id(db):
    return store.create_run(db, {"dataset": "digits", "model": "efficientnet_b0"}, by=ADMIN)


def test_next_interval_aims_at_one_check_per_flush_period():
    assert next_interval(0.1, 2.0) == 20
    assert next_interval(5.0, 2.0) == 1  # slower steps than the period: check every step
    assert next_interval(0.0, 2.0) >= 1


def test_step_losses_are_buffered_as_tensors_and_written_at_the_check(db, run_id):
    clock = Clock()
    log = MetricLog(process(), db, run_id, flush_seconds=2.0, clock=clock)
    clock.now += 0.5
    log.record_step(1, 1, {"lr": 0.1, "train_loss_step": torch.tensor(1.5)})
    # The first step is checked at once; at 0.5 s a step, the next check is 4 steps later.
    assert [m["value"] for m in store.get_metrics(db, run_id, ["train_loss_step"])] == [1.5]
    assert log.interval == 4
    for step in range(2, 5):
        clock.now += 0.5
        log.record_step(step, 1, {"lr": 0.1, "train_loss_step": torch.tensor(float(step))})
    assert len(store.get_metrics(db, run_id, ["train_loss_step"])) == 1
    assert all(isinstance(v["train_loss_step"], torch.Tensor) for _, _, v in log.pending)
    clock.now += 0.5
    log.record_step(5, 1, {"lr": 0.1, "train_loss_step": torch.tensor(5.0)})
    rows = store.get_metrics(db, run_id, ["train_loss_step"])
    assert [(m["step"], m["value"]) for m in rows] == [(1, 1.5), (2, 2), (3, 3), (4, 4), (5, 5)]
    run = store.get_run(db, run_id)
    assert run["heartbeat_at"] is not None
    assert (run["summary"]["step"], run["summary"]["current_epoch"]) == (5, 1)
    assert run["summary"]["epoch"] == 0  # the last finished epoch


def test_the_step_sync_switch_reads_each_steps_values_at_once(db, run_id, monkeypatch):
    # The bench's lever: what a loop that reads its loss every step would do.
    monkeypatch.setenv(metric_log.STEP_SYNC_ENV, "1")
    clock = Clock()
    log = MetricLog(process(), db, run_id, flush_seconds=2.0, clock=clock)
    for step in range(1, 4):
        clock.now += 0.5
        log.record_step(step, 1, {"lr": 0.1, "train_loss_step": torch.tensor(float(step))})
    assert [v["train_loss_step"] for _, _, v in log.pending] == [2.0, 3.0]
    assert all(type(v["train_loss_step"]) is float for _, _, v in log.pending)


def test_epoch_values_are_written_at_once(db, run_id):
    log = MetricLog(process(), db, run_id, clock=Clock())
    log.interval = 100
    log.record_epoch(7, 1, {"test_accuracy": 0.5})
    assert [m["value"] for m in store.get_metrics(db, run_id)] == [0.5]


def test_heartbeat_while_evaluating_only_when_due(db, run_id):
    clock = Clock()
    log = MetricLog(process(), db, run_id, flush_seconds=2.0, clock=clock)
    clock.now += 1.0
    log.beat()
    assert store.get_run(db, run_id)["heartbeat_at"] is None
    clock.now += 1.5
    log.beat()
    assert store.get_run(db, run_id)["heartbeat_at"] is not None


def test_only_the_main_process_writes(db, run_id):
    log = MetricLog(process(main=False), db, run_id, clock=Clock())
    log.record_step(1, 1, {"lr": 0.1})
    log.record_epoch(1, 1, {"test_accuracy": 0.5})
    log.flush()
    log.summary(epoch=1)
    assert store.get_metrics(db, run_id) == [] and store.get_run(db, run_id)["summary"] == {}


def test_cancel_stops_every_process_at_the_same_step(db, run_id, monkeypatch):
    """Two processes in lockstep: the other one learns the flag and the next interval only
    from the main one's broadcast, so both check, and stop, at the same steps."""
    clock = Clock()
    main = MetricLog(process(True, 2), db, run_id, flush_seconds=2.0, clock=clock)
    other = MetricLog(process(False, 2), db, run_id, flush_seconds=2.0, clock=clock)
    sent, checks, who = [], {"main": [], "other": []}, {}

    def broadcast(message):
        checks[who["name"]].append(step)
        if who["name"] == "main":
            sent.append(message.clone())
            return message
        assert sent, "the other process waits for a broadcast the main one never sends"
        return sent.pop()

    monkeypatch.setattr(metric_log, "broadcast", broadcast)
    stopped = {}
    for step in range(1, 40):
        clock.now += 0.3
        if step == 20:
            store.request_cancel(db, run_id, by=ADMIN)
        for name, log in (("main", main), ("other", other)):
            who["name"] = name
            try:
                log.record_step(step, 1, {"lr": 0.1, "train_loss_step": torch.tensor(1.0)})
            except Cancelled:
                stopped[name] = step
        assert checks["main"] == checks["other"] and not sent
        if stopped:
            break
    assert checks["main"] == checks["other"] and len(checks["main"]) >= 3
    assert stopped["main"] == stopped["other"] >= 20


def test_progress_images_per_second_and_eta_from_the_first_steps(db, run_id):
    # A slow run (4 s a step, 40 steps an epoch, 8 images a step) shows its step, speed and
    # time left from the first flush, not only after a whole epoch.
    clock = Clock()
    log = MetricLog(process(), db, run_id, flush_seconds=2.0, clock=clock)
    log.plan_run(steps_per_epoch=40, images_per_step=8, epochs=2)
    log.start_epoch(1, 0)
    for step in range(1, 6):
        clock.now += 4.0
        log.record_step(step, 1, {"lr": 0.1, "train_loss_step": torch.tensor(1.0)})
    summary = store.get_run(db, run_id)["summary"]
    assert (summary["current_epoch"], summary["epoch_step"], summary["steps_per_epoch"]) == (
        1,
        5,
        40,
    )
    assert summary["images_per_second"] == pytest.approx(2.0)
    assert summary["eta_seconds"] == pytest.approx(75 * 4.0)  # 75 steps left; no eval timed yet
    assert summary["eta_at"] > 0
    # The epoch's end: an evaluation of 30 s must not read as slower steps, and then counts
    # once for each evaluation still ahead.
    for step in range(6, 41):
        clock.now += 4.0
        log.record_step(step, 1, {"lr": 0.1, "train_loss_step": torch.tensor(1.0)})
    clock.now += 30.0
    log.record_epoch(40, 1, {"test_accuracy": 0.5})
    summary = store.get_run(db, run_id)["summary"]
    assert summary["images_per_second"] == pytest.approx(2.0)
    assert summary["eta_seconds"] == pytest.approx(40 * 4.0)
    log.start_epoch(2, 40)
    clock.now += 4.0
    log.record_step(41, 2, {"lr": 0.1, "train_loss_step": torch.tensor(1.0)})
    summary = store.get_run(db, run_id)["summary"]
    assert summary["epoch_step"] == 1
    assert summary["eta_seconds"] == pytest.approx(39 * 4.0 + 30.0)  # the eval measured
