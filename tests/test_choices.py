"""engine.choices: each choice declared once, every user of it implementing exactly that list."""

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from engine import choices, config_table
from engine.config import ConfigError, RunConfig, field_info

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("lookup", "bad", "valid"),
    [
        (choices.get_task, "segmentation", "classification, detection"),
        (choices.get_optimizer, "lamb", "adam, sgd, rmsprop, adamax, adagrad, adadelta"),
        (choices.get_schedule, "cosine", "plateau, step, exponential"),
        (choices.get_format, "parquet", "imagefolder, csv, coco, voc, yolo"),
        (choices.get_device, "tpu", "auto, cpu, cuda"),
        (choices.get_precision, "fp8", "no, fp16, bf16"),
        (choices.get_export_format, "tflite", "onnx, torchscript, safetensors"),
    ],
)
def test_lookups_name_the_bad_value_and_list_the_valid_ones(lookup, bad, valid):
    with pytest.raises(ValueError, match=f"'{bad}': expected one of {valid}$"):
        lookup(bad)


def test_metric_lookup_is_per_task():
    assert choices.get_metric("detection", "map_50").label == "mAP@.5"
    with pytest.raises(ValueError, match="'roc_auc': expected one of f1, precision, recall, map"):
        choices.get_metric("detection", "roc_auc")
    with pytest.raises(ValueError, match="unknown task 'ocr'"):
        choices.metrics_for("ocr")


def test_registries_are_read_only_data():
    with pytest.raises(TypeError):
        choices.OPTIMIZERS["lamb"] = choices.OPTIMIZERS["adam"]
    with pytest.raises(AttributeError):
        choices.OPTIMIZERS["adam"].has_momentum = True


def test_every_task_default_is_one_of_its_choices():
    for task in choices.TASKS.values():
        assert task.default_model in task.models
        assert task.default_metric in choices.metrics_for(task.name)
        assert choices.formats_for(task.name), task.name
    assert all(m.mode in choices.METRIC_MODES for m in choices.METRICS)
    assert all(set(f.tasks) <= set(choices.TASKS) for f in choices.DATASET_FORMATS.values())


def test_metric_mode_is_the_registered_one():
    assert choices.metric_mode("log_loss") == "min"
    assert choices.metric_mode("loss") == "min"
    assert choices.metric_mode("roc_auc") == choices.metric_mode("map") == "max"
    cfg = RunConfig.from_dict({"dataset": "d", "metric": "log_loss"})
    assert cfg.metric_mode == "min"


def test_check_implemented_names_what_is_missing_and_extra():
    choices.check_implemented("things", ["a", "b"], {"b": 1, "a": 2})
    with pytest.raises(RuntimeError, match=r"not implemented: \['b'\].*not registered: \['c'\]"):
        choices.check_implemented("things", ["a", "b"], ["a", "c"])


def test_config_validates_against_the_registries():
    info = {f["name"]: f for f in field_info()}
    assert info["task"]["choices"] == tuple(choices.TASKS)
    assert info["optimizer"]["choices"] == tuple(choices.OPTIMIZERS)
    assert info["lr_schedule"]["choices"] == tuple(choices.LR_SCHEDULES)
    assert info["dataset_format"]["choices"] == ("auto", *choices.DATASET_FORMATS)
    assert info["device"]["choices"] == tuple(choices.DEVICES)
    assert info["mixed_precision"]["choices"] == tuple(choices.MIXED_PRECISIONS)
    for task in choices.TASKS:
        for metric in choices.metrics_for(task):
            RunConfig.from_dict({"dataset": "d", "task": task, "metric": metric})
        for fmt in choices.formats_for(task):
            RunConfig.from_dict({"dataset": "d", "task": task, "dataset_format": fmt})
    for schedule in choices.LR_SCHEDULES.values():
        cfg = RunConfig.from_dict({"dataset": "d", "lr_schedule": schedule.name})
        assert cfg.gamma == schedule.default_gamma


def test_precisions_a_cpu_cannot_run_are_refused_on_cpu():
    for precision in choices.MIXED_PRECISIONS.values():
        data = {"dataset": "d", "device": "cpu", "mixed_precision": precision.name}
        if precision.on_cpu:
            RunConfig.from_dict(data)
        else:
            with pytest.raises(ConfigError, match="on cpu: no or bf16"):
                RunConfig.from_dict(data)


