"""Accounts in the store (engine.store's users verbs, engine.passwords), `visionboard users`,
and `visionboard serve`'s rule that only a server with sign-in listens beyond localhost."""

import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from test_sign_in import OIDC_SECRETS

from engine import cli, passwords, sign_in, store

PASSWORD = "correct horse"
ADMIN = {"username": "root", "role": "admin"}  # who manages the accounts here


def run_cli(home, *args):
    return cli.main(["--home", str(home), *args])


# -- store ---------------------------------------------------------------------------------------


def test_add_user_keeps_only_an_argon2_hash_and_never_returns_it(db):
    user = store.add_user(db, "ada", "member", PASSWORD, email="ada@example.com", by=ADMIN)
    assert user == {
        "username": "ada",
        "role": "member",
        "disabled": False,
        "source": "local",
        "email": "ada@example.com",
        "created_at": user["created_at"],
        "has_password": True,
    }
    stored = db.execute("select password_hash from users where username = 'ada'").fetchone()[0]
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert store.list_users(db) == [user]
    assert store.count_users(db) == 1


def test_the_last_enabled_admin_cannot_be_disabled_or_demoted(db):
    store.add_user(db, "ada", "admin", PASSWORD, by=ADMIN)
    store.add_user(db, "bo", "member", PASSWORD, by=ADMIN)
    with pytest.raises(store.UserError, match="last enabled admin"):
        store.set_user_disabled(db, "ada", by=ADMIN)
    with pytest.raises(store.UserError, match="last enabled admin"):
        store.set_user_role(db, "ada", "member", by=ADMIN)
    assert store.get_user(db, "ada")["role"] == "admin"
    store.set_user_role(db, "bo", "admin", by=ADMIN)  # with a second admin, either may go
    store.set_user_disabled(db, "ada", by=ADMIN)
    assert store.get_user(db, "ada")["disabled"]
    store.set_user_disabled(db, "bo", False, by=ADMIN)  # enabling is always fine


def test_verify_password_refuses_wrong_password_unknown_user_and_disabled_account(db):
    store.add_user(db, "ada", "member", PASSWORD, by=ADMIN)
    assert store.verify_password(db, "ada", PASSWORD)["username"] == "ada"
    assert store.verify_password(db, "ada", "wrong password") is None
    assert store.verify_password(db, "ada", "") is None
    assert store.verify_password(db, "nobody", PASSWORD) is None
    store.set_user_disabled(db, "ada", by=ADMIN)
    assert store.get_user(db, "ada")["disabled"] is True
    assert store.verify_password(db, "ada", PASSWORD) is None
    assert store.count_users(db) == 0  # a disabled account signs nobody in
    store.set_user_disabled(db, "ada", False, by=ADMIN)
    assert store.verify_password(db, "ada", PASSWORD)


def test_add_user_refuses_bad_names_roles_duplicates_and_weak_passwords(db):
    with pytest.raises(ValueError, match="role 'owner': expected one of admin, member, viewer"):
        store.add_user(db, "ada", "owner", PASSWORD, by=ADMIN)
    with pytest.raises(store.UserError, match="user name 'a b'"):
        store.add_user(db, "a b", "member", PASSWORD, by=ADMIN)
    with pytest.raises(ValueError, match="at least 8 characters"):
        store.add_user(db, "ada", "member", "short", by=ADMIN)
    with pytest.raises(store.UserError, match="needs a password"):
        store.add_user(db, "ada", "member", by=ADMIN)
    store.add_user(db, "ada", "member", PASSWORD, by=ADMIN)
    with pytest.raises(store.UserError, match="user 'ada' already exists"):
        store.add_user(db, "ada", "admin", PASSWORD, by=ADMIN)
    with pytest.raises(store.UserError, match="no user 'bob'"):
        store.set_user_disabled(db, "bob", by=ADMIN)


def test_set_password_replaces_the_old_one_and_signs_browsers_out(db):
    store.add_user(db, "ada", "member", PASSWORD, by=ADMIN)
    token = store.open_session(db, "ada")
    store.set_password(db, "ada", "a new password", by=ADMIN)
    assert store.verify_password(db, "ada", PASSWORD) is None
    assert store.verify_password(db, "ada", "a new password")
    assert store.session_user(db, token) is None


