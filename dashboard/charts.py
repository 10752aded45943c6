"""Rows → plotly figures for the dashboard.

Pure functions: they take plain lists and dicts (metric rows from engine.store, report dicts
from engine.evaluate) and return `plotly.graph_objects.Figure`s. No Streamlit calls, so each
one is unit-tested on its own and the pages stay thin.

Metric rows are {"name", "step", "epoch", "value"}: `step` is the global optimizer step,
`epoch` the 1-based epoch. Per-step metrics (lr, train_loss_step) are logged every step;
per-epoch metrics (train_loss, test_loss, test_<metric>) once at the end of each epoch.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

STEP_METRICS = ("lr", "train_loss_step")
LOSS_METRICS = ("train_loss", "test_loss")
NOT_SCORES = ("test_loss", "test_threshold")
# Metrics with no upper bound: drawn on their own axis, not squashing the 0-1 scores.
UNBOUNDED_METRICS = ("test_log_loss",)
TEMPLATE = "plotly_white"
HEIGHT = 320


def _layout(fig: go.Figure, title: str, x_title: str, y_title: str) -> go.Figure:
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        height=HEIGHT,
        margin={"l": 50, "r": 20, "t": 50, "b": 40},
        # Below the x axis title, not on it (y=-0.3), and not above the plot where it covered
        # the chart's title; plotly grows the bottom margin to fit the legend's rows.
        legend={"orientation": "h", "x": 0, "xanchor": "left", "y": -0.3, "yanchor": "top"},
        hovermode="x unified",
    )
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(title=y_title)
    return fig


def _note_if_empty(fig: go.Figure, text: str) -> go.Figure:
    """Say why a chart is blank (a bare grid reads as a broken chart)."""
    if not fig.data:
        fig.add_annotation(
            text=text,
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
            showarrow=False,
            font={"color": "grey"},
        )
        fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
        fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    return fig


def _line_mode(points: int) -> str:
    """A line of one point draws nothing (an empty axis from -1 to 1): mark it."""
    return "lines" if points > 1 else "lines+markers"


def _finite(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def group_metrics(metrics: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Metric rows grouped by name, each group in step order (rows with no value dropped)."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in metrics:
        if _finite(row.get("value")):
            groups[row["name"]].append(row)
    for rows in groups.values():
        rows.sort(key=lambda r: (r["step"], r["epoch"]))
    return dict(groups)


def epoch_positions(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    """Fractional epochs of per-step rows: the k-th of n steps in epoch e sits at e - 1 + k/n.

    Per-epoch rows land on their epoch number, so per-step and per-epoch curves share an axis.
    """
    per_epoch: dict[int, list[int]] = defaultdict(list)
    for row in rows:
        per_epoch[row["epoch"]].append(row["step"])
    rank = {}
    for epoch, steps in per_epoch.items():
        ordered = sorted(set(steps))
        for k, step in enumerate(ordered, start=1):
            rank[(epoch, step)] = epoch - 1 + k / len(ordered)
    return [rank[(r["epoch"], r["step"])] for r in rows]


def _xs(rows: Sequence[Mapping[str, Any]], x: str, per_step: bool) -> list[float]:
    if x == "step":
        return [r["step"] for r in rows]
    if x != "epoch":
        raise ValueError(f"x must be 'step' or 'epoch', got {x!r}")
    return epoch_positions(rows) if per_step else [r["epoch"] for r in rows]


def loss_figure(
    metrics: Iterable[Mapping[str, Any]], x: str = "epoch", split: str = "test"
) -> go.Figure:
    """Train loss per step (thin), train and test loss per epoch (lines with markers).
    `split` names the split behind the test_* rows (the run's summary.eval_split)."""
    groups = group_metrics(metrics)
    fig = go.Figure()
    steps = groups.get("train_loss_step", [])
    if steps:
        fig.add_trace(
            go.Scatter(
                x=_xs(steps, x, per_step=True),
                y=[r["value"] for r in steps],
                name="train loss (step)",
                mode=_line_mode(len(steps)),
                line={"width": 1, "color": "rgba(31,119,180,0.35)"},
            )
        )
    colors = {"train_loss": "#1f77b4", "test_loss": "#d62728"}
    for name in LOSS_METRICS:
        rows = groups.get(name, [])
        if rows:
            fig.add_trace(
                go.Scatter(
                    x=_xs(rows, x, per_step=False),
                    y=[r["value"] for r in rows],
                    name=name.replace("test_", f"{split}_").replace("_", " "),
                    mode="lines+markers",
                    line={"color": colors[name]},
                )
            )
    _note_if_empty(fig, "No loss yet: it appears after the first steps.")
    return _layout(fig, "Loss", x, "loss")


def metric_figure(
    metrics: Iterable[Mapping[str, Any]],
    metric: str | None = None,
    best_epoch: int | None = None,
    x: str = "epoch",
    split: str = "test",
) -> go.Figure:
    """Every test_<metric> per epoch; the chosen `metric` bold, the others dotted.

    `metric` is the config's metric name (e.g. "roc_auc") or its row name ("test_roc_auc").
    A vertical line marks the best epoch when given. `split` names the split the test_* rows
    were measured on (the run's summary.eval_split: val where the dataset has one).
    """
    groups = group_metrics(metrics)
    chosen = None
    if metric:
        chosen = metric if metric.startswith("test_") else f"test_{metric}"
    # test_threshold (detection's best-F1 confidence) is a setting found, not a score.
    names = sorted(n for n in groups if n.startswith("test_") and n not in NOT_SCORES)
    fig = go.Figure()
    for name in names:
        rows = groups[name]
        main = name == chosen
        fig.add_trace(
            go.Scatter(
                x=_xs(rows, x, per_step=False),
                y=[r["value"] for r in rows],
                name=name.removeprefix("test_"),
                mode="lines+markers",
                line={"width": 3 if main else 1.5, "dash": "solid" if main else "dot"},
                marker={"size": 7 if main else 4},
                opacity=1.0 if main or chosen is None else 0.6,
                yaxis="y2" if name in UNBOUNDED_METRICS else "y",
            )
        )
    unbounded = [n.removeprefix("test_") for n in names if n in UNBOUNDED_METRICS]
    if unbounded:
        fig.update_layout(
            yaxis2={"title": ", ".join(unbounded), "overlaying": "y", "side": "right",
                    "showgrid": False, "rangemode": "tozero"}
        )  # fmt: skip
    _note_if_empty(fig, f"No {split} metrics yet: they appear at the end of the first epoch.")
    if best_epoch and x == "epoch" and fig.data:
        fig.add_vline(x=best_epoch, line_dash="dash", line_color="grey", annotation_text="best")
    title = f"{split.capitalize()} metrics"
    title += f" ({chosen.removeprefix('test_')} in bold)" if chosen else ""
    fig = _layout(fig, title, x, "score (0-1)" if unbounded else "value")
    if unbounded:  # _layout titled every y axis
        fig.update_layout(margin={"r": 60}, yaxis2_title=", ".join(unbounded))
    return fig


def lr_figure(
    metrics: Iterable[Mapping[str, Any]],
    steps_per_epoch: int | None = None,
    warmup: bool = False,
    x: str = "step",
) -> go.Figure:
    """Learning rate per step; the first epoch is shaded when the run warms up."""
    rows = group_metrics(metrics).get("lr", [])
    fig = go.Figure()
    if rows:
        fig.add_trace(
            go.Scatter(
                x=_xs(rows, x, per_step=True),
                y=[r["value"] for r in rows],
                name="learning rate",
                mode=_line_mode(len(rows)),
                line={"color": "#2ca02c"},
            )
        )
    if warmup and rows:
        # The warmup ramp is the first epoch's steps (engine.optim): shade it.
        end = 1 if x == "epoch" else (steps_per_epoch or _last_step_of_epoch(rows, 1))
        if end:
            fig.add_vrect(
                x0=0 if x == "epoch" else rows[0]["step"],
                x1=end,
                fillcolor="orange",
                opacity=0.12,
                line_width=0,
                annotation_text="warmup",
                annotation_position="top left",
            )
    _note_if_empty(fig, "No learning rate logged yet.")
    return _layout(fig, "Learning rate", x, "lr")


def _last_step_of_epoch(rows: Sequence[Mapping[str, Any]], epoch: int) -> int | None:
    steps = [r["step"] for r in rows if r["epoch"] == epoch]
    return max(steps) if steps else None


def smooth_ema(values: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average with TensorBoard's debiasing: weight 0 returns the values,
    0.9 averages over about the last ten points; the first points are not pulled to zero."""
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight!r}")
    smoothed, last, debias = [], 0.0, 1.0
    for value in values:
        last = weight * last + (1 - weight) * value
        debias *= weight
        smoothed.append(last / (1 - debias))
    return smoothed


PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")  # fmt: skip


def _rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _run_curve(run: Mapping[str, Any], metric: str, x: str, smoothing: float):
    rows = group_metrics(run.get("metrics", [])).get(metric, [])
    xs = _xs(rows, x, per_step=metric in STEP_METRICS)
    raw = [r["value"] for r in rows]
    return xs, raw, smooth_ema(raw, smoothing) if smoothing else raw


def group_label(config: Mapping[str, Any], key: str) -> str:
    """How a run's value of the grouping key reads in a legend ("lr=0.001")."""
    value = (config or {}).get(key)
    return f"{key}={'—' if value is None else _format_value(value)}"


def compare_figure(
    runs_metrics: Sequence[Mapping[str, Any]],
    metric: str,
    x: str = "epoch",
    smoothing: float = 0.0,
    group_by: str | None = None,
    log_y: bool = False,
) -> go.Figure:
    """One line per run of `metric`, overlaid. runs_metrics: [{"id", "name", "metrics": rows,
    "config"}] (config only needed with `group_by`).

    smoothing: EMA weight in [0, 1) (smooth_ema); the raw curve stays as a faint line.
    group_by: a config key; runs sharing its value become one mean line with a min-max band.
    log_y: a log y axis (values <= 0 are not drawn by plotly).
    """
    fig = go.Figure()
    per_step = metric in STEP_METRICS
    mode = "lines" if per_step else "lines+markers"
    if group_by:
        groups: dict[str, list[Mapping[str, Any]]] = {}
        for run in runs_metrics:
            groups.setdefault(group_label(run.get("config") or {}, group_by), []).append(run)
        for i, (label, members) in enumerate(groups.items()):
            by_x: dict[float, list[float]] = defaultdict(list)
            for run in members:
                xs, _, ys = _run_curve(run, metric, x, smoothing)
                for px, py in zip(xs, ys):
                    by_x[px].append(py)
            if not by_x:
                continue
            xs = sorted(by_x)
            color = PALETTE[i % len(PALETTE)]
            name = f"{label} ({len(members)} run{'s' if len(members) > 1 else ''})"
            # The band: the max line, then the min line filled up to it.
            fig.add_trace(
                go.Scatter(x=xs, y=[max(by_x[v]) for v in xs], mode="lines", line={"width": 0},
                           legendgroup=label, showlegend=False, hoverinfo="skip")
            )  # fmt: skip
            fig.add_trace(
                go.Scatter(x=xs, y=[min(by_x[v]) for v in xs], mode="lines", line={"width": 0},
                           fill="tonexty", fillcolor=_rgba(color, 0.2), legendgroup=label,
                           showlegend=False, hoverinfo="skip")
            )  # fmt: skip
            fig.add_trace(
                go.Scatter(x=xs, y=[sum(by_x[v]) / len(by_x[v]) for v in xs], name=name,
                           mode=mode if len(xs) > 1 else _line_mode(1), line={"color": color},
                           legendgroup=label, showlegend=True)
            )  # fmt: skip
    else:
        for i, run in enumerate(runs_metrics):
            xs, raw, ys = _run_curve(run, metric, x, smoothing)
            if not xs:
                continue
            color = PALETTE[i % len(PALETTE)]
            name = f"#{run['id']} {run.get('name') or ''}".strip()
            if smoothing:
                fig.add_trace(
                    go.Scatter(x=xs, y=raw, mode="lines", line={"color": _rgba(color, 0.25)},
                               legendgroup=name, showlegend=False, hoverinfo="skip")
                )  # fmt: skip
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    name=name,
                    mode=mode if len(xs) > 1 else _line_mode(1),
                    line={"color": color},
                    legendgroup=name,
                    # plotly hides the legend of a lone trace: then nothing says whose line it is.
                    showlegend=True,
                )
            )
    _note_if_empty(fig, f"None of these runs logged {metric}.")
    fig = _layout(fig, metric, x, metric)
    if log_y and fig.data:
        fig.update_yaxes(type="log")
    return fig


