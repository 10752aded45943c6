"""API tokens: the signed-in user's tokens for the automation API (engine/api/automation.py).

Scripts send a token as `Authorization: Bearer <token>`; it acts as its user with the user's
role (a viewer's token reads). A new token is shown once, right after it is made: only its
SHA-256 is kept. Revoking stops it at once. The same verbs as `visionboard tokens`; on a
server without accounts the tokens are its local admin's and stop working once accounts
are added.
"""

from __future__ import annotations

import streamlit as st

from dashboard import state
from engine import store

state.page_setup()

NEW_TOKEN = "tokens_new"  # (id, token) of the token just made: shown once, then forgotten
FLASH = "tokens_flash"


def create_token() -> None:
    me = state.current_user()
    try:
        token, record = store.add_api_token(
            state.get_db(),
            me["username"],
            str(st.session_state.get("tokens_name") or ""),
            by=me,
            local_admin=bool(me.get("single_user")),
        )
    except (ValueError, store.PermissionDenied) as exc:
        st.session_state[FLASH] = ("error", f"No token made: {exc}.")
        return
    st.session_state[NEW_TOKEN] = (record["id"], token)


def revoke_token(token_id: str) -> None:
    try:
        store.revoke_api_token(state.get_db(), token_id, by=state.current_user())
    except (ValueError, store.PermissionDenied) as exc:
        st.session_state[FLASH] = ("error", f"Not revoked: {exc}.")
        return
    st.session_state[FLASH] = ("success", f"Token {token_id} revoked: it no longer works.")


st.title("API tokens")
me = state.current_user()
st.caption(
    f"Tokens let scripts use the automation API as **{me['username']}** ({me['role']}): "
    "`visionboard serve` starts it on port 8502 (its reference at `/docs`); a script sends "
    "`Authorization: Bearer <token>`."
    + (
        " This server has no accounts: the tokens are its local admin's, and stop working "
        "once accounts are added."
        if me.get("single_user")
        else ""
    )
)
if FLASH in st.session_state:
    kind, message = st.session_state.pop(FLASH)
    getattr(st, kind)(message)
if NEW_TOKEN in st.session_state:
    token_id, token = st.session_state.pop(NEW_TOKEN)
    st.success(f"Token {token_id} made. Copy it now: it is shown this once.")
    st.code(token, language=None)

with st.form("tokens_add", clear_on_submit=True):
    st.text_input("Name (to recognise it by)", key="tokens_name", max_chars=100)
    st.form_submit_button("Make a token", on_click=create_token)

tokens = store.list_api_tokens(state.get_db(), me["username"], by=me)
if not tokens:
    st.info("No token yet.")
else:
    st.dataframe(
        [
            {
                "id": t["id"],
                "name": t["name"],
                "created": state.format_time(t["created_at"]),
                "last used": state.format_time(t["last_used_at"]),
                "status": "revoked" if t["revoked"] else "active",
            }
            for t in tokens
        ],
        hide_index=True,
        key="tokens_table",
    )
    active = [t["id"] for t in tokens if not t["revoked"]]
    if active:
        cols = st.columns([3, 1], vertical_alignment="bottom")
        names = {t["id"]: f"{t['id']} {t['name']}".strip() for t in tokens}
        picked = cols[0].selectbox("Token", active, key="tokens_pick", format_func=names.get)
        cols[1].button("Revoke", key="tokens_revoke", on_click=revoke_token, args=(picked,))
