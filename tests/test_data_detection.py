import json
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import DETECTION_FORMATS, digits_boxes, write_detection_set

from engine.data import (
    DatasetError,
    DetectionDataset,
    collate_detection,
    detect_format,
    inspect_dataset,
    load_splits,
)


def _by_name(splits):
    return {Path(s.path).name: s for s in splits.train + splits.test}


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("fmt", DETECTION_FORMATS)
def test_every_format_reads_the_same_boxes(tmp_path, fmt, split):
    root = write_detection_set(tmp_path / fmt, fmt, n_images=12, canvas=64, classes=3, split=split)
    splits = load_splits(root, "detection", fmt="auto", seed=0)
    assert splits.format == fmt
    assert splits.classes == ["0", "1", "2"]
    assert splits.split_source == ("dataset" if split else "seeded")
    written = digits_boxes(12, 64, 3, split=split)
    found = _by_name(splits)
    assert sorted(found) == sorted(r["file"] for r in written)
    for r in written:
        sample = found[r["file"]]
        assert sample.boxes.dtype == np.float32 and sample.labels.dtype == np.int64
        np.testing.assert_allclose(sample.boxes, r["boxes"], atol=0.01)  # YOLO rounds to 1e-6
        assert sample.labels.tolist() == r["labels"].tolist()
    if split:
        test_files = {Path(s.path).name for s in splits.test}
        assert test_files == {r["file"] for r in written if r["split"] == "val"}
    background = found[written[-1]["file"]]
    assert background.boxes.shape == (0, 4) and background.labels.shape == (0,)
    assert splits.problems == [] and splits.counts["boxes_clipped"] == 0


def test_seeded_detection_split_is_deterministic_and_covers_classes(tmp_path):
    root = write_detection_set(tmp_path / "ds", "coco", n_images=16, classes=3)
    a = load_splits(root, "detection", test_ratio=0.25, seed=3)
    b = load_splits(root, "detection", test_ratio=0.25, seed=3)
    assert [s.path for s in a.test] == [s.path for s in b.test]
    assert 3 <= len(a.test) <= 5
    in_test = {int(label) for s in a.test for label in s.labels}
    assert in_test == {0, 1, 2}


@pytest.mark.parametrize("fmt", DETECTION_FORMATS)
def test_auto_detects_every_format_and_the_task(tmp_path, fmt):
    root = write_detection_set(tmp_path / fmt, fmt, n_images=4)
    assert detect_format(root) == fmt
    report = inspect_dataset(root)
    assert report["task"] == "detection" and report["format"] == fmt
    assert report["error"] is None
    per_class = report["boxes_per_class"]
    assert sum(v["train"] + v["test"] for v in per_class.values()) == sum(report["boxes"].values())
    assert report["background_images"]["train"] + report["background_images"]["test"] == 1


def test_annotation_files_can_be_given_directly(tmp_path):
    coco = write_detection_set(tmp_path / "coco", "coco", n_images=4)
    yolo = write_detection_set(tmp_path / "yolo", "yolo", n_images=4)
    csv_root = write_detection_set(tmp_path / "csv", "csv", n_images=4)
    for path, fmt in (
        (coco / "annotations.json", "coco"),
        (yolo / "data.yaml", "yolo"),
        (csv_root / "annotations.csv", "csv"),
    ):
        assert detect_format(path) == fmt
        splits = load_splits(path, "detection")
        assert len(splits.train) + len(splits.test) == 4


def test_detection_format_for_classification_is_refused(tmp_path):
    root = write_detection_set(tmp_path / "ds", "voc", n_images=3)
    with pytest.raises(DatasetError, match="voc is a detection format; classification reads"):
        load_splits(root, "classification", fmt="voc")
    with pytest.raises(DatasetError, match="unknown dataset format 'tfrecord'"):
        load_splits(root, "detection", fmt="tfrecord")


# -- errors name the file and the entry -------------------------------------------------------


def _edit_coco(root, edit):
    path = root / "annotations.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_coco_unknown_category_names_file_and_annotation(tmp_path):
    root = write_detection_set(tmp_path / "ds", "coco", n_images=4)
    _edit_coco(root, lambda d: d["annotations"][1].update(id=17, category_id=9))
    with pytest.raises(
        DatasetError,
        match=r"annotations\.json: annotation id 17: category_id 9 is not in categories",
    ):
        load_splits(root, "detection")
    assert "category_id 9" in inspect_dataset(root)["error"]


def test_coco_malformed_json_and_missing_image(tmp_path):
    root = write_detection_set(tmp_path / "ds", "coco", n_images=4)
    _edit_coco(root, lambda d: d["images"][2].update(file_name="gone.png"))
    with pytest.raises(
        DatasetError, match=r"annotations\.json: image id 3: file 'gone\.png' not found"
    ):
        load_splits(root, "detection")
    (root / "annotations.json").write_text('{"images": [1, 2,, ]}')
    with pytest.raises(DatasetError, match=r"annotations\.json: not valid JSON \(.* line 1 column"):
        load_splits(root, "detection")


