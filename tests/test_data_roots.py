"""Nothing outside the data roots: dataset paths, CSV image paths and images picked on the
server (engine/data_roots.py), with `..`, absolute paths, symlinks and URL-encoded names; a
missing path and one outside get the same message; a file that is no dataset is never quoted.
And the Runs page's change token (store.runs_version), which lets it follow every user's runs.
"""

import os
from pathlib import Path

import pytest
from factories import (
    ADMIN,
    build_cvat_coco,
    build_label_studio_yolo,
    build_roboflow_yolo,
    build_voc_imagesets,
    write_digits_csv,
    write_digits_imagefolder,
)
from PIL import Image
from streamlit.testing.v1 import AppTest

from engine import data_roots, store
from engine.config import RunConfig
from engine.data import inspect_dataset, load_splits
from engine.preflight import check_run

ROOT = Path(__file__).resolve().parent.parent
SECRET = "root:$y$j9T$not-a-real-hash:19000:0:99999:7:::"


@pytest.fixture
def roots(tmp_path, home, monkeypatch):
    """Roots: the data directory `home` and `tmp_path/data`; `tmp_path/outside` is neither."""
    data = tmp_path / "data"
    data.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    monkeypatch.setenv(data_roots.ENV, str(data))
    return {"home": home, "data": data, "outside": outside}


def same_refusal(a: str, a_path, b: str, b_path) -> bool:
    """Two messages that differ only by the path they name."""
    return a.replace(repr(str(a_path)), "PATH") == b.replace(repr(str(b_path)), "PATH")


def write_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (200, 30, 30)).save(path)
    return path


# -- the roots ---------------------------------------------------------------------------------