# Keys that name or describe a run rather than set how it trains.
NOT_PARAMETERS = ("name",)


def _format_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def log_scaled(values: Iterable[Any]) -> bool:
    """Whether numbers read better on a log axis: positive ones spanning at least a decade
    (lr 0.01 vs 0.001; weight_decay 0, 1e-4, 1e-2: zeros get a place of their own)."""
    positive = [float(v) for v in values if _is_number(v) and float(v) > 0]
    return len(positive) >= 2 and max(positive) / min(positive) >= 10


def _log_axis(values: Sequence[float]) -> tuple[list[float], list[float], list[str]]:
    """(log10 of the values, tick positions, tick labels of the real values): zeros sit a
    decade below the smallest positive value, labelled 0."""
    floor = math.log10(min(v for v in values if v > 0)) - 1
    logs = [math.log10(v) if v > 0 else floor for v in values]
    distinct = sorted(set(values))
    ticks = [math.log10(v) if v > 0 else floor for v in distinct]
    return logs, ticks, [_format_value(v) for v in distinct]


def parameter_kinds(configs: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """{key: "log" | "linear" | "category"} of the config keys that differ between runs, in
    config order: numbers (log when log_scaled), text and booleans as categories. Lists and
    dicts are left out. When nothing differs, every numeric key is kept so a chart has axes."""
    keys: list[str] = []
    for config in configs:
        keys += [k for k in config if k not in keys and k not in NOT_PARAMETERS]
    kinds: dict[str, str] = {}
    for key in keys:
        values = [c.get(key) for c in configs]
        if any(isinstance(v, (list, dict)) for v in values):
            continue
        if all(_is_number(v) and not isinstance(v, bool) for v in values):
            kinds[key] = "log" if log_scaled(values) else "linear"
        else:
            kinds[key] = "category"
    varying = {
        k: kind for k, kind in kinds.items() if len({_format_value(c.get(k)) for c in configs}) > 1
    }
    return varying or {k: kind for k, kind in kinds.items() if kind != "category"}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value))


