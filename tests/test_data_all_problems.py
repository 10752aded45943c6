"""Every bad annotation entry is listed, not only the first (issue #10, item 3).

A detection reader that meets a malformed box, label line, XML file or CSV row lists it as a
blocking problem with its file and entry, leaves it out and reads on: `inspect` shows them all,
and training (strict) is refused with a message that names every one.
"""

import json
from pathlib import Path

import pytest
from factories import LAYOUTS, write_detection_set

from engine.data import DatasetError, inspect_dataset, load_splits


def blocking(report) -> list[dict]:
    return [p for p in report["problems"] if p["severity"] == "blocking"]


def check_all_listed(root: Path, expected: list[tuple[str, str]]) -> None:
    """inspect lists exactly `expected` (file, text in the message) as blocking problems, and
    load_splits (strict, as training reads) raises one DatasetError naming each of them."""
    report = inspect_dataset(root, "detection")
    found = blocking(report)
    assert len(found) == len(expected), found
    for file, text in expected:  # each one, with its file, and its file and entry in the message
        matches = [p for p in found if p["file"] == file and text in p["message"]]
        assert len(matches) == 1, (file, text, found)
        assert file.split("/")[-1] in matches[0]["message"]
    assert report["summary"]["blocking"] == len(expected)
    with pytest.raises(DatasetError) as caught:
        load_splits(root, "detection")
    for problem in found:
        assert problem["message"] in str(caught.value)
    assert f"and {len(expected) - 1} more blocking problem(s)" in str(caught.value)
    assert len(caught.value.problems) == len(expected)


def test_coco_lists_every_bad_bbox_and_unknown_category(tmp_path):
    root = write_detection_set(tmp_path / "coco", "coco", n_images=6)
    path = root / "annotations.json"
    data = json.loads(path.read_text())
    first, second, third = data["annotations"][:3]
    first["bbox"] = "oops"
    second["bbox"] = [1, 2, 3]
    third["category_id"] = 9  # no such category
    path.write_text(json.dumps(data))
    check_all_listed(
        root,
        [
            ("annotations.json", f"annotation id {first['id']}: bbox must be"),
            ("annotations.json", f"annotation id {second['id']}: bbox must be"),
            ("annotations.json", f"annotation id {third['id']}: category_id 9 is not in"),
        ],
    )
    # The good annotations are still read: counts are there for the data check.
    report = inspect_dataset(root, "detection")
    kept = sum(report["boxes"].values())
    assert kept == len(data["annotations"]) - 3


def test_voc_lists_every_broken_xml_and_missing_bndbox(tmp_path):
    root = write_detection_set(tmp_path / "voc", "voc", n_images=6)
    xmls = sorted((root / "Annotations").glob("*.xml"))
    for xml in xmls[:2]:
        xml.write_text("<annotation><object><name>0</name>")  # cut short
    third = xmls[2].read_text()
    start, end = third.index("<bndbox>"), third.index("</bndbox>") + len("</bndbox>")
    xmls[2].write_text(third[:start] + third[end:])
    check_all_listed(
        root,
        [
            (f"Annotations/{xmls[0].name}", "malformed XML"),
            (f"Annotations/{xmls[1].name}", "malformed XML"),
            (f"Annotations/{xmls[2].name}", "object 1 ("),
        ],
    )
    report = inspect_dataset(root, "detection")
    assert "missing <bndbox>" in " ".join(p["message"] for p in blocking(report))
    # The images of the broken files are left out, not taken for background images.
    assert report["images"]["train"] + report["images"]["test"] == len(xmls) - 2


def test_yolo_lists_every_bad_label_line_across_files(tmp_path):
    root = write_detection_set(tmp_path / "yolo", "yolo", n_images=6)
    labels = sorted((root / "labels").glob("*.txt"))
    expected = []
    for label, bad in zip(labels[:2], ["7 0.5 0.5 0.1 0.1", "0 0.5 0.5"]):
        lines = label.read_text().splitlines()
        label.write_text("\n".join([bad, *lines]) + "\n")  # the bad line first: line 1
        expected.append((f"labels/{label.name}", "line 1: "))
    check_all_listed(root, expected)
    messages = " ".join(p["message"] for p in blocking(inspect_dataset(root, "detection")))
    assert "class 7 is not in names" in messages and "got 3 values" in messages


def test_boxes_csv_lists_every_bad_row(tmp_path):
    LAYOUTS["tfod_csv_at_root"](tmp_path / "ds")
    root = tmp_path / "ds"
    path = root / "annotations.csv"
    lines = path.read_text().splitlines()
    cells = lines[1].split(",")
    cells[4] = "left"  # xmin not a number (line 2)
    lines[1] = ",".join(cells)
    cells = lines[3].split(",")
    cells[3] = ""  # no class (line 4)
    lines[3] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    check_all_listed(
        root,
        [
            ("annotations.csv", "annotations.csv line 2: xmin: 'left' is not a number"),
            ("annotations.csv", "annotations.csv line 4: empty class in column 'class'"),
        ],
    )


def test_a_dataset_wide_error_keeps_the_bad_entries_read_before_it(tmp_path):
    """Every row bad: "no training rows" is said, and each bad row with it."""
    LAYOUTS["tfod_csv_at_root"](tmp_path / "ds")
    root = tmp_path / "ds"
    path = root / "annotations.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "gone.png,64,64,0,1,1,5,5", "lost.png,64,64,0,1,1,5,5"]))
    messages = [p["message"] for p in blocking(inspect_dataset(root, "detection"))]
    assert len(messages) == 3
    assert "line 2: image 'gone.png' not found" in messages[0]
    assert "line 3: image 'lost.png' not found" in messages[1]
    assert "no rows (or no training rows)" in messages[2]
    with pytest.raises(DatasetError, match=r"(?s)gone\.png.*lost\.png.*no rows"):
        load_splits(root, "detection")
