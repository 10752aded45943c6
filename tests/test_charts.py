"""Unit tests of dashboard.charts: metric rows and reports → plotly figures."""

import math

import pytest

from dashboard import charts


def rows(name, values, steps_per_epoch=1, per_step=False):
    """Metric rows for one name: per step (steps_per_epoch rows per epoch) or per epoch."""
    out = []
    step = 0
    for i, value in enumerate(values):
        if per_step:
            step += 1
            epoch = (step - 1) // steps_per_epoch + 1
        else:
            epoch = i + 1
            step = epoch * steps_per_epoch
        out.append({"name": name, "step": step, "epoch": epoch, "value": value})
    return out


def trace(fig, name):
    found = [t for t in fig.data if t.name == name]
    assert found, f"no trace {name!r} in {[t.name for t in fig.data]}"
    return found[0]


def test_loss_figure_has_step_and_epoch_losses_on_a_shared_epoch_axis():
    metrics = (
        rows("train_loss_step", [4.0, 3.0, 2.0, 1.0], steps_per_epoch=2, per_step=True)
        + rows("train_loss", [3.5, 1.5], steps_per_epoch=2)
        + rows("test_loss", [3.0, 2.0], steps_per_epoch=2)
        + rows("lr", [0.1, 0.2, 0.3, 0.4], steps_per_epoch=2, per_step=True)
    )
    fig = charts.loss_figure(metrics, x="epoch")
    assert [t.name for t in fig.data] == ["train loss (step)", "train loss", "test loss"]
    # Steps land on fractional epochs: 2 steps per epoch → 0.5, 1.0, 1.5, 2.0.
    assert list(trace(fig, "train loss (step)").x) == [0.5, 1.0, 1.5, 2.0]
    assert list(trace(fig, "test loss").x) == [1, 2]
    assert list(trace(fig, "test loss").y) == [3.0, 2.0]
    by_step = charts.loss_figure(metrics, x="step")
    assert list(trace(by_step, "train loss").x) == [2, 4]


def test_loss_figure_drops_nan_and_rejects_a_bad_axis():
    metrics = rows("train_loss", [1.0, math.nan, 0.5])
    fig = charts.loss_figure(metrics)
    assert list(trace(fig, "train loss").y) == [1.0, 0.5]
    with pytest.raises(ValueError, match="x must be 'step' or 'epoch'"):
        charts.loss_figure(metrics, x="time")


def test_metric_figure_highlights_the_chosen_metric_and_marks_the_best_epoch():
    metrics = (
        rows("test_roc_auc", [0.6, 0.8, 0.7])
        + rows("test_accuracy", [0.5, 0.6, 0.65])
        + rows("test_loss", [1.0, 0.8, 0.9])
    )
    fig = charts.metric_figure(metrics, "roc_auc", best_epoch=2)
    names = [t.name for t in fig.data]
    assert names == ["accuracy", "roc_auc"]  # test_loss belongs to the loss chart
    # Detection's best-F1 confidence threshold is logged as test_threshold: not a score.
    detection = rows("test_f1", [0.2, 0.3]) + rows("test_threshold", [0.5, 0.4])
    assert [t.name for t in charts.metric_figure(detection, "f1").data] == ["f1"]
    assert trace(fig, "roc_auc").line.width > trace(fig, "accuracy").line.width
    assert trace(fig, "accuracy").line.dash == "dot"
    assert any(s.x0 == 2 for s in fig.layout.shapes)
    assert "roc_auc" in fig.layout.title.text


def test_lr_figure_plots_every_step_and_shades_the_warmup():
    metrics = rows("lr", [0.25, 0.5, 0.75, 1.0, 1.0, 1.0], steps_per_epoch=3, per_step=True)
    fig = charts.lr_figure(metrics, steps_per_epoch=3, warmup=True)
    assert list(fig.data[0].y) == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert list(fig.data[0].x) == [1, 2, 3, 4, 5, 6]
    shade = fig.layout.shapes[0]
    assert (shade.x0, shade.x1) == (1, 3)
    assert not charts.lr_figure(metrics, warmup=False).layout.shapes


def test_a_first_step_alone_is_drawn_as_a_point():
    # One logged step drew as a line of one point: nothing, on an empty axis from -1 to 1.
    first = rows("train_loss_step", [2.3], per_step=True) + rows("lr", [1e-4], per_step=True)
    for x in ("step", "epoch"):
        loss = trace(charts.loss_figure(first, x=x), "train loss (step)")
        lr = trace(charts.lr_figure(first, x=x), "learning rate")
        assert "markers" in loss.mode and "markers" in lr.mode
    many = rows("lr", [1e-4, 2e-4], per_step=True)
    assert trace(charts.lr_figure(many), "learning rate").mode == "lines"


