"""Compare runs: overlaid curves (smoothed, grouped, log scale), a summary, the config side
by side, parameters against a metric.

Runs are picked by hand, by filter (tag, dataset, model, user, status), or both, with no cap.
The URL carries the whole comparison: ?runs=1,2,3&model=...&x=step&smooth=0.6&group=lr...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from dashboard import charts, state
from engine import choices, store
from engine.config import as_used

state.page_setup()

PICK = "compare_runs"
# Curves first in this order; any other metric follows alphabetically.
ORDER = ("train_loss", "test_loss")
FILTERS = ("tag", "dataset", "model", "user")  # one value each; status takes several
# Why the two losses differ, from engine.tasks (test_loss) and engine.evaluate (log_loss).
LOSS_NOTE = (
    "Why test_loss and test_log_loss differ: test_loss is the mean cross-entropy computed "
    "from the model's logits, so an image predicted wrong with near certainty counts in full; "
    "test_log_loss is computed from the softmax probabilities clipped at 1e-15 (as "
    "scikit-learn does), which caps each image's term at -ln(1e-15) ≈ 34.5. They agree "
    "unless some images are confidently wrong; then test_loss is the larger."
)


def _split(raw: str) -> list[str]:
    return [part for part in raw.split(",") if part]


def _ints(raw: str) -> list[int]:
    return [int(p) for p in _split(raw) if p.strip().isdigit()]


def _flag(raw: str) -> bool:
    return raw.lower() in ("1", "true", "yes", "on")


def _join(values) -> str:
    return ",".join(map(str, values))


# session key → (query parameter, parse the URL's text, write the value as text)
QUERY = {
    PICK: ("runs", _ints, _join),
    **{f"compare_f_{f}": (f, str, str) for f in FILTERS},
    "compare_f_status": ("status", _split, _join),
    "compare_x": ("x", str, str),
    "compare_metrics": ("metrics", _split, _join),
    "compare_smooth": ("smooth", lambda raw: min(max(float(raw), 0.0), 0.99), "{:g}".format),
    "compare_group": ("group", str, str),
    "compare_log": ("log", _flag, lambda v: "1" if v else "0"),
    "compare_diff": ("diff", _flag, lambda v: "1" if v else "0"),
    "compare_parallel_metric": ("metric", str, str),
    "compare_scatter_x": ("param", str, str),
}


def read_query() -> None:
    """Set the page's controls from the URL when the URL changed (a shared link, the runs
    page's Compare button); the page's own writes are remembered so they do not loop."""
    ss = st.session_state
    seen = ss.setdefault("compare_query_seen", {})
    for key, (param, parse, _) in QUERY.items():
        raw = st.query_params.get(param)
        if raw is None or raw == seen.get(param):
            continue
        seen[param] = raw
        try:
            ss[key] = parse(raw)
        except ValueError:
            pass  # a hand-edited URL with a bad value keeps the control as it was


def write_query() -> None:
    """Put every control that is set into the URL, so the link reproduces the comparison."""
    ss = st.session_state
    seen = ss.setdefault("compare_query_seen", {})
    for key, (param, _, fmt) in QUERY.items():
        value = ss.get(key)
        text = fmt(value) if value not in (None, [], "") else None
        if text is None:
            if param in st.query_params:
                del st.query_params[param]
            seen.pop(param, None)
        elif st.query_params.get(param) != text:
            st.query_params[param] = text
            seen[param] = text
        else:
            seen[param] = text


def pick_runs(db, labels: dict[int, str]) -> list[int]:
    """Runs picked by hand, then those matching the filters (when any is set)."""
    ss = st.session_state
    ss.setdefault(PICK, [])
    ss[PICK] = [i for i in ss[PICK] if i in labels or store.get_run(db, i)]
    for i in ss[PICK]:
        labels.setdefault(i, f"#{i}")
    picked = st.multiselect("Runs", list(labels), key=PICK, format_func=labels.get)
    with st.expander("Add runs by filter", expanded=any_filter()):
        cols = st.columns(5)
        options = {
            "tag": store.all_tags(db),
            "dataset": store.distinct_values(db, "dataset"),
            "model": store.distinct_values(db, "model"),
            "user": store.distinct_values(db, "user"),
        }
        filters: dict[str, Any] = {}
        for col, name in zip(cols, FILTERS):
            key = f"compare_f_{name}"
            if ss.get(key) not in options[name]:
                ss[key] = None
            filters[name] = col.selectbox(
                name.capitalize(),
                [None, *options[name]],
                key=key,
                format_func=lambda v, n=name: "any" if v is None else _filter_label(n, v),
            )
        ss["compare_f_status"] = [s for s in ss.get("compare_f_status", []) if s in store.STATUSES]
        filters["status"] = cols[4].multiselect(
            "Status", list(store.STATUSES), key="compare_f_status"
        )
    if not any(filters.values()):
        return picked
    matched = [r["id"] for r in store.list_runs(db, **filters)]
    st.caption(f"{len(matched)} run(s) match the filters; they are compared with those picked.")
    return picked + [i for i in reversed(matched) if i not in picked]


def any_filter() -> bool:
    ss = st.session_state
    return any(ss.get(f"compare_f_{f}") for f in (*FILTERS, "status"))


def _filter_label(name: str, value: str) -> str:
    return (Path(value).name or value) if name == "dataset" else value


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
    """One row per config key, a column per run: each config as its run used it (as_used:
    the values of keys it predates, blank for keys of another task)."""
    configs = [as_used(run["config"]) for run in runs]
    keys: list[str] = []
    for config in configs:
        keys += [k for k in config if k not in keys]
    rows = []
    for key in keys:
        values = [config.get(key) for config in configs]
        if differences_only and len({repr(v) for v in values}) == 1:
            continue
        row = {"key": key}
        for run, value in zip(runs, values):
            row[f"#{run['id']}"] = "" if value is None else str(value)
        rows.append(row)
    return rows


def scalar_keys(runs: list[dict[str, Any]]) -> list[str]:
    """Config keys to plot against a metric: those that differ first, then the rest."""
    varying = list(charts.parameter_kinds([r["config"] for r in runs]))
    rest = [
        k
        for r in runs
        for k, v in r["config"].items()
        if k not in varying and k not in charts.NOT_PARAMETERS and not isinstance(v, (list, dict))
    ]
    return varying + list(dict.fromkeys(rest))


def keep_valid(key: str, options: list[Any], default: Any = None) -> None:
    """Drop a remembered (or URL-given) choice the current runs do not offer."""
    value = st.session_state.get(key)
    if isinstance(value, list):
        st.session_state[key] = [v for v in value if v in options]
    elif value not in options:
        st.session_state[key] = default


st.title("Compare runs")
db = state.get_db()
read_query()
ids = pick_runs(db, state.run_choices(db))
if len(ids) < 2:
    write_query()
    st.info("Pick two or more runs, by hand or by filter (or open this page with ?runs=1,2).")
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
series = [
    {"id": r["id"], "name": r["name"], "config": r["config"], "metrics": metrics[r["id"]]}
    for r in runs
]

st.subheader("Summary")
st.dataframe(
    summary_rows(runs),
    hide_index=True,
    column_config={"best": st.column_config.NumberColumn(format="%.4f")},
)

st.subheader("Curves")
names = metric_order({row["name"] for rows in metrics.values() for row in rows})
keys = scalar_keys(runs)
keep_valid("compare_x", ["epoch", "step"], "epoch")
keep_valid("compare_group", [None, *keys])
if "compare_metrics" not in st.session_state:
    st.session_state["compare_metrics"] = [n for n in names if n not in charts.STEP_METRICS]
# Keep the choice across run selections, minus metrics the chosen runs do not have.
keep_valid("compare_metrics", names)
left, middle, right = st.columns([1, 2, 1])
x = left.radio("x axis", ["epoch", "step"], key="compare_x", horizontal=True)
shown = middle.multiselect("Metrics", names, key="compare_metrics")
log_y = right.toggle("Log y axis", key="compare_log")
left, right = st.columns(2)
smoothing = left.slider(
    "Smoothing",
    0.0,
    0.99,
    step=0.01,
    key="compare_smooth",
    help="Exponential moving average weight: 0 draws the raw values (kept faint when smoothed).",
)
group_by = right.selectbox(
    "Group runs by",
    [None, *keys],
    key="compare_group",
    format_func=lambda k: "no grouping" if k is None else k,
    help="Runs with the same value of this setting become one mean line with a min-max band.",
)
grid = st.columns(2)
for i, name in enumerate(shown):
    figure = charts.compare_figure(
        series, name, x=x, smoothing=smoothing, group_by=group_by, log_y=log_y
    )
    grid[i % 2].plotly_chart(figure, key=f"compare_{name}")
if "test_loss" in names and "test_log_loss" in names:
    st.caption(LOSS_NOTE)

st.subheader("Config")
st.session_state.setdefault("compare_diff", True)
differences = st.toggle("Differences only", key="compare_diff")
rows = config_rows(runs, differences)
if rows:
    st.dataframe(rows, hide_index=True)
else:
    st.caption("The configs are identical.")

st.subheader("Parameters against a metric")
tests = [n for n in names if n.startswith("test_") and n != "test_loss"]
if tests:
    preferred = f"test_{state.metric_label(runs[0])}"
    keep_valid("compare_parallel_metric", tests, preferred if preferred in tests else tests[0])
    metric = st.selectbox(
        "Metric",
        tests,
        key="compare_parallel_metric",
        help="Its value at each run's best epoch (the saved weights).",
    )
    points = [
        {"id": r["id"], "config": r["config"], "value": value_at_best(r, metrics[r["id"]], metric)}
        for r in runs
    ]
    label = metric.removeprefix("test_")
    st.plotly_chart(charts.parallel_coordinates(points, label), key="compare_parallel")
    if choices.metric_mode(label) == "min":
        st.caption("Lower is better for this metric.")
    keep_valid("compare_scatter_x", keys, keys[0] if keys else None)
    parameter = st.selectbox("Parameter", keys, key="compare_scatter_x")
    if parameter:
        st.plotly_chart(charts.parameter_scatter(points, parameter, label), key="compare_scatter")
else:
    st.caption("No test metrics recorded yet.")
write_query()
