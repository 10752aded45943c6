"""Signing in to the dashboard (dashboard.auth) with AppTest: the single local user of a server
without accounts, the password form, the session cookie of a reload or a new tab, signing out,
and the team's identity provider (st.user).

AppTest cannot send cookies, so the cookie a browser would send is put in place of
auth.session_cookie(); tests/test_browser.py drives the real cookie in Chromium.
"""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import auth
from engine import store

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
ADMIN = {"username": "root", "role": "admin"}
PASSWORD = "correct horse"


@pytest.fixture(autouse=True)
def no_samples(monkeypatch):
    monkeypatch.setenv("VISIONBOARD_SAMPLES", "0")
    monkeypatch.delenv(auth.ALLOW_ANYONE_ENV, raising=False)


@pytest.fixture
def ada(db):
    return store.add_user(db, "ada", "member", PASSWORD, by=ADMIN)


def app(user=None, secrets=None):
    at = AppTest.from_file(APP, default_timeout=60)
    if user is not None:
        at.user = user
    for key, value in (secrets or {}).items():
        at.secrets[key] = value
    return at


def captions(at):
    return " ".join(c.value for c in at.sidebar.caption)


def cookie_scripts(at):
    return [h.proto.body for h in at.get("html")]


def sign_in(at, name, password):
    at.text_input(key="vb_sign_in_name").set_value(name)
    at.text_input(key="vb_sign_in_password").set_value(password)
    return at.button[-1].click().run()  # the form's submit button


def signed_out(at):
    return bool(at.title) and at.title[0].value == "Sign in to VisionBoard"


# -- no accounts: the single local user ----------------------------------------------------------


def test_without_accounts_the_local_user_is_an_admin_and_the_sidebar_says_so(home):
    at = app().run()
    assert not at.exception
    assert at.title[0].value == "Runs" and not at.sidebar.text_input  # no name to type
    assert "Single local user" in captions(at) and "(admin)" in captions(at)
    assert auth.local_user()["role"] == "admin"


def test_without_accounts_a_remote_browser_is_turned_away_unless_allowed(home, monkeypatch):
    monkeypatch.setattr(auth, "remote_browser", lambda: True)
    at = app().run()
    assert any("serves only the machine it runs on" in e.value for e in at.error)
    assert not at.title  # no page drawn
    monkeypatch.setenv(auth.ALLOW_ANYONE_ENV, "1")  # `visionboard serve --allow-anyone`
    at = app().run()
    assert at.title[0].value == "Runs"


# -- built-in accounts: the password form, the cookie, signing out ------------------------------


def test_with_accounts_a_signed_out_browser_gets_only_the_sign_in_form(home, ada):
    at = app().run()
    assert not at.exception
    assert signed_out(at)
    assert [t.label for t in at.text_input] == ["User name", "Password"]
    assert at.text_input(key="vb_sign_in_password").proto.type == 1  # a password box
    assert "Signed in" not in captions(at) and "Single local user" not in captions(at)


@pytest.mark.parametrize(
    ("name", "password"), [("ada", "wrong password"), ("nobody", PASSWORD), ("ada", "")]
)
def test_a_wrong_name_or_password_signs_nobody_in(home, db, ada, name, password):
    at = sign_in(app().run(), name, password)
    assert signed_out(at)
    assert any("Wrong user name or password" in e.value for e in at.error)
    assert db.execute("select count(*) from sessions").fetchone()[0] == 0


def test_the_right_password_signs_in_and_gives_the_browser_a_session_cookie(home, db, ada):
    at = sign_in(app().run(), "ada", PASSWORD)
    assert not at.exception
    assert at.title[0].value == "Runs"
    assert "Signed in as **ada** (member)" in captions(at)
    token = at.session_state[auth.TOKEN_KEY]
    assert store.session_user(db, token)["username"] == "ada"
    (script,) = cookie_scripts(at)
    assert f"vb_session={token}; Path=/; Max-Age={store.SESSION_SECONDS}; SameSite=Strict" in script


def test_a_disabled_account_cannot_sign_in(home, db, ada):
    store.set_user_disabled(db, "ada", by=ADMIN)
    store.add_user(db, "bob", "viewer", PASSWORD, by=ADMIN)  # so the server still has sign-in
    at = sign_in(app().run(), "ada", PASSWORD)
    assert signed_out(at)