def test_empty_charts_say_why_they_are_blank():
    # During the first epoch the metric chart had only step rows: it drew a bare grid.
    first_steps = rows("train_loss_step", [2.3, 2.2], per_step=True) + rows(
        "lr", [0.1, 0.2], per_step=True
    )
    fig = charts.metric_figure(first_steps, "roc_auc", best_epoch=None)
    assert not fig.data
    assert "end of the first epoch" in fig.layout.annotations[0].text
    assert not charts.metric_figure([], "roc_auc", best_epoch=2).layout.shapes
    assert "No loss yet" in charts.loss_figure([]).layout.annotations[0].text
    assert "No learning rate" in charts.lr_figure([]).layout.annotations[0].text
    compare = charts.compare_figure([{"id": 1, "metrics": first_steps}], "test_map")
    assert "test_map" in compare.layout.annotations[0].text
    # A chart with data carries no such note.
    assert not charts.loss_figure(first_steps).layout.annotations


def test_compare_figure_overlays_one_line_per_run():
    runs = [
        {"id": 1, "name": "a", "metrics": rows("test_f1", [0.1, 0.2])},
        {"id": 2, "name": "b", "metrics": rows("test_f1", [0.3, 0.4, 0.5])},
        {"id": 3, "name": "c", "metrics": rows("test_map", [0.3])},  # lacks the metric
    ]
    fig = charts.compare_figure(runs, "test_f1", x="epoch")
    assert [t.name for t in fig.data] == ["#1 a", "#2 b"]
    # Only run 3 has test_map: its lone line still names the run in a legend.
    lone = charts.compare_figure(runs, "test_map")
    assert [t.name for t in lone.data] == ["#3 c"] and lone.data[0].showlegend is True
    assert list(fig.data[1].y) == [0.3, 0.4, 0.5]
    assert list(fig.data[1].x) == [1, 2, 3]
    # A run with one point so far is marked, not an empty axis (per-step curves are lines).
    one = [{"id": 4, "name": "d", "metrics": rows("train_loss_step", [0.7])}]
    for group_by in (None, "optimizer"):
        one[0]["config"] = {"optimizer": "adam"}
        lone = charts.compare_figure(one, "train_loss_step", x="step", group_by=group_by)
        assert "markers" in lone.data[-1].mode


def test_parallel_coordinates_draws_text_settings_and_lr_on_a_log_axis():
    runs = [
        {
            "id": 1,
            "config": {"lr": 0.1, "epochs": 5, "optimizer": "sgd", "warmup": True},
            "value": 0.7,
        },
        {
            "id": 2,
            "config": {"lr": 0.001, "epochs": 5, "optimizer": "adam", "warmup": False},
            "value": 0.9,
        },
        {
            "id": 3,
            "config": {"lr": 0.5, "epochs": 5, "optimizer": "sgd", "warmup": True},
            "value": None,
        },
    ]
    fig = charts.parallel_coordinates(runs, "roc_auc")
    dims = fig.data[0].dimensions
    assert [d.label for d in dims] == ["lr (log)", "optimizer", "warmup", "roc_auc"]
    # lr spans two decades: log10 values, ticks labelled with the real ones.
    assert list(dims[0]["values"]) == pytest.approx([-1, -3])  # run 3 has no metric: left out
    assert list(dims[0]["ticktext"]) == ["0.001", "0.1"]
    assert list(dims[0]["tickvals"]) == pytest.approx([-3, -1])
    # Text settings are categories: an index per run, the names as tick labels.
    assert list(dims[1]["ticktext"]) == ["adam", "sgd"]
    assert list(dims[1]["values"]) == [1, 0]
    assert list(dims[2]["ticktext"]) == ["False", "True"]
    assert list(dims[-1]["values"]) == [0.7, 0.9]
    assert list(fig.data[0].line.color) == [0.7, 0.9]