def test_roots_are_the_datasets_folder_and_the_listed_folders(tmp_path, home, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (tmp_path / "link").symlink_to(a)
    monkeypatch.setenv(
        data_roots.ENV, os.pathsep.join([str(tmp_path / "link"), str(b), "", str(a)])
    )
    # Real paths, the data directory's datasets folder first, each once.
    datasets = (home / "datasets").resolve()
    assert data_roots.data_roots() == (datasets, a.resolve(), b.resolve())
    monkeypatch.delenv(data_roots.ENV)
    assert data_roots.data_roots() == (datasets,)
    other = (tmp_path / "other" / "datasets").resolve()
    assert data_roots.data_roots(tmp_path / "other") == (other,)
    assert data_roots.datasets_dir(tmp_path / "other").is_dir()


def test_the_data_directory_itself_is_no_root(roots, db):
    """<home> holds visionboard.db (password and session hashes) and every user's run folders:
    none of it can be registered, browsed or named, only <home>/datasets."""
    run_folder = roots["home"] / "1"
    write_image(run_folder / "gradcam.png")
    db_file = roots["home"] / "visionboard.db"
    assert db_file.is_file()
    for path in (roots["home"], run_folder, run_folder / "gradcam.png", db_file):
        with pytest.raises(data_roots.PathRefused, match="does not exist inside the data roots"):
            data_roots.confine(path)
        with pytest.raises(data_roots.PathRefused):
            store.register_dataset(db, "x", str(path), "csv", "classification", by=ADMIN)
        assert inspect_dataset(path)["error"].startswith(repr(str(path)))
    assert store.list_datasets(db) == []
    samples = data_roots.datasets_dir(roots["home"]) / "digits"
    samples.mkdir()
    assert data_roots.confine(samples) == samples.resolve()


def test_confine_accepts_what_lies_in_a_root(roots):
    inside = write_image(roots["data"] / "set" / "a.png")
    assert data_roots.confine(inside) == inside.resolve()
    assert data_roots.confine(roots["data"]) == roots["data"].resolve()
    datasets = data_roots.datasets_dir(roots["home"])
    assert data_roots.confine(datasets) == datasets.resolve()
    # `..` that stays inside is fine: only where the path leads counts.
    assert data_roots.confine(roots["data"] / "set" / ".." / "set" / "a.png") == inside.resolve()


def test_confine_refuses_outside_and_missing_alike(roots):
    secret = roots["outside"] / "shadow"
    secret.write_text(SECRET)
    missing = roots["outside"] / "nothing"
    missing_inside = roots["data"] / "nothing"
    dotdot = roots["data"] / ".." / "outside" / "shadow"
    messages = {}
    for path in (secret, missing, missing_inside, dotdot, "/etc/passwd", "/", ""):
        with pytest.raises(data_roots.PathRefused) as exc:
            data_roots.confine(path)
        messages[str(path)] = str(exc.value)
    assert same_refusal(messages[str(secret)], secret, messages[str(missing)], missing)
    assert same_refusal(messages[str(secret)], secret, messages[str(dotdot)], dotdot)
    assert same_refusal(
        messages[str(missing_inside)], missing_inside, messages[str(secret)], secret
    )
    assert same_refusal(messages["/etc/passwd"], "/etc/passwd", messages[str(missing)], missing)
    text = messages[str(secret)]
    assert "does not exist inside the data roots" in text and str(roots["data"]) in text
    assert data_roots.ENV in text and SECRET not in text


def test_symlinks_out_of_a_root_are_outside(roots):
    secret = write_image(roots["outside"] / "secret.png")
    write_image(roots["data"] / "real" / "a.png")
    (roots["data"] / "out.png").symlink_to(secret)
    (roots["data"] / "out_dir").symlink_to(roots["outside"], target_is_directory=True)
    (roots["data"] / "in_dir").symlink_to(roots["data"] / "real", target_is_directory=True)
    for path in (roots["data"] / "out.png", roots["data"] / "out_dir" / "secret.png"):
        with pytest.raises(data_roots.PathRefused):
            data_roots.confine(path)
    assert data_roots.confine(roots["data"] / "in_dir" / "a.png").is_file()
    # A symlinked root itself is fine: roots are compared by their real paths too.
    assert data_roots.outside_roots([roots["data"] / "out.png", roots["data"] / "in_dir"]) == [
        roots["data"] / "out.png"
    ]


def test_url_encoded_names_are_not_decoded(roots):
    write_image(roots["outside"] / "secret.png")
    encoded = roots["data"] / "%2e%2e" / "outside" / "secret.png"
    with pytest.raises(data_roots.PathRefused, match="does not exist inside"):
        data_roots.confine(encoded)  # would exist if "%2e%2e" meant ".."
    # A folder really named %2e%2e inside a root is just a folder.
    named = write_image(roots["data"] / "%2e%2e" / "outside" / "secret.png")
    assert data_roots.confine(encoded) == named.resolve()
    with pytest.raises(data_roots.PathRefused):
        data_roots.confine(f"{roots['data']}/..%2foutside%2fsecret.png")


def test_a_name_no_file_can_have_is_refused(roots):
    with pytest.raises(data_roots.PathRefused):
        data_roots.confine(f"{roots['data']}/a\0b")


# -- datasets ----------------------------------------------------------------------------------


def test_a_dataset_outside_the_roots_is_refused_without_telling_it_exists(roots):
    outside = write_digits_imagefolder(roots["outside"] / "digits", per_class=3, classes=range(2))
    inside = write_digits_imagefolder(roots["data"] / "digits", per_class=3, classes=range(2))
    assert inspect_dataset(inside)["error"] is None
    found = inspect_dataset(outside, fmt="imagefolder")["error"]
    missing = roots["outside"] / "nothing"
    assert same_refusal(found, outside, inspect_dataset(missing)["error"], missing)
    for path in (outside, roots["data"] / ".." / "outside" / "digits"):
        with pytest.raises(ValueError, match="does not exist inside the data roots"):
            load_splits(path)


def test_a_file_that_is_no_dataset_is_never_quoted(roots):
    """Registering a password file as a CSV dataset names it and what was expected."""
    outside = roots["outside"] / "shadow"
    outside.write_text(SECRET + "\nbin:*:19000:0:99999:7:::\n")
    named_csv = roots["data"] / "shadow.csv"
    named_csv.write_text(outside.read_text())
    inside = roots["data"] / "shadow"
    inside.write_text(outside.read_text())
    for path in (outside, inside, named_csv):
        for fmt in ("auto", "csv", "coco", "yolo", "voc", "imagefolder"):
            for task in (None, "classification", "detection"):
                error = inspect_dataset(path, task=task, fmt=fmt)["error"]
                assert error and "root:" not in error and "19000" not in error, (path, fmt, error)
    error = inspect_dataset(inside, fmt="csv")["error"]
    assert error.startswith("shadow: not a .csv file; a CSV dataset is a .csv file")
    error = inspect_dataset(named_csv, fmt="csv")["error"]
    assert "no column names: the first row has no , ; or tab" in error


# Files of a dataset that are symlinks to a secret outside the roots: each is refused with the
# one message, and the secret (which each reader would have shown) appears nowhere.
VOC_SECRET = (
    "<annotation><filename>img000.jpg</filename><object><name>hunter2</name><bndbox>"
    "<xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>"
)
COCO_SECRET = '{"images": [], "annotations": [], "categories": [{"id": 1, "name": "hunter2"}]}'
LINKED_FILES = {
    # case: (builder, the dataset file made a link, the secret it leads to, task)
    "classes.txt": (build_label_studio_yolo, "classes.txt", "db_password=hunter2\n", "detection"),
    "data.yaml": (build_roboflow_yolo, "data.yaml", "db_password=hunter2\nnames: [a\n", "detection"),
    "label file": (build_roboflow_yolo, "train/labels/LABEL", "hunter2 0.5 0.5 0.1 0.1\n", "detection"),
    "coco json": (build_cvat_coco, "annotations/instances_default.json", COCO_SECRET, "detection"),
    "voc xml": (build_voc_imagesets, "Annotations/img000.xml", VOC_SECRET, "detection"),
    "voc list": (build_voc_imagesets, "ImageSets/Main/train.txt", "hunter2\n", "detection"),
    "csv": (write_digits_csv, "labels.csv", "filename,label\nimages/d000.png,hunter2\n", "classification"),
}  # fmt: skip


@pytest.mark.parametrize("case", LINKED_FILES)
def test_dataset_files_linked_out_of_the_roots_are_never_read(roots, case):
    build, name, secret_text, task = LINKED_FILES[case]
    root = roots["data"] / "set"
    build(root)
    if name.endswith("LABEL"):
        name = next((root / Path(name).parent).glob("*.txt")).relative_to(root).as_posix()
    secret = roots["outside"] / Path(name).name
    secret.write_text(secret_text)
    (root / name).unlink()
    (root / name).symlink_to(secret)
    fmt = {"csv": "csv", "coco json": "coco", "voc xml": "voc", "voc list": "voc"}.get(case, "yolo")
    for kwargs in ({}, {"task": task}, {"task": task, "fmt": fmt}):
        report = inspect_dataset(root, **kwargs)
        assert "hunter2" not in str(report), (kwargs, report)
        assert report["error"], kwargs  # a linked file is refused, never skipped in silence
    refusal = f"{str(root / name)!r} does not exist inside the data roots"
    assert refusal in inspect_dataset(root, task=task, fmt=fmt)["error"]
    with pytest.raises(ValueError, match="does not exist inside the data roots") as exc:
        load_splits(root, task, fmt)
    assert "hunter2" not in str(exc.value)


def test_yaml_errors_say_where_not_what(roots):
    root = roots["data"] / "set"
    build_roboflow_yolo(root)
    (root / "data.yaml").write_text("names: ['0', '1']\ntrain: ../train/images\ntoken: a: b\n")
    error = inspect_dataset(root, task="detection", fmt="yolo")["error"]
    assert error == "data.yaml: malformed YAML at line 3 column 9", error


def test_a_real_csv_header_is_still_listed(roots):
    csv_file = roots["data"] / "labels.csv"
    csv_file.write_text("picture,kind\nphoto one,cat\n")
    error = inspect_dataset(csv_file, task="classification", fmt="csv")["error"]
    assert "columns found: picture, kind" in error


def csv_dataset(folder: Path, rows: list[str]) -> Path:
    """A classification CSV with two good rows per class and `rows` (path cells) as cats."""
    for name in ("c1.png", "c2.png", "d1.png", "d2.png"):
        write_image(folder / "img" / name)
    lines = ["path,label", "img/c1.png,cat", "img/c2.png,cat", "img/d1.png,dog", "img/d2.png,dog"]
    path = folder / "labels.csv"
    path.write_text("\n".join(lines + [f"{row},cat" for row in rows]) + "\n")
    return path


def test_csv_rows_pointing_outside_are_refused_like_missing_files(roots):
    secret = write_image(roots["outside"] / "secret.png")
    assert inspect_dataset(csv_dataset(roots["data"] / "ok", []))["error"] is None
    folder = roots["data"] / "set"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "link.png").symlink_to(secret)
    cases = {
        "../../outside/secret.png": "../../outside/nothing.png",
        str(secret): str(roots["outside"] / "nothing.png"),
        "img/link.png": "img/dangling.png",
        "%2e%2e/%2e%2e/outside/secret.png": "img/%2e%2e/missing.png",
    }
    for outside, missing in cases.items():
        errors = []
        for cell in (outside, missing):
            error = inspect_dataset(csv_dataset(folder, [cell]), fmt="csv")["error"]
            assert error and "not found inside the data roots" in error, (cell, error)
            errors.append(error.replace(repr(cell), "CELL"))
        assert errors[0] == errors[1]  # the row does not tell whether the file exists
        with pytest.raises(ValueError, match="not found inside the data roots"):
            load_splits(csv_dataset(folder, [outside]), fmt="csv")