def test_coco_annotation_for_unknown_image_and_bad_bbox(tmp_path):
    root = write_detection_set(tmp_path / "ds", "coco", n_images=4)
    _edit_coco(root, lambda d: d["annotations"][0].update(bbox=[1, 2, 3]))
    with pytest.raises(
        DatasetError, match=r"annotation id 1: bbox must be \[x, y, width, height\]"
    ):
        load_splits(root, "detection")
    _edit_coco(root, lambda d: d["annotations"][0].update(bbox=[1, 2, 3, 4], image_id=99))
    with pytest.raises(DatasetError, match="annotation id 1: image_id 99 is not in images"):
        load_splits(root, "detection")


def test_voc_malformed_xml_and_bad_object(tmp_path):
    root = write_detection_set(tmp_path / "ds", "voc", n_images=4)
    xml = root / "Annotations" / "img001.xml"
    text = xml.read_text()
    xml.write_text(text.replace("<xmin>", "<xmin>abc", 1))
    with pytest.raises(
        DatasetError,
        match=r"Annotations/img001\.xml: object 1 \(\d\): xmin: 'abc\d+' is not a number",
    ):
        load_splits(root, "detection")
    xml.write_text(text.replace("</annotation>", ""))
    with pytest.raises(DatasetError, match=r"Annotations/img001\.xml: malformed XML"):
        load_splits(root, "detection")
    xml.write_text(text)
    (root / "JPEGImages" / "img001.png").unlink()
    with pytest.raises(
        DatasetError, match=r"Annotations/img001\.xml: image not found in JPEGImages/"
    ):
        load_splits(root, "detection")


def test_voc_labels_file_rejects_unknown_classes(tmp_path):
    root = write_detection_set(tmp_path / "ds", "voc", n_images=6, classes=3)
    (root / "labels.txt").write_text("0\n1\n")
    with pytest.raises(
        DatasetError, match=r"Annotations/img\d+\.xml: object \d+: class '2' is not in labels\.txt"
    ):
        load_splits(root, "detection")


def test_yolo_bad_label_lines_name_file_and_line(tmp_path):
    root = write_detection_set(tmp_path / "ds", "yolo", n_images=4)
    label = root / "labels" / "img000.txt"
    good = label.read_text().splitlines()[0]
    label.write_text(good + "\n0 0.5 0.5 0.1\n")
    with pytest.raises(
        DatasetError, match=r"labels/img000\.txt line 2: expected 'class cx cy w h' \(5 numbers\)"
    ):
        load_splits(root, "detection")
    label.write_text(good + "\n7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(
        DatasetError, match=r"labels/img000\.txt line 2: class 7 is not in names \(0\.\.2"
    ):
        load_splits(root, "detection")
    (root / "data.yaml").write_text("names: [a, b\ntrain: images\n")
    with pytest.raises(DatasetError, match=r"data\.yaml: malformed YAML"):
        load_splits(root, "detection")


def test_csv_bad_json_names_line_and_entry(tmp_path):
    root = write_detection_set(tmp_path / "ds", "csv", n_images=4)
    path = root / "annotations.csv"
    lines = path.read_text().splitlines()
    original = lines[2]
    lines[2] = lines[2].replace('"}', '"', 1)  # break the JSON of the second data row
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DatasetError, match=r"annotations\.csv line 3: column 'annotations' is not valid JSON"
    ):
        load_splits(root, "detection")
    lines[2] = original.replace('""category""', '""kind""', 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"annotations\.csv line 3 entry 1: missing 'category'"):
        load_splits(root, "detection")


# -- boxes outside the image, unreadable images, unused classes ---------------------------------


def test_boxes_outside_the_image_are_clipped_or_dropped_and_counted(tmp_path):
    root = write_detection_set(tmp_path / "ds", "coco", n_images=4, canvas=64)

    def edit(d):
        d["annotations"].append(
            {"id": 50, "image_id": 1, "category_id": 1, "bbox": [50, 40, 30, 10]}
        )
        d["annotations"].append({"id": 51, "image_id": 1, "category_id": 2, "bbox": [70, 5, 8, 8]})
        d["annotations"].append({"id": 52, "image_id": 2, "category_id": 1, "bbox": [10, 10, 0, 5]})

    _edit_coco(root, edit)
    splits = load_splits(root, "detection")
    assert splits.counts["boxes_clipped"] == 1
    assert splits.counts["boxes_dropped"] == 2
    sample = _by_name(splits)["img000.png"]
    assert [50, 40, 64, 50] in sample.boxes.tolist()
    assert (sample.boxes[:, 2] <= 64).all()
    messages = [p["message"] for p in splits.problems]
    assert all(p["file"] == "annotations.json" for p in splits.problems)
    assert any("annotation id 50 (images/img000.png)" in m and "clipped" in m for m in messages)
    assert any("annotation id 51" in m and "dropped" in m for m in messages)
    assert any("annotation id 52" in m and "dropped" in m for m in messages)
    report = inspect_dataset(root)
    assert report["boxes_clipped"] == 1 and report["boxes_dropped"] == 2
    assert len(report["problems"]) == 3


