"""One rule for "must people sign in?" (engine.sign_in), read alike by the CLI, the API and the
dashboard; and the dashboard working out who is signed in once a run."""

import pytest
from streamlit.testing.v1 import AppTest
from test_api import call, serve
from test_auth import APP, app, captions, signed_out

from dashboard import auth
from engine import cli, sign_in, store
from engine.api.automation import create_api_app

ADMIN = {"username": "root", "role": "admin"}
PASSWORD = "correct horse"
PROVIDER = {
    "client_id": "visionboard",
    "client_secret": "shh",
    "server_metadata_url": "https://id.example.com/.well-known/openid-configuration",
}
SHARED = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "a secret"}
OIDC_SECRETS = """[auth]
redirect_uri = "http://localhost:8501/oauth2callback"
cookie_secret = "a secret"
client_id = "visionboard"
client_secret = "shh"
server_metadata_url = "https://id.example.com/.well-known/openid-configuration"
"""
MISSING = "redirect_uri, cookie_secret"


@pytest.fixture(autouse=True)
def no_samples(monkeypatch):
    monkeypatch.setenv("VISIONBOARD_SAMPLES", "0")
    monkeypatch.delenv(auth.ALLOW_ANYONE_ENV, raising=False)


@pytest.fixture
def secrets(tmp_path, monkeypatch):
    """The one secrets file the CLI and the API read (none of the machine's)."""
    path = tmp_path / "secrets.toml"
    monkeypatch.setattr(sign_in, "secrets_files", lambda: [path])
    return path


# -- the rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth_section", "providers"),
    [
        ({**SHARED, **PROVIDER}, [None]),
        ({**SHARED, "google": PROVIDER, "okta": PROVIDER}, ["google", "okta"]),
        ({**SHARED, **PROVIDER, "google": PROVIDER}, [None, "google"]),  # both, as st.login
        ({**SHARED, **PROVIDER, "client_kwargs": {"prompt": "login"}}, [None]),  # an option
        ({**SHARED, "google": PROVIDER, "my_idp": PROVIDER}, ["google"]),  # st.login refuses _
    ],
)
def test_a_usable_identity_provider_configures_sign_in(auth_section, providers):
    assert sign_in.oidc_providers({"auth": auth_section}) == providers
    assert sign_in.oidc_configured({"auth": auth_section})


@pytest.mark.parametrize(
    ("auth_section", "named"),
    [
        ({}, ["[auth] misses redirect_uri, cookie_secret",
              "misses client_id, client_secret, server_metadata_url"]),
        (SHARED, ["[auth] (or a provider's [auth.NAME]) misses client_id, client_secret"]),
        (PROVIDER, [f"[auth] misses {MISSING}"]),
        ({**SHARED, "client_id": "x"}, ["misses client_secret, server_metadata_url"]),
        ({**SHARED, "google": {"client_id": "g"}},
         ["[auth.google] misses client_secret, server_metadata_url"]),
        ({**SHARED, "my_idp": PROVIDER}, ["[auth.my_idp]: st.login takes no provider name"]),
        ({**SHARED, **PROVIDER, "cookie_secret": ""}, ["[auth] misses cookie_secret"]),
        ("not a table", [f"[auth] misses {MISSING}"]),
    ],
)  # fmt: skip
def test_an_auth_section_without_a_usable_provider_is_no_sign_in_and_says_what_it_misses(
    auth_section, named
):
    secrets = {"auth": auth_section}
    assert sign_in.oidc_providers(secrets) == [] and not sign_in.oidc_configured(secrets)
    problem = sign_in.oidc_problem(secrets)
    assert problem.startswith("sign-in through the identity provider is off: ")
    for words in named:
        assert words in problem


def test_no_auth_section_is_no_sign_in_and_nothing_to_say():
    for secrets in ({}, {"visionboard": {"oidc_role": "member"}}):
        assert sign_in.oidc_providers(secrets) == [] and sign_in.oidc_problem(secrets) is None
    half_broken = {"auth": {**SHARED, **PROVIDER, "google": {"client_id": "g"}}}
    assert sign_in.oidc_providers(half_broken) == [None]  # usable: said, but not "off"
    assert sign_in.oidc_problem(half_broken).startswith("[auth.google] misses client_secret")


