"""Roles and ownership (engine.store's RIGHTS beside ACTIONS) and the audit trail: the rule
table exhaustively (role x owner x action x state), every verb's refusal and record, the CLI
as the server's local admin, and every page drawing only what the signed-in user may do.

Who may act is written out here by hand from the issue (admins any run, members their own,
viewers read), not read from RIGHTS, so a change to the rule has to change this file too.
"""

import json
import os
import socket
from pathlib import Path

import pytest
from factories import write_digits_imagefolder
from streamlit.testing.v1 import AppTest

from dashboard import auth
from engine import choices, cli, store

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
PASSWORD = "correct horse"

ROOT = {"username": "root", "role": "admin"}
ADA = {"username": "ada", "role": "member"}
BO = {"username": "bo", "role": "member"}
VIC = {"username": "vic", "role": "viewer"}
USERS = {"admin": ROOT, "member": ADA, "viewer": VIC}
# A bare name: the store confines only dataset values that are paths (store.looks_like_path).
CONFIG = {"task": "classification", "model": "efficientnet_b0", "dataset": "d", "epochs": 2}
STATES = (*store.STATUSES, store.ORPHANED)
# The owner of the run acted on, seen from the acting user.
OWNERS = ("own", "other", "unowned")


def expected_role_rule(role: str, owner: str) -> bool:
    """The issue's rule: admins act on any run, members on their own, viewers on none."""
    return role == "admin" or (role == "member" and owner == "own")


def owner_name(user: dict, owner: str) -> str:
    return {"own": user["username"], "other": "someone-else", "unowned": ""}[owner]


def run_in(db, state: str, owner: str) -> int:
    """A run of `owner` in `state`, got there the way the worker gets it there."""
    run_id = store.create_run(db, CONFIG, by=ROOT)
    with db.conn:  # the owner: who queued it (a run from before sign-in has none)
        db.conn.execute("update runs set user = ? where id = ?", [owner, run_id])
    if state == "queued":
        return run_id
    worker = "gone" if state == store.ORPHANED else "w"
    store.beat_worker(db, worker, socket.gethostname(), os.getpid())
    store.claim_run(db, worker, run_id=run_id)
    if state in store.FINISHED:
        store.set_status(db, run_id, state)
    if state == store.ORPHANED:  # its worker and its trainer fell silent long ago
        with db.conn:
            db.conn.execute("update workers set heartbeat_at = '2000-01-01T00:00:00+00:00'")
            db.conn.execute(
                "update runs set heartbeat_at = '2000-01-01T00:00:00+00:00' where id = ?",
                [run_id],
            )
    return run_id


VERBS = {
    "cancel": lambda db, run_id, by: store.request_cancel(db, run_id, by=by),
    "resume": lambda db, run_id, by: store.resume_run(db, run_id, by=by),
    "rerun": lambda db, run_id, by: store.queue_rerun(db, run_id, by=by),
    "edit": lambda db, run_id, by: store.edit_run(db, run_id, by=by, note="edited"),
    "delete": lambda db, run_id, by: store.delete_run(db, run_id, by=by),
}


def audit_count(db) -> int:
    return db.execute("select count(*) from audit").fetchone()[0]


# -- the rule table -------------------------------------------------------------------------


def test_every_role_has_rights_and_every_run_action_a_verb():
    assert set(store.RIGHTS) == set(choices.ROLES)
    assert set(VERBS) == set(store.ACTIONS)


@pytest.mark.parametrize("role", list(USERS))
@pytest.mark.parametrize("owner", OWNERS)
def test_allowed_actions_is_the_state_rule_and_the_role_rule(db, role, owner):
    user = USERS[role]
    for state in STATES:
        run = store.get_run(db, run_in(db, state, owner_name(user, owner)))
        assert store.run_state(run) == state
        expected = store.state_actions(run) if expected_role_rule(role, owner) else set()
        assert store.allowed_actions(run, user) == expected, (role, owner, state)
        # A disabled account, or nobody, may do nothing at all.
        assert store.allowed_actions(run, {**user, "disabled": True}) == set()
        assert store.allowed_actions(run, None) == set()


