"""Who is using the dashboard: sign-in, the browser's session cookie, signing out.

Three ways in, decided once per run by current_user():
- the team's identity provider (OIDC) through st.login, where .streamlit/secrets.toml has an
  [auth] section: Streamlit keeps that identity in its own cookie (st.user); the account is
  added on first sign-in with the role `[visionboard] oidc_role` names (viewer by default);
- a built-in account (`visionboard users add`): the password form opens a session in the
  store and the browser keeps its token in a cookie, so a reload or a new tab is still signed
  in. Streamlit has no way to set a cookie from Python (st.context.cookies is read-only, and
  holds the cookies of the page's first request), so a tiny script on the page writes it;
- no account at all: the server's single local user, an admin, who may only use it from this
  machine (`visionboard serve` refuses another address; a remote browser is turned away here
  too, unless the admin started it with --allow-anyone).

engine.store decides whose token or password is good; this module only draws and remembers.
"""

from __future__ import annotations

import getpass
import json
import os
from typing import Any

import streamlit as st

from engine import choices, store

SESSION_COOKIE = "vb_session"
# This browser session's token (from the sign-in form, or read once from the cookie). Tests
# sign a user in by putting a token store.open_session gave them here.
TOKEN_KEY = "vb_session_token"
ALLOW_ANYONE_ENV = "VISIONBOARD_ALLOW_ANYONE"
OIDC_ERROR_KEY = "vb_oidc_error"


# -- configuration ------------------------------------------------------------------------------


def secrets_section(name: str) -> dict[str, Any]:
    """A section of .streamlit/secrets.toml; empty when there is none (or no file)."""
    try:
        section = st.secrets.get(name)
    except Exception:  # no secrets file at all
        return {}
    return dict(section) if section else {}


def oidc_providers() -> list[str | None]:
    """The providers [auth] configures: its named sub-sections ([auth.google]), or None for a
    single unnamed one; empty when sign-in through an identity provider is not configured."""
    auth = secrets_section("auth")
    if not auth:
        return []
    named = [key for key, value in auth.items() if hasattr(value, "keys")]
    return named or [None]


def oidc_role() -> str:
    """The role of an OIDC user added at first sign-in: `[visionboard] oidc_role`, or viewer."""
    role = str(secrets_section("visionboard").get("oidc_role") or "viewer")
    choices.get_role(role)  # a typo in the secrets must not make everyone an admin by accident
    return role


def sign_in_configured(db) -> bool:
    """Whether people must sign in: any enabled account, or an identity provider."""
    return store.count_users(db) > 0 or bool(oidc_providers())


# -- who is signed in ---------------------------------------------------------------------------


def local_user() -> dict[str, Any]:
    """The single user of a server without accounts: whoever runs it, an admin."""
    try:
        name = getpass.getuser()
    except Exception:  # no user name in containers without a passwd entry
        name = "local"
    return {"username": name, "role": "admin", "source": "local", "single_user": True}


def oidc_user(db) -> dict[str, Any] | None:
    """The account of the identity provider's signed-in user (added on first sign-in)."""
    try:
        info = st.user.to_dict()
    except Exception:
        return None
    if not info.get("is_logged_in"):
        return None
    email = str(info.get("email") or "").strip().lower()
    username = email or str(info.get("sub") or "")
    try:
        user = store.get_or_add_oidc_user(db, username, email=email, role=oidc_role())
    except ValueError as exc:  # a built-in account's name, or a name the store refuses
        st.session_state[OIDC_ERROR_KEY] = str(exc)
        return None
    if user["disabled"]:
        st.session_state[OIDC_ERROR_KEY] = f"the account {username!r} is disabled: ask an admin"
        return None
    return user


def session_cookie() -> str | None:
    """The session token the browser sent with this page's first request, if any."""
    value = st.context.cookies.get(SESSION_COOKIE)
    # Only a string is a cookie (AppTest's stand-in for a browser answers with mocks).
    return value if isinstance(value, str) and value else None