def test_accounts_configure_sign_in_as_an_identity_provider_does(db):
    assert not sign_in.sign_in_configured(db, {"auth": {}})
    assert sign_in.sign_in_configured(db, {"auth": {**SHARED, **PROVIDER}})
    store.add_user(db, "ada", "member", PASSWORD, by=ADMIN)
    assert sign_in.sign_in_configured(db, {"auth": {}})
    store.set_user_disabled(db, "ada", by=ADMIN)  # no account that can sign in
    assert not sign_in.sign_in_configured(db, {})


def test_the_files_merge_as_streamlit_merges_them_and_are_read_again_when_changed(tmp_path):
    user, repo = tmp_path / "user.toml", tmp_path / "repo.toml"
    user.write_text(OIDC_SECRETS + '[visionboard]\noidc_role = "member"\n')
    repo.write_text("[auth]\n")
    merged = sign_in.read_secrets([user, repo])
    assert merged == {"auth": {}, "visionboard": {"oidc_role": "member"}}  # later table wins
    assert sign_in.read_secrets([tmp_path / "absent.toml", user])["auth"]["client_id"]
    repo.write_text(OIDC_SECRETS.replace("visionboard", "changed") + "# longer\n")
    assert sign_in.read_secrets([user, repo])["auth"]["client_id"] == "changed"
    repo.write_text("[auth\n")  # st.secrets fails: the dashboard reads none, so neither do we
    assert sign_in.read_secrets([user, repo]) == {}
    (error,) = sign_in.secrets_errors([user, repo])
    assert str(repo) in error and "cannot be read" in error


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("localhost", True), ("LOCALHOST:8501", True), ("127.0.0.1", True), ("127.8.0.1:80", True),
     ("::1", True), ("[::1]", True), ("[::1]:8501", True), ("0.0.0.0", False), ("::", False),
     ("192.168.1.20", False), ("myserver.lan", False), ("localhost.evil.com", False),
     ("[::1]evil.com", False), ("[::1]:80x", False), ("[::1", False), ("", False)],
)  # fmt: skip
def test_one_loopback_rule_for_hosts_and_host_headers(host, loopback):
    assert sign_in.is_loopback_host(host) is loopback


# -- an empty [auth]: every entry point agrees it is no sign-in ----------------------------------


