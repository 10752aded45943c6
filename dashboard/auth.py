"""Who is using the dashboard: sign-in, the browser's session cookie, signing out.

Three ways in, decided once per run by current_user():
- the team's identity provider (OIDC) through st.login, where .streamlit/secrets.toml has an
  [auth] section: Streamlit keeps that identity in its own cookie (st.user); the account is
  added on first sign-in with the role `[visionboard] oidc_role` names (viewer by default),
  if its email is verified and on the `allowed_domains` / `allowed_emails` lists; with no
  list it is added disabled, for an admin to enable, unless `auto_approve = true`;
- a built-in account (`visionboard users add`): the password form opens a session in the
  store and the browser keeps its token in a cookie, so a reload or a new tab is still signed
  in. Streamlit has no way to set a cookie from Python (st.context.cookies is read-only, and
  holds the cookies of the page's first request), so a tiny script on the page writes it;
- no account at all: the server's single local user, an admin, who may only use it from this
  machine (`visionboard serve` refuses another address; here, a browser that is not proven
  to be on this machine, reached directly, is turned away too, unless the admin started it
  with --allow-anyone).

engine.store decides whose token or password is good; this module only draws and remembers.
"""

from __future__ import annotations

import getpass
import ipaddress
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import streamlit as st

from engine import choices, sign_in, store

SESSION_COOKIE = "vb_session"
# This browser session's token (from the sign-in form, or read once from the cookie). Tests
# sign a user in by putting a token store.open_session gave them here.
TOKEN_KEY = "vb_session_token"
ALLOW_ANYONE_ENV = "VISIONBOARD_ALLOW_ANYONE"
OIDC_ERROR_KEY = "vb_oidc_error"
RUN_USER_KEY = "vb_run_user"  # who this run's browser is, while the router runs (run_user)


# -- configuration ------------------------------------------------------------------------------


def secrets_section(name: str) -> dict[str, Any]:
    """A section of .streamlit/secrets.toml; empty when there is none (or no file)."""
    try:
        section = st.secrets.get(name)
    except Exception:  # no secrets file at all
        return {}
    return dict(section) if section else {}


def auth_secrets() -> dict[str, Any]:
    """What engine.sign_in reads of st.secrets: its [auth] section, when there is one (even an
    empty one, which the rule must see to say what it misses)."""
    try:
        auth = st.secrets.get("auth")
    except Exception:  # no secrets file at all
        return {}
    return {} if auth is None else {"auth": auth}


def oidc_providers() -> list[str | None]:
    """The providers st.login can use (engine.sign_in): a name, or None for [auth]'s own."""
    return sign_in.oidc_providers(auth_secrets())


def oidc_role() -> str:
    """The role of an OIDC user added at first sign-in: `[visionboard] oidc_role`, or viewer."""
    role = str(secrets_section("visionboard").get("oidc_role") or "viewer")
    choices.get_role(role)  # a typo in the secrets must not make everyone an admin by accident
    return role


def oidc_policy() -> dict[str, Any]:
    """Who the identity provider may let in: `[visionboard] allowed_domains` and
    `allowed_emails` (lists), and `auto_approve` (whether new accounts start enabled where no
    list is configured; otherwise an admin enables each)."""
    section = secrets_section("visionboard")

    def listed(key: str) -> list[str]:
        value = section.get(key) or []
        return [value] if isinstance(value, str) else [str(v) for v in value]

    domains, emails = listed("allowed_domains"), listed("allowed_emails")
    auto = section.get("auto_approve", False)
    if not isinstance(auto, bool):  # "false" in quotes must not approve everyone
        raise ValueError(f"[visionboard] auto_approve = {auto!r}: expected true or false")
    return {"allowed_domains": domains, "allowed_emails": emails, "auto_approve": auto}


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
    try:
        policy = oidc_policy()
        store.check_oidc_identity(
            email, info.get("email_verified"), policy["allowed_domains"], policy["allowed_emails"]
        )
        username = store.oidc_username(email, info.get("sub") or "")
        # An allow-list approves whom it lets in; without one an admin approves each account.
        approved = policy["auto_approve"] or policy["allowed_domains"] or policy["allowed_emails"]
        user = store.get_or_add_oidc_user(
            db, username, email=email, role=oidc_role(), disabled=not approved
        )
    except ValueError as exc:  # refused, a built-in account's name, or bad [visionboard] keys
        st.session_state[OIDC_ERROR_KEY] = str(exc)
        return None
    if user["disabled"]:
        # (Every run asks again, so this cannot tell "just added" apart.)
        st.session_state[OIDC_ERROR_KEY] = (
            f"the account {username!r} is disabled until an admin enables it (Admin page, or "
            f"`visionboard users enable {username}`)"
            + ("" if approved else "; here every new account waits for that")
        )
        return None
    return user