def current_user(db) -> dict[str, Any] | None:
    """Who uses this browser session ({"username", "role", ...}), or None: nobody signed in
    on a server that has accounts."""
    st.session_state.pop(OIDC_ERROR_KEY, None)
    user = oidc_user(db)
    if user:
        return user
    if TOKEN_KEY not in st.session_state:
        st.session_state[TOKEN_KEY] = session_cookie()  # a reload or a new tab: the cookie
    # Checked every run, so disabling an account or resetting its password signs it out.
    user = store.session_user(db, st.session_state[TOKEN_KEY])
    if user:
        return user
    st.session_state[TOKEN_KEY] = None
    if not sign_in_configured(db):
        return local_user()
    return None


def remote_browser() -> bool:
    """Whether this browser is on another machine (Streamlit says None for localhost)."""
    return isinstance(st.context.ip_address, str)  # AppTest's stand-in answers with a mock


# -- drawing ------------------------------------------------------------------------------------


def sync_cookie() -> None:
    """Make the browser's cookie hold this session's token (or drop a stale one).

    The cookie is written by a script on the page, on this origin only (SameSite=Strict, and
    Secure over https). Scripts can read it (a cookie set from a script cannot be HttpOnly);
    the token alone, not the password, is what it holds, and signing out ends it.
    """
    token = st.session_state.get(TOKEN_KEY)
    if token == session_cookie():
        return
    value, max_age = (token, int(store.SESSION_SECONDS)) if token else ("", 0)
    cookie = json.dumps(f"{SESSION_COOKIE}={value}; Path=/; Max-Age={max_age}; SameSite=Strict")
    st.html(
        "<script>document.cookie = "
        f"{cookie} + (location.protocol === 'https:' ? '; Secure' : '');</script>",
        unsafe_allow_javascript=True,
        width="content",
    )


def sign_in_page(db) -> None:
    """The page a signed-out browser gets: the identity provider's button and/or the form."""
    st.title("Sign in to VisionBoard")
    error = st.session_state.get(OIDC_ERROR_KEY)
    if error:
        st.error(f"Signed in with the identity provider, but {error}.")
        st.button("Sign out of the identity provider", on_click=st.logout, key="vb_oidc_logout")
        return
    for provider in oidc_providers():
        label = f"Sign in with {provider}" if provider else "Sign in with your team's account"
        st.button(
            label,
            key=f"vb_login_{provider or 'default'}",
            on_click=st.login,
            args=(provider,) if provider else (),
            type="primary",
        )
    if not store.count_users(db):
        return  # identity provider only
    with st.form("vb_sign_in"):
        name = st.text_input("User name", key="vb_sign_in_name", autocomplete="username")
        password = st.text_input(
            "Password", type="password", key="vb_sign_in_password", autocomplete="current-password"
        )
        submitted = st.form_submit_button("Sign in")
    if submitted:
        user = store.verify_password(db, name.strip(), password)
        if user is None:
            st.error("Wrong user name or password (or the account is disabled).")
            return
        st.session_state[TOKEN_KEY] = store.open_session(db, user["username"])
        st.rerun()


def sign_out(db) -> None:
    """End this browser's session: its row (the token stops working everywhere) and cookie."""
    store.close_session(db, st.session_state.get(TOKEN_KEY))
    st.session_state[TOKEN_KEY] = None


def require_user(db) -> dict[str, Any]:
    """The signed-in user, after drawing who it is in the sidebar; or the sign-in page, and
    the run stops there."""
    user = current_user(db)
    sync_cookie()
    if user is None:
        sign_in_page(db)
        st.stop()
    if user.get("single_user"):
        if remote_browser() and os.environ.get(ALLOW_ANYONE_ENV) != "1":
            st.error(
                "This VisionBoard has no accounts, so it serves only the machine it runs on. "
                "Its admin can add accounts (`visionboard users add NAME`) to let others in."
            )
            st.stop()
        st.sidebar.caption(
            f"Single local user **{user['username']}** (admin): no sign-in is configured, so "
            "only this machine can use the dashboard. `visionboard users add` adds accounts."
        )
        return user
    st.sidebar.caption(f"Signed in as **{user['username']}** ({user['role']})")
    if user["source"] == "oidc":
        st.sidebar.button("Sign out", key="vb_sign_out", on_click=st.logout)
    else:
        st.sidebar.button("Sign out", key="vb_sign_out", on_click=sign_out, args=(db,))
    return user
