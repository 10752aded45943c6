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


def test_parallel_coordinates_uses_varying_numeric_parameters_and_the_metric():
    runs = [
        {"id": 1, "config": {"lr": 0.1, "epochs": 5, "model": "b0", "warmup": True}, "value": 0.7},
        {
            "id": 2,
            "config": {"lr": 0.01, "epochs": 5, "model": "b4", "warmup": False},
            "value": 0.9,
        },
        {"id": 3, "config": {"lr": 0.5, "epochs": 5, "model": "b0", "warmup": True}, "value": None},
    ]
    fig = charts.parallel_coordinates(runs, "roc_auc")
    dims = fig.data[0].dimensions
    assert [d.label for d in dims] == ["lr", "warmup", "roc_auc"]
    assert list(dims[0]["values"]) == [0.1, 0.01]  # run 3 has no metric: left out
    assert list(dims[-1]["values"]) == [0.7, 0.9]
    assert list(fig.data[0].line.color) == [0.7, 0.9]


def test_numeric_parameters_keeps_all_when_nothing_varies():
    configs = [{"lr": 0.1, "name": "x"}, {"lr": 0.1, "name": "y"}]
    assert charts.numeric_parameters(configs) == ["lr"]
    assert charts.numeric_parameters([]) == []


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
