"""AppTest tests of every dashboard page against a seeded data directory.

The `home` fixture (tests/conftest.py) sets $VISIONBOARD_HOME to a fresh folder; the pages
read it through dashboard.state. Runs, metrics and run files are written here directly, as
the worker and trainer would.
"""

import json
import os
import socket
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from factories import ADMIN, write_detection_set, write_digits_imagefolder
from PIL import Image
from streamlit.testing.v1 import AppTest

from dashboard import auth
from engine import store
from engine.config import RunConfig

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
TIMEOUT = 60


@pytest.fixture(autouse=True)
def no_samples(monkeypatch):
    # Every test seeds its own data; the sample datasets are tested once, on purpose.
    monkeypatch.setenv("VISIONBOARD_SAMPLES", "0")


@pytest.fixture
def dataset(home, db):
    root = write_digits_imagefolder(home / "data" / "tiny", per_class=5, classes=range(3))
    store.register_dataset(
        db,
        "tiny",
        str(root),
        "imagefolder",
        "classification",
        {
            "classes": ["0", "1", "2"],
            "images": {"train": 12, "test": 3},
            "images_per_class": {c: {"train": 4, "test": 1} for c in "012"},
            "problems": [],
        },
        by=ADMIN,
    )
    return root


def open_page(page=None, query=None, user=None, account=None):
    """A page as a browser gets it: signed in through the identity provider (`user`, what
    st.user holds), with a built-in `account` ({"username", "role"}), or, with neither on a
    server without accounts, as the single local user."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    if user is not None:
        at.user = user
    if account is not None:  # signed in as the password form leaves it: a session token
        db = store.connect()
        if store.get_user(db, account["username"]) is None:
            store.add_user(db, account["username"], account["role"], "a password", by=ADMIN)
        at.session_state[auth.TOKEN_KEY] = store.open_session(db, account["username"])
    at.run()
    if page:
        at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def seed_run(db, dataset, status="completed", epochs=3, steps=4, user="alice", tags=(), **over):
    """A run as the worker and trainer leave it: metrics per step and per epoch, a summary."""
    config = {"dataset": str(dataset), "model": "efficientnet_b0", "pretrained": False}
    cfg = RunConfig.from_dict({**config, "epochs": epochs, **over}).resolved()
    owner = {"username": user, "role": "member"}  # who queued it
    run_id = store.create_run(db, cfg, name=cfg["name"], tags=tags, by=owner)
    if status == "queued":
        return run_id
    store.claim_run(db, "worker-1", run_id)
    step = 0
    for epoch in range(1, epochs + 1):
        for _ in range(steps):
            step += 1
            lr = cfg["lr"] * min(1.0, step / steps)
            store.add_metrics(db, run_id, step, epoch, {"lr": lr, "train_loss_step": 2.0 / step})
        values = {
            "train_loss": 1.0 / epoch,
            "test_loss": 1.2 / epoch,
            "test_roc_auc": 0.5 + 0.1 * epoch,
            "test_accuracy": 0.4 + 0.1 * epoch,
        }
        store.add_metrics(db, run_id, step, epoch, values)
    store.update_summary(
        db,
        run_id,
        best_metric=0.5 + 0.1 * epochs,
        best_epoch=epochs,
        epochs_trained=epochs,
        epoch=epochs,
        epochs=epochs,
        step=step,
        steps_per_epoch=steps,
        epochs_since_best=0,
        stop_reason="epoch limit",
        metric=cfg["metric"],
        eta_seconds=30,
    )
    if status == "running":  # held by a live worker (this process) started for it alone
        store.beat_worker(db, "worker-1", socket.gethostname(), os.getpid(), run_id=run_id)
    else:
        store.set_status(
            db, run_id, status, error="CUDA out of memory" if status == "failed" else None
        )
    return run_id


def charts_by_key(at):
    return {c.key: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


def table(at, key=None):
    frames = [d for d in at.dataframe if key is None or d.key == key]
    assert frames, "no table"
    return frames[0].value


# -- app and sidebar -------------------------------------------------------------------------


def test_app_opens_on_runs_with_an_empty_database(home):
    at = open_page()
    assert at.title[0].value == "Runs"
    assert any("No runs yet" in i.value for i in at.info)
    # No account: the OS user, an admin, and the sidebar says so (no name to type).
    assert "Single local user" in " ".join(c.value for c in at.sidebar.caption)
    assert not at.sidebar.text_input


def test_every_page_has_its_own_url_the_runs_table_included(home, monkeypatch):
    # With Runs as the default page it was served at "/" only: /runs said "Page not found".
    import streamlit as st

    seen = []
    real = st.navigation

    def spy(pages, **kwargs):
        seen.extend(pages)
        return real(pages, **kwargs)

    monkeypatch.setattr(st, "navigation", spy)
    at = open_page()
    assert at.title[0].value == "Runs"  # the root URL still opens the runs table
    visible = {p.title: p.url_path for p in seen if p.visibility == "visible"}
    assert visible["Runs"] == "runs"
    assert all(visible.values()), visible


def test_app_prepares_the_sample_datasets_once(home, monkeypatch):
    monkeypatch.setenv("VISIONBOARD_SAMPLES", "1")
    open_page()
    names = [d["name"] for d in store.list_datasets(store.connect(home))]
    assert "digits" in names
    at = open_page("new_run")
    assert at.selectbox(key="cfg_dataset_choice").value == "digits"


# -- new run ---------------------------------------------------------------------------------


def fill_tiny_run(at):
    at.selectbox(key="cfg_dataset_choice").set_value("tiny")
    at.selectbox(key="cfg_model").set_value("efficientnet_b0")
    at.checkbox(key="cfg_pretrained").uncheck()
    at.number_input(key="cfg_image_size").set_value(32)
    at.number_input(key="cfg_epochs").set_value(1)
    at.number_input(key="cfg_batch_size").set_value(16)
    at.number_input(key="cfg_num_workers").set_value(0)
    at.number_input(key="cfg_lr").set_value(0.01)
    at.checkbox(key="cfg_augment_hflip").check()
    at.text_input(key="cfg_name").set_value("tiny b0")
    at.text_input(key="cfg_tags").set_value("smoke, baseline")
    return at.run()


def test_new_run_form_shows_the_data_check_of_the_chosen_dataset(home, db, dataset):
    at = fill_tiny_run(open_page("new_run"))
    assert any("no problems found" in c.value for c in at.caption)
    problems = [
        {"file": "0/a.png", "message": "truncated", "severity": "blocking", "kind": "unreadable"},
        {
            "file": "1/b.png",
            "message": "near-uniform",
            "severity": "warning",
            "kind": "placeholder",
        },
    ]
    store.register_dataset(
        db, "tiny", str(dataset), "imagefolder", "classification", {"problems": problems},
        by=ADMIN,
    )  # fmt: skip
    at = fill_tiny_run(open_page("new_run"))
    assert any("1 blocking, 1 warning(s)" in m.value for m in at.markdown)
    shown = [d.value for d in at.dataframe if "severity" in d.value.columns]
    assert [list(d["file"]) for d in shown] == [["0/a.png", "1/b.png"]]


def test_new_run_form_has_every_key_grouped_with_help(home, dataset):
    from engine.config import GROUPS, field_info

    at = open_page("new_run")
    assert [e.label for e in at.expander][: len(GROUPS)] == list(GROUPS)
    keys = {
        w.key: w
        for kind in ("selectbox", "checkbox", "number_input", "text_input")
        for w in getattr(at, kind)
    }
    for info in field_info():
        key = "cfg_dataset_choice" if info["name"] == "dataset" else "cfg_" + info["name"]
        if "classification" not in (info["tasks"] or ["classification"]):
            assert key not in keys, f"{info['name']} shown, but classification ignores it"
            continue
        assert key in keys, f"no widget for {info['name']}"
        assert keys[key].help, f"no help on {info['name']}"
    assert keys["cfg_epochs"].value == 50
    assert keys["cfg_image_size"].value is None  # the model's default
    assert keys["cfg_metric"].options == [
        "roc_auc",
        "accuracy",
        "f1",
        "precision",
        "recall",
        "log_loss",
        "average_precision",
    ]


def test_new_run_form_queues_the_run_and_opens_it(home, db, dataset):
    at = fill_tiny_run(open_page("new_run", account={"username": "bob", "role": "member"}))
    at.button(key="queue_run").click().run()
    assert not at.exception
    runs = store.list_runs(db)
    assert len(runs) == 1
    run = runs[0]
    assert (run["name"], run["status"], run["user"], run["tags"]) == (
        "tiny b0",
        "queued",
        "bob",
        ["baseline", "smoke"],
    )
    config = run["config"]
    assert config["dataset"] == str(dataset)
    assert (config["model"], config["pretrained"], config["image_size"]) == (
        "efficientnet_b0",
        False,
        32,
    )
    assert (config["epochs"], config["batch_size"], config["num_workers"]) == (1, 16, 0)
    assert config["lr"] == 0.01 and config["augment_hflip"] is True
    assert config["metric"] == "roc_auc"  # resolved: the task's default filled in
    # The run page opened on the new run.
    assert at.title[0].value == "Run"
    assert at.query_params["run"] == str(run["id"])
    assert "queued" in at.subheader[0].value


def test_new_run_form_pins_a_run_to_a_worker_host_when_several_serve(home, db, dataset):
    at = fill_tiny_run(open_page("new_run"))
    assert not [s for s in at.selectbox if s.key == "cfg_on_host"]  # one machine: no choice
    for host in ("gpu-a", "gpu-b"):  # workers on two other hosts beat (their pids: elsewhere)
        store.beat_worker(db, f"{host}:1", host, 1, None, "0,1")
    at = fill_tiny_run(open_page("new_run"))
    field = at.selectbox(key="cfg_on_host")
    assert field.options == ["any free worker", "gpu-a", "gpu-b"]
    field.set_value("gpu-b").run()
    at.button(key="queue_run").click().run()
    assert not at.exception
    assert [r["on_host"] for r in store.list_runs(db)] == ["gpu-b"]


def test_new_run_form_records_the_login_user(home, db, dataset):
    # Added as a viewer at first sign-in; an admin made her a member.
    store.get_or_add_oidc_user(db, "carol@example.com", role="member")
    at = open_page("new_run", user={"is_logged_in": True, "email": "carol@example.com"})
    assert not at.sidebar.text_input  # no name to type: the login says who it is
    at.selectbox(key="cfg_dataset_choice").set_value("tiny")
    at.checkbox(key="cfg_pretrained").uncheck().run()
    at.button(key="queue_run").click().run()
    assert store.list_runs(db)[0]["user"] == "carol@example.com"


def test_new_run_form_shows_errors_beside_fields_and_queues_nothing(home, db, dataset):
    at = open_page("new_run")
    at.selectbox(key="cfg_dataset_choice").set_value("a path on the server…").run()
    at.text_input(key="cfg_dataset_path").set_value(str(home / "missing"))
    at.selectbox(key="cfg_model").set_value("other timm name…").run()
    at.selectbox(key="cfg_device").set_value("cpu")
    at.selectbox(key="cfg_mixed_precision").set_value("fp16")
    at.checkbox(key="cfg_pretrained").uncheck()
    at.button(key="queue_run").click().run()
    assert store.list_runs(db) == []
    messages = [e.value for e in at.error]
    assert any(m.startswith("model:") for m in messages)
    assert any(m.startswith("mixed_precision:") and "on cpu" in m for m in messages)
    assert any("Nothing was queued" in m for m in messages)
    # Fixed config, but the dataset folder does not exist: checked before queueing.
    at.text_input(key="cfg_model_other").set_value("resnet18")
    at.selectbox(key="cfg_mixed_precision").set_value("no")
    at.button(key="queue_run").click().run()
    assert store.list_runs(db) == []
    assert any(
        m.startswith("dataset:") and "does not exist" in m for m in (e.value for e in at.error)
    )


def test_new_run_form_reports_out_of_range_numbers_instead_of_dropping_them(home, db, dataset):
    # With min/max on the widget, the browser kept showing a typed 99999 while the widget held
    # its last valid value, and that one was queued. The form lets the value through, the
    # config names the field and its range, and the help says the range up front.
    at = open_page("new_run")
    size = at.number_input(key="cfg_image_size")
    assert size.min is None and size.max is None
    assert "Allowed: 16…2048." in size.help
    at.selectbox(key="cfg_dataset_choice").set_value("tiny")
    at.checkbox(key="cfg_pretrained").uncheck()
    size.set_value(99999)
    at.number_input(key="cfg_test_ratio").set_value(0.95)
    at.button(key="queue_run").click().run()
    assert store.list_runs(db) == []
    messages = [e.value for e in at.error]
    assert "image_size: got 99999, expected a value of at most 2048" in messages
    assert any(m.startswith("test_ratio:") and "at most 0.9" in m for m in messages)


def test_new_run_form_rejects_an_unreadable_dataset(home, db, dataset):
    empty = home / "data" / "empty"
    (empty / "only_class").mkdir(parents=True)
    at = open_page("new_run")
    at.selectbox(key="cfg_dataset_choice").set_value("a path on the server…").run()
    at.text_input(key="cfg_dataset_path").set_value(str(empty))
    at.checkbox(key="cfg_pretrained").uncheck()
    at.button(key="queue_run").click().run()
    assert store.list_runs(db) == []
    assert any(e.value.startswith("dataset:") for e in at.error)


def test_new_run_form_without_weights_offers_training_from_scratch(
    home, db, dataset, monkeypatch, tmp_path
):
    # Real engine.weights, with empty caches: no weights for efficientnet_b0 here.
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    at = open_page("new_run")
    at.selectbox(key="cfg_dataset_choice").set_value("tiny")
    at.selectbox(key="cfg_model").set_value("efficientnet_b0").run()
    assert at.checkbox(key="cfg_pretrained").value is True
    assert any("No pre-trained weights for `efficientnet_b0`" in c.value for c in at.caption)
    assert any("no pre-trained weights" in w.value for w in at.warning)
    at.button(key="queue_run").click().run()
    assert store.list_runs(db) == []
    assert any(e.value.startswith("pretrained:") for e in at.error)
    at.button(key="train_from_scratch").click().run()
    assert at.checkbox(key="cfg_pretrained").value is False
    assert not at.warning
    at.button(key="queue_run").click().run()
    assert store.list_runs(db)[0]["config"]["pretrained"] is False


def test_new_run_form_shows_available_weights(home, dataset, monkeypatch):
    import engine.weights

    def fake_status(model, home=None):
        return {"model": model, "available": True, "source": "imported", "path": "/w"}

    monkeypatch.setattr(engine.weights, "weights_status", fake_status)
    at = open_page("new_run")
    assert any("are on this server (imported)" in c.value for c in at.caption)
    assert not at.warning


def test_new_run_form_detection_task_changes_models_and_metrics(home, dataset):
    at = open_page("new_run")
    at.selectbox(key="cfg_task").set_value("detection").run()
    assert at.selectbox(key="cfg_model").value == "fasterrcnn_resnet50_fpn"
    assert "efficientnet_b0" not in at.selectbox(key="cfg_model").options
    assert at.selectbox(key="cfg_metric").options == ["f1", "precision", "recall", "map", "map_50"]
    assert at.selectbox(key="cfg_dataset_choice").value == "a path on the server…"
    # Only what detection reads: min_size and max_size, not image_size.
    shown = {w.key for w in at.number_input}
    assert {"cfg_min_size", "cfg_max_size"} <= shown and "cfg_image_size" not in shown


def test_new_run_form_proposes_detection_defaults_and_warns_of_memory(home, dataset):
    # Batch 32 at 800x1333 for 50 epochs was proposed for a detector, with no word on memory.
    at = open_page("new_run")
    at.selectbox(key="cfg_task").set_value("detection").run()
    assert at.number_input(key="cfg_batch_size").value == 4
    assert at.number_input(key="cfg_epochs").value == 20
    assert not any("GB" in w.value for w in at.warning)
    assert any("roughly 6 GB" in c.value for c in at.caption)
    at.number_input(key="cfg_batch_size").set_value(32).run()
    assert any("roughly 48 GB" in w.value for w in at.warning)
    # Classification keeps RunConfig's defaults.
    at.selectbox(key="cfg_task").set_value("classification").run()
    assert at.number_input(key="cfg_batch_size").value == RunConfig().batch_size == 32
    assert at.number_input(key="cfg_epochs").value == RunConfig().epochs == 50


def test_new_run_form_lists_the_datasets_of_the_task_and_sends_no_hidden_key(home, db, dataset):
    boxes = write_detection_set(home / "data" / "boxes", "coco")
    store.register_dataset(db, "boxes", str(boxes), "coco", "detection", by=store.SERVER_USER)
    at = open_page("new_run")

    def names(box):  # the options without their "(task, format)"
        return [o.split(" (")[0] for o in box.options]

    assert names(at.selectbox(key="cfg_dataset_choice")) == ["tiny", "a path on the server…"]
    at.number_input(key="cfg_image_size").set_value(64).run()  # then detection is chosen
    at.selectbox(key="cfg_task").set_value("detection").run()
    choice = at.selectbox(key="cfg_dataset_choice")
    assert names(choice) == ["boxes", "a path on the server…"] and choice.value == "boxes"
    assert "cfg_image_size" not in {w.key for w in at.number_input}
    at.number_input(key="cfg_min_size").set_value(64)
    at.number_input(key="cfg_max_size").set_value(64)
    at.checkbox(key="cfg_pretrained").uncheck()
    at.button(key="queue_run").click().run()
    assert not [e.value for e in at.error]
    config = store.list_runs(db)[0]["config"]
    # The hidden image_size is not sent: it would be refused (it does not apply to detection).
    assert (config["task"], config["image_size"], config["min_size"]) == ("detection", None, 64)


def test_new_run_form_starts_from_a_past_run(home, db, dataset):
    old = seed_run(db, dataset, lr=0.05, epochs=7, model="resnet18", augment_vflip=True, tags=["x"])
    at = open_page("new_run")
    at.selectbox(key="start_from").set_value(old).run()
    assert at.number_input(key="cfg_lr").value == 0.05
    assert at.number_input(key="cfg_epochs").value == 7
    assert at.checkbox(key="cfg_augment_vflip").value is True
    assert at.selectbox(key="cfg_model").value == "other timm name…"
    assert at.text_input(key="cfg_model_other").value == "resnet18"
    assert at.selectbox(key="cfg_dataset_choice").value == "tiny"
    # ?from=ID (the run page's "Edit and re-run") does the same.
    at = open_page("new_run", query={"from": str(old)})
    assert at.number_input(key="cfg_epochs").value == 7
    # ...and says so: the box named "a fresh config" while the form held the run's.
    assert at.selectbox(key="start_from").value == old


def test_filling_from_an_old_run_resets_what_it_lacks_and_leaves_a_default_lr_empty(
    home, db, dataset
):
    smooth = seed_run(db, dataset, label_smoothing=0.3, backbone_lr_factor=0.5, lr=0.05)
    config = RunConfig.from_dict(
        {"dataset": str(dataset), "pretrained": False, "optimizer": "sgd"}
    ).resolved()
    for key in ("label_smoothing", "backbone_lr_factor", "nesterov", "keep_bn_statistics"):
        del config[key]  # stored before these keys existed
    old = store.create_run(
        db, config, name="old", tags=(), by={"username": "alice", "role": "member"}
    )
    # Kept statistics switched off at a factor where auto would keep them: a choice to keep.
    chosen = seed_run(db, dataset, keep_bn_statistics="off", backbone_lr_factor=0.1)
    at = open_page("new_run")
    at.selectbox(key="start_from").set_value(smooth).run()
    assert at.number_input(key="cfg_label_smoothing").value == 0.3
    assert at.number_input(key="cfg_lr").value == 0.05
    # Stored as what auto gave at 0.5 (off): shown as auto, so a new factor still decides.
    assert at.selectbox(key="cfg_keep_bn_statistics").value == "auto"
    at.selectbox(key="start_from").set_value(chosen).run()
    assert at.selectbox(key="cfg_keep_bn_statistics").value == "off"
    at.selectbox(key="start_from").set_value(old).run()
    # What the old run trained with, not what the form held from the other run.
    assert at.number_input(key="cfg_label_smoothing").value == 0.0
    assert at.number_input(key="cfg_backbone_lr_factor").value == 1.0
    assert at.checkbox(key="cfg_nesterov").value is False
    assert at.selectbox(key="cfg_keep_bn_statistics").value == "auto"  # off at 1.0, as it ran
    # Its lr was SGD's default: left empty, so another optimizer takes its own default.
    assert at.number_input(key="cfg_lr").value is None


def test_new_run_form_asks_before_queueing_a_config_twice(home, db, dataset):
    at = fill_tiny_run(open_page("new_run"))
    at.button(key="queue_run").click().run()
    first = store.list_runs(db)[0]["id"]
    at = fill_tiny_run(open_page("new_run"))
    at.button(key="queue_run").click().run()
    assert not at.exception
    assert len(store.list_runs(db)) == 1  # held back, with a word on why
    assert any(f"#{first}" in w.value for w in at.warning)
    assert at.button(key="queue_run").label == "Queue anyway"
    at.button(key="queue_run").click().run()
    assert len(store.list_runs(db)) == 2


def test_new_run_preview_shows_augmented_samples(home, dataset):
    at = open_page("new_run")
    at.selectbox(key="cfg_dataset_choice").set_value("tiny")
    at.number_input(key="cfg_image_size").set_value(32)
    at.checkbox(key="cfg_augment_hflip").check()
    at.toggle(key="preview_on").set_value(True).run()
    assert not at.exception
    assert at.image, "no preview images"
    assert len(at.image[0].captions) == 6
    assert all(c.split(" · ")[0] in ("0", "1", "2") for c in at.image[0].captions)


# -- runs ------------------------------------------------------------------------------------


def select_rows(at, *positions):
    at.session_state["runs_table"] = {
        "selection": {"rows": list(positions), "columns": [], "cells": []}
    }
    return at.run()


def test_runs_page_lists_every_run_with_progress(home, db, dataset):
    done = seed_run(db, dataset, user="alice", tags=["best"])
    running = seed_run(db, dataset, status="running", epochs=4, model="resnet18")
    queued = seed_run(db, dataset, status="queued")
    at = open_page("runs")
    rows = table(at, "runs_table")
    assert list(rows["id"]) == [queued, running, done]
    first = rows.set_index("id").loc[done]
    assert (first["status"], first["epoch"], first["metric"], first["user"]) == (
        "completed",
        "3 / 3",
        "roc_auc",
        "alice",
    )
    assert first["best"] == pytest.approx(0.8)
    assert first["progress"] == 1.0
    assert first["tags"] == "best"
    assert rows.set_index("id").loc[queued, "epoch"] == "0 / 3"
    for column in ("name", "task", "model", "dataset", "created", "duration"):
        assert column in rows.columns


def test_runs_page_filters(home, db, dataset):
    seed_run(db, dataset, status="failed", tags=["a"])
    keep = seed_run(db, dataset, model="resnet18", name="special one")
    seed_run(db, dataset, status="queued")
    at = open_page("runs")
    at.multiselect(key="runs_status").set_value(["failed"]).run()
    assert list(table(at, "runs_table")["status"]) == ["failed"]
    at.multiselect(key="runs_status").set_value([]).run()
    at.selectbox(key="runs_model").set_value("resnet18").run()
    assert list(table(at, "runs_table")["id"]) == [keep]
    at.selectbox(key="runs_model").set_value(None)
    at.selectbox(key="runs_tag").set_value("a").run()
    assert list(table(at, "runs_table")["status"]) == ["failed"]
    at.selectbox(key="runs_tag").set_value(None)
    at.text_input(key="runs_search").set_value("special").run()
    assert list(table(at, "runs_table")["id"]) == [keep]
    at.text_input(key="runs_search").set_value("nothing like it").run()
    assert any("No runs match" in i.value for i in at.info)


def test_runs_page_cancel_resume_and_rerun(home, db, dataset):
    failed = seed_run(db, dataset, status="failed")
    queued = seed_run(db, dataset, status="queued")
    at = select_rows(open_page("runs"), 0)  # newest first: the queued run
    at.button(key="runs_cancel").click().run()
    assert store.get_run(db, queued)["status"] == "cancelled"
    assert any("Cancel requested for #" in s.value for s in at.success)
    at = select_rows(at, 1)
    at.button(key="runs_resume").click().run()
    run = store.get_run(db, failed)
    assert (run["status"], run["resume_requested"]) == ("queued", 1)
    at = select_rows(at, 1)
    at.button(key="runs_rerun").click().run()
    newest = store.list_runs(db)[0]
    assert newest["id"] not in (failed, queued)
    assert newest["config"] == store.get_run(db, failed)["config"]
    assert newest["status"] == "queued"


def test_runs_page_delete_asks_first(home, db, dataset):
    keep = seed_run(db, dataset)
    gone = seed_run(db, dataset)
    folder = store.run_dir(gone, home)
    (folder / "train.log").write_text("hello")
    at = select_rows(open_page("runs"), 0)
    assert at.button(key="runs_delete").disabled
    at.checkbox(key="runs_confirm_delete").check().run()
    at.button(key="runs_delete").click().run()
    assert store.get_run(db, gone) is None
    assert not folder.exists()
    assert [r["id"] for r in store.list_runs(db)] == [keep]
    assert list(table(at, "runs_table")["id"]) == [keep]


def test_runs_page_edits_name_tags_and_note(home, db, dataset):
    run_id = seed_run(db, dataset, tags=["old"])
    at = select_rows(open_page("runs"), 0)
    assert at.text_input(key="runs_edit_tags").value == "old"
    at.text_input(key="runs_edit_name").set_value("renamed")
    at.text_input(key="runs_edit_tags").set_value("new, shiny")
    at.text_area(key="runs_edit_note").set_value("lr too high")
    at.button(key="runs_save").click().run()
    run = store.get_run(db, run_id)
    assert (run["name"], run["tags"], run["note"]) == ("renamed", ["new", "shiny"], "lr too high")


def test_runs_page_open_and_compare(home, db, dataset):
    a = seed_run(db, dataset)
    b = seed_run(db, dataset)
    at = select_rows(open_page("runs"), 0, 1)
    at.button(key="runs_compare").click().run()
    assert at.title[0].value == "Compare runs"
    assert sorted(at.multiselect(key="compare_runs").value) == [a, b]


# -- run -------------------------------------------------------------------------------------


def test_run_page_shows_progress_charts_config_and_log(home, db, dataset):
    run_id = seed_run(db, dataset)
    (store.run_dir(run_id, home) / "train.log").write_text("epoch 1\nepoch 2\nall done\n")
    at = open_page("run", query={"run": str(run_id)})
    assert f"#{run_id}" in at.subheader[0].value and "completed" in at.subheader[0].value
    assert at.get("progress")[0].proto.text == "Epoch 3 of 3"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Best roc_auc"] == "0.8000"
    assert metrics["Best epoch"] == "3"
    assert metrics["Epochs since best"] == "0 / 5"
    figures = charts_by_key(at)
    assert {"chart_loss", "chart_metric", "chart_lr"} <= set(figures)
    loss_names = [t["name"] for t in figures["chart_loss"]["data"]]
    assert loss_names == ["train loss (step)", "train loss", "test loss"]
    assert len(figures["chart_lr"]["data"][0]["y"]) == 12  # one point per step
    assert any("all done" in c.value for c in at.code)
    config = table(at)
    assert "epochs" in list(config["key"])
    assert any("epoch limit" in c.value for c in at.caption)


def test_run_page_labels_elapsed_time_as_such_before_the_first_eta(home, db, dataset):
    # Until the trainer's first estimate, the "ETA" tile showed the time spent so far.
    run_id = seed_run(db, dataset, status="running")
    store.update_summary(db, run_id, eta_seconds=None)
    at = open_page("run", query={"run": str(run_id)})
    labels = [m.label for m in at.metric]
    assert "Elapsed" in labels and "ETA" not in labels
    store.update_summary(db, run_id, eta_seconds=90)
    at = open_page("run", query={"run": str(run_id)})
    assert {m.label: m.value for m in at.metric}["ETA"] == "1m 30s"


def test_run_page_and_table_show_step_progress_speed_and_a_live_eta(home, db, dataset):
    # A slow run read "Epoch 0 · step 0" with no ETA nor images/s after 5 logged steps.
    import time

    run_id = seed_run(db, dataset, status="running", epochs=50, steps=40)
    store.update_summary(
        db, run_id, epoch=0, current_epoch=1, epoch_step=5, steps_per_epoch=40,
        images_per_second=2.5, eta_seconds=600.0, eta_at=time.time() - 60,
    )  # fmt: skip
    at = open_page("run", query={"run": str(run_id)})
    assert at.get("progress")[0].proto.text == "Epoch 1 of 50 · step 5 of 40"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images / s"] == "2.5"
    # Counted down from the trainer's last estimate, not frozen at it.
    assert metrics["ETA"] in ("9m 00s", "8m 59s")
    rows = table(open_page("runs"), "runs_table").set_index("id")
    assert rows.loc[run_id, "epoch"] == "1 / 50 · step 5 / 40"
    assert rows.loc[run_id, "progress"] == pytest.approx(5 / 2000)


def test_run_page_lines_up_only_the_actions_that_apply(home, db, dataset):
    # Fixed slots left a gap where Cancel or Resume did not apply: Re-run floated mid-page.
    def first_actions(run_id):
        at = open_page("run", query={"run": str(run_id)})
        first, second = at.columns[:2]  # the actions row is the page's first row of columns
        return [b.key for c in (first, second) for b in c.button]

    assert first_actions(seed_run(db, dataset)) == ["run_rerun", "run_edit"]
    assert first_actions(seed_run(db, dataset, status="running")) == ["run_cancel", "run_rerun"]
    assert first_actions(seed_run(db, dataset, status="failed")) == ["run_resume", "run_rerun"]


def test_run_page_says_why_a_queued_run_waits(home, db, dataset):
    import os
    import socket

    ahead = seed_run(db, dataset, status="running")
    run_id = seed_run(db, dataset, status="queued")
    # No worker beats: nobody will ever start the run, and the page says how to start one.
    at = open_page("run", query={"run": str(run_id)})
    assert any("no worker serves this data directory" in w.value for w in at.warning)
    store.beat_worker(db, "w", socket.gethostname(), os.getpid())
    at = open_page("run", query={"run": str(run_id)})
    assert not at.warning
    assert any("Queued: 1 run(s) running or queued before it" in i.value for i in at.info)
    store.set_status(db, ahead, "completed")
    at = open_page("run", query={"run": str(run_id)})
    assert any("starts it in a moment" in i.value for i in at.info)


def test_run_page_and_table_say_when_a_runs_worker_is_gone(home, db, dataset):
    run_id = seed_run(db, dataset, status="running")
    store.update_summary(db, run_id, stop_reason=None)  # its trainer still trains
    # ... and beat since the claim (a run never launched has no trainer to wait for).
    db.conn.execute("update runs set started_at = '2000-01-01T00:00:00+00:00'")
    db.conn.execute("update workers set heartbeat_at = '2000-01-01T00:00:00+00:00'")
    db.conn.commit()  # its worker went silent
    at = open_page("run", query={"run": str(run_id)})
    assert "running, worker gone" in at.subheader[0].value
    assert any("worker that ran it (worker-1) is gone" in w.value for w in at.warning)
    assert at.button(key="run_cancel") and at.button(key="run_resume")
    at.button(key="run_resume").click().run()  # refused: its trainer still beats
    assert "trainer is still running" in at.toast[0].value
    assert store.get_run(db, run_id)["status"] == "running"
    at = open_page("runs")
    assert list(table(at, "runs_table")["status"]) == ["running (worker gone)"]
    # Its trainer falls silent too: the page that looks records why the run stopped.
    db.conn.execute("update runs set heartbeat_at = '2000-01-01T00:00:00+00:00'")
    db.conn.commit()
    at = open_page("run", query={"run": str(run_id)})
    run = store.get_run(db, run_id)
    assert run["status"] == "failed" and "worker (worker-1) stopped" in run["error"]
    assert any("worker (worker-1) stopped" in e.value for e in at.error)


def test_run_page_failed_run_shows_the_error(home, db, dataset):
    run_id = seed_run(db, dataset, status="failed")
    at = open_page("run", query={"run": str(run_id)})
    assert any("CUDA out of memory" in e.value for e in at.error)
    at.button(key="run_resume").click().run()
    assert store.get_run(db, run_id)["status"] == "queued"


def test_run_page_cancels_a_running_run(home, db, dataset):
    run_id = seed_run(db, dataset, status="running")
    at = open_page("run", query={"run": str(run_id)})
    assert any(m.label == "ETA" and m.value == "30s" for m in at.metric)
    at.button(key="run_cancel").click().run()
    assert store.cancel_requested(db, run_id)
    assert at.button(key="run_cancel").disabled


def test_run_page_without_runs_and_with_a_missing_run(home, db):
    at = open_page("run")
    assert any("No runs yet" in i.value for i in at.info)


def write_classification_predictions(home, run_id, dataset):
    paths = sorted(str(p) for p in Path(dataset).rglob("*.png"))[:6]
    targets = [0, 0, 1, 1, 2, 2]
    probs = [
        [0.8, 0.1, 0.1],
        [0.2, 0.7, 0.1],  # wrong: 0 taken for 1, the most confident mistake
        [0.1, 0.8, 0.1],
        [0.1, 0.6, 0.3],
        [0.1, 0.1, 0.8],
        [0.6, 0.1, 0.3],  # wrong: 2 taken for 0
    ]
    data = {
        "task": "classification",
        "classes": ["0", "1", "2"],
        "paths": paths,
        "targets": targets,
        "probs": probs,
    }
    (store.run_dir(run_id, home) / "predictions.json").write_text(json.dumps(data))


def test_run_page_classification_report(home, db, dataset):
    run_id = seed_run(db, dataset)
    write_classification_predictions(home, run_id, dataset)
    at = open_page("run", query={"run": str(run_id)})
    figures = charts_by_key(at)
    assert figures["chart_confusion"]["data"][0]["z"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert len([t for t in figures["chart_roc"]["data"] if t["name"] != "chance"]) == 3
    assert len(figures["chart_pr"]["data"]) == 3
    frames = [d.value for d in at.dataframe if "f1" in d.value.columns]
    assert frames and list(frames[0]["support"]) == [2, 2, 2]
    captions = at.image[0].captions
    assert len(captions) == 2
    assert captions == ["true 0 (0.20) · predicted 1 (0.70)", "true 2 (0.30) · predicted 0 (0.60)"]
    at.toggle(key="confusion_norm").set_value(True).run()
    z = charts_by_key(at)["chart_confusion"]["data"][0]["z"]
    assert z[0] == [0.5, 0.5, 0.0]


def test_run_page_summary_card_replaces_the_raw_json(home, db, dataset):
    run_id = seed_run(db, dataset)
    store.update_summary(
        db,
        run_id,
        train_images=12,
        val_images=0,
        test_images=3,
        classes=["0", "1", "2"],
        trainable_params=1500,
        total_params=3000,
        images_per_second=42.25,
    )
    at = open_page("run", query={"run": str(run_id)})
    card = " ".join(m.value for m in at.get("markdown") if m.value.startswith("**"))
    for fact in (
        "**Best roc_auc (test)**: 0.8000 at epoch 3",
        "**Stop reason**: epoch limit after 3 epoch(s)",
        f"**Dataset**: {dataset}",
        "**Images**: 12 train / 0 val / 3 test",
        "**Classes**: 3: 0, 1, 2",
        "**Trainable parameters**: 1,500 of 3,000 (50%)",
        "**Images / s**: 42.2",
    ):
        assert fact in card
    raw = [e for e in at.expander if e.label == "Summary (raw JSON)"]
    assert raw and not raw[0].proto.expanded  # still there, collapsed


def write_binary_predictions(home, run_id, dataset):
    paths = sorted(str(p) for p in Path(dataset).rglob("*.png"))[:4]
    data = {
        "task": "classification",
        "classes": ["cat", "dog"],
        "paths": paths,
        "targets": [0, 0, 1, 1],
        "probs": [[0.9, 0.1], [0.55, 0.45], [0.5829, 0.4171], [0.2, 0.8]],
    }
    (store.run_dir(run_id, home) / "predictions.json").write_text(json.dumps(data))


def test_run_page_binary_threshold_moves_the_confusion_matrix_and_scores(home, db, dataset):
    run_id = seed_run(db, dataset)
    write_binary_predictions(home, run_id, dataset)
    at = open_page("run", query={"run": str(run_id)})
    assert charts_by_key(at)["chart_confusion"]["data"][0]["z"] == [[2, 0], [1, 1]]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["precision (dog)"] == "1.000" and metrics["recall (dog)"] == "0.500"
    # A threshold carried at full precision: 0.4171 keeps the dog scored 0.4171.
    at.slider(key="binary_threshold").set_value(0.4171).run()
    assert charts_by_key(at)["chart_confusion"]["data"][0]["z"] == [[1, 1], [0, 2]]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["recall (dog)"] == "1.000" and metrics["f1 (dog)"] == "0.800"


def test_run_page_mistakes_gallery_filters_and_pages(home, db, dataset):
    run_id = seed_run(db, dataset)
    paths = sorted(str(p) for p in Path(dataset).rglob("*.png"))
    wrong = [[0.1, 0.9 - i / 100, i / 100] for i in range(14)]  # all 0 taken for 1
    data = {
        "task": "classification",
        "classes": ["0", "1", "2"],
        "paths": paths[:15],
        "targets": [0] * 14 + [2],
        "probs": wrong + [[0.7, 0.1, 0.2]],  # and one 2 taken for 0
    }
    (store.run_dir(run_id, home) / "predictions.json").write_text(json.dumps(data))
    at = open_page("run", query={"run": str(run_id)})
    assert any("15 of 15 test images misclassified, 15 of them" in c.value for c in at.caption)
    assert len(at.image[0].captions) == 12  # the first page
    at.number_input(key="mistakes_page").set_value(2).run()
    assert len(at.image[0].captions) == 3
    at.multiselect(key="mistakes_true").set_value([2]).run()
    assert at.image[0].captions == ["true 2 (0.20) · predicted 0 (0.70)"]
    at.multiselect(key="mistakes_true").set_value([]).run()
    at.multiselect(key="mistakes_pred").set_value([1]).run()
    at.slider(key="mistakes_confidence").set_value((0.0, 0.8)).run()
    captions = at.image[0].captions
    assert len(captions) == 4 and all("predicted 1" in c for c in captions)


def test_run_page_shows_the_final_report_on_test_beside_the_val_one(home, db, dataset):
    run_id = seed_run(db, dataset)
    write_classification_predictions(home, run_id, dataset)
    folder = store.run_dir(run_id, home)
    final = json.loads((folder / "predictions.json").read_text())
    final["targets"] = [0, 0, 1, 1, 2, 2]
    final["probs"] = [[0.9, 0.05, 0.05]] * 6  # everything taken for 0: 2 of 6 right
    (folder / "final_predictions.json").write_text(json.dumps({**final, "split": "test"}))
    report = {"split": "test", "best_epoch": 3, "images": 6, "metrics": {"accuracy": 1 / 3}}
    store.update_summary(db, run_id, eval_split="val", final_test=report)
    at = open_page("run", query={"run": str(run_id)})
    headers = [h.value for h in at.header]
    assert "Evaluation on the val split (best epoch 3)" in headers
    assert "Final report on the test split (best epoch 3)" in headers
    assert any("6 test images that took no part in training" in c.value for c in at.caption)
    metrics = next(d.value for d in at.dataframe if "metric" in d.value.columns)
    assert list(metrics["metric"]) == ["accuracy"] and metrics["value"][0] == pytest.approx(1 / 3)
    figures = charts_by_key(at)
    assert figures["final_chart_confusion"]["data"][0]["z"] == [[2, 0, 0], [2, 0, 0], [2, 0, 0]]
    assert figures["chart_confusion"]["data"][0]["z"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert figures["chart_metric"]["layout"]["title"]["text"].startswith("Val metrics")


def write_detection_predictions(home, run_id):
    canvas = home / "det"
    canvas.mkdir()
    paths = []
    for i in range(2):
        path = canvas / f"{i}.png"
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
        paths.append(str(path))
    data = {
        "task": "detection",
        "classes": ["a", "b"],
        "paths": paths,
        "targets": [
            {"boxes": [[0, 0, 20, 20]], "labels": [0]},
            {"boxes": [[30, 30, 60, 60]], "labels": [1]},
        ],
        "preds": [
            # IoU with the true box is 0.64: matched at IoU 0.5, not at 0.7.
            {"boxes": [[0, 0, 16, 16]], "scores": [0.9], "labels": [0]},
            {"boxes": [[30, 30, 60, 60], [0, 40, 10, 50]], "scores": [0.8, 0.3], "labels": [1, 0]},
        ],
    }
    (store.run_dir(run_id, home) / "predictions.json").write_text(json.dumps(data))
    (store.run_dir(run_id, home) / "model.json").write_text(json.dumps({"threshold": 0.5}))


def test_run_page_detection_report_recomputes_with_the_sliders(home, db, dataset):
    run_id = seed_run(db, dataset)
    db.execute("update runs set task = 'detection' where id = ?", [run_id])
    db.conn.commit()
    write_detection_predictions(home, run_id)
    at = open_page("run", query={"run": str(run_id)})
    figures = charts_by_key(at)
    confusion = figures["chart_det_confusion"]["data"][0]
    assert confusion["x"] == ["a", "b", "not detected"]
    assert confusion["y"] == ["a", "b", "not an object"]
    assert confusion["z"] == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert "chart_det_pr" in figures
    ap = [d.value for d in at.dataframe if "ap" in d.value.columns][0]
    assert list(ap["class"]) == ["a", "b"]
    at.slider(key="det_iou").set_value(0.7).run()
    z = charts_by_key(at)["chart_det_confusion"]["data"][0]["z"]
    assert z == [[0, 0, 1], [0, 1, 0], [1, 0, 0]]  # the loose box no longer matches
    at.slider(key="det_score").set_value(0.2).run()
    z = charts_by_key(at)["chart_det_confusion"]["data"][0]["z"]
    assert z[2] == [2, 0, 0]  # the low-score box now counts as "not an object" too
    # The gallery draws what the slider keeps: the 0.3 box appears at 0.2.
    assert at.image[0].captions == ["1 true, 1 predicted", "1 true, 2 predicted"]


def test_run_page_detection_report_opens_at_the_exact_threshold(home, db, dataset):
    # The best-F1 threshold is a detection's own score: rounded up (0.4171 → 0.42) it hid
    # that detection, and every one below it, so the report opened with nothing found.
    run_id = seed_run(db, dataset)
    db.execute("update runs set task = 'detection' where id = ?", [run_id])
    db.conn.commit()
    write_detection_predictions(home, run_id)
    folder = store.run_dir(run_id, home)
    preds = json.loads((folder / "predictions.json").read_text())
    for pred in preds["preds"]:
        pred["scores"] = [0.41713452] * len(pred["scores"])
    (folder / "predictions.json").write_text(json.dumps(preds))
    (folder / "model.json").write_text(json.dumps({"threshold": 0.41713452}))
    at = open_page("run", query={"run": str(run_id)})
    assert at.slider(key="det_score").value == 0.41713452
    recall = [m for m in at.metric if m.label == "recall"][0]
    assert float(recall.value) > 0
    assert charts_by_key(at)["chart_det_confusion"]["data"][0]["z"][0][0] == 1


def test_run_page_export_lists_the_run_files(home, db, dataset):
    run_id = seed_run(db, dataset)
    folder = store.run_dir(run_id, home)
    (folder / "model.safetensors").write_bytes(b"\0" * 10)
    (folder / "model.json").write_text("{}")
    (folder / "export").mkdir()
    (folder / "export" / "model.onnx").write_bytes(b"onnx")
    at = open_page("run", query={"run": str(run_id)})
    labels = [b.label for b in at.download_button]
    assert [label.split(" ")[0] for label in labels] == [
        "model.safetensors",
        "model.json",
        "model.onnx",
    ]
    assert any(h.value == "Export" for h in at.header)


# -- compare ---------------------------------------------------------------------------------


def test_compare_page_overlays_runs_and_tables(home, db, dataset):
    a = seed_run(db, dataset, lr=0.01)
    b = seed_run(db, dataset, lr=0.001, epochs=2)
    c = seed_run(db, dataset, status="queued")
    at = open_page("compare", query={"runs": f"{a},{b}"})
    assert at.multiselect(key="compare_runs").value == [a, b]
    figures = charts_by_key(at)
    assert [t["name"].split()[0] for t in figures["compare_test_roc_auc"]["data"]] == [
        f"#{a}",
        f"#{b}",
    ]
    assert "compare_lr" not in figures  # per-step metrics are off by default
    assert "compare_parallel" in figures
    dims = figures["compare_parallel"]["data"][0]["dimensions"]
    assert [d["label"] for d in dims] == ["lr (log)", "epochs", "roc_auc"]
    summary = [d.value for d in at.dataframe if "best" in d.value.columns][0]
    assert list(summary["id"]) == [a, b]
    config = [d.value for d in at.dataframe if "key" in d.value.columns][0]
    assert sorted(config["key"]) == ["epochs", "lr"]  # differences only
    at.toggle(key="compare_diff").set_value(False).run()
    config = [d.value for d in at.dataframe if "key" in d.value.columns][0]
    assert "batch_size" in list(config["key"])
    assert "roi_samples" not in list(config["key"])  # a detection key: no row for these runs
    at.radio(key="compare_x").set_value("step").run()
    assert charts_by_key(at)["compare_test_roc_auc"]["data"][0]["x"] == [4, 8, 12]
    at.multiselect(key="compare_runs").set_value([a, b, c]).run()
    assert at.query_params["runs"] == f"{a},{b},{c}"


def test_compare_page_picks_runs_by_filter_and_its_url_reproduces_it(home, db, dataset):
    a = seed_run(db, dataset, lr=0.01, optimizer="sgd", tags=["sweep"])
    b = seed_run(db, dataset, lr=0.001, optimizer="adam", tags=["sweep"], user="bob")
    c = seed_run(db, dataset, lr=0.001, optimizer="adam", tags=["sweep"])
    d = seed_run(db, dataset, lr=0.1)  # not tagged
    at = open_page("compare", query={"tag": "sweep"})
    figures = charts_by_key(at)
    names = [t["name"].split()[0] for t in figures["compare_test_roc_auc"]["data"]]
    assert names == [f"#{a}", f"#{b}", f"#{c}"]  # no cap, no hand-picking needed
    dims = figures["compare_parallel"]["data"][0]["dimensions"]
    assert {"lr (log)", "optimizer"} <= {dim["label"] for dim in dims}
    assert "compare_scatter" in figures
    # Options: group by optimizer, smooth, log scale; the URL then carries all of it.
    at.selectbox(key="compare_group").set_value("optimizer").run()
    at.slider(key="compare_smooth").set_value(0.5).run()
    at.toggle(key="compare_log").set_value(True).run()
    at.multiselect(key="compare_runs").set_value([d]).run()
    at.selectbox(key="compare_f_user").set_value("alice").run()
    assert not at.exception
    query = {k: at.query_params[k] for k in at.query_params}
    assert query["runs"] == str(d) and query["tag"] == "sweep" and query["user"] == "alice"
    assert query["group"] == "optimizer" and query["smooth"] == "0.5" and query["log"] == "1"
    figure = charts_by_key(at)["compare_test_roc_auc"]
    legend = [t["name"] for t in figure["data"] if t.get("showlegend")]
    assert legend == ["optimizer=adam (2 runs)", "optimizer=sgd (1 run)"]
    assert figure["layout"]["yaxis"]["type"] == "log"
    # A fresh session opened on that URL shows the same comparison.
    again = open_page("compare", query=query)
    assert again.multiselect(key="compare_runs").value == [d]
    assert again.selectbox(key="compare_f_user").value == "alice"
    assert again.selectbox(key="compare_group").value == "optimizer"
    assert again.slider(key="compare_smooth").value == 0.5
    assert again.toggle(key="compare_log").value is True
    assert charts_by_key(again)["compare_test_roc_auc"] == figure
    assert not again.warning  # no control both defaulted and set from the URL


def test_compare_page_says_why_the_two_losses_differ(home, db, dataset):
    a, b = seed_run(db, dataset), seed_run(db, dataset, lr=0.01)
    for run in (a, b):
        store.add_metrics(db, run, 12, 3, {"test_log_loss": 0.9})
    at = open_page("compare", query={"runs": f"{a},{b}"})
    assert any("test_log_loss" in c.value and "clipped" in c.value for c in at.caption)
    assert not open_page("compare", query={"runs": f"{a},{a}"}).exception


def test_compare_page_warns_when_runs_do_different_tasks(home, db, dataset):
    a = seed_run(db, dataset)
    b = seed_run(db, dataset, task="detection", model="fasterrcnn_mobilenet_v3_large_320_fpn")
    at = open_page("compare", query={"runs": f"{a},{b}"})
    assert any("different tasks" in i.value for i in at.info)
    assert "compare_parallel" in charts_by_key(at)
    at = open_page("compare", query={"runs": f"{a},{a}"})
    assert not any("different tasks" in i.value for i in at.info)


def test_compare_page_needs_two_runs(home, db, dataset):
    seed_run(db, dataset)
    at = open_page("compare")
    assert any("two or more runs" in i.value for i in at.info)


# -- datasets --------------------------------------------------------------------------------


def test_datasets_page_registers_and_shows_a_dataset(home, db):
    root = write_digits_imagefolder(home / "data" / "three", per_class=5, classes=range(3))
    at = open_page("datasets")
    at.text_input(key="ds_path").set_value(str(root))
    at.text_input(key="ds_name").set_value("three")
    at.button(key="FormSubmitter:register_dataset-Register").click().run()
    assert not at.exception
    found = store.get_dataset(db, "three")
    assert found and (found["task"], found["format"]) == ("classification", "imagefolder")
    assert found["info"]["classes"] == ["0", "1", "2"]
    assert any("Registered **three**" in s.value for s in at.success)
    assert "ds_distribution" in charts_by_key(at)
    bars = charts_by_key(at)["ds_distribution"]["data"]
    assert sum(sum(t["y"]) for t in bars) == 15
    captions = at.image[0].captions
    assert len(captions) == 12 and set(captions) == {"0", "1", "2"}
    assert any("No problems found" in s.value for s in at.success)


def test_datasets_page_keeps_a_taken_name_and_says_auto_for_the_task(home, db):
    first = write_digits_imagefolder(home / "data" / "a" / "digits", per_class=3, classes=range(2))
    other = write_digits_imagefolder(home / "data" / "b" / "digits", per_class=3, classes=range(3))
    at = open_page("datasets")
    # "detect" read like the detection task; the empty choice means auto-detection.
    assert at.selectbox(key="ds_task").options[0] == "auto (from the layout)"
    submit = "FormSubmitter:register_dataset-Register"
    at.text_input(key="ds_path").set_value(str(first))
    at.button(key=submit).click().run()
    assert store.get_dataset(db, "digits")["path"] == str(first)
    # Same name (the folder's), another folder: refused, the first registration kept.
    at.text_input(key="ds_path").set_value(str(other))
    at.button(key=submit).click().run()
    assert store.get_dataset(db, "digits")["path"] == str(first)
    assert any("name: 'digits' is already registered" in e.value for e in at.error)
    # The same folder again re-inspects it, as "Inspect again" does.
    at.text_input(key="ds_path").set_value(str(first))
    at.button(key=submit).click().run()
    assert not at.error


def test_datasets_page_reports_a_bad_dataset(home, db):
    at = open_page("datasets")
    at.text_input(key="ds_path").set_value(str(home / "nowhere"))
    at.button(key="FormSubmitter:register_dataset-Register").click().run()
    assert store.list_datasets(db) == []
    assert any("does not exist" in e.value for e in at.error)


def test_datasets_page_shows_detection_boxes(home, db):
    from factories import write_detection_set

    root = write_detection_set(home / "data" / "det", "coco")
    at = open_page("datasets")
    at.text_input(key="ds_path").set_value(str(root))
    at.button(key="FormSubmitter:register_dataset-Register").click().run()
    found = store.get_dataset(db, "det")
    assert found and (found["task"], found["format"]) == ("detection", "coco")
    assert "ds_boxes" in charts_by_key(at)
    captions = at.image[0].captions
    assert captions and all("box(es)" in c for c in captions)


def test_datasets_page_lists_the_problems_found(home, db):
    root = write_digits_imagefolder(home / "data" / "bad", per_class=5, classes=range(2))
    (root / "0" / "broken.png").write_bytes(b"not an image")
    at = open_page("datasets")
    at.text_input(key="ds_path").set_value(str(root))
    at.button(key="FormSubmitter:register_dataset-Register").click().run()
    assert store.get_dataset(db, "bad")
    assert any("problem(s) found" in w.value for w in at.warning)
    problems = [d.value for d in at.dataframe if "message" in d.value.columns][0]
    assert any("broken.png" in f for f in problems["file"])


def zip_of(folder: Path, top: str = "", extra: dict | None = None) -> bytes:
    """The files under `folder` zipped (inside a folder `top` when given), plus `extra`
    entries {name: bytes} written as they are named."""
    import zipfile

    out = BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, str(Path(top) / path.relative_to(folder)))
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return out.getvalue()


def upload_zip(at, data: bytes, name: str = "") -> None:
    at.text_input(key="up_name").set_value(name)
    at.file_uploader(key="up_zip").set_value(("upload.zip", data, "application/zip"))
    at.button(key="FormSubmitter:upload_dataset-Upload").click().run()
    assert not at.exception, [e.value for e in at.exception]


def test_datasets_page_uploads_a_zip_and_registers_it(home, db, tmp_path):
    folder = write_digits_imagefolder(tmp_path / "digits", per_class=4, classes=range(3))
    at = open_page("datasets")
    upload_zip(at, zip_of(folder, top="my digits"), name="uploaded")
    found = store.get_dataset(db, "uploaded")
    assert found and (found["task"], found["format"]) == ("classification", "imagefolder")
    assert Path(found["path"]) == home / "datasets" / "uploaded"
    assert sorted(p.name for p in (home / "datasets" / "uploaded").iterdir()) == ["0", "1", "2"]
    assert any("Uploaded and registered **uploaded**" in s.value for s in at.success)
    assert at.selectbox(key="dataset_view").value == "uploaded"
    assert any("No problems found" in s.value for s in at.success)


def test_datasets_page_refuses_an_unsafe_zip_and_keeps_nothing(home, db, tmp_path):
    folder = write_digits_imagefolder(tmp_path / "digits", per_class=3, classes=range(2))
    at = open_page("datasets")
    upload_zip(at, zip_of(folder, extra={"../../evil.txt": b"x"}), name="evil")
    assert any("Upload refused: ../../evil.txt: '..'" in e.value for e in at.error)
    assert store.get_dataset(db, "evil") is None
    assert not (home.parent / "evil.txt").exists()
    assert list((home / "datasets").iterdir()) == []  # no staging folder left behind


def test_datasets_page_shows_the_check_of_a_blocked_upload(home, db, tmp_path):
    folder = write_digits_imagefolder(tmp_path / "digits", per_class=3, classes=range(2))
    (folder / "empty").mkdir()
    (folder / "1" / "zero.png").write_bytes(b"")
    at = open_page("datasets")
    upload_zip(at, zip_of(folder, extra={"empty/": b""}), name="blocked")
    assert store.get_dataset(db, "blocked") is None
    assert not (home / "datasets" / "blocked").exists()
    assert any("Nothing was kept" in e.value for e in at.error)
    assert any("1 blocking problem(s)" in e.value for e in at.error)
    table = [d.value for d in at.dataframe if "severity" in d.value.columns][0]
    assert list(table["severity"]) == ["blocking", "warning"]
    assert list(table["file"]) == ["empty", "1/zero.png"]


def test_datasets_page_builds_a_dataset_from_image_files_class_by_class(home, db):
    def png(seed: int) -> bytes:
        rng = np.random.default_rng(seed)
        out = BytesIO()
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(out, "PNG")
        return out.getvalue()

    at = open_page("datasets")
    at.radio(key="up_kind").set_value("Image files of one class").run()
    for class_name, seeds in (("cat", (1, 2, 3)), ("dog", (4, 5, 6))):
        at.text_input(key="up_name").set_value("pets")
        at.text_input(key="up_class").set_value(class_name)
        files = [(f"{class_name}{k}.png", png(k), "image/png") for k in seeds]
        at.file_uploader(key="up_images").set_value(files)
        at.button(key="FormSubmitter:upload_dataset-Upload").click().run()
        assert not at.exception, [e.value for e in at.exception]
        if class_name == "cat":  # one class alone cannot be trained on: kept, not registered
            assert store.get_dataset(db, "pets") is None
            assert any("only one class" in e.value for e in at.error)
            assert any("The images are kept" in e.value for e in at.error)
    found = store.get_dataset(db, "pets")
    assert found and found["info"]["classes"] == ["cat", "dog"]
    assert sorted(p.name for p in (home / "datasets" / "pets" / "dog").iterdir()) == [
        "dog4.png", "dog5.png", "dog6.png"
    ]  # fmt: skip


# -- try it ----------------------------------------------------------------------------------


class FakePredictor:
    """What the Try-it page uses of engine.predict's predictor, without a model to load."""

    task = "classification"
    classes = [str(i) for i in range(10)]
    default_threshold = 0.5
    card = {"task": "classification", "model": "efficientnet_b0", "metric": "roc_auc"}

    def read(self, source):
        from engine.data import read_image

        return read_image(source)

    def predict(self, images):
        probs = {c: 0.01 for c in self.classes} | {"3": 0.81, "8": 0.1}
        return [{"label": "3", "index": 3, "score": 0.81, "probs": probs} for _ in images]


