"""Compare runs: overlaid curves, a summary, the config side by side, parameters vs metric.

Open with ?runs=1,2,3 or pick the runs here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from dashboard import charts, state
from engine import choices, store

state.page_setup()

PICK = "compare_runs"
# Curves first in this order; any other metric follows alphabetically.
ORDER = ("train_loss", "test_loss")


def sync_query() -> None:
    st.session_state["compare_synced"] = list(st.session_state[PICK])
    st.query_params["runs"] = ",".join(map(str, st.session_state[PICK]))


def pick_runs(choices: dict[int, str]) -> list[int]:
    ss = st.session_state
    wanted = state.query_run_ids("runs")
    if wanted and wanted != ss.get("compare_synced"):
        ss[PICK] = wanted
        ss["compare_synced"] = wanted
    ss.setdefault(PICK, [])
    ss[PICK] = [i for i in ss[PICK] if i in choices or store.get_run(state.get_db(), i)]
    for i in ss[PICK]:
        choices.setdefault(i, f"#{i}")
    return st.multiselect(
        "Runs", list(choices), key=PICK, format_func=choices.get, on_change=sync_query
    )


def metric_order(names: set[str]) -> list[str]:
    first = [n for n in ORDER if n in names]
    tests = sorted(n for n in names if n.startswith("test_") and n not in ORDER)
    rest = sorted(n for n in names if n not in first and n not in tests)
    return first + tests + rest


def value_at_best(run: dict[str, Any], rows: list[dict[str, Any]], metric: str) -> float | None:
    """`metric` at the run's best epoch (the saved weights), else its last value."""
    values = [r for r in rows if r["name"] == metric and r["value"] is not None]
    if not values:
        return None
    best_epoch = (run["summary"] or {}).get("best_epoch")
    at_best = [r["value"] for r in values if r["epoch"] == best_epoch]
    return at_best[-1] if at_best else values[-1]["value"]


def summary_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        summary = run["summary"] or {}
        rows.append(
            {
                "id": run["id"],
                "name": run["name"],
                "status": run["status"],
                "model": run["model"],
                "dataset": Path(run["dataset"] or "").name,
                "metric": state.metric_label(run),
                "best": summary.get("best_metric"),
                "best epoch": summary.get("best_epoch"),
                "epochs": summary.get("epochs_trained"),
                "stop reason": summary.get("stop_reason", ""),
                "duration": state.format_duration(state.duration_seconds(run)),
                "user": run["user"],
            }
        )
    return rows


def config_rows(runs: list[dict[str, Any]], differences_only: bool) -> list[dict[str, Any]]:
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run["config"] if k not in keys]
    rows = []
    for key in keys:
        values = [run["config"].get(key) for run in runs]
        if differences_only and len({repr(v) for v in values}) == 1:
            continue
        row = {"key": key}
        for run, value in zip(runs, values):
            row[f"#{run['id']}"] = "" if value is None else str(value)
        rows.append(row)
    return rows


st.title("Compare runs")
db = state.get_db()
ids = pick_runs(state.run_choices(db))
if len(ids) < 2:
    st.info("Pick two or more runs (or open this page with ?runs=1,2).")
    st.stop()

runs = [r for r in (store.get_run(db, i) for i in ids) if r is not None]
tasks = sorted({r["task"] for r in runs})
if len(tasks) > 1:
    st.info(
        f"These runs do different tasks ({' and '.join(tasks)}): metrics with the same name "
        "(f1, precision, recall) are computed differently, so compare them within a task.",
        icon=":material/info:",
    )
metrics = {run["id"]: store.get_metrics(db, run["id"]) for run in runs}
series = [{"id": r["id"], "name": r["name"], "metrics": metrics[r["id"]]} for r in runs]

st.subheader("Summary")
st.dataframe(
    summary_rows(runs),
    hide_index=True,
    column_config={"best": st.column_config.NumberColumn(format="%.4f")},
)

st.subheader("Curves")
names = metric_order({row["name"] for rows in metrics.values() for row in rows})
left, right = st.columns([1, 3])
x = left.radio("x axis", ["epoch", "step"], key="compare_x", horizontal=True)
if "compare_metrics" not in st.session_state:
    st.session_state["compare_metrics"] = [n for n in names if n not in charts.STEP_METRICS]
# Keep the choice across run selections, minus metrics the chosen runs do not have.
st.session_state["compare_metrics"] = [n for n in st.session_state["compare_metrics"] if n in names]
shown = right.multiselect("Metrics", names, key="compare_metrics")
grid = st.columns(2)
for i, name in enumerate(shown):
    grid[i % 2].plotly_chart(charts.compare_figure(series, name, x=x), key=f"compare_{name}")

st.subheader("Config")
differences = st.toggle("Differences only", value=True, key="compare_diff")
rows = config_rows(runs, differences)
if rows:
    st.dataframe(rows, hide_index=True)
else:
    st.caption("The configs are identical.")

st.subheader("Parameters against the metric")
tests = [n for n in names if n.startswith("test_") and n != "test_loss"]
if tests:
    preferred = f"test_{state.metric_label(runs[0])}"
    metric = st.selectbox(
        "Metric",
        tests,
        index=tests.index(preferred) if preferred in tests else 0,
        key="compare_parallel_metric",
        help="Its value at each run's best epoch (the saved weights).",
    )
    points = [
        {"id": r["id"], "config": r["config"], "value": value_at_best(r, metrics[r["id"]], metric)}
        for r in runs
    ]
    st.plotly_chart(
        charts.parallel_coordinates(points, metric.removeprefix("test_")), key="compare_parallel"
    )
    if choices.metric_mode(metric.removeprefix("test_")) == "min":
        st.caption("Lower is better for this metric.")
else:
    st.caption("No test metrics recorded yet.")