def test_sessions_sign_in_until_closed_expired_or_disabled(db):
    store.add_user(db, "ada", "admin", PASSWORD, by=ADMIN)
    token = store.open_session(db, "ada")
    assert store.session_user(db, token)["role"] == "admin"
    # The database keeps a hash of the token, not the token.
    kept = db.execute("select token_hash from sessions").fetchone()[0]
    assert kept == passwords.hash_token(token) and token not in kept
    assert store.session_user(db, "forged") is None and store.session_user(db, None) is None
    store.close_session(db, token)
    assert store.session_user(db, token) is None
    assert store.session_user(db, store.open_session(db, "ada", seconds=-1)) is None  # expired
    token = store.open_session(db, "ada")
    store.add_user(db, "eve", "admin", PASSWORD, by=ADMIN)  # ada is not the last admin
    store.set_user_disabled(db, "ada", by=ADMIN)
    assert store.session_user(db, token) is None
    store.set_user_disabled(db, "ada", False, by=ADMIN)
    assert store.session_user(db, token) is None  # disabling ended it for good


def test_oidc_users_are_added_once_with_the_configured_role_and_never_take_a_local_name(db):
    user = store.get_or_add_oidc_user(db, "carol@example.com", email="carol@example.com")
    assert (user["role"], user["source"], user["has_password"]) == ("viewer", "oidc", False)
    store.set_user_role(db, "carol@example.com", "member", by=ADMIN)
    again = store.get_or_add_oidc_user(db, "carol@example.com", role="viewer")
    assert again["role"] == "member"  # the admin's change holds
    assert store.verify_password(db, "carol@example.com", "") is None
    with pytest.raises(store.UserError, match="identity provider"):
        store.set_password(db, "carol@example.com", PASSWORD, by=ADMIN)
    store.add_user(db, "dan", "admin", PASSWORD, by=ADMIN)
    with pytest.raises(store.UserError, match="'dan' is a built-in account"):
        store.get_or_add_oidc_user(db, "dan")


# -- visionboard users --------------------------------------------------------------------------


