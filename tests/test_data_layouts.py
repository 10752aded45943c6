"""Every layout people export, read through auto-detection: counts per split, classes, boxes,
and what was ignored (issue #10). The fixtures (tests/factories.py) mimic each tool's export."""

import csv
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from factories import LAYOUTS, build_kaggle_imagefolder, build_voc_imagesets

from engine.data import DatasetError, detect_format, inspect_dataset, load_splits, signatures
from engine.data.upload import unpack_zip


def _counts(splits) -> dict[str, int]:
    if splits.split_source == "seeded":
        return {"all": len(splits.samples())}
    return {k: len(getattr(splits, k)) for k in ("train", "val", "test") if getattr(splits, k)}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_layout_is_read_through_auto_detection(tmp_path, name):
    layout = LAYOUTS[name](tmp_path / name)
    root = tmp_path / name
    assert detect_format(root, layout.task) == layout.format
    splits = load_splits(root, layout.task, "auto", seed=0, list_ignored=True)
    assert splits.format == layout.format
    assert splits.root == (layout.root or root).resolve()
    assert splits.classes == layout.classes
    assert _counts(splits) == layout.counts
    if layout.task == "detection":
        found = {Path(s.path).name: s for s in splits.samples()}
        assert sorted(found) == sorted(layout.boxes)
        for file, (boxes, labels) in layout.boxes.items():
            np.testing.assert_allclose(found[file].boxes, boxes, atol=0.01)
            assert found[file].labels.tolist() == labels.tolist()
    # Three declared splits: val is the per-epoch split, test kept for the final report.
    if "val" in layout.counts:
        assert splits.per_epoch is splits.val and splits.final is splits.test
    ignored = {entry["file"] for entry in splits.ignored}
    assert set(layout.ignored) <= ignored, splits.ignored
    used = {Path(s.path).resolve() for s in splits.samples()}
    base = splits.root
    assert not any((base / f).resolve() in used for f in ignored if f and not f.endswith("/"))
    assert splits.counts["ignored_files"] >= len(layout.ignored)
    # The task is found too, when not given.
    report = inspect_dataset(root, deep=False)
    assert (report["task"], report["format"], report["error"]) == (layout.task, layout.format, None)


# -- the cases the issue reported ---------------------------------------------------------------


def test_stray_json_with_an_images_key_is_no_coco(tmp_path):
    layout = LAYOUTS["imagefolder_stats_json"](tmp_path / "ds")
    for task in ("classification", None):
        assert detect_format(tmp_path / "ds", task) == "imagefolder"
    splits = load_splits(tmp_path / "ds", "classification", list_ignored=True)
    assert {"stats.json", "README.md"} <= {e["file"] for e in splits.ignored}
    assert {e["reason"] for e in splits.ignored if e["file"] == "stats.json"} == {
        "metadata, not read"
    }
    assert _counts(splits) == layout.counts


def test_lowercase_voc_folders_are_voc_and_the_test_split_is_kept(tmp_path):
    build_voc_imagesets(tmp_path / "ds", "annotations", "jpegimages")
    assert detect_format(tmp_path / "ds") == "voc"
    splits = load_splits(tmp_path / "ds", "detection", fmt="voc")  # named explicitly too
    assert (len(splits.train), len(splits.val), len(splits.test)) == (5, 2, 2)
    assert splits.counts["images"] == {"train": 5, "val": 2, "test": 2}
    assert "annotations" not in splits.classes


