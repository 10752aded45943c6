"""Signing in to the dashboard (dashboard.auth) with AppTest: the single local user of a server
without accounts, the password form, the session cookie of a reload or a new tab, signing out,
and the team's identity provider (st.user).

AppTest cannot send cookies, so the cookie a browser would send is put in place of
auth.session_cookie(); tests/test_browser.py drives the real cookie in Chromium.
"""

from pathlib import Path
from types import SimpleNamespace

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import auth
from engine import store

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
ADMIN = {"username": "root", "role": "admin"}
PASSWORD = "correct horse"
REAL_CLIENT_CONTEXT = auth.client_context  # tests run as a local browser (conftest.py)


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


def browser(ip="127.0.0.1", **headers):
    """A browser connection as Streamlit's client context holds it."""
    return SimpleNamespace(
        remote_ip=ip, headers=[(k.replace("_", "-"), v) for k, v in headers.items()]
    )


@pytest.mark.parametrize(
    "client",
    [
        None,  # no connection at all
        browser(ip="192.168.1.7", Host="localhost:8501"),
        browser(ip=None, Host="localhost:8501"),  # e.g. a unix socket: nobody knows who
        browser(ip="", Host="localhost:8501"),
        browser(Host="visionboard.example.com"),  # a proxy on this machine, or DNS rebinding
        browser(Host="10.0.0.5:8501"),
        browser(),  # no Host at all
        browser(Host="localhost:8501", X_Forwarded_For="203.0.113.9"),
        browser(Host="localhost", Forwarded="for=203.0.113.9"),
        browser(Host="127.0.0.1:8501", x_real_ip="203.0.113.9"),
    ],
)
def test_a_browser_not_proven_local_is_not_local(client):
    assert auth.not_local_reason(client)


@pytest.mark.parametrize(
    ("ip", "host"),
    [("127.0.0.1", "localhost:8501"), ("::1", "[::1]:8501"), ("127.0.0.1", "127.0.0.1"),
     ("::1", "LOCALHOST")],
)  # fmt: skip
def test_a_browser_on_this_machine_opened_at_localhost_is_local(ip, host):
    assert auth.not_local_reason(browser(ip=ip, Host=host)) is None


def test_outside_a_streamlit_server_there_is_no_connection_to_trust():
    assert REAL_CLIENT_CONTEXT() is None
    assert auth.not_local_reason(REAL_CLIENT_CONTEXT()) == "the connection is unknown"


@pytest.mark.parametrize(
    "client",
    [
        None,
        browser(ip="192.168.1.7", Host="localhost:8501"),
        browser(Host="localhost:8501", X_Forwarded_For="203.0.113.9"),
    ],
)
def test_without_accounts_a_browser_not_proven_local_is_turned_away_unless_allowed(
    home, monkeypatch, client
):
    monkeypatch.setattr(auth, "client_context", lambda: client)
    at = app().run()
    assert any("serves only the machine it runs on" in e.value for e in at.error)
    assert any("visionboard users add" in e.value for e in at.error)
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


def test_after_five_wrong_passwords_the_name_is_locked_out_for_a_while(home, db, ada):
    at = app().run()
    for _ in range(store.MAX_SIGN_IN_FAILURES):
        at = sign_in(at, "ada", "wrong password")
        assert any("Wrong user name or password" in e.value for e in at.error)
    at = sign_in(at, "ada", PASSWORD)  # even the right password, while locked
    assert signed_out(at)
    assert any("too many wrong passwords for 'ada': try again after" in e.value for e in at.error)
    assert db.execute("select count(*) from sessions").fetchone()[0] == 0


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
    google = {"client_id": "g", "client_secret": "s", "server_metadata_url": "https://g.test"}
    named = {"auth": {"redirect_uri": "x", "cookie_secret": "s", "google": google}}
    at = app(secrets=named).run()
    assert [b.label for b in at.button] == ["Sign in with google"]


APPROVE = {**OIDC, "visionboard": {"auto_approve": True}}


