"""What reading a dataset does once, not once per file: the data roots found once per home
and list, a CSV recognised by its head, the layout detected once per inspect, each VOC XML
opened once, and the tree walked for stray files only by the data check."""

from collections import Counter
from pathlib import Path

import pytest
from factories import LAYOUTS, build_kaggle_imagefolder
from PIL import Image

from engine import data_roots
from engine.data import (
    DatasetError,
    detect_format,
    formats,
    inspect_dataset,
    load,
    load_splits,
    signatures,
    tables,
    voc,
)

# -- the data roots --------------------------------------------------------------------------------


def test_the_roots_are_found_once_and_again_when_what_they_depend_on_changes(
    tmp_path, home, monkeypatch
):
    found = Counter()
    datasets_dir = data_roots.datasets_dir
    monkeypatch.setattr(
        data_roots, "datasets_dir", lambda h=None: found.update([h]) or datasets_dir(h)
    )
    listed = tmp_path / "listed"
    listed.mkdir()
    monkeypatch.setenv(data_roots.ENV, str(listed))
    for _ in range(100):  # a reader checks every file it opens
        roots = data_roots.data_roots()
    assert roots == ((home / "datasets").resolve(), listed.resolve())
    assert sum(found.values()) == 1
    # Another list, another $VISIONBOARD_HOME: found again (and its datasets folder created).
    monkeypatch.setenv(data_roots.ENV, "")
    assert data_roots.data_roots() == ((home / "datasets").resolve(),)
    other = tmp_path / "other"
    monkeypatch.setenv(data_roots.HOME_ENV, str(other))
    assert data_roots.data_roots() == ((other / "datasets").resolve(),)
    assert (other / "datasets").is_dir()
    # A relative home is relative to the working directory.
    monkeypatch.setenv(data_roots.HOME_ENV, "rel")
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        assert data_roots.data_roots() == ((tmp_path / folder / "rel" / "datasets").resolve(),)
    assert data_roots.data_roots(tmp_path / "given") == ((tmp_path / "given/datasets").resolve(),)
    assert sum(found.values()) == 6


# -- CSV: the head tells a dataset from a stray CSV ------------------------------------------


def test_a_csv_is_recognised_from_its_first_rows_only(tmp_path):
    """Rows past the first ones that are not even UTF-8: were the whole file read to tell
    whether it lists images, it would be no dataset CSV; the reader still names the file."""
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(tables.HEAD_ROWS):
        Image.new("RGB", (8, 8), (i * 10, 0, 0)).save(root / "images" / f"{i}.png")
        rows.append(f"images/{i}.png,{'ab'[i % 2]}")
    filler = "\n".join(f"images/{i % tables.HEAD_ROWS}.png,a" for i in range(20000))
    data = ("image,label\n" + "\n".join(rows) + "\n" + filler + "\n").encode()
    (root / "labels.csv").write_bytes(data + b"images/\xff\xfe.png,b\n")
    assert len(data) > 100_000  # far past the first read of a text file
    assert tables.is_dataset_csv(root / "labels.csv")
    assert detect_format(root) == "csv"
    assert inspect_dataset(root, deep=False)["task"] == "classification"
    with pytest.raises(DatasetError, match=r"^labels\.csv: cannot read CSV \('utf-8' codec"):
        load_splits(root, "classification")


# -- the layout: detected once -------------------------------------------------------------------


@pytest.fixture
def evidence_calls(monkeypatch) -> Counter:
    calls = Counter()
    for fmt, evidence in formats.EVIDENCE.items():

        def counted(root, fmt=fmt, evidence=evidence):
            calls[fmt] += 1
            return evidence(root)

        monkeypatch.setitem(formats.EVIDENCE, fmt, counted)
    return calls


@pytest.mark.parametrize("name", ["roboflow_yolo", "tfod_csv_at_root"])
def test_inspect_detects_the_layout_once(tmp_path, name, evidence_calls):
    layout = LAYOUTS[name](tmp_path / name)
    report = inspect_dataset(tmp_path / name, deep=False)
    assert (report["task"], report["format"], report["error"]) == (
        layout.task,
        layout.format,
        None,
    )
    assert evidence_calls == dict.fromkeys(formats.EVIDENCE, 1)


def test_a_named_format_is_the_only_layout_looked_for(tmp_path, evidence_calls):
    LAYOUTS["roboflow_yolo"](tmp_path / "ds")
    assert load_splits(tmp_path / "ds", "detection", "yolo").format == "yolo"
    assert evidence_calls == {"yolo": 1}


# -- VOC: each XML opened once ---------------------------------------------------------------


def test_each_voc_xml_beside_its_image_is_opened_once(tmp_path, monkeypatch):
    LAYOUTS["roboflow_voc"](tmp_path / "ds")
    (tmp_path / "ds" / "train" / "zz_settings.xml").write_text("<settings><a/></settings>")
    opened = Counter()
    for module in (voc, signatures):
        real = module.open_inside
        monkeypatch.setattr(
            module,
            "open_inside",
            lambda path, *a, real=real, **k: opened.update([Path(path)]) or real(path, *a, **k),
        )
    splits = load_splits(tmp_path / "ds", "detection", "voc")
    assert len(splits.samples()) == 9
    for folder in ("train", "valid", "test"):
        xmls = sorted((tmp_path / "ds" / folder).glob("*.xml"))
        # The first three of a folder are also looked at to recognise the layout.
        assert xmls and all(opened[x] == 1 for x in xmls[3:]), opened
    assert opened[tmp_path / "ds" / "train" / "zz_settings.xml"] == 1  # not VOC: left aside


# -- stray files: listed by the data check only ------------------------------------------------


def test_only_the_data_check_walks_the_tree_for_ignored_files(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    build_kaggle_imagefolder(root, splits=())
    (root / "notes.docx").write_text("x")

    def walk(*args):
        raise AssertionError("find_ignored called")

    with monkeypatch.context() as patch:
        patch.setattr(load, "find_ignored", walk)
        splits = load_splits(root, "classification")  # what the trainer calls
        assert splits.ignored == [] and "ignored_files" not in splits.counts
        assert inspect_dataset(root, deep=False)["error"] is None  # the pre-queue check
    report = inspect_dataset(root)
    assert "notes.docx" in report["ignored"] and report["ignored_files"] >= 1