def test_images_that_lead_out_of_the_roots_stop_any_dataset(roots):
    secret = write_image(roots["outside"] / "secret.png")
    root = write_digits_imagefolder(roots["data"] / "digits", per_class=3, classes=range(2))
    (root / "0" / "sneaky.png").symlink_to(secret)
    error = inspect_dataset(root)["error"]
    assert "digits/0/sneaky.png: 1 image(s) lead outside the data roots" in error
    assert str(roots["outside"]) not in error  # where it leads is not told


def test_the_pre_queue_check_confines_paths_and_registered_datasets(roots, db, monkeypatch):
    inside = write_digits_imagefolder(roots["data"] / "digits", per_class=4, classes=range(2))
    outside = write_digits_imagefolder(roots["outside"] / "digits", per_class=4, classes=range(2))
    both = os.pathsep.join(str(roots[k]) for k in ("data", "outside"))
    monkeypatch.setenv(data_roots.ENV, both)  # registered while its folder was a root
    store.register_dataset(db, "moved", str(outside), "imagefolder", "classification", {}, by=ADMIN)
    monkeypatch.setenv(data_roots.ENV, str(roots["data"]))  # then the admin took that root away

    def problem(dataset):
        cfg = RunConfig.from_dict(
            {"dataset": dataset, "model": "efficientnet_b0", "pretrained": False}
        )
        return {p.field: str(p) for p in check_run(cfg, db)}.get("dataset")

    assert problem(str(inside)) is None
    found, missing = problem(str(outside)), problem(str(roots["outside"] / "nothing"))
    assert found.replace(str(outside), "P") == missing.replace(
        str(roots["outside"] / "nothing"), "P"
    )
    assert "does not exist inside the data roots" in found and "(moved)" in found
    # A root the admin took away takes its registered datasets with it.
    assert "registered dataset 'moved'" in problem("moved")
    assert "does not exist any more inside the data roots" in problem("moved")