def test_with_an_empty_auth_section_serve_refuses_other_hosts_and_says_what_it_misses(
    home, secrets, capsys, monkeypatch
):
    secrets.write_text("[auth]\n")
    monkeypatch.setattr(cli.subprocess, "Popen", lambda *a, **k: pytest.fail("started"))
    assert cli.main(["--home", str(home), "serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0 would let anyone" in err
    assert f"[auth] misses {MISSING}" in err and "client_id" in err
    assert cli.main(["--home", str(home), "api", "--host", "0.0.0.0"]) == 2
    assert f"[auth] misses {MISSING}" in capsys.readouterr().err
    secrets.write_text(OIDC_SECRETS)  # now usable: the same commands may listen there
    assert cli.open_host_refused("0.0.0.0", store.connect(home), False) is None


def test_with_an_empty_auth_section_the_api_takes_the_local_admins_token(
    home, db, secrets, capsys, monkeypatch
):
    secrets.write_text("[auth]\n")
    monkeypatch.setenv("VISIONBOARD_USER", "me")
    assert cli.main(["--home", str(home), "tokens", "add"]) == 0  # the CLI: a local admin
    token = capsys.readouterr().out.strip()
    url, stop = serve(create_api_app(home))
    try:
        status, _, me = call(f"{url}/api/me", token=token)
        assert (status, me["username"], me.get("single_user")) == (200, "me", True)
        secrets.write_text(OIDC_SECRETS)  # sign-in configured: that token stops at once
        assert call(f"{url}/api/me", token=token)[0] == 401
        secrets.write_text("[auth]\n# sign-in through the identity provider: not yet\n")
        assert call(f"{url}/api/me", token=token)[0] == 200
        store.add_user(db, "ada", "member", PASSWORD, by=ADMIN)  # an account: it stops too
        assert call(f"{url}/api/me", token=token)[0] == 401
    finally:
        stop()


def test_with_an_empty_auth_section_the_dashboard_serves_its_local_user_and_says_why(home):
    at = app(secrets={"auth": {}}).run()
    assert not at.exception and at.title[0].value == "Runs"
    assert "Single local user" in captions(at)
    (warning,) = at.sidebar.warning
    assert "sign-in through the identity provider is off" in warning.value
    assert f"[auth] misses {MISSING}" in warning.value


def test_with_accounts_and_half_a_provider_the_sign_in_page_has_only_the_form(home, db):
    store.add_user(db, "ada", "member", PASSWORD, by=ADMIN)
    at = app(secrets={"auth": {**SHARED, "google": {"client_id": "g"}}}).run()
    assert signed_out(at)
    assert [b.label for b in at.button] == ["Sign in"]  # the password form's only
    assert any("[auth.google] misses client_secret" in w.value for w in at.warning)


# -- who is signed in: once a run ----------------------------------------------------------------


def test_who_is_signed_in_is_worked_out_once_a_run_and_forgotten_after(home, db, monkeypatch):
    store.add_user(db, "root", "admin", PASSWORD, by=ADMIN)
    asked, answered = [], []
    find_user, current_user = auth.find_user, auth.current_user
    monkeypatch.setattr(auth, "find_user", lambda db: asked.append(1) or find_user(db))
    monkeypatch.setattr(auth, "current_user", lambda db: answered.append(1) or current_user(db))
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state[auth.TOKEN_KEY] = store.open_session(db, "root")
    at.run()  # two runs of the router: the hidden Home page, then Runs (st.switch_page)
    assert not at.exception and at.title[0].value == "Runs"
    assert "Signed in as **root** (admin)" in captions(at)
    assert (len(asked), len(answered)) == (2, 2)  # the router asked, the frame was answered
    assert auth.RUN_USER_KEY not in at.session_state  # the next run's callbacks ask afresh
    at.sidebar.button(key="vb_sign_out").click().run()
    assert signed_out(at) and auth.RUN_USER_KEY not in at.session_state  # (a stopped run)


def roles_script():
    """A page whose button callback acts as current_user, beside a run_user block."""
    import streamlit as st

    from dashboard import auth
    from engine import store

    db = store.connect()

    def act():
        st.session_state["acted_as"] = auth.current_user(db)["role"]

    st.button("Act", on_click=act)
    with auth.run_user(db) as user:
        st.session_state["ran_as"] = [auth.current_user(db)["role"] for _ in range(3)]
        st.write(user["role"])


def test_a_role_changed_between_runs_holds_in_the_next_runs_callbacks(home, db, monkeypatch):
    for name, role in (("root", "admin"), ("ada", "admin")):
        store.add_user(db, name, role, PASSWORD, by=ADMIN)
    asked = []
    find_user = auth.find_user
    monkeypatch.setattr(auth, "find_user", lambda db: asked.append(1) or find_user(db))
    at = AppTest.from_function(roles_script, default_timeout=60)
    at.session_state[auth.TOKEN_KEY] = store.open_session(db, "root")
    at.run()
    assert at.session_state["ran_as"] == ["admin"] * 3 and len(asked) == 1
    store.set_user_role(db, "root", "viewer", by=store.get_user(db, "ada"))
    at.button[0].click().run()
    assert at.session_state["acted_as"] == "viewer"  # the callback, before run_user: afresh
    assert at.session_state["ran_as"] == ["viewer"] * 3 and len(asked) == 3


def test_a_local_admins_token_acts_only_for_a_client_on_this_machine(home, db):
    from engine.api.automation import AskedLocalMode

    token, _ = store.add_api_token(db, "me", by=ADMIN, local_admin=True)
    asked = []

    def no_sign_in(db):
        asked.append(1)
        return True

    here = store.api_token_user(db, token, AskedLocalMode(no_sign_in, db, "127.0.0.1"))
    assert here["role"] == "admin" and asked == [1]
    # From another machine, even while the server has no sign-in (say its secrets file is
    # half edited), the token is nobody's.
    assert store.api_token_user(db, token, AskedLocalMode(no_sign_in, db, "10.0.0.7")) is None
    assert store.api_token_user(db, token, AskedLocalMode(no_sign_in, db, None)) is None
