import json

import pytest

from engine import choices
from engine.config import (
    ConfigError,
    RunConfig,
    as_used,
    field_info,
    load_config,
    parse_overrides,
)


def errors_of(data):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(data)
    return info.value.by_field()


def test_defaults_follow_design():
    cfg = RunConfig.from_dict({"dataset": "d"})
    assert cfg.task == "classification"
    assert cfg.model_name == "efficientnet_b4"
    assert cfg.metric_name == "roc_auc"
    assert (cfg.optimizer, cfg.learning_rate, cfg.lr_schedule, cfg.batch_size, cfg.epochs) == (
        "adam",
        0.001,
        "plateau",
        32,
        50,
    )
    assert (cfg.early_stopping_patience, cfg.early_stopping_delta) == (5, 0.001)
    assert cfg.gamma == 0.1
    det = RunConfig.from_dict({"dataset": "d", "task": "detection", "lr_schedule": "exponential"})
    assert det.model_name == "fasterrcnn_resnet50_fpn"
    assert det.metric_name == "f1"
    assert det.gamma == 0.95
    assert det.resolved()["model"] == "fasterrcnn_resnet50_fpn"


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("task", "segmentation", "one of classification, detection"),
        ("dataset_format", "parquet", "one of auto, imagefolder"),
        ("test_ratio", 0.95, "at most 0.9"),
        ("test_ratio", 0, "at least 0.01"),
        ("seed", -1, "at least 0"),
        ("optimizer", "lion", "one of adam, sgd, rmsprop, adamax, adagrad, adadelta"),
        ("lr", "fast", "a number"),
        ("lr", -0.1, "at least 0.0"),
        ("weight_decay", -1, "at least 0.0"),
        ("momentum", 1.5, "at most 1.0"),
        ("lr_schedule", "cosine", "one of plateau, step, exponential"),
        ("plateau_patience", -1, "at least 0"),
        ("plateau_factor", 2, "at most 1.0"),
        ("step_size", 0, "at least 1"),
        ("lr_gamma", 1.5, "at most 1.0"),
        ("warmup", "maybe", "true or false"),
        ("epochs", 0, "at least 1"),
        ("epochs", 2.5, "a whole number"),
        ("early_stopping", "perhaps", "true or false"),
        ("early_stopping_patience", 0, "at least 1"),
        ("early_stopping_delta", -0.1, "at least 0.0"),
        ("batch_size", 0, "at least 1"),
        ("metric", "bleu", "for classification: roc_auc, accuracy"),
        ("augment_rotation", 270, "at most 180.0"),
        ("crop_min_ratio", 0, "at least 0.05"),
        ("device", "tpu", "one of auto, cpu, cuda"),
        ("num_processes", 0, "at least 1"),
        ("mixed_precision", "fp8", "one of no, fp16, bf16"),
        ("retrained_layers", -2, "at least 0"),
        ("image_size", 8, "at least 16"),
        ("model", "fasterrcnn_resnet50_fpn", "for classification"),
        ("pretrained", "sometimes", "true or false"),
        ("colour", 1, "a known key"),
    ],
)
def test_every_field_error_names_field_value_and_allowed(key, value, expected):
    errors = errors_of({"dataset": "d", key: value})
    assert key in errors
    assert repr(value) in errors[key] or str(value) in errors[key]
    assert expected in errors[key]


def test_detection_specific_errors():
    errors = errors_of(
        {
            "dataset": "d",
            "task": "detection",
            "model": "efficientnet_b0",
            "metric": "roc_auc",
            "retrained_layers": 6,
            "dataset_format": "imagefolder",
        }
    )
    assert "for detection" in errors["model"]
    assert "map_50" in errors["metric"]
    assert "0 to 5" in errors["retrained_layers"]
    assert "coco" in errors["dataset_format"]


def test_a_key_of_the_other_task_is_refused_naming_the_key_that_applies():
    # image_size was silently ignored by detectors, which resize with min_size / max_size.
    errors = errors_of({"dataset": "d", "task": "detection", "image_size": 512})
    assert errors["image_size"] == (
        "image_size: got 512, expected empty for detection: image_size applies to "
        "classification only; detection uses min_size and max_size"
    )
    errors = errors_of({"dataset": "d", "min_size": 512, "max_size": 256})
    assert errors["min_size"] == (
        "min_size: got 512, expected 800 for classification: min_size applies to detection "
        "only; classification uses image_size"
    )
    assert "classification uses image_size" in errors["max_size"]