# -- dashboard ---------------------------------------------------------------------------------


def test_the_datasets_page_registers_only_inside_the_roots(roots, db, monkeypatch):
    monkeypatch.setenv("VISIONBOARD_SAMPLES", "0")
    secret = roots["outside"] / "shadow"
    secret.write_text(SECRET)
    errors = {}
    for path in (secret, roots["outside"] / "nothing"):
        at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=60).run()
        at.switch_page("pages/datasets.py").run()
        at.text_input(key="ds_path").set_value(str(path))
        at.selectbox(key="ds_format").set_value("csv")
        at.button(key="FormSubmitter:register_dataset-Register").click().run()
        assert not at.exception
        errors[path] = [e.value for e in at.error]
    (found,), (missing,) = errors.values()
    assert found.replace(str(secret), "P") == missing.replace(
        str(roots["outside"] / "nothing"), "P"
    )
    assert "does not exist inside the data roots" in found and "root:" not in found
    assert store.list_datasets(db) == []


def test_the_predict_page_shows_only_images_inside_the_roots(roots, monkeypatch):
    from test_predict import make_run

    monkeypatch.setenv("VISIONBOARD_SAMPLES", "0")
    make_run(roots["home"])
    inside = [write_image(roots["data"] / "pics" / f"{k}.png") for k in range(2)]
    secret = write_image(roots["outside"] / "secret.png")
    (roots["data"] / "pics" / "link.png").symlink_to(secret)  # left out of the folder's images
    refused = [
        str(secret),
        str(roots["outside"] / "nothing.png"),
        str(roots["data"] / ".." / "outside" / "secret.png"),
        str(roots["data"] / "pics" / "link.png"),
        str(roots["data"] / "%2e%2e" / "outside" / "secret.png"),
    ]
    at = AppTest.from_file(str(ROOT / "dashboard" / "pages" / "predict.py"), default_timeout=120)
    at.run()
    at.text_input(key="predict_paths").input(";".join([str(inside[0].parent), *refused])).run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 2  # the two images inside, and nothing else
    warnings = [w.value for w in at.warning]
    assert len(warnings) == len(refused)
    reasons = {w.split(": ", 1)[1] for w in warnings}
    assert len(reasons) == 1  # one reason for all: missing, `..`, symlink, encoded alike
    assert reasons.pop().startswith("not found inside the data roots")