def test_try_it_page_confidence_starts_at_the_exact_threshold(home, db, dataset, monkeypatch):
    import engine.predict

    class DetectionPredictor(FakePredictor):
        task = "detection"
        default_threshold = 0.41713452

    run_id = seed_run(db, dataset)
    (store.run_dir(run_id, home) / "model.safetensors").write_bytes(b"weights")
    monkeypatch.setattr(engine.predict, "load_predictor", lambda *a, **k: DetectionPredictor())
    at = open_page("predict", query={"run": str(run_id)})
    assert not at.exception
    assert at.slider(key=f"predict_conf_{run_id}").value == 0.41713452


def test_try_it_page_names_classes_and_a_broken_upload(home, db, dataset, monkeypatch):
    import engine.predict

    run_id = seed_run(db, dataset)
    (store.run_dir(run_id, home) / "model.safetensors").write_bytes(b"weights")
    monkeypatch.setattr(engine.predict, "load_predictor", lambda *a, **k: FakePredictor())
    at = open_page("predict", query={"run": str(run_id)})
    at.toggle(key="predict_heatmap").set_value(False)
    digit = BytesIO()
    Image.new("RGB", (28, 28)).save(digit, format="PNG")
    uploads = [("seven.png", digit.getvalue(), "image/png"), ("bad.png", b"junk", "image/png")]
    at.file_uploader(key="predict_upload").set_value(uploads).run()
    assert not at.exception
    # The upload is named by its file name, not as <_io.BytesIO object at 0x…>.
    assert len(at.warning) == 1
    assert at.warning[0].value.startswith("bad.png: cannot read image")
    assert "BytesIO" not in at.warning[0].value
    # Class names "3" and "8" are categories, not positions on a numeric axis.
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert chart["layout"]["yaxis"]["type"] == "category"
    assert chart["data"][0]["y"][-1] == "3"  # the most probable class on top