def test_users_add_list_disable_enable_role_and_reset(db, home, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert run_cli(home, "users", "add", "ada", "--role", "admin", "--password-stdin") == 0
    assert "added user ada (admin)" in capsys.readouterr().out
    assert store.verify_password(db, "ada", PASSWORD)

    # Typed at a prompt, twice; two different passwords change nothing.
    typed = iter(["bobs password", "bobs password", "x1234567", "y1234567"])
    monkeypatch.setattr(cli.getpass, "getpass", lambda prompt="": next(typed))
    assert run_cli(home, "users", "add", "bob") == 0
    assert store.get_user(db, "bob")["role"] == "member"  # the default role
    assert run_cli(home, "users", "reset", "bob") == 2
    assert "the two passwords differ" in capsys.readouterr().err
    assert store.verify_password(db, "bob", "bobs password")

    assert run_cli(home, "users", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(u["username"], u["role"], u["disabled"]) for u in listed] == [
        ("ada", "admin", False),
        ("bob", "member", False),
    ]
    assert all("password_hash" not in u for u in listed)

    assert run_cli(home, "users", "disable", "bob") == 0
    assert run_cli(home, "users", "list") == 0
    table = capsys.readouterr().out
    assert "bob   member  local   disabled" in table
    assert run_cli(home, "users", "enable", "bob") == 0
    assert run_cli(home, "users", "role", "bob", "viewer") == 0
    assert store.get_user(db, "bob") | {"created_at": None} == {
        "username": "bob",
        "role": "viewer",
        "disabled": False,
        "source": "local",
        "email": "",
        "created_at": None,
        "has_password": True,
    }

    monkeypatch.setattr("sys.stdin", io.StringIO("a fresh password\n"))
    assert run_cli(home, "users", "reset", "bob", "--password-stdin") == 0
    assert store.verify_password(db, "bob", "a fresh password")


def test_users_commands_name_what_is_wrong(db, home, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert run_cli(home, "users", "add", "ada", "--password-stdin") == 2
    assert "at least 8 characters" in capsys.readouterr().err
    assert store.list_users(db) == []
    assert run_cli(home, "users", "disable", "nobody") == 2
    assert "no user 'nobody'" in capsys.readouterr().err
    assert run_cli(home, "users", "reset", "nobody", "--password-stdin") == 2
    assert "no user 'nobody'" in capsys.readouterr().err
    assert run_cli(home, "users", "add") == 2
    assert "users add needs a user NAME" in capsys.readouterr().err
    store.add_user(db, "ada", "member", PASSWORD, by=ADMIN)
    assert run_cli(home, "users", "add", "ada", "--password-stdin") == 2
    assert "user 'ada' already exists" in capsys.readouterr().err
    assert run_cli(home, "users", "role", "ada", "owner") == 2
    assert "role 'owner': expected one of admin, member, viewer" in capsys.readouterr().err


def test_cli_acts_as_a_local_admin_and_the_trail_keeps_its_real_os_user(db, monkeypatch):
    monkeypatch.setattr(cli.getpass, "getuser", lambda: "root")
    monkeypatch.delenv("VISIONBOARD_USER", raising=False)
    assert cli.cli_user() == {"username": "root", "role": "admin", "os_user": "root"}
    monkeypatch.setenv("VISIONBOARD_USER", "ada")  # anyone with a shell can type any name
    by = cli.cli_user()
    assert by == {"username": "ada", "role": "admin", "os_user": "root"}
    store.add_user(db, "bo", "member", PASSWORD, by=by)
    last = store.list_audit(db, by=ADMIN, limit=1)[0]
    assert (last["username"], last["detail"]["os_user"]) == ("ada", "root")


# -- signing in: guessing passwords, the identity provider's names and rules --------------------


def fail(db, name, times):
    for _ in range(times):
        assert store.verify_password(db, name, "wrong password") is None


def test_five_wrong_passwords_lock_the_name_for_fifteen_minutes(db):
    store.add_user(db, "ada", "member", PASSWORD, by=ADMIN)
    fail(db, "ada", store.MAX_SIGN_IN_FAILURES - 1)
    assert store.verify_password(db, "ada", PASSWORD)  # a success resets the count
    fail(db, "ada", store.MAX_SIGN_IN_FAILURES - 1)
    assert store.sign_in_locked_until(db, "ada") is None
    fail(db, "ada", 1)
    until = store.sign_in_locked_until(db, "ada")
    assert until and 14 * 60 < (until - datetime.now(UTC)).total_seconds() <= 15 * 60
    with pytest.raises(store.SignInLocked, match=r"too many wrong passwords for 'ada': try again"):
        store.verify_password(db, "ada", PASSWORD)  # the right one too: guessing stops
    fail(db, "nobody", store.MAX_SIGN_IN_FAILURES)  # unknown names lock alike: nothing told
    with pytest.raises(store.SignInLocked):
        store.verify_password(db, "nobody", PASSWORD)
    # Fifteen minutes after the last wrong one, the name may try again.
    old = (datetime.now(UTC) - timedelta(minutes=16)).isoformat(timespec="seconds")
    db.execute("update audit set at = ? where action = 'sign_in_failed'", [old])
    db.conn.commit()
    assert store.verify_password(db, "ada", PASSWORD)["username"] == "ada"
    actions = [
        (r["username"], r["action"]) for r in store.list_audit(db, by=ADMIN, target_id="ada")
    ]
    assert actions[:2] == [("ada", "sign_in"), ("", "sign_in_failed")]
    assert actions.count(("", "sign_in_failed")) == 2 * (store.MAX_SIGN_IN_FAILURES - 1) + 1


def test_wrong_passwords_spread_over_more_than_fifteen_minutes_lock_nothing(db):
    store.add_user(db, "ada", "member", PASSWORD, by=ADMIN)
    fail(db, "ada", 1)
    old = (datetime.now(UTC) - timedelta(minutes=20)).isoformat(timespec="seconds")
    db.execute("update audit set at = ? where action = 'sign_in_failed'", [old])
    db.conn.commit()
    fail(db, "ada", store.MAX_SIGN_IN_FAILURES - 1)
    assert store.sign_in_locked_until(db, "ada") is None
    assert store.verify_password(db, "ada", PASSWORD)


@pytest.mark.parametrize(
    ("email", "sub", "name"),
    [
        ("Ada@Example.com", "google-oauth2|1", "ada@example.com"),
        ("", "ada.l", "ada.l"),  # a valid id as it is
    ],
)
def test_an_identity_provider_user_is_named_by_email_else_by_subject_id(email, sub, name):
    assert store.oidc_username(email, sub) == name


def test_a_subject_id_that_is_no_user_name_becomes_one_kept_apart_from_lookalikes():
    one, two = (
        store.oidc_username("", "google-oauth2|123"),
        store.oidc_username("", "google-oauth2/123"),
    )
    assert one.startswith("google-oauth2-123-") and two.startswith("google-oauth2-123-")
    assert one != two
    assert store.USERNAME_PATTERN.fullmatch(one)
    assert store.USERNAME_PATTERN.fullmatch(store.oidc_username("", "|" + "x" * 300))
    with pytest.raises(store.UserError, match="neither an email nor a usable id"):
        store.oidc_username("", "||")


def test_check_oidc_identity_refuses_unverified_and_unlisted_emails():
    store.check_oidc_identity("ada@example.com")  # no lists: the admin approves each account
    store.check_oidc_identity("ada@example.com", True)
    for verified in (False, "false"):
        with pytest.raises(store.UserError, match="has not verified the email 'ada@example.com'"):
            store.check_oidc_identity("ada@example.com", verified)
    store.check_oidc_identity("Ada@Example.COM", None, ["@example.com"])
    store.check_oidc_identity("pat@partner.org", None, ["example.com"], ["Pat@Partner.org"])
    for email in ("eve@evil.com", "eve@sub.example.com", "", "example.com@evil.com"):
        with pytest.raises(store.UserError, match="is not allowed on this VisionBoard"):
            store.check_oidc_identity(email, True, ["example.com"], ["pat@partner.org"])


def test_an_identity_provider_user_added_disabled_waits_for_an_admin(db):
    user = store.get_or_add_oidc_user(db, "cy@example.com", "cy@example.com", disabled=True)
    assert user["disabled"] and store.count_users(db) == 0
    last = store.list_audit(db, by=ADMIN, limit=1)[0]
    assert last["detail"] == {"role": "viewer", "source": "oidc", "disabled": True}


# -- visionboard serve: who may listen beyond localhost -----------------------------------------


@pytest.fixture
def no_secrets(monkeypatch):
    monkeypatch.setattr(sign_in, "secrets_files", list)  # no secrets files


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "myserver.lan"])
def test_serve_without_accounts_refuses_other_addresses(
    home, capsys, monkeypatch, no_secrets, host
):
    started = []
    monkeypatch.setattr(cli.subprocess, "Popen", lambda *a, **k: started.append(a))
    assert run_cli(home, "serve", "--host", host) == 2
    err = capsys.readouterr().err
    assert f"--host {host}" in err and "visionboard users add" in err and "--allow-anyone" in err
    assert started == []  # neither the dashboard nor a worker


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "::1", "[::1]"])
def test_loopback_addresses_need_no_accounts(host):
    assert sign_in.is_loopback_host(host)