def test_parameter_kinds_puts_lr_like_keys_on_a_log_axis_zeros_included():
    configs = [
        {"name": "a", "lr": 0.01, "weight_decay": 0.0, "momentum": 0.9, "batch_size": 16},
        {"name": "b", "lr": 0.002, "weight_decay": 1e-4, "momentum": 0.8, "batch_size": 64},
        {"name": "c", "lr": 0.005, "weight_decay": 1e-2, "momentum": 0.9, "batch_size": 32},
    ]
    # The run's name is not a parameter; lr spans less than a decade, weight_decay more.
    assert charts.parameter_kinds(configs) == {
        "lr": "linear",
        "weight_decay": "log",
        "momentum": "linear",
        "batch_size": "linear",
    }
    fig = charts.parallel_coordinates(
        [{"id": i, "config": c, "value": 0.5} for i, c in enumerate(configs)]
    )
    decay = fig.data[0].dimensions[1]
    # weight_decay 0 sits a decade below the smallest positive value, labelled 0.
    assert list(decay["values"]) == pytest.approx([-5, -4, -2])
    assert list(decay["ticktext"]) == ["0", "0.0001", "0.01"]


def test_parameter_kinds_keeps_numeric_keys_when_nothing_varies():
    configs = [{"lr": 0.1, "name": "x"}, {"lr": 0.1, "name": "y"}]
    assert charts.parameter_kinds(configs) == {"lr": "linear"}
    assert charts.parameter_kinds([]) == {}


def test_smooth_ema_is_debiased_and_zero_weight_is_the_identity():
    assert charts.smooth_ema([1.0, 2.0, 3.0], 0) == [1.0, 2.0, 3.0]
    smoothed = charts.smooth_ema([1.0, 1.0, 1.0, 5.0], 0.9)
    assert smoothed[:3] == pytest.approx([1.0, 1.0, 1.0])  # not pulled towards 0 at the start
    assert 1.0 < smoothed[3] < 5.0
    with pytest.raises(ValueError, match="smoothing"):
        charts.smooth_ema([1.0], 1.0)


def test_compare_figure_smooths_groups_and_logs():
    runs = [
        {
            "id": 1,
            "name": "a",
            "config": {"optimizer": "sgd"},
            "metrics": rows("test_f1", [0.1, 0.3]),
        },
        {
            "id": 2,
            "name": "b",
            "config": {"optimizer": "sgd"},
            "metrics": rows("test_f1", [0.3, 0.5]),
        },
        {"id": 3, "name": "c", "config": {"optimizer": "adam"}, "metrics": rows("test_f1", [0.9])},
    ]
    smooth = charts.compare_figure(runs, "test_f1", smoothing=0.5)
    line = trace(smooth, "#1 a")
    assert list(line.y) == pytest.approx(charts.smooth_ema([0.1, 0.3], 0.5))
    raw = [t for t in smooth.data if t.legendgroup == "#1 a" and not t.showlegend]
    assert list(raw[0].y) == [0.1, 0.3]  # the raw curve stays, faint
    grouped = charts.compare_figure(runs, "test_f1", group_by="optimizer")
    mean = trace(grouped, "optimizer=sgd (2 runs)")
    assert list(mean.y) == pytest.approx([0.2, 0.4])
    band = [t for t in grouped.data if t.legendgroup == "optimizer=sgd" and not t.showlegend]
    assert [list(t.y) for t in band] == [[0.3, 0.5], [0.1, 0.3]]  # max, then min filled to it
    assert band[1].fill == "tonexty"
    assert list(trace(grouped, "optimizer=adam (1 run)").y) == [0.9]
    assert charts.compare_figure(runs, "test_f1", log_y=True).layout.yaxis.type == "log"
    assert charts.compare_figure(runs, "test_f1").layout.yaxis.type != "log"


def test_parameter_scatter_any_parameter_against_the_metric():
    runs = [
        {"id": 1, "config": {"lr": 0.1, "optimizer": "sgd"}, "value": 0.7},
        {"id": 2, "config": {"lr": 0.001, "optimizer": "adam"}, "value": 0.9},
        {"id": 3, "config": {"lr": 0.01, "optimizer": "adam"}, "value": None},
    ]
    fig = charts.parameter_scatter(runs, "lr", "roc_auc")
    assert list(fig.data[0].x) == [0.1, 0.001] and list(fig.data[0].y) == [0.7, 0.9]
    assert list(fig.data[0].text) == ["#1", "#2"]
    assert fig.layout.xaxis.type == "log"
    text = charts.parameter_scatter(runs, "optimizer", "roc_auc")
    assert list(text.data[0].x) == ["sgd", "adam"] and text.layout.xaxis.type == "category"
    assert charts.parameter_scatter([runs[2]], "lr").layout.annotations  # says why it is empty