# -- the Runs page's change token --------------------------------------------------------------


def test_runs_version_changes_with_every_users_runs_and_only_then(store_db, home):
    db = store_db  # on SQLite and on PostgreSQL
    member = {"username": "bob", "role": "member"}
    cfg = RunConfig.from_dict({"dataset": "x", "model": "efficientnet_b0"}).resolved()
    seen = [store.runs_version(db)]

    def changed() -> bool:
        seen.append(store.runs_version(db))
        return seen[-1] != seen[-2]

    assert not changed()
    run_id = store.create_run(db, cfg, by=member)
    assert changed()
    assert not changed()  # nothing happened: same token
    store.claim_run(db, "worker-1", run_id)
    assert changed()
    store.edit_run(db, run_id, by=member, name="renamed")
    assert changed()
    store.edit_run(db, run_id, by=ADMIN, tags=["a"])
    assert changed()
    store.request_cancel(db, run_id, by=member)
    assert changed()
    other = store.create_run(db, cfg, by=ADMIN)
    assert changed()
    store.claim_run(db, "worker-1", other)
    assert changed()
    store.set_status(db, other, "completed")  # a run finishing
    assert changed()
    store.delete_run(db, run_id, by=ADMIN)
    assert changed()
    assert not changed()


def test_the_runs_page_reads_the_runs_only_when_the_token_changes(db, home, monkeypatch):
    monkeypatch.setenv("VISIONBOARD_SAMPLES", "0")
    cfg = RunConfig.from_dict({"dataset": "x", "model": "efficientnet_b0"}).resolved()
    store.create_run(db, cfg, name="first", by=ADMIN)
    reads = []
    list_runs = store.list_runs
    monkeypatch.setattr(store, "list_runs", lambda *a, **k: reads.append(1) or list_runs(*a, **k))
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=60).run()
    at.switch_page("pages/runs.py").run()
    assert not at.exception
    before = len(reads)
    at.run()  # a poll that finds nothing new
    assert len(reads) == before
    store.create_run(db, cfg, name="second", by={"username": "bob", "role": "member"})
    at.run()
    assert len(reads) == before + 1
    assert list(at.dataframe[0].value["name"]) == ["second", "first"]


def coco_dataset(folder: Path, file_name: str) -> Path:
    """A COCO file whose one image entry names `file_name`, with a real image beside it."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    write_image(folder / "images" / "ok.png")
    data = {
        "images": [
            {"id": 1, "file_name": "ok.png", "width": 32, "height": 32},
            {"id": 2, "file_name": file_name, "width": 32, "height": 32},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [2, 2, 10, 10]},
        ],
        "categories": [{"id": 1, "name": "digit"}],
    }
    (folder / "annotations.json").write_text(json.dumps(data))
    return folder


def test_annotation_files_do_not_tell_whether_a_file_outside_exists(roots):
    write_image(roots["outside"] / "secret.png")
    errors = []
    for name in ("../../../outside/secret.png", "../../../outside/nothing.png"):
        folder = coco_dataset(roots["data"] / name.rsplit("/", 1)[1].split(".")[0], name)
        error = inspect_dataset(folder, task="detection", fmt="coco")["error"]
        assert error, name
        errors.append(error.replace(name, "NAME").replace(str(folder), "FOLDER"))
    assert errors[0] == errors[1]