def _dimension(key: str, kind: str, values: Sequence[Any]) -> dict[str, Any]:
    """A parcoords dimension; plotly has no log or category axes there, so both are drawn
    as numbers (log10, category index) with tick labels of the real values."""
    if kind == "category":
        labels = [_format_value("—" if v is None else v) for v in values]
        order = sorted(set(labels))
        return {
            "label": key,
            "values": [order.index(v) for v in labels],
            "tickvals": list(range(len(order))),
            "ticktext": order,
        }
    numbers = [float(v) for v in values]
    if kind == "log":
        logs, ticks, text = _log_axis(numbers)
        return {"label": f"{key} (log)", "values": logs, "tickvals": ticks, "ticktext": text}
    return {"label": key, "values": numbers}


def parallel_coordinates(runs: Sequence[Mapping[str, Any]], metric: str = "metric") -> go.Figure:
    """The parameters that differ between runs against their metric, one line per run:
    numbers (lr-like keys on a log axis), text settings (optimizer) and switches as
    categories.

    runs: [{"id", "config": {...}, "value": final metric or None}]; runs without a value are
    left out. The last axis is the metric; lines are coloured by it.
    """
    scored = [r for r in runs if _finite(r.get("value"))]
    kinds = parameter_kinds([r["config"] for r in scored])
    dimensions = [
        _dimension(key, kind, [r["config"].get(key) for r in scored]) for key, kind in kinds.items()
    ]
    values = [float(r["value"]) for r in scored]
    dimensions.append({"label": metric, "values": values})
    fig = go.Figure(
        go.Parcoords(
            line={"color": values, "colorscale": "Viridis", "showscale": True},
            dimensions=dimensions,
            ids=[str(r["id"]) for r in scored] if scored else None,
        )
    )
    fig.update_layout(
        title=f"Parameters against {metric}",
        template=TEMPLATE,
        height=HEIGHT + 60,
        margin={"l": 60, "r": 60, "t": 80, "b": 30},
    )
    return fig


