"""The data check, drawn: a dataset's problems by severity, from engine.data.inspect_dataset.

Blocking problems (a run cannot start) in red, warnings (worth a look, the run goes on) in
amber, what was ignored folded away. Used by the Datasets page after registering, uploading
or inspecting again, and by any page that shows a dataset before a run starts.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from engine.data.errors import SEVERITIES


def split_by_severity(info: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    """Problems per severity; problems stored before severities existed count as warnings."""
    found: dict[str, list[dict[str, str]]] = {s: [] for s in SEVERITIES}
    for p in info.get("problems") or []:
        found.get(p.get("severity"), found["warning"]).append(p)
    return found


def count_problems(info: dict[str, Any]) -> int:
    """Blocking problems and warnings (what was ignored is no problem)."""
    found = split_by_severity(info)
    return len(found["blocking"]) + len(found["warning"])


def draw_check(info: dict[str, Any], key: str = "check") -> None:
    found = split_by_severity(info)
    blocking, warnings, ignored = found["blocking"], found["warning"], found["info"]
    if blocking:
        st.error(
            f"{len(blocking)} blocking problem(s): no run can start on this dataset until "
            "they are fixed."
        )
    if warnings:
        st.warning(f"{len(warnings)} problem(s) found: worth a look, a run goes on without them.")
    if not blocking and not warnings:
        st.success("No problems found.")
    if blocking or warnings:
        rows = [
            {
                "severity": p.get("severity", "warning"),
                "kind": p.get("kind", ""),
                "file": p.get("file", ""),
                "message": p.get("message", ""),
            }
            for p in blocking + warnings
        ]
        st.dataframe(rows, hide_index=True, key=f"{key}_problems")
    if ignored:
        with st.expander(f"{len(ignored)} file(s) left aside"):
            st.dataframe(
                [{"file": p.get("file", ""), "why": p.get("message", "")} for p in ignored],
                hide_index=True,
                key=f"{key}_ignored",
            )