def test_optim_implements_exactly_the_registered_names():
    torch = pytest.importorskip("torch")
    from engine import optim

    assert set(optim.SCHEDULE_ARGS) == set(choices.LR_SCHEDULES)
    for info in choices.OPTIMIZERS.values():
        cls = getattr(torch.optim, info.torch_class)
        takes_momentum = "momentum" in inspect.signature(cls).parameters
        assert takes_momentum == info.has_momentum, info.name
    for info in choices.LR_SCHEDULES.values():
        cls = getattr(torch.optim.lr_scheduler, info.torch_class)
        assert (cls is torch.optim.lr_scheduler.ReduceLROnPlateau) == info.follows_metric


def test_evaluate_reports_every_registered_metric():
    import numpy as np

    from engine import evaluate

    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    reported = evaluate.classification_metrics(probs, [0, 1, 1])
    assert set(reported) == set(choices.metrics_for("classification"))
    assert set(evaluate.classification_metrics(np.zeros((0, 2)), [])) == set(reported)
    boxes = {"boxes": np.array([[0, 0, 10, 10]]), "labels": np.array([0])}
    found = evaluate.detection_metrics([{**boxes, "scores": np.array([0.9])}], [boxes], 1)
    assert set(choices.metrics_for("detection")) <= set(found)


def test_dataset_readers_cover_exactly_the_registered_formats():
    from engine.data import FORMATS

    assert set(FORMATS) == set(choices.TASKS)
    for task in choices.TASKS:
        assert list(FORMATS[task]) == list(choices.formats_for(task))


def test_export_implements_exactly_the_registered_formats():
    pytest.importorskip("torch")
    from engine import export

    assert list(export.EXPORTERS) == list(choices.EXPORT_FORMATS)
    assert export.default_path(3, "torchscript", home=ROOT / "x").name == "model.pt"


def test_cli_offers_the_registered_choices():
    from engine.cli import build_parser

    parser = build_parser()
    for argv, bad in (
        (["export", "1", "--format"], "tflite"),
        (["datasets", "inspect", "p", "--format"], "parquet"),
        (["datasets", "inspect", "p", "--task"], "ocr"),
    ):
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, bad])
    for fmt in choices.EXPORT_FORMATS:
        assert parser.parse_args(["export", "1", "--format", fmt]).format == fmt
    for fmt in choices.format_names():
        assert parser.parse_args(["datasets", "inspect", "p", "--format", fmt]).format == fmt


def test_choices_import_nothing_heavy():
    code = (
        "import sys, engine.choices, engine.config, engine.config_table; "
        "heavy = [m for m in ('torch', 'timm', 'torchvision', 'numpy') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# -- the README's config table --------------------------------------------------------------


def test_readme_config_table_is_generated_from_run_config():
    readme = (ROOT / "README.md").read_text()
    assert config_table.readme_section(readme) == config_table.render_config_table(), (
        "README.md's config table is stale; regenerate it with: " + config_table.REGENERATE
    )


def test_config_table_lists_every_key_with_its_default_and_choices():
    table = config_table.render_config_table()
    for info in field_info():
        assert f"| `{info['name']}` |" in table, info["name"]
    assert "| `optimizer` | adam | adam, sgd, rmsprop, adamax, adagrad, adadelta |" in table
    assert "| `lr` | adam: 0.001, sgd: 0.01, rmsprop: 0.001, adamax: 0.002," in table
    assert "| `model` | efficientnet_b4 / fasterrcnn_resnet50_fpn |" in table
    assert "log_loss (lower is better)" in table
    assert "| `pretrained` | true | bool |" in table


def test_config_table_write_replaces_only_its_section(tmp_path):
    readme = tmp_path / "README.md"
    start, end = config_table.START, config_table.END
    readme.write_text(f"# Title\n\nBefore.\n\n{start}\nold table\n{end}\n\nAfter.\n")
    assert config_table.main(["--write", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\nBefore.\n\n" + start + "\n**Data**")
    assert text.endswith(end + "\n\nAfter.\n")
    assert config_table.readme_section(text) == config_table.render_config_table()
    config_table.main(["--write", str(readme)])
    assert readme.read_text() == text  # idempotent
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="config-table:start"):
        config_table.main(["--write", str(readme)])