def parameter_scatter(
    runs: Sequence[Mapping[str, Any]], parameter: str, metric: str = "metric"
) -> go.Figure:
    """One point per run: its `parameter` (a config key) against its metric value.

    runs as for parallel_coordinates. Text settings go on a category axis, lr-like numbers
    on a log axis.
    """
    scored = [r for r in runs if _finite(r.get("value"))]
    xs = [r["config"].get(parameter) for r in scored]
    numeric = all(_is_number(v) and not isinstance(v, bool) for v in xs)
    fig = go.Figure()
    if scored:
        fig.add_trace(
            go.Scatter(
                x=xs if numeric else ["—" if v is None else _format_value(v) for v in xs],
                y=[float(r["value"]) for r in scored],
                mode="markers+text",
                text=[f"#{r['id']}" for r in scored],
                textposition="top center",
                marker={"size": 10},
                hovertemplate="%{text}<br>" + parameter + " %{x}<br>" + metric + " %{y}"
                "<extra></extra>",
                name=metric,
            )
        )
    _note_if_empty(fig, f"No run has a {metric} value yet.")
    fig = _layout(fig, f"{metric} against {parameter}", parameter, metric)
    fig.update_layout(hovermode="closest")
    if fig.data:
        if not numeric:
            fig.update_xaxes(type="category")
        elif log_scaled(xs) and all(float(v) > 0 for v in xs):
            fig.update_xaxes(type="log")
    return fig