def session_cookie() -> str | None:
    """The session token the browser sent with this page's first request, if any."""
    value = st.context.cookies.get(SESSION_COOKIE)
    # Only a string is a cookie (AppTest's stand-in for a browser answers with mocks).
    return value if isinstance(value, str) and value else None


def current_user(db) -> dict[str, Any] | None:
    """Who uses this browser session ({"username", "role", ...}), or None: nobody signed in
    on a server that has accounts. Worked out once a run inside the router's run_user block,
    where the frame and every page ask; afresh for each call outside it (the callbacks of
    widgets, which run before the router; a fragment's rerun; a page run on its own)."""
    if RUN_USER_KEY in st.session_state:
        return st.session_state[RUN_USER_KEY]
    return find_user(db)


@contextmanager
def run_user(db) -> Iterator[dict[str, Any] | None]:
    """Who uses this browser session (current_user), worked out once for the rest of this run
    of the router, and forgotten when it ends, however it ends (st.stop, st.rerun, an error):
    the next run asks the store again, so signing out, a new role or a disabled account takes
    effect at the next run, in its callbacks too."""
    user = find_user(db)
    st.session_state[RUN_USER_KEY] = user
    try:
        yield user
    finally:
        st.session_state.pop(RUN_USER_KEY, None)


def find_user(db) -> dict[str, Any] | None:
    """current_user, asked of the identity provider, the session token and the store."""
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
    if not sign_in.sign_in_configured(db, auth_secrets()):
        return local_user()
    return None


# Headers a reverse proxy adds: behind one, every visitor connects from this machine.
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")


def client_context() -> Any:
    """This session's browser connection (its TCP peer `remote_ip` and request `headers`), or
    None when there is none (AppTest, or no runtime). st.context.ip_address cannot be used:
    it says None both for localhost and for an unknown peer."""
    from streamlit import runtime
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    if ctx is None or not runtime.exists():
        return None
    client = runtime.get_instance().get_client(ctx.session_id)
    return getattr(client, "client_context", None)


def not_local_reason(client: Any) -> str | None:
    """Why a browser connection is not proven to come from this machine directly, or None
    when it is: a loopback peer, a loopback Host, and no proxy's headers. Fails closed: no
    connection, no peer address or no Host is a reason."""
    if client is None:
        return "the connection is unknown"
    peer = getattr(client, "remote_ip", None)
    try:
        if not peer or not ipaddress.ip_address(peer).is_loopback:
            return f"the browser connects from {peer or 'an unknown address'}"
    except ValueError:
        return f"the browser connects from {peer!r}"
    headers = {str(k).lower(): str(v) for k, v in (getattr(client, "headers", None) or [])}
    proxied = sorted(h for h in PROXY_HEADERS if h in headers)
    if proxied:
        return f"it came through a proxy ({', '.join(proxied)} headers)"
    host = headers.get("host", "")
    if not sign_in.is_loopback_host(host):
        return f"it was sent to {host or 'no host'!r}, not localhost"
    return None


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
    problem = sign_in.oidc_problem(auth_secrets())
    if problem:
        st.warning(f"The identity provider: {problem}.")
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
        try:
            user = store.verify_password(db, name.strip(), password)
        except store.SignInLocked as exc:
            st.error(f"Not signed in: {exc}.")
            return
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
        reason = (
            None if os.environ.get(ALLOW_ANYONE_ENV) == "1" else not_local_reason(client_context())
        )
        if reason:
            st.error(
                "This VisionBoard has no accounts, so it serves only the machine it runs on, "
                f"opened at localhost without a proxy; here {reason}. Its admin can add accounts "
                "(`visionboard users add NAME`) to let others in."
            )
            st.stop()
        st.sidebar.caption(
            f"Single local user **{user['username']}** (admin): no sign-in is configured, so "
            "only this machine can use the dashboard. `visionboard users add` adds accounts."
        )
        problem = sign_in.oidc_problem(auth_secrets())
        if problem:
            st.sidebar.warning(f"The identity provider: {problem}.")
        return user
    st.sidebar.caption(f"Signed in as **{user['username']}** ({user['role']})")
    if user["source"] == "oidc":
        st.sidebar.button("Sign out", key="vb_sign_out", on_click=st.logout)
    else:
        st.sidebar.button("Sign out", key="vb_sign_out", on_click=sign_out, args=(db,))
    return user
