"""Every run in one table: filters, a name search, and actions on the selected rows.

Select rows in the table (the checkbox column), then cancel, resume, re-run, compare or
delete them, or edit the name, tags and note of one. The table follows every user's runs
without a reload: it polls the store's change token every 5 s and reads the runs again only
when it changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from dashboard import state
from engine import store
from engine.choices import TASKS

state.page_setup()

TABLE = "runs_table"
SHOWN = "runs_shown_ids"
FLASH = "runs_flash"
ROWS = "runs_rows"  # ((filters, store.runs_version), table rows, total): the last read
REFRESH_SECONDS = 5
LIMIT = 1000
NO_SELECTION = {"selection": {"rows": [], "columns": [], "cells": []}}


def selected_ids() -> list[int]:
    """Ids of the rows ticked in the table (row positions map to the ids last shown)."""
    shown = st.session_state.get(SHOWN, [])
    table = st.session_state.get(TABLE) or {}
    rows = (table.get("selection") or {}).get("rows", [])
    return [shown[r] for r in rows if r < len(shown)]


def clear_selection() -> None:
    st.session_state[TABLE] = NO_SELECTION
    st.session_state.pop("runs_confirm_delete", None)


def flash(message: str) -> None:
    st.session_state[FLASH] = message


def act(action: str) -> None:
    """Apply an action to the selected runs (a button callback, so the table is redrawn after)."""
    db = state.get_db()
    verbs = {
        "cancel": store.request_cancel,
        "resume": store.resume_run,
        "rerun": store.queue_rerun,
        "delete": store.delete_run,
    }
    done, skipped, trainers, others = [], [], [], []
    for run_id in selected_ids():
        try:
            new_id = verbs[action](db, run_id, by=state.current_user())
        except store.RunNotFound:
            continue  # deleted meanwhile
        except store.PermissionDenied:
            others.append(run_id)  # someone else's: the user's role does not reach it
        except store.TrainerStillRunning as exc:
            trainers.append(str(exc))  # names the pid: not the status rule
        except store.RunStateError:
            skipped.append(run_id)
        else:
            done.append(new_id if action == "rerun" else run_id)
    words = {
        "cancel": "Cancel requested for",
        "resume": "Queued again to resume:",
        "rerun": "Queued new runs",
        "delete": "Deleted",
    }[action]
    message = f"{words} {', '.join(f'#{i}' for i in done) or 'no run'}."
    if skipped:
        message += f" Skipped {', '.join(f'#{i}' for i in skipped)} ({store.action_rule(action)})."
    if others:
        message += f" Not yours to {store.ACTION_WORDS.get(action, action)}: "
        message += f"{', '.join(f'#{i}' for i in others)}."
    message += "".join(f" Not {store.DONE[action]}: {reason}." for reason in trainers)
    flash(message)
    clear_selection()


def save_details(run_id: int) -> None:
    db = state.get_db()
    ss = st.session_state
    name = str(ss.get("runs_edit_name") or "").strip()
    try:
        store.edit_run(
            db,
            run_id,
            by=state.current_user(),
            name=name or None,
            tags=str(ss.get("runs_edit_tags") or "").split(","),
            note=str(ss.get("runs_edit_note") or ""),
        )
    except (store.RunNotFound, store.RunStateError, store.PermissionDenied) as exc:
        flash(f"Not saved: {exc}.")
        return
    flash(f"Saved the details of run #{run_id}.")


def table_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        epoch, epochs = state.progress(run)
        summary = run["summary"] or {}
        rows.append(
            {
                "id": run["id"],
                "status": store.status_label(run),
                "progress": state.progress_share(run),
                "epoch": state.progress_text(run),
                "metric": state.metric_label(run),
                "best": summary.get("best_metric"),
                "name": run["name"],
                "task": run["task"],
                "model": run["model"],
                "dataset": Path(run["dataset"] or "").name or run["dataset"],
                "user": run["user"],
                "created": state.format_time(run["created_at"]),
                "duration": state.format_duration(state.duration_seconds(run)),
                "tags": ", ".join(run["tags"] or []),
                "note": run["note"] or "",
                "open": f"run?run={run['id']}",
            }
        )
    return rows


COLUMNS = {
    "id": st.column_config.NumberColumn("id", width="small"),
    "progress": st.column_config.ProgressColumn(
        "progress", min_value=0.0, max_value=1.0, format="percent", help="Epochs done of the limit"
    ),
    "epoch": st.column_config.TextColumn("epoch", help="Epoch x of y"),
    "best": st.column_config.NumberColumn("best", format="%.4f", help="Best test metric"),
    "open": st.column_config.LinkColumn("open", display_text="open"),
}


def draw_filters(db) -> dict[str, Any]:
    cols = st.columns([2, 1, 2, 1, 2])
    status = cols[0].multiselect("Status", list(store.STATUSES), key="runs_status")
    task = cols[1].selectbox(
        "Task", [None, *TASKS], key="runs_task", format_func=lambda t: t or "all"
    )
    models = store.distinct_values(db, "model")
    model = cols[2].selectbox(
        "Model", [None, *models], key="runs_model", format_func=lambda m: m or "all"
    )
    tags = store.all_tags(db)
    tag = cols[3].selectbox("Tag", [None, *tags], key="runs_tag", format_func=lambda t: t or "all")
    search = cols[4].text_input("Search by name", key="runs_search")
    return {"status": status, "task": task, "model": model, "tag": tag, "search": search.strip()}


def read_table(db, filters: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """(table rows, total runs), read again only when the filters or store.runs_version
    changed: every user's queued, finished or edited run shows, and a poll that finds
    nothing new costs one small query."""
    version = store.runs_version(db)
    if version["running"]:
        # Whoever looks records the end of a run whose worker is gone (which changes the token).
        if store.settle_quietly(db):
            version = store.runs_version(db)
    cached = st.session_state.get(ROWS)
    if cached is None or cached[0] != (filters, version):
        runs = store.list_runs(db, limit=LIMIT, **filters)
        cached = ((filters, version), table_rows(runs), store.count_runs(db))
        st.session_state[ROWS] = cached
    return cached[1], cached[2]


def draw_table(filters: dict[str, Any]) -> None:
    rows, total = read_table(state.get_db(), filters)
    st.session_state[SHOWN] = [r["id"] for r in rows]
    if not rows:
        st.info("No runs match." if total else "No runs yet: launch one from the New run page.")
        return
    note = f"{len(rows)} of {total} runs" + (
        f" (newest {LIMIT} shown)" if len(rows) == LIMIT else ""
    )
    st.caption(note + ". Tick rows to act on them.")
    st.dataframe(
        rows,
        key=TABLE,
        on_select="rerun",
        selection_mode="multi-row",
        hide_index=True,
        column_config=COLUMNS,
        height=min(600, 35 * len(rows) + 42),
    )
    # A new selection changes the actions below, outside this fragment: redraw the page.
    picked = tuple(selected_ids())
    if st.session_state.get("runs_last_selection", ()) != picked:
        st.session_state["runs_last_selection"] = picked
        if st.session_state.get("runs_fragment_rerun"):
            st.rerun()


def permitted(db, ids: list[int]) -> set[str]:
    """The actions the user's role and ownership allow on at least one selected run (the
    status rule is applied per run when acting: a run it refuses is skipped and named)."""
    user = state.current_user()
    owners = [run["user"] or "" for run in (store.get_run(db, i) for i in ids) if run]
    return {a for a in store.ACTIONS if any(store.may(user, a, owner) for owner in owners)}


def draw_actions() -> None:
    ids = selected_ids()
    db = state.get_db()
    if not ids:
        st.caption("Select runs in the table to open, compare or act on them.")
        return
    st.write(f"**Selected:** {', '.join(f'#{i}' for i in ids)}")
    may = permitted(db, ids)
    cols = st.columns(7)
    if cols[0].button("Open", key="runs_open"):
        st.switch_page("pages/run.py", query_params={"run": ids[0]})
    if cols[1].button("Compare", key="runs_compare", disabled=len(ids) < 2):
        st.switch_page("pages/compare.py", query_params={"runs": ",".join(map(str, ids))})
    if "cancel" in may:
        cols[2].button("Cancel", key="runs_cancel", on_click=act, args=("cancel",))
    if "resume" in may:
        cols[3].button("Resume", key="runs_resume", on_click=act, args=("resume",))
    if "rerun" in may:
        cols[4].button(
            "Re-run",
            key="runs_rerun",
            on_click=act,
            args=("rerun",),
            help="Queue new runs with the same configs.",
        )
    if "delete" in may:
        confirm = cols[5].checkbox(
            f"Yes, delete {len(ids)}",
            key="runs_confirm_delete",
            help="Deleting removes the metrics and the run folder (weights, log).",
        )
        cols[6].button(
            "Delete",
            key="runs_delete",
            on_click=act,
            args=("delete",),
            disabled=not confirm,
            type="primary",
        )
    if not may:
        st.caption("Read only: your role lets you look at these runs, not change them.")
    if len(ids) == 1 and "edit" in may:
        draw_details(db, ids[0])


def draw_details(db, run_id: int) -> None:
    run = store.get_run(db, run_id)
    if run is None:
        return
    ss = st.session_state
    if ss.get("runs_edit_for") != run_id:
        ss["runs_edit_for"] = run_id
        ss["runs_edit_name"] = run["name"]
        ss["runs_edit_tags"] = ", ".join(run["tags"])
        ss["runs_edit_note"] = run["note"] or ""
    with st.expander(f"Name, tags and note of #{run_id}", expanded=True):
        st.text_input("Name", key="runs_edit_name")
        st.text_input("Tags (comma-separated)", key="runs_edit_tags")
        st.text_area("Note", key="runs_edit_note", height=80)
        st.button("Save", key="runs_save", on_click=save_details, args=(run_id,))


st.title("Runs")
if FLASH in st.session_state:
    st.success(st.session_state.pop(FLASH))
filters = draw_filters(state.get_db())
if st.session_state.get("runs_last_filters") != filters:
    # Row positions of a selection mean nothing in a differently filtered table.
    st.session_state["runs_last_filters"] = filters
    clear_selection()
st.session_state["runs_fragment_rerun"] = False
# Always polling, for every user's runs (not only while one was active at load): each poll
# asks the store for its change token and reads the runs only when it changed.
st.fragment(run_every=REFRESH_SECONDS)(draw_table)(filters)
st.session_state["runs_fragment_rerun"] = True
draw_actions()