@pytest.mark.parametrize("role", list(USERS))
@pytest.mark.parametrize("owner", OWNERS)
def test_every_verb_checks_the_role_before_the_state_and_records_what_it_did(db, home, role, owner):
    user = USERS[role]
    for action, verb in VERBS.items():
        for state in STATES:
            run_id = run_in(db, state, owner_name(user, owner))
            store.add_metrics(db, run_id, 1, 1, {"lr": 0.1})
            (store.run_dir(run_id, home) / "train.log").write_text("log")
            before, records = store.get_run(db, run_id), audit_count(db)
            where = (role, owner, action, state)
            if not expected_role_rule(role, owner):
                with pytest.raises(store.PermissionDenied) as refused:
                    verb(db, run_id, user)
                error = refused.value
                assert (error.username, error.role, error.action) == (
                    user["username"],
                    role,
                    action,
                ), where
                assert error.owner == before["user"], where
            elif state not in store.ACTIONS[action]:
                with pytest.raises(store.RunStateError):
                    verb(db, run_id, user)
            else:
                verb(db, run_id, user)
                last = store.list_audit(db, by=ROOT, limit=1)[0]
                assert (last["username"], last["action"]) == (user["username"], action), where
                assert audit_count(db) == records + 1, where
                continue
            # Refused: nothing written, not the row, the metrics, the folder or the trail.
            assert store.get_run(db, run_id) == before, where
            assert len(store.get_metrics(db, run_id)) == 1, where
            assert (store.run_dir(run_id, home) / "train.log").exists(), where
            assert audit_count(db) == records, where


def test_refusals_name_the_user_the_role_the_owner_and_the_action(db):
    run_id = store.create_run(db, CONFIG, by=ADA)
    with pytest.raises(store.PermissionDenied) as refused:
        store.request_cancel(db, run_id, by=BO)
    assert str(refused.value) == (
        f"bo (member) may not cancel run {run_id} (owned by ada): members act on their own "
        "runs and datasets only"
    )
    with pytest.raises(store.PermissionDenied, match=r"vic \(viewer\) may not re-run run .*"):
        store.queue_rerun(db, run_id, by=VIC)
    with pytest.raises(store.PermissionDenied, match="viewers only read"):
        store.create_run(db, CONFIG, by=VIC)
    with pytest.raises(store.PermissionDenied, match="only admins may manage users"):
        store.add_user(db, "eve", "admin", PASSWORD, by=ADA)
    with pytest.raises(store.PermissionDenied, match="the account is disabled"):
        store.create_run(db, CONFIG, by={**ADA, "disabled": True})
    with pytest.raises(store.PermissionDenied, match="role 'owner' is none of admin, member"):
        store.create_run(db, CONFIG, by={"username": "x", "role": "owner"})
    with pytest.raises(store.PermissionDenied, match="nobody is signed in"):
        store.create_run(db, CONFIG, by=None)
    with pytest.raises(ValueError, match="action 'fly': expected one of cancel"):
        store.may(ROOT, "fly")


def test_a_run_belongs_to_who_queued_it_and_a_rerun_to_who_reran_it(db):
    run_id = store.create_run(db, CONFIG, by=ADA)
    assert store.get_run(db, run_id)["user"] == "ada"
    copy = store.queue_rerun(db, run_id, by=ROOT)
    assert store.get_run(db, copy)["user"] == "root"
    mine = store.queue_rerun(db, run_id, by=ADA)
    assert store.get_run(db, mine)["user"] == "ada"


# -- datasets, weights, users ---------------------------------------------------------------


def dataset_folder(home, name: str) -> str:
    """A dataset folder inside the data root <home>/datasets: the store registers no other."""
    folder = home / "datasets" / name
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