def test_metric_figure_puts_log_loss_on_its_own_axis():
    metrics = rows("test_accuracy", [0.5, 0.6]) + rows("test_log_loss", [10.4, 8.0])
    fig = charts.metric_figure(metrics, "accuracy")
    assert trace(fig, "log_loss").yaxis == "y2"
    assert trace(fig, "accuracy").yaxis in (None, "y")
    assert fig.layout.yaxis2.overlaying == "y" and fig.layout.yaxis2.title.text == "log_loss"
    plain = charts.metric_figure(rows("test_accuracy", [0.5]), "accuracy")
    assert "yaxis2" not in plain.layout.to_plotly_json()


def test_legends_sit_below_the_x_axis_title_clear_of_every_title():
    runs = [{"id": i, "name": "r", "metrics": rows("test_f1", [0.1, 0.2])} for i in (1, 2)]
    for fig in (
        charts.compare_figure(runs, "test_f1"),
        charts.metric_figure(rows("test_f1", [0.2]) + rows("test_log_loss", [3.0])),
        charts.loss_figure(rows("train_loss", [1.0]) + rows("test_loss", [1.2])),
    ):
        legend = fig.layout.legend
        # Just below the plot (y=-0.1) it covered the x axis title; above the plot, the chart's
        # title. Below the x axis title it covers neither (plotly grows the margin for it).
        assert legend.y <= -0.25 and legend.yanchor == "top" and legend.orientation == "h"


def test_confusion_figure_counts_and_normalised_with_detection_labels():
    fig = charts.confusion_figure([[3, 1], [0, 4]], ["cat", "dog"])
    heat = fig.data[0]
    assert [list(r) for r in heat.z] == [[3, 1], [0, 4]]
    assert heat.text[0][1] == "1"
    assert "counts" in fig.layout.title.text
    norm = charts.confusion_figure([[0.75, 0.25], [0.0, 1.0]], ["cat", "dog"], normalized=True)
    assert norm.data[0].text[0][0] == "0.75"
    assert norm.data[0].zmax == 1
    det = charts.confusion_figure(
        [[2, 0, 1], [0, 3, 0], [1, 0, 0]],
        ["a", "b", "not an object"],
        ["a", "b", "not detected"],
    )
    assert list(det.data[0].x) == ["a", "b", "not detected"]
    assert list(det.data[0].y) == ["a", "b", "not an object"]


def test_curves_figure_roc_and_pr_skip_empty_classes():
    roc = {
        "cat": {"fpr": [0, 0.5, 1], "tpr": [0, 1, 1], "auc": 0.75},
        "dog": {"fpr": [], "tpr": [], "auc": None},
    }
    fig = charts.curves_figure(roc, "roc")
    assert [t.name for t in fig.data] == ["cat (auc 0.750)", "chance"]
    pr = {"cat": {"precision": [1, 0.5], "recall": [0, 1], "ap": 0.8}}
    fig = charts.curves_figure(pr, "pr")
    assert list(fig.data[0].x) == [0, 1] and list(fig.data[0].y) == [1, 0.5]
    with pytest.raises(ValueError, match="kind"):
        charts.curves_figure(pr, "auc")


def test_pr_curve_figure_drops_undefined_points():
    fig = charts.pr_curve_figure(
        {"precision": [1.0, 0.5, 0.4], "recall": [0.2, None, 0.9], "thresholds": [0.9, 0.5, 0.1]}
    )
    assert list(fig.data[0].x) == [0.2, 0.9]
    assert list(fig.data[0].customdata) == [0.9, 0.1]


def test_class_distribution_figure_flat_and_per_split():
    flat = charts.class_distribution_figure({"a": 3, "b": 5})
    assert list(flat.data[0].y) == [3, 5]
    split = charts.class_distribution_figure(
        {"a": {"train": 3, "test": 1}, "b": {"train": 4, "test": 2}}
    )
    assert [t.name for t in split.data] == ["train", "test"]
    assert list(split.data[1].y) == [1, 2]
    assert split.layout.barmode == "stack"


def test_topk_figure_puts_numeric_class_names_on_a_category_axis():
    probs = {"0": 0.05, "3": 0.7, "8": 0.2, "9": 0.05}
    fig = charts.topk_figure(probs, k=3)
    assert fig.layout.yaxis.type == "category"
    assert list(fig.data[0].y) == ["0", "8", "3"]  # bottom to top: the best on top
    assert list(fig.data[0].text) == ["5.0%", "20.0%", "70.0%"]