def test_without_an_allow_list_a_new_identity_provider_user_waits_for_an_admin(home, db):
    at = app(user={"is_logged_in": True, "email": "carol@example.com"}, secrets=OIDC).run()
    assert signed_out(at)
    assert any(
        "'carol@example.com' is disabled until an admin enables it" in e.value
        and "every new account waits for that" in e.value
        for e in at.error
    )
    assert store.get_user(db, "carol@example.com")["disabled"]
    store.set_user_disabled(db, "carol@example.com", False, by=ADMIN)
    at = app(user={"is_logged_in": True, "email": "carol@example.com"}, secrets=OIDC).run()
    assert "Signed in as **carol@example.com** (viewer)" in captions(at)


def test_an_identity_provider_user_is_added_as_viewer_on_first_sign_in(home, db):
    at = app(user={"is_logged_in": True, "email": "Carol@Example.com"}, secrets=APPROVE).run()
    assert not at.exception and at.title[0].value == "Runs"
    assert "Signed in as **carol@example.com** (viewer)" in captions(at)
    user = store.get_user(db, "carol@example.com")
    assert (user["source"], user["role"], user["email"]) == ("oidc", "viewer", "carol@example.com")
    store.set_user_role(db, "carol@example.com", "member", by=ADMIN)
    at = app(user={"is_logged_in": True, "email": "carol@example.com"}, secrets=APPROVE).run()
    assert "(member)" in captions(at)  # the admin's change holds at the next sign-in


def test_the_role_of_new_identity_provider_users_is_configurable(home, db):
    secrets = {**OIDC, "visionboard": {"oidc_role": "member", "auto_approve": True}}
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


def test_an_unverified_email_signs_nobody_in_not_even_into_an_existing_account(home, db):
    store.get_or_add_oidc_user(db, "gus@example.com", email="gus@example.com", role="admin")
    for email in ("gus@example.com", "new@example.com"):
        user = {"is_logged_in": True, "email": email, "email_verified": False}
        at = app(user=user, secrets=APPROVE).run()
        assert signed_out(at)
        assert any(f"has not verified the email '{email}'" in e.value for e in at.error)
    assert store.get_user(db, "new@example.com") is None
    user = {"is_logged_in": True, "email": "gus@example.com", "email_verified": True}
    assert "Signed in as **gus@example.com** (admin)" in captions(
        app(user=user, secrets=OIDC).run()
    )


def test_the_allow_lists_let_in_only_their_domains_and_emails(home, db):
    lists = {"allowed_domains": ["example.com"], "allowed_emails": ["pat@partner.org"]}
    secrets = {**OIDC, "visionboard": lists}
    for email in ("ann@example.com", "pat@partner.org"):  # approved by the list: enabled
        at = app(user={"is_logged_in": True, "email": email}, secrets=secrets).run()
        assert f"Signed in as **{email}** (viewer)" in captions(at)
    for email in ("eve@evil.com", "ann@example.com.evil.com", "pat@example.org"):
        at = app(user={"is_logged_in": True, "email": email}, secrets=secrets).run()
        assert signed_out(at)
        assert any(f"'{email}' is not allowed on this VisionBoard" in e.value for e in at.error)
        assert store.get_user(db, email) is None
    at = app(user={"is_logged_in": True, "sub": "auth0|42"}, secrets=secrets).run()
    assert any("without an email" in e.value for e in at.error)  # nothing to check: refused


def test_a_user_without_an_email_is_named_after_their_subject_id(home, db):
    at = app(user={"is_logged_in": True, "sub": "google-oauth2|123"}, secrets=APPROVE).run()
    name = store.oidc_username("", "google-oauth2|123")
    assert name.startswith("google-oauth2-123-")
    assert f"Signed in as **{name}** (viewer)" in captions(at)
    assert store.get_user(db, name)["source"] == "oidc"


def test_a_quoted_auto_approve_is_refused_rather_than_read_as_true(home, db):
    secrets = {**OIDC, "visionboard": {"auto_approve": "false"}}
    at = app(user={"is_logged_in": True, "email": "hal@example.com"}, secrets=secrets).run()
    assert any("auto_approve = 'false': expected true or false" in e.value for e in at.error)
    assert store.get_user(db, "hal@example.com") is None