@pytest.mark.parametrize("role", list(USERS))
def test_datasets_are_registered_by_members_and_changed_by_their_owner_or_an_admin(db, home, role):
    user = USERS[role]
    add = store.register_dataset
    m, m2, t, t2, x = (dataset_folder(home, n) for n in ("m", "m2", "t", "t2", "x"))
    if role == "viewer":
        with pytest.raises(store.PermissionDenied, match="may not register datasets"):
            add(db, "mine", m, "imagefolder", "classification", by=user)
        assert store.get_dataset(db, "mine") is None
    else:
        add(db, "mine", m, "imagefolder", "classification", by=user)
        assert store.get_dataset(db, "mine")["added_by"] == user["username"]
        add(db, "mine", m2, "imagefolder", "classification", by=user)  # again: its own
        assert store.get_dataset(db, "mine")["path"] == m2
        store.delete_dataset(db, "mine", by=user)
        assert store.get_dataset(db, "mine") is None
    add(db, "theirs", t, "imagefolder", "classification", by=BO)
    theirs = store.get_dataset(db, "theirs")
    assert store.may_change_dataset(user, theirs) == (role == "admin")
    if role == "admin":
        add(db, "theirs", t2, "imagefolder", "classification", by=user)
        assert store.get_dataset(db, "theirs")["added_by"] == "bo"  # the owner stays
        store.delete_dataset(db, "theirs", by=user)
        assert store.get_dataset(db, "theirs") is None
    else:
        with pytest.raises(store.PermissionDenied, match="owned by bo"):
            add(db, "theirs", x, "imagefolder", "classification", by=user)
        with pytest.raises(store.PermissionDenied, match="may not remove dataset 'theirs'"):
            store.delete_dataset(db, "theirs", by=user)
        assert store.get_dataset(db, "theirs") == theirs


def test_the_sample_datasets_are_the_servers(db, home):
    from engine.sample_datasets import ensure_samples

    names = ensure_samples(db, home)
    assert {store.get_dataset(db, n)["added_by"] for n in names} == {"visionboard"}
    assert not store.may_change_dataset(ADA, store.get_dataset(db, names[0]))
    assert store.may_change_dataset(ROOT, store.get_dataset(db, names[0]))


@pytest.mark.parametrize("role", list(USERS))
def test_importing_weights_is_for_members_and_admins_and_records_who(db, home, role, tmp_path):
    from engine import weights

    user = USERS[role]
    if role == "viewer":
        # Refused before the file is even read (it does not exist).
        with pytest.raises(store.PermissionDenied, match="may not import weights"):
            weights.import_weights("resnet18", tmp_path / "nothing.pth", home, by=user)
        with pytest.raises(store.PermissionDenied):
            store.record_weights(db, "resnet18", "/w", "/src", by=user)
        assert store.list_imported_weights(db) == {}
        return
    store.record_weights(db, "resnet18", str(home / "weights/resnet18.safetensors"), "/f", by=user)
    assert store.list_imported_weights(db)["resnet18"]["added_by"] == user["username"]
    last = store.list_audit(db, by=ROOT, limit=1)[0]
    assert (last["username"], last["action"], last["target_id"]) == (
        user["username"],
        "import_weights",
        "resnet18",
    )


def test_managing_users_and_reading_the_trail_are_for_admins(db):
    for user in (ADA, VIC):
        with pytest.raises(store.PermissionDenied):
            store.add_user(db, "eve", "member", PASSWORD, by=user)
        with pytest.raises(store.PermissionDenied):
            store.list_audit(db, by=user)
    store.add_user(db, "eve", "member", PASSWORD, by=ROOT)
    for user in (ADA, VIC):
        with pytest.raises(store.PermissionDenied):
            store.set_user_role(db, "eve", "admin", by=user)
        with pytest.raises(store.PermissionDenied):
            store.set_user_disabled(db, "eve", by=user)
        with pytest.raises(store.PermissionDenied):
            store.set_password(db, "eve", "another password", by=user)
    assert store.get_user(db, "eve")["role"] == "member"
    # Anyone may change their own password.
    store.set_password(db, "eve", "my own password", by={"username": "eve", "role": "viewer"})
    assert store.verify_password(db, "eve", "my own password")