def test_keys_of_the_other_task_at_their_defaults_never_trip_validation():
    # What the form sends for hidden fields, and what every stored config holds.
    for task in ("classification", "detection"):
        defaults = {f["name"]: f["default"] for f in field_info() if f["name"] != "dataset"}
        RunConfig.from_dict({**defaults, "dataset": "d", "task": task})
    RunConfig.from_dict({"dataset": "d", "task": "detection", "min_size": 512, "max_size": 640})
    RunConfig.from_dict({"dataset": "d", "image_size": 64})


def test_task_specific_keys_say_which_tasks_they_apply_to():
    tasks = {f["name"]: f["tasks"] for f in field_info()}
    assert tasks["image_size"] == ("classification",)
    assert tasks["min_size"] == tasks["max_size"] == ("detection",)
    assert tasks["lr"] is None  # every task


def test_all_errors_reported_at_once():
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"lr": "x", "epochs": 0, "optimizer": "nope"})
    fields = {e.field for e in info.value.errors}
    assert fields == {"lr", "epochs", "optimizer", "dataset"}
    assert "lr: got 'x', expected a number" in str(info.value)


def test_strings_from_forms_and_cli_are_coerced():
    cfg = RunConfig.from_dict(
        {
            "dataset": "d",
            "batch_size": "8",
            "lr": "1e-4",
            "pretrained": "false",
            "image_size": "",
            "warmup": "yes",
        }
    )
    assert cfg.batch_size == 8 and cfg.lr == 1e-4
    assert cfg.pretrained is False and cfg.warmup is True
    assert cfg.image_size is None


def test_toml_json_and_overrides(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('dataset = "data/digits"\nmodel = "efficientnet_b0"\nepochs = 3\n')
    cfg = load_config(toml, ["epochs=5", "lr=0.01"])
    assert (cfg.dataset, cfg.model, cfg.epochs, cfg.lr) == (
        "data/digits",
        "efficientnet_b0",
        5,
        0.01,
    )
    js = tmp_path / "run.json"
    js.write_text(json.dumps({"dataset": "x", "task": "detection"}))
    assert load_config(js).task == "detection"


FLOAT_KEYS = [f["name"] for f in field_info() if f["type"].startswith("float")]


@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_nan_and_inf_are_refused_for_every_float_key(key, text):
    # nan compares false with every bound, so it passed the range check and failed later.
    errors = errors_of({"dataset": "d", key: text})
    assert list(errors) == [key]
    assert errors[key].startswith(f"{key}: got {text}, expected a finite number")
    assert errors_of({"dataset": "d", key: float(text)}) == errors  # the form's float


def test_nan_and_inf_name_the_field_and_its_range_from_set_toml_and_json(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["dataset=d", "lr=nan", "weight_decay=inf"])
    assert info.value.by_field() == {
        "lr": "lr: got nan, expected a finite number from 0.0 to 10.0",
        "weight_decay": "weight_decay: got inf, expected a finite number of at least 0.0",
    }
    toml = tmp_path / "run.toml"
    toml.write_text('dataset = "d"\nlr = nan\nweight_decay = inf\nmomentum = -inf\n')
    with pytest.raises(ConfigError) as from_toml:
        load_config(toml)
    assert from_toml.value.by_field() == {
        **info.value.by_field(),
        "momentum": "momentum: got -inf, expected a finite number from 0.0 to 1.0",
    }
    js = tmp_path / "run.json"
    js.write_text('{"dataset": "d", "lr": NaN, "weight_decay": Infinity}')
    with pytest.raises(ConfigError) as from_json:
        load_config(js)
    assert from_json.value.by_field() == info.value.by_field()
    # A whole-number key given inf or nan is refused as not a whole number, as before.
    toml.write_text('dataset = "d"\nepochs = inf\nbatch_size = nan\n')
    with pytest.raises(ConfigError) as ints:
        load_config(toml)
    assert set(ints.value.by_field()) == {"epochs", "batch_size"}
    assert "expected a whole number" in ints.value.by_field()["epochs"]


def test_broken_files_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"dataset": "x",\n "lr": }')
    with pytest.raises(ConfigError, match=r"bad.json.*line 2"):
        load_config(bad)
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("dataset = \n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(bad_toml)
    with pytest.raises(ConfigError, match="missing.toml"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])