def test_new_run_form_proposes_the_fine_tuning_defaults(home, db, dataset):
    # Augmentation, label smoothing and the optimizer's own learning rate by default; a
    # detector gets torchvision's recipe (flips only), and classification gets its own back.
    at = open_page("new_run")
    for key in ("augment_hflip", "augment_color", "augment_crop"):
        assert at.checkbox(key=f"cfg_{key}").value is True, key
    assert at.number_input(key="cfg_label_smoothing").value == 0.1
    lr = at.number_input(key="cfg_lr")
    assert lr.value is None and lr.placeholder == "adam default: 0.001"
    at.selectbox(key="cfg_optimizer").set_value("sgd").run()
    assert at.number_input(key="cfg_lr").placeholder == "sgd default: 0.01"
    at.selectbox(key="cfg_task").set_value("detection").run()
    assert at.checkbox(key="cfg_augment_hflip").value is True
    assert at.checkbox(key="cfg_augment_color").value is False
    assert at.checkbox(key="cfg_augment_crop").value is False
    assert "cfg_label_smoothing" not in {w.key for w in at.number_input}
    at.selectbox(key="cfg_task").set_value("classification").run()
    assert at.checkbox(key="cfg_augment_color").value is True
    assert at.checkbox(key="cfg_augment_crop").value is True
    at = open_page("new_run")
    at.selectbox(key="cfg_dataset_choice").set_value("tiny")
    at.checkbox(key="cfg_pretrained").uncheck()
    at.button(key="queue_run").click().run()
    config = store.list_runs(db)[0]["config"]
    assert config["lr"] == 0.001 and config["label_smoothing"] == 0.1  # resolved