# -- the audit trail ------------------------------------------------------------------------


def test_the_trail_records_who_did_what_to_what_and_when(db):
    run_id = store.create_run(db, CONFIG, name="first", tags=["a"], by=ADA)
    store.edit_run(db, run_id, by=ADA, name="renamed", tags=["b", "a"], note="")  # note same
    store.edit_run(db, run_id, by=ADA, note="")  # nothing changed: nothing recorded
    store.request_cancel(db, run_id, by=ROOT)
    copy = store.queue_rerun(db, run_id, by=ADA)
    store.resume_run(db, run_id, by=ADA)
    d = dataset_folder(db.home, "d")
    store.register_dataset(db, "d", d, "imagefolder", "classification", by=ADA)
    store.delete_dataset(db, "d", by=ROOT)
    store.record_weights(db, "resnet18", "/w/resnet18.safetensors", "/tmp/r.pth", by=ADA)
    store.add_user(db, "eve", "member", PASSWORD, by=ROOT)
    store.set_user_role(db, "eve", "viewer", by=ROOT)
    store.set_user_disabled(db, "eve", by=ROOT)
    store.set_user_disabled(db, "eve", False, by=ROOT)
    store.set_password(db, "eve", "a new password", by=ROOT)
    store.request_cancel(db, run_id, by=ADA)  # queued again by the resume: cancelled at once
    store.delete_run(db, run_id, by=ADA)
    trail = [
        (r["username"], r["action"], r["target_kind"], r["target_id"], r["detail"])
        for r in reversed(store.list_audit(db, by=ROOT))
    ]
    assert trail == [
        ("ada", "queue", "run", str(run_id), {"name": "first"}),
        ("ada", "edit", "run", str(run_id), {"name": "renamed", "tags": ["a", "b"]}),
        ("root", "cancel", "run", str(run_id), {}),
        ("ada", "rerun", "run", str(copy), {"name": f"renamed (re-run of #{run_id})", "of": run_id}),
        ("ada", "resume", "run", str(run_id), {}),
        ("ada", "add_dataset", "dataset", "d",
         {"path": d, "format": "imagefolder", "task": "classification"}),
        ("root", "delete_dataset", "dataset", "d", {"path": d}),
        ("ada", "import_weights", "weights", "resnet18",
         {"path": "/w/resnet18.safetensors", "from": "/tmp/r.pth"}),
        ("root", "add_user", "user", "eve", {"role": "member", "source": "local"}),
        ("root", "set_role", "user", "eve", {"role": "viewer", "was": "member"}),
        ("root", "disable_user", "user", "eve", {}),
        ("root", "enable_user", "user", "eve", {}),
        ("root", "reset_password", "user", "eve", {}),
        ("ada", "cancel", "run", str(run_id), {}),
        ("ada", "delete", "run", str(run_id), {"name": "renamed"}),
    ]  # fmt: skip
    stamps = [r["at"] for r in store.list_audit(db, by=ROOT)]
    assert all(store.now() >= stamp >= "2000" for stamp in stamps)


def test_the_trail_filters_by_user_action_target_and_time(db):
    one = store.create_run(db, CONFIG, by=ADA)
    two = store.create_run(db, CONFIG, by=BO)
    store.request_cancel(db, two, by=BO)
    assert [r["target_id"] for r in store.list_audit(db, by=ROOT, username="bo")] == [str(two)] * 2
    assert [r["username"] for r in store.list_audit(db, by=ROOT, action="queue")] == ["bo", "ada"]
    rows = store.list_audit(db, by=ROOT, target_kind="run", target_id=one)
    assert [(r["username"], r["action"]) for r in rows] == [("ada", "queue")]
    assert store.list_audit(db, by=ROOT, since="2999-01-01") == []
    assert len(store.list_audit(db, by=ROOT, limit=1)) == 1
    assert store.audit_values(db, "username") == ["ada", "bo"]
    with pytest.raises(ValueError, match="filter 'detail': expected one of username"):
        store.list_audit(db, by=ROOT, detail="x")