def test_field_info_covers_every_key_with_group_and_help():
    info = {f["name"]: f for f in field_info()}
    for key in (
        "task",
        "dataset",
        "dataset_format",
        "test_ratio",
        "seed",
        "model",
        "pretrained",
        "retrained_layers",
        "image_size",
        "optimizer",
        "lr",
        "weight_decay",
        "momentum",
        "lr_schedule",
        "plateau_patience",
        "plateau_factor",
        "step_size",
        "lr_gamma",
        "warmup",
        "epochs",
        "early_stopping",
        "early_stopping_patience",
        "early_stopping_delta",
        "batch_size",
        "metric",
        "backbone_lr_factor",
        "label_smoothing",
        "augment_color",
        "augment_hflip",
        "augment_vflip",
        "augment_rotation",
        "augment_crop",
        "crop_min_ratio",
        "device",
        "num_processes",
        "mixed_precision",
    ):
        assert info[key]["group"] and info[key]["help"], key


def test_detection_fills_its_own_batch_and_epochs_when_left_unset():
    # A detector at 800x1333 with RunConfig's classification batch of 32 does not fit a CPU or
    # a small GPU: left unset, detection takes its task's defaults; set, the value holds.
    det = RunConfig.from_dict({"task": "detection", "dataset": "d"})
    assert (det.batch_size, det.epochs) == (4, 20)
    chosen = RunConfig.from_dict({"task": "detection", "dataset": "d", "batch_size": 32})
    assert (chosen.batch_size, chosen.epochs) == (32, 20)
    cls = RunConfig.from_dict({"dataset": "d"})
    assert (cls.batch_size, cls.epochs) == (32, 50)


def test_fine_tuning_defaults_win_the_quality_benchmark():
    # bench/bench_quality.py: augmentation and label smoothing by default.
    cls = RunConfig.from_dict({"dataset": "d"})
    assert (cls.augment_hflip, cls.augment_color, cls.augment_crop) == (True, True, True)
    assert not cls.augment_vflip and cls.augment_rotation == 0
    # The pre-trained backbone at a tenth of the rate of the new head (which starts small:
    # test_models), its BatchNorm statistics kept, won for Adam and SGD alike.
    assert cls.label_smoothing == 0.1 and cls.backbone_lr_factor == 0.1
    assert (cls.keep_bn_statistics, cls.bn_statistics) == ("auto", "on")
    # Detection keeps torchvision's reference recipe: flips only.
    det = RunConfig.from_dict({"task": "detection", "dataset": "d"})
    assert (det.augment_hflip, det.augment_color, det.augment_crop) == (True, False, False)
    chosen = RunConfig.from_dict({"task": "detection", "dataset": "d", "augment_crop": True})
    assert chosen.augment_crop
    # Label smoothing is a classification loss: a detector would ignore it, so it is refused.
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"task": "detection", "dataset": "d", "label_smoothing": 0.2})
    assert "label_smoothing" in err.value.by_field()


def test_detection_accepts_the_off_values_of_classification_keys():
    det = RunConfig.from_dict(
        {"task": "detection", "dataset": "d", "label_smoothing": 0, "cache_images": "off"}
    )
    stored = det.resolved()
    assert (stored["label_smoothing"], stored["cache_images"]) == (0.0, "off")
    assert (
        RunConfig.from_dict({"task": "detection", "dataset": "d"}).resolved()["label_smoothing"]
        == 0.0
    )
    RunConfig.from_dict(stored)  # a stored detection config reads back
    errors = errors_of({"task": "detection", "dataset": "d", "label_smoothing": 0.2})
    assert errors["label_smoothing"] == (
        "label_smoothing: got 0.2, expected 0.0 (or unset) for detection: label_smoothing "
        "applies to classification only; detection uses the detector's own losses"
    )


def test_a_stored_config_from_before_a_key_keeps_what_its_run_used():
    old = {"dataset": "d", "optimizer": "sgd", "lr": 0.01}  # stored before the keys existed
    cfg = RunConfig.from_stored(old)
    assert (cfg.label_smoothing, cfg.backbone_lr_factor, cfg.nesterov) == (0.0, 1.0, False)
    new = RunConfig.from_dict(old).resolved()  # stored today: its own values hold
    again = RunConfig.from_stored(new)
    assert (again.label_smoothing, again.nesterov) == (0.1, True)
    # A detection run from before roi_samples trained torchvision's 512 proposals per image;
    # a classification run never used the key, so it reads back valid with today's default.
    detection = RunConfig.from_stored({"task": "detection", "dataset": "d"})
    assert detection.roi_samples == 512
    assert RunConfig.from_stored({"dataset": "d"}).roi_samples == RunConfig().roi_samples
    assert RunConfig.from_stored(RunConfig.from_dict({"task": "detection", "dataset": "d"}).resolved()).roi_samples == 128  # fmt: skip