def test_voc_imagesets_test_split_is_kept_not_dropped(tmp_path):
    build_voc_imagesets(tmp_path / "ds")
    splits = load_splits(tmp_path / "ds", "detection")
    listed = {
        split: (tmp_path / "ds" / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        for split in ("train", "val", "test")
    }
    for split, stems in listed.items():
        assert sorted(Path(s.path).stem for s in getattr(splits, split)) == sorted(stems)
    assert splits.split_source == "dataset"


def test_box_per_row_csv_is_detection_and_refused_for_classification(tmp_path):
    LAYOUTS["tfod_csv_at_root"](tmp_path / "ds")
    report = inspect_dataset(tmp_path / "ds", deep=False)
    assert (report["task"], report["format"]) == ("detection", "csv")
    with pytest.raises(DatasetError, match=r"one row per box .*choose task=detection"):
        load_splits(tmp_path / "ds", "classification", fmt="csv")


def test_the_task_narrows_the_candidates(tmp_path):
    # An image folder holding a COCO file of its own: task=classification never picks COCO.
    root = tmp_path / "ds"
    build_kaggle_imagefolder(root, splits=("train", "val"))
    LAYOUTS["cvat_coco"](tmp_path / "coco")
    (root / "annotations.json").write_text(
        (tmp_path / "coco" / "annotations" / "instances_default.json").read_text()
    )
    assert detect_format(root, "classification") == "imagefolder"
    with pytest.raises(DatasetError) as caught:
        detect_format(root)
    message = str(caught.value)
    assert "coco" in message and "imagefolder" in message
    assert "dataset_format=coco or dataset_format=imagefolder" in message


def test_two_layouts_of_one_task_are_named_with_how_to_choose(tmp_path):
    # class folders and a CSV listing the same images: both classification layouts fit
    root = tmp_path / "ds"
    build_kaggle_imagefolder(root, splits=())
    rows = [[p.relative_to(root).as_posix(), p.parent.name] for p in sorted(root.glob("*/*.jpeg"))]
    with open(root / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["image", "diagnosis"], *rows])
    with pytest.raises(DatasetError, match="dataset_format=csv or dataset_format=imagefolder"):
        load_splits(root, "classification")
    for fmt in ("csv", "imagefolder"):
        splits = load_splits(root, "classification", fmt=fmt)
        assert splits.classes == ["NORMAL", "PNEUMONIA"] and len(splits.samples()) == 12


def test_a_json_without_the_three_lists_is_never_coco(tmp_path):
    LAYOUTS["label_studio_coco"](tmp_path / "ds")
    data = json.loads((tmp_path / "ds" / "result.json").read_text())
    del data["categories"]
    (tmp_path / "ds" / "stats.json").write_text(json.dumps(data))  # no categories list
    splits = load_splits(tmp_path / "ds", "detection", list_ignored=True)
    assert splits.format == "coco"
    assert "stats.json" in {e["file"] for e in splits.ignored}


@pytest.mark.parametrize("name", ["cvat_coco", "cvat_voc"])
def test_cvat_zips_are_read_once_unpacked_and_refused_as_a_path(tmp_path, name):
    layout = LAYOUTS[name](tmp_path / "export")
    archive = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # CVAT zips hold the layout at the top level
        for p in sorted((tmp_path / "export").rglob("*")):
            zf.write(p, p.relative_to(tmp_path / "export").as_posix())
    with pytest.raises(DatasetError, match=r"an archive, not a dataset; unpack it"):
        load_splits(archive, "detection")
    (tmp_path / "unpacked").mkdir()
    unpack_zip(archive, tmp_path / "unpacked")
    splits = load_splits(tmp_path / "unpacked", "detection")
    assert (splits.format, splits.classes) == (layout.format, layout.classes)
    assert _counts(splits) == layout.counts


def test_a_dataset_of_the_other_task_says_which_task_it_is(tmp_path):
    LAYOUTS["tfod_csv_at_root"](tmp_path / "ds")
    with pytest.raises(
        DatasetError,
        match=r"holds a detection dataset \(csv \(annotations\.csv\)\), not classification; choose task=detection",
    ):
        load_splits(tmp_path / "ds", "classification")


def test_a_large_json_is_checked_for_the_three_lists_without_parsing(tmp_path, monkeypatch):
    monkeypatch.setattr(signatures, "COCO_PARSE_LIMIT", 0)  # every file counts as large
    LAYOUTS["label_studio_coco"](tmp_path / "ds")
    (tmp_path / "ds" / "stats.json").write_text('{"images": [1], "annotations": 3}')
    assert signatures.is_coco_json(tmp_path / "ds" / "result.json")
    assert not signatures.is_coco_json(tmp_path / "ds" / "stats.json")


def test_voc_images_in_no_imagesets_list_are_said_to_be_left_out(tmp_path):
    build_voc_imagesets(tmp_path / "ds")
    (tmp_path / "ds" / "ImageSets" / "Main" / "test.txt").unlink()  # a list not shipped
    report = inspect_dataset(tmp_path / "ds", task="detection", deep=False)
    left_out = [p for p in report["problems"] if p["kind"] == "unlisted_images"]
    assert [p["severity"] for p in left_out] == ["warning"], report["problems"]
    assert left_out[0]["message"].startswith("2 annotated image(s) are in no ImageSets list")
    assert "a split left out" in left_out[0]["message"]