def test_the_first_sign_in_of_an_identity_provider_user_is_recorded_as_the_servers(db):
    store.get_or_add_oidc_user(db, "carol@example.com", email="carol@example.com")
    last = store.list_audit(db, by=ROOT, limit=1)[0]
    assert (last["username"], last["action"], last["target_id"]) == (
        "visionboard",
        "add_user",
        "carol@example.com",
    )


# -- the CLI: the server's local admin --------------------------------------------------------


def run_cli(home, *args):
    return cli.main(["--home", str(home), *args])


def test_the_cli_acts_as_the_local_admin_under_the_same_rules(db, home, capsys, monkeypatch):
    monkeypatch.setenv("VISIONBOARD_USER", "ops")
    monkeypatch.setattr(cli.getpass, "getuser", lambda: "root")
    assert cli.cli_user() == {"username": "ops", "role": "admin", "os_user": "root"}
    theirs = store.create_run(db, CONFIG, by=ADA)
    assert run_cli(home, "runs", "cancel", str(theirs)) == 0  # an admin: anyone's run
    assert store.get_run(db, theirs)["status"] == "cancelled"
    running = run_in(db, "running", "ada")
    assert run_cli(home, "runs", "delete", str(running)) == 2  # the state rule still holds
    assert "cancel it first" in capsys.readouterr().err
    assert run_cli(home, "runs", "delete", str(theirs)) == 0
    data = write_digits_imagefolder(home / "data" / "tiny", per_class=3, classes=range(2))
    assert run_cli(home, "datasets", "add", str(data), "--name", "tiny") == 0
    assert store.get_dataset(db, "tiny")["added_by"] == "ops"
    capsys.readouterr()
    assert run_cli(home, "audit", "--json", "--user", "ops") == 0
    trail = json.loads(capsys.readouterr().out)
    assert [(r["action"], r["target_id"]) for r in trail] == [
        ("add_dataset", "tiny"),
        ("delete", str(theirs)),
        ("cancel", str(theirs)),
    ]
    assert all(r["detail"]["os_user"] == "root" for r in trail)  # who really ran the commands
    assert run_cli(home, "audit", "--kind", "dataset") == 0
    table = capsys.readouterr().out
    assert "ops" in table and "add_dataset" in table and "dataset tiny" in table


def test_the_cli_refuses_what_its_user_may_not_do(db, home, capsys, monkeypatch):
    # Should the CLI ever act as someone else (e.g. a future API token), the store refuses.
    monkeypatch.setattr(cli, "cli_user", lambda: VIC)
    theirs = store.create_run(db, CONFIG, by=ADA)
    assert run_cli(home, "runs", "cancel", str(theirs)) == 2
    assert "vic (viewer) may not cancel" in capsys.readouterr().err
    assert run_cli(home, "audit") == 2
    assert "only admins may read the audit trail" in capsys.readouterr().err
    assert store.get_run(db, theirs)["status"] == "queued"


# -- the dashboard: each page draws only what the signed-in user may do -------------------------


@pytest.fixture
def team(db, home, monkeypatch):
    """Accounts of every role, a run of each member, a dataset of ada; returns the run ids."""
    monkeypatch.setenv("VISIONBOARD_SAMPLES", "0")
    monkeypatch.delenv(auth.ALLOW_ANYONE_ENV, raising=False)
    for user in (ROOT, ADA, BO, VIC):
        store.add_user(db, user["username"], user["role"], PASSWORD, by=ROOT)
    data = write_digits_imagefolder(home / "data" / "tiny", per_class=3, classes=range(2))
    store.register_dataset(db, "tiny", str(data), "imagefolder", "classification", by=ADA)
    config = {**CONFIG, "dataset": str(data)}
    return {"ada": store.create_run(db, config, by=ADA), "bo": store.create_run(db, config, by=BO)}