def test_the_fine_tuning_recipe_is_classifications_and_old_runs_keep_theirs():
    cfg = RunConfig.from_dict({"dataset": "d"})
    assert (cfg.keep_bn_statistics, cfg.backbone_lr_factor) == ("auto", 0.1)
    assert cfg.resolved()["keep_bn_statistics"] == "on"  # what the run really does
    det = RunConfig.from_dict({"task": "detection", "dataset": "d"})
    assert det.backbone_lr_factor == 1.0  # measured for classification only
    assert det.resolved()["keep_bn_statistics"] == "off"  # what a detection run stores
    old = RunConfig.from_stored({"dataset": "d"})  # stored before the recipe
    assert (old.bn_statistics, old.backbone_lr_factor) == ("off", 1.0)
    # A run stored after backbone_lr_factor came (its factor set low) and before
    # keep_bn_statistics re-estimated: so it reads back.
    between = RunConfig.from_stored({"dataset": "d", "backbone_lr_factor": 0.1})
    assert between.bn_statistics == "off"


@pytest.mark.parametrize(
    ("factor", "auto"), [(0.03, "on"), (0.1, "on"), (0.3, "on"), (0.31, "off"), (1.0, "off")]
)
def test_kept_statistics_follow_the_backbone_rate_unless_set(factor, auto):
    # Kept statistics fit only layers that move slowly (bench/README.md): `auto` keeps them
    # up to KEPT_STATISTICS_MAX_FACTOR, so a config from before the key with one rate for all
    # (an API call, a config file) does not get the pair that collapsed in the benchmark.
    assert choices.KEPT_STATISTICS_MAX_FACTOR == 0.3
    cfg = RunConfig.from_dict({"dataset": "d", "backbone_lr_factor": factor})
    assert cfg.bn_statistics == auto and cfg.resolved()["keep_bn_statistics"] == auto
    for setting in ("on", "off"):  # set, it holds at any factor
        chosen = {"dataset": "d", "backbone_lr_factor": factor, "keep_bn_statistics": setting}
        assert RunConfig.from_dict(chosen).bn_statistics == setting


def test_keep_bn_statistics_takes_auto_on_off_and_the_words_of_a_boolean():
    for value, setting in [(True, "on"), (False, "off"), ("false", "off"), ("Yes", "on")]:
        cfg = RunConfig.from_dict({"dataset": "d", "keep_bn_statistics": value})
        assert cfg.keep_bn_statistics == setting  # a TOML boolean, `--set key=false`
    assert errors_of({"dataset": "d", "keep_bn_statistics": "maybe"})["keep_bn_statistics"] == (
        "keep_bn_statistics: got 'maybe', expected one of auto, on, off"
    )
    # A detector never keeps them: `on` there would be silently ignored, so it is refused.
    errors = errors_of({"task": "detection", "dataset": "d", "keep_bn_statistics": "on"})
    assert errors["keep_bn_statistics"].startswith(
        "keep_bn_statistics: got 'on', expected off (or unset) for detection"
    )
    assert RunConfig.from_dict({"task": "detection", "dataset": "d", "keep_bn_statistics": "off"})


def test_a_stored_config_reads_without_the_keys_of_another_task():
    # A classification run stores roi_samples at its default of the day; were that default
    # changed later, the stored value must not make the run's config invalid, nor show as a
    # difference between runs.
    stored = {**RunConfig.from_dict({"dataset": "d"}).resolved(), "roi_samples": 64}
    assert "roi_samples" not in as_used(stored)
    assert RunConfig.from_stored(stored).roi_samples == RunConfig().roi_samples
    detection = {**RunConfig.from_dict({"task": "detection", "dataset": "d"}).resolved()}
    assert as_used(detection)["roi_samples"] == 128 and "label_smoothing" not in as_used(detection)
    # The stored keys keep their order (the compare page's rows), the missing ones come after.
    assert list(as_used({"task": "classification", "dataset": "d"}))[:2] == ["task", "dataset"]


def test_roi_samples_is_a_detection_key():
    assert errors_of({"dataset": "d", "roi_samples": 64})["roi_samples"] == (
        "roi_samples: got 64, expected 128 for classification: roi_samples applies to "
        "detection only; classification uses no proposals"
    )
    assert errors_of({"task": "detection", "dataset": "d", "roi_samples": 8})["roi_samples"] == (
        "roi_samples: got 8, expected a value of at least 16"
    )
