"""Admin (admins only): the people who use this VisionBoard, and the audit trail.

Users: add a built-in account, change a role, disable or enable an account. The store's user
verbs check that the acting user is an admin and record each change in the audit trail, the
same as `visionboard users`. The audit trail: every change made through the store (the
dashboard, the CLI), newest first, filtered by user, action, target and day.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, time
from typing import Any

import streamlit as st

from dashboard import state
from engine import store
from engine.choices import ROLES

state.page_setup()

FLASH = "admin_flash"
AUDIT_LIMIT = 1000


def flash(kind: str, message: str) -> None:
    st.session_state[FLASH] = (kind, message)


# -- users (button callbacks: the table is redrawn after) ---------------------------------------


def add_user() -> None:
    ss = st.session_state
    name = str(ss.get("admin_new_name") or "").strip()
    try:
        store.add_user(
            state.get_db(),
            name,
            ss["admin_new_role"],
            str(ss.get("admin_new_password") or ""),
            email=str(ss.get("admin_new_email") or "").strip(),
            by=state.current_user(),
        )
    except (ValueError, store.PermissionDenied) as exc:  # UserError, a weak password
        flash("error", f"Not added: {exc}.")
        return
    flash("success", f"Added {name} ({ss['admin_new_role']}).")


def change_role(username: str) -> None:
    role = st.session_state["admin_role"]
    try:
        store.set_user_role(state.get_db(), username, role, by=state.current_user())
    except (ValueError, store.PermissionDenied) as exc:
        flash("error", f"Not changed: {exc}.")
        return
    flash("success", f"{username} is now {role}.")


def set_disabled(username: str, disabled: bool) -> None:
    try:
        store.set_user_disabled(state.get_db(), username, disabled, by=state.current_user())
    except (ValueError, store.PermissionDenied) as exc:
        flash("error", f"Not changed: {exc}.")
        return
    flash("success", f"{username} is {'disabled' if disabled else 'enabled'}.")


def user_rows(users: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "user": u["username"],
            "role": u["role"],
            "source": u["source"],
            "status": "disabled" if u["disabled"] else "enabled",
            "email": u["email"] or "",
            "created": state.format_time(u["created_at"]),
        }
        for u in users
    ]


def draw_users(db, me: dict[str, Any]) -> None:
    st.header("Users")
    users = store.list_users(db)
    if users:
        st.dataframe(user_rows(users), hide_index=True, key="admin_users_table")
    else:
        st.info(
            "No accounts yet: this server runs as its single local user, from this machine "
            "only. Add accounts so that the team can sign in."
        )
    # An admin's own account stays out of reach here: one click must not lock the last admin out.
    others = {u["username"]: u for u in users if u["username"] != me["username"]}
    if others:
        ss = st.session_state
        cols = st.columns([2, 2, 1, 1], vertical_alignment="bottom")
        picked = cols[0].selectbox("User", list(others), key="admin_user")
        user = others[picked]
        if ss.get("admin_role_for") != picked:
            ss["admin_role_for"] = picked
            ss["admin_role"] = user["role"]
        cols[1].selectbox("Role", list(ROLES), key="admin_role")
        cols[2].button(
            "Change role",
            key="admin_change_role",
            on_click=change_role,
            args=(picked,),
            disabled=ss["admin_role"] == user["role"],
        )
        cols[3].button(
            "Enable" if user["disabled"] else "Disable",
            key="admin_toggle_user",
            on_click=set_disabled,
            args=(picked, not user["disabled"]),
            help="A disabled account is signed out at once; its runs and datasets stay.",
        )
    with st.expander("Add a user", expanded=not users):
        with st.form("admin_add_user", clear_on_submit=True):
            cols = st.columns(2)
            cols[0].text_input("User name", key="admin_new_name")
            cols[1].selectbox(
                "Role",
                list(ROLES),
                index=list(ROLES).index("member"),
                key="admin_new_role",
                format_func=lambda r: f"{r}: {ROLES[r].description}",
            )
            cols[0].text_input("Password", type="password", key="admin_new_password")
            cols[1].text_input("Email (optional)", key="admin_new_email")
            st.form_submit_button("Add user", on_click=add_user)


# -- audit trail ----------------------------------------------------------------------------------


def audit_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        stamp = state.parse_time(r["at"])
        out.append(
            {
                "at": stamp.astimezone().strftime("%Y-%m-%d %H:%M:%S") if stamp else r["at"],
                "user": r["username"],
                "action": r["action"],
                "target": f"{r['target_kind']} {r['target_id']}",
                "detail": json.dumps(r["detail"]) if r["detail"] else "",
            }
        )
    return out


def draw_audit(db, me: dict[str, Any]) -> None:
    st.header("Audit trail")
    cols = st.columns([2, 2, 1, 2, 2])
    every = {"format_func": lambda v: v or "all"}
    username = cols[0].selectbox(
        "User", [None, *store.audit_values(db, "username")], key="audit_user", **every
    )
    action = cols[1].selectbox(
        "Action", [None, *store.audit_values(db, "action")], key="audit_action", **every
    )
    kind = cols[2].selectbox("Target", [None, *store.AUDIT_TARGET_KINDS], key="audit_kind", **every)
    target = cols[3].text_input("Run id, dataset, model or user", key="audit_target")
    day = cols[4].date_input("Since", value=None, key="audit_since")
    since = None
    if day:  # the day starts at local midnight
        since = datetime.combine(day, time()).astimezone().astimezone(UTC).isoformat()
    rows = store.list_audit(
        db,
        by=me,
        since=since,
        limit=AUDIT_LIMIT,
        username=username,
        action=action,
        target_kind=kind,
        target_id=target.strip() or None,
    )
    if not rows:
        st.info("Nothing recorded matches.")
        return
    more = f" (the newest {AUDIT_LIMIT})" if len(rows) == AUDIT_LIMIT else ""
    st.caption(f"{len(rows)} record(s), newest first{more}.")
    st.dataframe(audit_rows(rows), hide_index=True, key="admin_audit_table")


# -- page -------------------------------------------------------------------------------------------

st.title("Admin")
me = state.current_user()
if not store.may(me, "manage_users") and not store.may(me, "read_audit"):
    st.error(f"Admins only: you are signed in as {me['username']} ({me['role']}).")
    st.stop()
if FLASH in st.session_state:
    kind, message = st.session_state.pop(FLASH)
    getattr(st, kind)(message)
db = state.get_db()
if store.may(me, "manage_users"):
    draw_users(db, me)
if store.may(me, "read_audit"):
    draw_audit(db, me)
