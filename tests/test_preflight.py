"""engine.preflight.check_run, and that the New run form and `visionboard train` both use it."""

from pathlib import Path

import pytest
from factories import ADMIN, write_digits_imagefolder
from streamlit.testing.v1 import AppTest

from engine import cli, store
from engine.config import RunConfig
from engine.preflight import check_run

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
OTHER_PATH = "a path on the server…"
OTHER_MODEL = "other timm name…"


@pytest.fixture
def tiny(home, db):
    root = write_digits_imagefolder(home / "data" / "tiny", per_class=4, classes=range(3))
    store.register_dataset(db, "tiny", str(root), "imagefolder", "classification", {}, by=ADMIN)
    return root


@pytest.fixture
def no_weights(monkeypatch, tmp_path):
    """Empty timm, Hugging Face and torchvision caches: no pre-trained weights on this machine."""
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def config(**over) -> RunConfig:
    return RunConfig.from_dict({"model": "efficientnet_b0", "pretrained": False, **over})


def by_field(problems) -> dict[str, str]:
    return {p.field: str(p) for p in problems}


def test_a_run_that_can_start_has_no_problems(db, tiny):
    assert check_run(config(dataset=str(tiny)), db) == []
    assert check_run(config(dataset="tiny"), db) == []  # a registered name


def test_an_unknown_model_names_the_choices(db, tiny):
    problems = by_field(check_run(config(dataset="tiny", model="resnet_nope"), db))
    assert list(problems) == ["model"]
    assert problems["model"].startswith("model: unknown model 'resnet_nope': expected one of")
    assert "efficientnet_b0" in problems["model"]


def test_a_missing_dataset_names_the_registered_ones(db, tiny, home):
    problems = by_field(check_run(config(dataset=str(home / "nowhere")), db))
    assert list(problems) == ["dataset"]
    assert "does not exist" in problems["dataset"] and "(tiny)" in problems["dataset"]


def test_a_registered_dataset_whose_folder_went_away(db, home):
    folder = home / "datasets" / "gone"
    folder.mkdir(parents=True)  # the store registers only a folder that is there
    store.register_dataset(db, "gone", str(folder), "imagefolder", "classification", {}, by=ADMIN)
    folder.rmdir()
    problems = by_field(check_run(config(dataset="gone"), db))
    assert "registered dataset 'gone'" in problems["dataset"]
    assert "does not exist any more" in problems["dataset"]


def test_a_dataset_that_does_not_read_as_the_task(db, tiny, home):
    one_class = home / "data" / "one"
    (one_class / "only").mkdir(parents=True)
    assert "dataset" in by_field(check_run(config(dataset=str(one_class)), db))
    # A classification folder read as detection: the dataset's own error, beside its field.
    problems = by_field(check_run(config(dataset="tiny", task="detection", model=None), db))
    assert list(problems) == ["dataset"]


def test_pretrained_needs_weights_on_this_machine(db, tiny, no_weights, monkeypatch):
    problems = by_field(check_run(config(dataset="tiny", pretrained=True), db))
    assert list(problems) == ["pretrained"]
    assert "visionboard weights import efficientnet_b0 FILE" in problems["pretrained"]
    assert "pretrained = false" in problems["pretrained"]

    import engine.weights

    def imported(model, home=None):
        return {"model": model, "available": True, "source": "imported", "path": "/w"}

    monkeypatch.setattr(engine.weights, "weights_status", imported)
    assert check_run(config(dataset="tiny", pretrained=True), db) == []


# -- the form and the CLI refuse the same runs, with the same messages ------------------------


def refused_by_cli(home, sets: dict, capsys) -> str:
    args = [a for key, value in sets.items() for a in ("--set", f"{key}={value}")]
    assert cli.main(["--home", str(home), "train", *args, "--no-follow"]) == 2
    return capsys.readouterr().err