def test_serve_binds_beyond_localhost_with_accounts_an_identity_provider_or_the_flag(
    db, home, monkeypatch, no_secrets, tmp_path
):
    started = []

    class Stopped:
        pid = 1

        def __init__(self, command, env, cwd):
            started.append((command, env))

        def poll(self):
            return 0  # the dashboard "exits" at once: serve stops

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(cli.subprocess, "Popen", Stopped)
    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)
    monkeypatch.setattr("engine.sample_datasets.ensure_samples", lambda db, home: [])
    assert run_cli(home, "serve", "--host", "0.0.0.0", "--allow-anyone") == 0
    app_env = started[-1][1]
    assert "0.0.0.0" in started[-1][0] and app_env["VISIONBOARD_ALLOW_ANYONE"] == "1"

    store.add_user(db, "ada", "member", PASSWORD, by=ADMIN)
    assert run_cli(home, "serve", "--host", "0.0.0.0") == 0
    assert "VISIONBOARD_ALLOW_ANYONE" not in started[-1][1]

    store.set_user_disabled(db, "ada", by=ADMIN)
    assert run_cli(home, "serve", "--host", "0.0.0.0") == 2  # no account can sign in
    secrets = tmp_path / "secrets.toml"
    monkeypatch.setattr(sign_in, "secrets_files", lambda: [secrets])
    secrets.write_text(OIDC_SECRETS)
    assert run_cli(home, "serve", "--host", "0.0.0.0") == 0