def open_as(db, username: str, page: str, query: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state[auth.TOKEN_KEY] = store.open_session(db, username)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.run()
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def button_keys(at) -> set[str]:
    return {b.key for b in at.button}


def button(at, label: str):
    return next(b for b in at.button if b.label == label)


def table(at, position: int):
    return at.dataframe[position].value


RUNS_BUTTONS = {"runs_cancel", "runs_resume", "runs_rerun", "runs_delete"}
RUN_BUTTONS = {"run_cancel", "run_rerun", "run_edit"}  # of a queued run (resume: not queued)


def select_runs(at, ids: list[int]) -> AppTest:
    shown = at.session_state["runs_shown_ids"]
    at.session_state["runs_table"] = {
        "selection": {"rows": [shown.index(i) for i in ids], "columns": [], "cells": []}
    }
    return at.run()


@pytest.mark.parametrize(
    ("username", "whose", "sees"),
    [
        ("vic", "ada", False),
        ("bo", "ada", False),
        ("ada", "ada", True),
        ("root", "ada", True),
        ("root", "bo", True),
    ],
)
def test_runs_page_shows_actions_only_on_runs_the_user_may_change(db, team, username, whose, sees):
    at = select_runs(open_as(db, username, "runs"), [team[whose]])
    assert {"runs_open", "runs_compare"} <= button_keys(at)  # reading is for everyone
    assert (RUNS_BUTTONS <= button_keys(at)) == sees
    assert not (RUNS_BUTTONS & button_keys(at)) or sees
    assert any(t.key == "runs_edit_name" for t in at.text_input) == sees
    assert any("Read only" in c.value for c in at.caption) != sees


def test_runs_page_acts_on_the_users_own_runs_of_a_mixed_selection(db, team):
    at = select_runs(open_as(db, "ada", "runs"), [team["ada"], team["bo"]])
    at.button(key="runs_cancel").click().run()
    assert store.get_run(db, team["ada"])["status"] == "cancelled"
    assert store.get_run(db, team["bo"])["status"] == "queued"
    message = at.success[0].value
    assert f"Cancel requested for #{team['ada']}." in message
    assert f"Not yours to cancel: #{team['bo']}." in message


def test_runs_page_saves_details_as_the_user_and_records_it(db, team):
    at = select_runs(open_as(db, "ada", "runs"), [team["ada"]])
    at.text_input(key="runs_edit_name").set_value("ada's best")
    at.button(key="runs_save").click().run()
    assert store.get_run(db, team["ada"])["name"] == "ada's best"
    last = store.list_audit(db, by=ROOT, limit=1)[0]
    assert (last["username"], last["action"], last["detail"]) == (
        "ada",
        "edit",
        {"name": "ada's best"},
    )


@pytest.mark.parametrize(
    ("username", "whose", "sees"),
    [
        ("vic", "ada", False),
        ("bo", "ada", False),
        ("ada", "ada", True),
        ("root", "bo", True),
    ],
)
def test_run_page_shows_actions_only_to_who_may_take_them(db, team, username, whose, sees):
    at = open_as(db, username, "run", {"run": str(team[whose])})
    assert at.subheader[0].value.startswith(f"#{team[whose]} ")  # everyone reads it
    assert (RUN_BUTTONS <= button_keys(at)) == sees
    assert not (RUN_BUTTONS & button_keys(at)) or sees
    assert any("Read only" in c.value for c in at.caption) != sees


def test_run_page_cancel_is_done_as_the_signed_in_user(db, team):
    at = open_as(db, "root", "run", {"run": str(team["ada"])})
    at.button(key="run_cancel").click().run()
    assert store.get_run(db, team["ada"])["status"] == "cancelled"
    last = store.list_audit(db, by=ROOT, limit=1)[0]
    assert (last["username"], last["action"]) == ("root", "cancel")


@pytest.mark.parametrize(("username", "queues"), [("vic", False), ("ada", True), ("root", True)])
def test_new_run_page_queues_only_for_members_and_admins(db, team, username, queues):
    at = open_as(db, username, "new_run")
    assert ("queue_run" in button_keys(at)) == queues
    if not queues:
        assert any("does not queue runs" in i.value for i in at.info)
        return
    at.selectbox(key="cfg_dataset_choice").set_value("tiny")
    at.checkbox(key="cfg_pretrained").uncheck().run()
    at.button(key="queue_run").click().run()
    newest = store.list_runs(db)[0]
    assert newest["id"] not in team.values() and newest["user"] == username


@pytest.mark.parametrize(
    ("username", "registers", "changes"),
    [("vic", False, False), ("bo", True, False), ("ada", True, True), ("root", True, True)],
)
def test_datasets_page_registers_for_members_and_changes_for_the_owner_or_an_admin(
    db, team, username, registers, changes
):
    at = open_as(db, username, "datasets")
    assert bool([t for t in at.text_input if t.key == "ds_path"]) == registers
    assert ({"ds_reinspect", "ds_delete"} <= button_keys(at)) == changes
    assert not ({"ds_reinspect", "ds_delete"} & button_keys(at)) or changes
    rows = at.dataframe[0].value
    assert list(rows["added by"]) == ["ada"]
    if not changes:
        assert any("only they or an admin" in c.value for c in at.caption)


def test_datasets_page_registers_as_the_signed_in_user(db, team, home):
    data = write_digits_imagefolder(home / "data" / "bos", per_class=3, classes=range(2))
    at = open_as(db, "bo", "datasets")
    at.text_input(key="ds_path").set_value(str(data))
    at.text_input(key="ds_name").set_value("bos")
    button(at, "Register").click().run()
    assert store.get_dataset(db, "bos")["added_by"] == "bo"


@pytest.mark.parametrize("username", ["vic", "ada"])
def test_admin_page_is_for_admins_only(db, team, username):
    at = open_as(db, username, "admin")
    assert any("Admins only" in e.value for e in at.error)
    assert not at.dataframe and not at.main.button  # the sidebar keeps its Sign out


def test_admin_page_lists_users_changes_roles_disables_and_shows_the_trail(db, team):
    at = open_as(db, "root", "admin")
    users = table(at, 0)
    assert list(users["user"]) == ["ada", "bo", "root", "vic"]
    assert "root" not in at.selectbox(key="admin_user").options  # not your own account
    at.selectbox(key="admin_user").set_value("vic").run()
    assert at.selectbox(key="admin_role").value == "viewer"
    at.selectbox(key="admin_role").set_value("member").run()
    at.button(key="admin_change_role").click().run()
    assert store.get_user(db, "vic")["role"] == "member"
    at.selectbox(key="admin_user").set_value("bo").run()
    at.button(key="admin_toggle_user").click().run()
    assert store.get_user(db, "bo")["disabled"]
    trail = table(at, 1)
    assert list(trail["action"][:2]) == ["disable_user", "set_role"]
    assert list(trail["user"][:2]) == ["root", "root"]
    at.selectbox(key="audit_user").set_value("ada").run()
    trail = table(at, 1)
    assert set(trail["user"]) == {"ada"} and "queue" in set(trail["action"])


def test_admin_page_adds_a_user(db, team):
    at = open_as(db, "root", "admin")
    at.text_input(key="admin_new_name").set_value("eve")
    at.text_input(key="admin_new_password").set_value(PASSWORD)
    at.selectbox(key="admin_new_role").set_value("viewer")
    button(at, "Add user").click().run()
    assert store.get_user(db, "eve")["role"] == "viewer"
    assert any("Added eve (viewer)" in s.value for s in at.success)