def refused_by_form(dataset: str, model: str | None, pretrained: bool) -> list[str]:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("pages/new_run.py").run()
    at.selectbox(key="cfg_dataset_choice").set_value(OTHER_PATH).run()
    at.text_input(key="cfg_dataset_path").set_value(dataset)
    if model in at.selectbox(key="cfg_model").options:
        at.selectbox(key="cfg_model").set_value(model).run()
    else:
        at.selectbox(key="cfg_model").set_value(OTHER_MODEL).run()
        at.text_input(key="cfg_model_other").set_value(model)
    at.checkbox(key="cfg_pretrained").set_value(pretrained)
    at.button(key="queue_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return [e.value for e in at.error]


@pytest.mark.parametrize(
    "case",
    [
        {"model": "resnet_nope", "pretrained": False, "dataset": "nowhere"},
        {"model": "efficientnet_b0", "pretrained": True, "dataset": "one_class"},
    ],
)
def test_form_and_cli_refuse_the_same_runs_alike(home, db, no_weights, capsys, monkeypatch, case):
    monkeypatch.setenv("VISIONBOARD_SAMPLES", "0")  # the CLI writes them; the form need not
    one_class = home / "data" / "one_class"
    (one_class / "only").mkdir(parents=True)
    dataset = str(home / "data" / case["dataset"])
    sets = {"dataset": dataset, "model": case["model"], "pretrained": case["pretrained"]}

    cli_err = refused_by_cli(home, sets, capsys)
    form_errors = refused_by_form(dataset, case["model"], case["pretrained"])

    expected = [str(p) for p in check_run(RunConfig.from_dict(sets), db)]
    assert len(expected) == 2  # two problems each: both are reported, not only the first
    for message in expected:
        assert f"  - {message}" in cli_err
        assert message in form_errors
    assert "nothing queued" in cli_err
    assert any("Nothing was queued" in m for m in form_errors)
    assert store.list_runs(db) == []


# -- a dataset path is made absolute once, at submit --------------------------------------------


def test_resolve_paths_makes_a_path_absolute_and_keeps_registered_names(
    db, tiny, home, monkeypatch
):
    from engine.preflight import resolve_paths

    monkeypatch.chdir(home)
    assert resolve_paths(config(dataset="data/tiny"), db).dataset == str(tiny)
    assert resolve_paths(config(dataset="./data/../data/tiny"), db).dataset == str(tiny)
    assert resolve_paths(config(dataset="tiny"), db).dataset == "tiny"  # registered
    assert resolve_paths(config(dataset=str(tiny)), db).dataset == str(tiny)
    # The check resolves alike: from elsewhere the same relative path is not there.
    assert check_run(config(dataset="data/tiny"), db) == []
    monkeypatch.chdir(home / "data")
    problems = by_field(check_run(config(dataset="data/tiny"), db))
    assert "'data/tiny' does not exist" in problems["dataset"]


def test_a_relative_path_given_to_train_is_read_from_where_it_was_given(
    db, home, tmp_path, monkeypatch, capsys
):
    """`data/tiny` was checked against the CLI's directory and read from the trainer's."""
    from engine import train

    monkeypatch.setenv("VISIONBOARD_SAMPLES", "0")
    project = tmp_path / "project"
    data = write_digits_imagefolder(project / "data" / "tiny", per_class=4, classes=range(3))
    monkeypatch.chdir(project)
    sets = ["dataset=data/tiny", "model=efficientnet_b0", "pretrained=false", "image_size=32"]
    sets += ["epochs=1", "batch_size=4", "num_workers=0", "device=cpu", "metric=accuracy"]
    args = [a for item in sets for a in ("--set", item)]
    assert cli.main(["--home", str(home), "train", *args, "--no-follow"]) == 0
    (run,) = store.list_runs(db)
    assert run["config"]["dataset"] == run["dataset"] == str(data)
    # The trainer runs in another directory (the worker's): it reads the same folder.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert train.main(["--run-id", str(run["id"]), "--home", str(home)]) == 0
    assert store.get_run(db, run["id"])["summary"]["epochs_trained"] == 1


def test_the_form_stores_a_relative_path_as_absolute(db, tiny, home, monkeypatch):
    monkeypatch.chdir(home)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("pages/new_run.py").run()
    at.selectbox(key="cfg_dataset_choice").set_value(OTHER_PATH).run()
    at.text_input(key="cfg_dataset_path").set_value("data/tiny")
    at.selectbox(key="cfg_model").set_value("efficientnet_b0").run()
    at.checkbox(key="cfg_pretrained").set_value(False)
    at.button(key="queue_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    (run,) = store.list_runs(db)
    assert run["config"]["dataset"] == str(tiny)
