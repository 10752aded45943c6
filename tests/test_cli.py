"""CLI behaviour that needs no training: argument errors, resume rules, listings."""

import json

import pytest
from factories import ADMIN

from engine import cli, store


def run_cli(home, *args):
    return cli.main(["--home", str(home), *args])


def test_resume_refuses_overrides_and_finished_runs(db, home, capsys):
    run_id = store.create_run(
        db, {"task": "classification", "model": "m", "dataset": "d"}, by=ADMIN
    )
    store.claim_run(db, "w")
    store.set_status(db, run_id, "completed")
    assert run_cli(home, "train", "--resume", str(run_id)) == 2
    assert "only a failed or cancelled run can be resumed" in capsys.readouterr().err
    assert run_cli(home, "train", "--resume", str(run_id), "--set", "epochs=3") == 2
    assert "own config" in capsys.readouterr().err
    assert run_cli(home, "train", "--resume", "99") == 2
    assert "run 99 not found" in capsys.readouterr().err


def test_train_rejects_bad_config_unknown_model_and_missing_dataset(home, tmp_path, capsys):
    assert run_cli(home, "train", "--set", "dataset=digits", "--set", "lr=fast") == 2
    assert "lr: got 'fast', expected a number" in capsys.readouterr().err
    data = tmp_path / "d"
    data.mkdir()
    assert run_cli(home, "train", "--set", f"dataset={data}", "--set", "model=resnet_nope") == 2
    assert "model:" in capsys.readouterr().err
    assert run_cli(home, "train", "--set", "dataset=/no/such/folder", "--no-follow") == 2
    assert "does not exist inside the data roots" in capsys.readouterr().err
    assert store.list_runs(store.connect(home)) == []  # nothing was queued


def test_runs_listing_and_show_json(db, home, capsys):
    run_id = store.create_run(
        db, {"task": "classification", "model": "m", "dataset": "d", "epochs": 2}, by=ADMIN
    )
    store.update_summary(db, run_id, best_metric=0.75, epochs_trained=1)
    store.add_metrics(db, run_id, 3, 1, {"test_roc_auc": 0.75})
    assert run_cli(home, "runs", "--json") == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [run_id]
    assert run_cli(home, "runs") == 0
    assert "0.7500" in capsys.readouterr().out
    assert run_cli(home, "runs", "show", str(run_id), "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["metrics"] == [{"name": "test_roc_auc", "step": 3, "epoch": 1, "value": 0.75}]
    assert run_cli(home, "runs", "show", "42") == 2


@pytest.mark.parametrize("args", [["weights", "pull"], ["weights", "import", "efficientnet_b0"]])
def test_weights_commands_name_what_is_missing(home, capsys, args):
    assert run_cli(home, *args) == 2
    assert "needs" in capsys.readouterr().err


def test_runs_cancel_and_delete_follow_the_stores_rules(db, home, capsys):
    base = {"task": "classification", "model": "m", "dataset": "d"}
    running = store.create_run(db, base, by=ADMIN)
    store.beat_worker(db, "w", "elsewhere", 1)  # a live worker (on another host) holds it
    store.claim_run(db, "w", run_id=running)
    assert run_cli(home, "runs", "delete", str(running)) == 2
    assert f"run {running} is running" in capsys.readouterr().err
    assert run_cli(home, "runs", "cancel", str(running)) == 0
    assert store.cancel_requested(db, running)
    store.set_status(db, running, "cancelled")
    # A finished run has nothing to cancel (the CLI used to set the flag anyway).
    assert run_cli(home, "runs", "cancel", str(running)) == 2
    assert "only a queued or running run can be cancelled" in capsys.readouterr().err
    assert run_cli(home, "runs", "delete", str(running)) == 0
    assert store.get_run(db, running) is None


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_following_a_run_stops_with_why_when_its_worker_crashes(db, home, capsys, monkeypatch):
    # `visionboard train` runs a worker in a thread for its run; a worker that raises must
    # end the command with the reason, not leave it spinning on a queued run.
    from engine.worker import Worker

    def broken(self, once=False):
        raise RuntimeError("database is malformed")

    monkeypatch.setattr(Worker, "run", broken)
    run_id = store.create_run(
        db, {"task": "classification", "model": "m", "dataset": "d"}, by=ADMIN
    )
    assert cli.follow(db, run_id, home) == 2
    err = capsys.readouterr().err
    assert f"run {run_id} is queued: the worker this command started stopped" in err
    assert "RuntimeError: database is malformed" in err
