"""Every run in one table: filters, a name search, and actions on the selected rows.

Select rows in the table (the checkbox column), then cancel, resume, re-run, compare or
delete them, or edit the name, tags and note of one. The table refreshes every 5 s while
a run is queued or running.
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
        "rerun": lambda db, run_id: store.queue_rerun(db, run_id, user=state.current_user()),
        "delete": store.delete_run,
    }
    done, skipped, trainers = [], [], []
    for run_id in selected_ids():
        try:
            new_id = verbs[action](db, run_id)
        except store.RunNotFound:
            continue  # deleted meanwhile
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
    message += "".join(f" Not {store.DONE[action]}: {reason}." for reason in trainers)
    flash(message)
    clear_selection()


def save_details(run_id: int) -> None:
    db = state.get_db()
    ss = st.session_state
    name = str(ss.get("runs_edit_name") or "").strip()
    try:
        if name:
            store.rename_run(db, run_id, name)
        store.set_tags(db, run_id, str(ss.get("runs_edit_tags") or "").split(","))
        store.set_note(db, run_id, str(ss.get("runs_edit_note") or ""))
    except (store.RunNotFound, store.RunStateError) as exc:
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
                "progress": epoch / epochs if epochs else 0.0,
                "epoch": f"{epoch} / {epochs}" if epochs else "",
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


def draw_table(filters: dict[str, Any]) -> None:
    db = state.get_db()
    store.settle_orphans(db)  # whoever looks records the end of a run whose worker is gone
    runs = store.list_runs(db, limit=LIMIT, **filters)
    total = store.count_runs(db)
    st.session_state[SHOWN] = [r["id"] for r in runs]
    if not runs:
        st.info("No runs match." if total else "No runs yet: launch one from the New run page.")
        return
    note = f"{len(runs)} of {total} runs" + (
        f" (newest {LIMIT} shown)" if len(runs) == LIMIT else ""
    )
    st.caption(note + ". Tick rows to act on them.")
    st.dataframe(
        table_rows(runs),
        key=TABLE,
        on_select="rerun",
        selection_mode="multi-row",
        hide_index=True,
        column_config=COLUMNS,
        height=min(600, 35 * len(runs) + 42),
    )
    # A new selection changes the actions below, outside this fragment: redraw the page.
    picked = tuple(selected_ids())
    if st.session_state.get("runs_last_selection", ()) != picked:
        st.session_state["runs_last_selection"] = picked
        if st.session_state.get("runs_fragment_rerun"):
            st.rerun()


def draw_actions() -> None:
    ids = selected_ids()
    db = state.get_db()
    if not ids:
        st.caption("Select runs in the table to cancel, resume, re-run, compare or delete them.")
        return
    st.write(f"**Selected:** {', '.join(f'#{i}' for i in ids)}")
    cols = st.columns(7)
    if cols[0].button("Open", key="runs_open"):
        st.switch_page("pages/run.py", query_params={"run": ids[0]})
    if cols[1].button("Compare", key="runs_compare", disabled=len(ids) < 2):
        st.switch_page("pages/compare.py", query_params={"runs": ",".join(map(str, ids))})
    cols[2].button("Cancel", key="runs_cancel", on_click=act, args=("cancel",))
    cols[3].button("Resume", key="runs_resume", on_click=act, args=("resume",))
    cols[4].button(
        "Re-run",
        key="runs_rerun",
        on_click=act,
        args=("rerun",),
        help="Queue new runs with the same configs.",
    )
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
    if len(ids) == 1:
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
active = store.count_runs(state.get_db(), ("queued", "running"))
filters = draw_filters(state.get_db())
if st.session_state.get("runs_last_filters") != filters:
    # Row positions of a selection mean nothing in a differently filtered table.
    st.session_state["runs_last_filters"] = filters
    clear_selection()
st.session_state["runs_fragment_rerun"] = False
st.fragment(run_every=5 if active else None)(draw_table)(filters)
st.session_state["runs_fragment_rerun"] = True
draw_actions()