def test_yolo_box_reaching_past_the_edge_is_clipped(tmp_path):
    root = write_detection_set(tmp_path / "ds", "yolo", n_images=3, canvas=64)
    label = root / "labels" / "img000.txt"
    label.write_text(label.read_text() + "1 0.95 0.5 0.2 0.2\n")
    splits = load_splits(root, "detection")
    assert splits.counts["boxes_clipped"] == 1
    assert splits.problems[0]["file"] == "labels/img000.txt"
    assert splits.problems[0]["message"].startswith("line ")
    box = _by_name(splits)["img000.png"].boxes[-1].tolist()
    np.testing.assert_allclose(box, [54.4, 25.6, 64, 38.4], atol=1e-3)


def test_unreadable_detection_image_is_skipped_and_listed(tmp_path):
    root = write_detection_set(tmp_path / "ds", "voc", n_images=5)
    (root / "JPEGImages" / "img002.png").write_bytes(b"broken")
    splits = load_splits(root, "detection")
    assert len(splits.train) + len(splits.test) == 4
    assert splits.counts["skipped_images"] == 1
    assert splits.problems[0]["file"] == "JPEGImages/img002.png"
    assert "skipped" in splits.problems[0]["message"]


def test_classes_without_boxes_are_left_out(tmp_path):
    root = write_detection_set(tmp_path / "ds", "coco", n_images=12, classes=3)
    _edit_coco(root, lambda d: d["categories"].insert(0, {"id": 0, "name": "digits"}))
    splits = load_splits(root, "detection")
    assert splits.classes == ["0", "1", "2"]
    assert any("without any box left out: digits" in p["message"] for p in splits.problems)
    assert {int(x) for s in splits.train + splits.test for x in s.labels} <= {0, 1, 2}


def test_no_boxes_at_all_is_an_error(tmp_path):
    root = write_detection_set(tmp_path / "ds", "coco", n_images=3)
    _edit_coco(root, lambda d: d.update(annotations=[]))
    with pytest.raises(DatasetError, match="no boxes in the annotations"):
        load_splits(root, "detection")


# -- torch side -----------------------------------------------------------------------------------


def test_detection_dataset_targets_are_one_based_and_collate_keeps_lists(tmp_path):
    root = write_detection_set(tmp_path / "ds", "coco", n_images=4, canvas=64)
    splits = load_splits(root, "detection")
    dataset = DetectionDataset(splits.train)
    image, target = dataset[0]
    sample = splits.train[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and image.max() <= 1
    assert target["labels"].tolist() == (sample.labels + 1).tolist()
    assert torch.equal(target["boxes"], torch.as_tensor(sample.boxes))
    assert target["image_id"] == 0
    images, targets = collate_detection([dataset[0], dataset[1]])
    assert isinstance(images, list) and len(images) == 2 and len(targets) == 2


def test_broken_coco_or_yolo_file_is_not_read_as_an_image_folder(tmp_path):
    # images/ alone looks like a one-class image folder; the annotation file says otherwise.
    coco = write_detection_set(tmp_path / "coco", "coco", n_images=4)
    (coco / "annotations.json").write_text("[1, 2]")
    assert detect_format(coco) == "coco"
    report = inspect_dataset(coco)
    assert report["error"] == (
        "annotations.json: expected a JSON object with images, annotations, categories"
    )
    yolo = write_detection_set(tmp_path / "yolo", "yolo", n_images=4)
    (yolo / "data.yaml").write_text("train: images\nval: images\n")
    assert detect_format(yolo) == "yolo"
    assert inspect_dataset(yolo)["error"] == "data.yaml: missing 'names' (the class names)"


def test_csv_detection_with_a_malformed_first_row_names_that_row(tmp_path):
    # One bad cell at the top must not turn the set into a classification of JSON strings.
    root = write_detection_set(tmp_path / "ds", "csv", n_images=4)
    path = root / "annotations.csv"
    lines = path.read_text().splitlines()
    lines[1] = 'images/img000.png,"{""bbox"": [1, 2, 3, 4], ""category"": ""0""}"'
    path.write_text("\n".join(lines) + "\n")
    report = inspect_dataset(root)
    assert report["task"] == "detection"
    assert report["error"] == (
        "annotations.csv line 2: column 'annotations' must be a JSON list of boxes"
    )