def test_the_cookie_of_a_reload_or_new_tab_signs_the_user_in_again(home, db, ada, monkeypatch):
    token = store.open_session(db, "ada")
    monkeypatch.setattr(auth, "session_cookie", lambda: token)
    at = app().run()
    assert not at.exception and at.title[0].value == "Runs"
    assert "Signed in as **ada** (member)" in captions(at)
    assert cookie_scripts(at) == []  # the browser's cookie is already right


def test_a_stale_cookie_signs_nobody_in_and_is_removed(home, db, ada, monkeypatch):
    token = store.open_session(db, "ada")
    store.close_session(db, token)
    monkeypatch.setattr(auth, "session_cookie", lambda: token)
    at = app().run()
    assert signed_out(at)
    (script,) = cookie_scripts(at)
    assert "vb_session=; Path=/; Max-Age=0" in script


def test_signing_out_ends_the_session_and_removes_the_cookie(home, db, ada, monkeypatch):
    token = store.open_session(db, "ada")
    monkeypatch.setattr(auth, "session_cookie", lambda: token)
    at = app().run()
    at.sidebar.button(key="vb_sign_out").click().run()
    assert signed_out(at)
    assert store.session_user(db, token) is None  # another tab with this cookie is out too
    assert any("Max-Age=0" in s for s in cookie_scripts(at))
    assert signed_out(app().run())


def test_disabling_an_account_signs_its_open_sessions_out(home, db, ada):
    store.add_user(db, "bob", "viewer", PASSWORD, by=ADMIN)
    at = sign_in(app().run(), "ada", PASSWORD)
    assert "Signed in as **ada**" in captions(at)
    store.set_user_disabled(db, "ada", by=ADMIN)
    at.run()
    assert signed_out(at)


def test_pages_get_the_signed_in_user_from_the_session(home, db, ada):
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state[auth.TOKEN_KEY] = store.open_session(db, "ada")
    at.run()
    at.switch_page("pages/new_run.py").run()
    assert not at.exception
    assert any("Launched as **ada**" in c.value for c in at.caption)


# -- the team's identity provider ---------------------------------------------------------------

OIDC = {
    "auth": {
        "redirect_uri": "http://localhost:8501/oauth2callback",
        "cookie_secret": "a secret",
        "client_id": "visionboard",
        "client_secret": "shh",
        "server_metadata_url": "https://id.example.com/.well-known/openid-configuration",
    }
}


def test_with_only_an_identity_provider_the_sign_in_page_offers_its_button(home):
    at = app(secrets=OIDC).run()
    assert signed_out(at)
    assert [b.label for b in at.button] == ["Sign in with your team's account"]
    assert not at.text_input  # no built-in accounts: no password form
    named = {"auth": {"redirect_uri": "x", "cookie_secret": "s", "google": {"client_id": "g"}}}
    at = app(secrets=named).run()
    assert [b.label for b in at.button] == ["Sign in with google"]


def test_an_identity_provider_user_is_added_as_viewer_on_first_sign_in(home, db):
    at = app(user={"is_logged_in": True, "email": "Carol@Example.com"}, secrets=OIDC).run()
    assert not at.exception and at.title[0].value == "Runs"
    assert "Signed in as **carol@example.com** (viewer)" in captions(at)
    user = store.get_user(db, "carol@example.com")
    assert (user["source"], user["role"], user["email"]) == ("oidc", "viewer", "carol@example.com")
    store.set_user_role(db, "carol@example.com", "member", by=ADMIN)
    at = app(user={"is_logged_in": True, "email": "carol@example.com"}, secrets=OIDC).run()
    assert "(member)" in captions(at)  # the admin's change holds at the next sign-in


def test_the_role_of_new_identity_provider_users_is_configurable(home, db):
    secrets = {**OIDC, "visionboard": {"oidc_role": "member"}}
    app(user={"is_logged_in": True, "email": "dan@example.com"}, secrets=secrets).run()
    assert store.get_user(db, "dan@example.com")["role"] == "member"


def test_an_identity_provider_user_never_takes_over_a_built_in_account(home, db):
    store.add_user(db, "eve@example.com", "admin", PASSWORD, by=ADMIN)
    at = app(user={"is_logged_in": True, "email": "eve@example.com"}, secrets=OIDC).run()
    assert signed_out(at)
    assert any("is a built-in account" in e.value for e in at.error)
    store.get_or_add_oidc_user(db, "fay@example.com")
    store.set_user_disabled(db, "fay@example.com", by=ADMIN)
    at = app(user={"is_logged_in": True, "email": "fay@example.com"}, secrets=OIDC).run()
    assert any("is disabled" in e.value for e in at.error)