def confusion_figure(
    matrix: Sequence[Sequence[float]],
    labels: Sequence[str],
    column_labels: Sequence[str] | None = None,
    normalized: bool = False,
    title: str = "Confusion matrix",
) -> go.Figure:
    """Heatmap with the count (or share) in each cell; rows = true class, columns = predicted.

    `labels` names the rows, `column_labels` the columns when they differ (detection's
    "not an object" row and "not detected" column).
    """
    columns = list(column_labels or labels)
    rows = list(labels)
    text = [[(f"{v:.2f}" if normalized else f"{int(v)}") for v in row] for row in matrix]
    fig = go.Figure(
        go.Heatmap(
            z=[list(row) for row in matrix],
            x=columns,
            y=rows,
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1 if normalized else None,
            hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title + (" (share of each true class)" if normalized else " (counts)"),
        template=TEMPLATE,
        height=max(HEIGHT, 40 * len(rows) + 120),
        margin={"l": 80, "r": 20, "t": 50, "b": 60},
    )
    fig.update_xaxes(title="predicted", type="category")
    fig.update_yaxes(title="true", type="category", autorange="reversed")
    return fig


def curves_figure(curves: Mapping[str, Mapping[str, Any]], kind: str = "roc") -> go.Figure:
    """One-vs-rest ROC or PR curves, one line per class.

    kind "roc": curves = {class: {"fpr", "tpr", "auc"}}; kind "pr": {class: {"precision",
    "recall", "ap"}} (engine.evaluate.classification_report's "roc" and "pr"). Classes with
    empty curves (absent from the test split) are left out.
    """
    if kind not in ("roc", "pr"):
        raise ValueError(f"kind must be 'roc' or 'pr', got {kind!r}")
    xs, ys, score = ("fpr", "tpr", "auc") if kind == "roc" else ("recall", "precision", "ap")
    fig = go.Figure()
    for name, curve in curves.items():
        if not curve.get(xs):
            continue
        label = name if curve.get(score) is None else f"{name} ({score} {curve[score]:.3f})"
        fig.add_trace(go.Scatter(x=curve[xs], y=curve[ys], name=label, mode="lines"))
    if kind == "roc":
        fig.add_trace(
            go.Scatter(
                x=[0, 1],
                y=[0, 1],
                name="chance",
                mode="lines",
                line={"dash": "dash", "color": "grey", "width": 1},
            )
        )
    title = "ROC, one class against the rest" if kind == "roc" else "Precision-recall"
    fig = _layout(fig, title, "false positive rate" if kind == "roc" else "recall", ys)
    fig.update_layout(hovermode="closest")
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    return fig


def pr_curve_figure(curve: Mapping[str, Sequence[float | None]]) -> go.Figure:
    """Detection's pooled precision-recall curve: {"precision", "recall", "thresholds"}."""
    points = [
        (r, p, t)
        for r, p, t in zip(
            curve.get("recall", []), curve.get("precision", []), curve.get("thresholds", [])
        )
        if r is not None and p is not None
    ]
    fig = go.Figure(
        go.Scatter(
            x=[p[0] for p in points],
            y=[p[1] for p in points],
            customdata=[p[2] for p in points],
            hovertemplate="recall %{x:.3f}<br>precision %{y:.3f}<br>score ≥ %{customdata:.3f}"
            "<extra></extra>",
            mode="lines+markers",
            marker={"size": 4},
            name="all classes",
        )
    )
    fig = _layout(fig, "Precision-recall (all classes)", "recall", "precision")
    fig.update_layout(hovermode="closest")
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    return fig


def topk_figure(probs: Mapping[str, float], k: int) -> go.Figure:
    """The k most probable classes as horizontal bars, the most probable on top.

    The class axis is categorical: class names such as "3" and "8" would otherwise be placed
    on a numeric axis, bars at their values and ticks at 2, 4, 6 that name no class.
    """
    top = sorted(probs.items(), key=lambda kv: kv[1], reverse=True)[:k]
    fig = go.Figure(
        go.Bar(
            x=[p for _, p in top][::-1],
            y=[str(c) for c, _ in top][::-1],
            orientation="h",
            text=[f"{p:.1%}" for _, p in top][::-1],
            textposition="auto",
        )
    )
    fig.update_layout(
        template=TEMPLATE,
        height=60 + 28 * len(top),
        margin={"l": 10, "r": 10, "t": 10, "b": 30},
    )
    fig.update_xaxes(range=[0, 1], tickformat=".0%", title="probability")
    fig.update_yaxes(type="category")
    return fig


def class_distribution_figure(
    counts: Mapping[str, Any], title: str = "Images per class"
) -> go.Figure:
    """Bars per class: counts = {class: n} or {class: {"train": n, "test": n}} (stacked)."""
    classes = list(counts)
    fig = go.Figure()
    nested = any(isinstance(v, Mapping) for v in counts.values())
    if nested:
        splits = []
        for value in counts.values():
            for split in value:
                if split not in splits:
                    splits.append(split)
        for split in splits:
            fig.add_trace(
                go.Bar(x=classes, y=[counts[c].get(split, 0) for c in classes], name=split)
            )
        fig.update_layout(barmode="stack")
    else:
        fig.add_trace(go.Bar(x=classes, y=[counts[c] for c in classes], name="images"))
    fig = _layout(fig, title, "class", "count")
    fig.update_xaxes(type="category")
    fig.update_layout(hovermode="closest")
    return fig
