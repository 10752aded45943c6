"""The data check: inspect_dataset lists every problem at once, each with its severity."""

import json
from pathlib import Path

import numpy as np
import pytest
from factories import write_detection_set

from engine import cli
from engine.data import inspect_dataset
from engine.data.checks import fingerprint


def photo(seed: int, size=(64, 48)) -> "Image.Image":  # noqa: F821
    """A picture unlike any other seed's: coarse random colours, smoothly upscaled."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize(
        size, Image.Resampling.BICUBIC
    )


def write_folder(root: Path, counts: dict[str, int], seed: int = 0, ext: str = "png") -> Path:
    """root/<class>/<n>.<ext> with counts[class] distinct pictures (0: an empty folder)."""
    for c, n in counts.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            seed += 1
            photo(seed).save(root / c / f"{k}.{ext}")
    return root


def by_kind(report, kind, severity=None):
    return [
        p
        for p in report["problems"]
        if p["kind"] == kind and (severity is None or p["severity"] == severity)
    ]


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def broken_set(root: Path) -> Path:
    """An empty class, a truncated JPEG and a zero-byte PNG in one image folder."""
    write_folder(root / "train", {"cat": 4, "dog": 4, "empty": 0}, ext="jpg")
    write_folder(root / "val", {"cat": 2, "dog": 2}, seed=100, ext="jpg")
    truncate(root / "train" / "cat" / "1.jpg")
    (root / "train" / "dog" / "zero.png").write_bytes(b"")
    return root


# -- none hides another -------------------------------------------------------------------------


def test_every_problem_is_listed_at_once_blocking_apart(tmp_path):
    report = inspect_dataset(broken_set(tmp_path / "ds"))
    assert report["task"] == "classification" and report["format"] == "imagefolder"
    empty = by_kind(report, "empty_class", "blocking")
    assert [p["file"] for p in empty] == ["train/empty"]
    unreadable = {p["file"]: p for p in by_kind(report, "unreadable")}
    assert set(unreadable) == {"train/cat/1.jpg", "train/dog/zero.png"}
    assert all(p["severity"] == "warning" for p in unreadable.values())
    assert "truncated" in unreadable["train/cat/1.jpg"]["message"].lower()
    # Counts are there although the dataset cannot be trained on as it is.
    assert report["images_per_class"]["cat"]["train"] == 3
    assert report["images_per_class"]["empty"]["train"] == 0
    assert report["summary"]["blocking"] == 1 and report["summary"]["warning"] == 2
    assert report["error"].startswith("class 'empty' has no training images")
    # Blocking problems come first.
    assert report["problems"][0]["severity"] == "blocking"


def test_two_empty_classes_are_both_blocking(tmp_path):
    root = write_folder(tmp_path / "ds", {"a": 3, "b": 3, "c": 0, "d": 0})
    report = inspect_dataset(root)
    assert [p["file"] for p in by_kind(report, "empty_class", "blocking")] == ["c", "d"]
    assert "and 1 more blocking problem" in report["error"]


def test_a_file_that_is_not_an_image_is_unreadable(tmp_path):
    root = write_folder(tmp_path / "ds", {"a": 3, "b": 3})
    (root / "a" / "letter.jpg").write_text("Dear team, ...")
    report = inspect_dataset(root)
    assert [p["file"] for p in by_kind(report, "unreadable", "warning")] == ["a/letter.jpg"]
    assert report["error"] is None


def test_training_still_stops_on_the_first_blocking_problem(tmp_path):
    from engine.data import DatasetError, load_splits

    with pytest.raises(DatasetError, match="class 'empty' has no training images"):
        load_splits(broken_set(tmp_path / "ds"), "classification")


def test_unreadable_annotations_still_list_the_broken_images(tmp_path):
    root = write_detection_set(tmp_path / "coco", "coco", n_images=4)
    path = root / "annotations.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 9  # no such category
    path.write_text(json.dumps(data))
    (root / "images" / "img001.png").write_bytes(b"")
    report = inspect_dataset(root)
    blocking = [p["message"] for p in report["problems"] if p["severity"] == "blocking"]
    assert len(blocking) == 1 and "category_id 9" in blocking[0]
    assert [p["file"] for p in by_kind(report, "unreadable")] == ["images/img001.png"]


# -- boxes --------------------------------------------------------------------------------------


def test_bad_boxes_are_warnings_with_file_and_entry(tmp_path):
    root = write_detection_set(tmp_path / "coco", "coco", n_images=4, canvas=64)
    path = root / "annotations.json"
    data = json.loads(path.read_text())
    data["annotations"].append({"id": 50, "image_id": 1, "category_id": 1, "bbox": [50, 40, 30, 9]})
    data["annotations"].append({"id": 51, "image_id": 1, "category_id": 1, "bbox": [9, 9, 0, 5]})
    path.write_text(json.dumps(data))
    report = inspect_dataset(root)
    boxes = by_kind(report, "bad_box", "warning")
    assert {p["file"] for p in boxes} == {"annotations.json"}
    messages = " | ".join(p["message"] for p in boxes)
    assert "annotation id 50 (images/img000.png)" in messages and "clipped" in messages
    assert "annotation id 51" in messages and "no area" in messages
    assert report["error"] is None


def test_a_box_of_an_unknown_class_is_blocking(tmp_path):
    root = write_detection_set(tmp_path / "yolo", "yolo", n_images=4)
    label = sorted((root / "labels").rglob("*.txt"))[0]
    label.write_text(label.read_text() + "7 0.5 0.5 0.1 0.1\n")
    report = inspect_dataset(root)
    assert report["summary"]["blocking"] == 1
    assert label.name in report["error"] and "7" in report["error"]


# -- across files -------------------------------------------------------------------------------


def test_the_same_image_in_two_splits_is_leakage(tmp_path):
    root = tmp_path / "ds"
    write_folder(root / "train", {"a": 4, "b": 4})
    write_folder(root / "val", {"a": 2, "b": 2}, seed=50)
    # Byte for byte, and the same picture saved again at another size as a JPEG.
    (root / "val" / "a" / "copy.png").write_bytes((root / "train" / "a" / "0.png").read_bytes())
    photo(3, size=(128, 96)).save(root / "val" / "b" / "big.jpg", quality=80)  # = train/a/2.png
    report = inspect_dataset(root)
    leaks = by_kind(report, "leakage", "warning")
    assert len(leaks) == 2
    text = " | ".join(p["message"] for p in leaks)
    assert "identical files" in text and "train/a/0.png" in text and "val/a/copy.png" in text
    assert "resized or re-encoded" in text and "val/b/big.jpg" in text
    assert report["error"] is None


def test_different_pictures_are_not_leakage(tmp_path):
    # Handwritten digits are small and alike: their hashes collide, their thumbnails differ.
    from factories import write_digits_imagefolder

    root = write_digits_imagefolder(tmp_path / "digits", per_class=12, classes=range(4), split=True)
    report = inspect_dataset(root)
    assert report["problems"] == [] and report["error"] is None


def test_exact_duplicates_within_a_split(tmp_path):
    root = write_folder(tmp_path / "ds", {"a": 4, "b": 4})
    (root / "a" / "again.png").write_bytes((root / "a" / "0.png").read_bytes())
    (root / "b" / "other_label.png").write_bytes((root / "a" / "1.png").read_bytes())
    report = inspect_dataset(root, seed=0, test_ratio=0.01)  # every image stays in train
    dups = by_kind(report, "duplicate", "warning")
    assert len(dups) == 2
    text = " | ".join(p["message"] for p in dups)
    assert "2 identical files in train" in text and "a/again.png" in text
    assert "with different labels (a, b)" in text


def test_placeholder_like_images(tmp_path):
    from PIL import Image

    root = write_folder(tmp_path / "ds", {"a": 5, "b": 5})
    Image.new("RGB", (8, 8), "red").resize((8, 8)).save(root / "a" / "tiny.png")
    Image.new("RGB", (64, 64), (200, 200, 200)).save(root / "a" / "flat.png")
    photo(77).convert("P").save(root / "b" / "notfound.gif")
    report = inspect_dataset(root)
    found = {p["file"]: p["message"] for p in by_kind(report, "placeholder", "warning")}
    assert set(found) == {"a/tiny.png", "a/flat.png", "b/notfound.gif"}
    assert "only 8x8 px" in found["a/tiny.png"]
    assert "one flat colour" in found["a/flat.png"]
    assert "a GIF among PNG images" in found["b/notfound.gif"]
    assert "(class b)" in found["b/notfound.gif"]


def test_class_imbalance_and_a_class_missing_from_a_split(tmp_path):
    root = tmp_path / "ds"
    write_folder(root / "train", {"big": 33, "small": 3})
    write_folder(root / "val", {"big": 2, "small": 0}, seed=500)
    report = inspect_dataset(root)
    (imbalance,) = by_kind(report, "imbalance", "warning")
    assert "'big' has 33 training images, 'small' 3 (11 to 1" in imbalance["message"]
    missing = [p["message"] for p in by_kind(report, "empty_class", "warning")]
    assert any("no images in test: 'small'" in m for m in missing), missing


def test_ignored_files_are_listed_as_info(tmp_path):
    root = write_folder(tmp_path / "ds", {"a": 3, "b": 3})
    (root / "a" / "notes.docx").write_text("x")
    report = inspect_dataset(root)
    assert "a/notes.docx" in report["ignored"]
    assert all(p["severity"] == "info" for p in by_kind(report, "ignored"))
    assert report["summary"]["info"] >= 1 and report["error"] is None


def test_shallow_inspect_skips_the_cross_file_checks(tmp_path):
    root = write_folder(tmp_path / "ds", {"a": 4, "b": 4})
    (root / "a" / "again.png").write_bytes((root / "a" / "0.png").read_bytes())
    assert by_kind(inspect_dataset(root), "duplicate")
    assert not by_kind(inspect_dataset(root, deep=False), "duplicate")


def test_fingerprint_reads_a_jpeg_at_reduced_size(tmp_path):
    path = tmp_path / "big.jpg"
    photo(1, size=(1600, 1200)).save(path, quality=90)
    found = fingerprint(path, "train")
    assert (found.width, found.height, found.format) == (1600, 1200, "JPEG")
    assert len(found.thumb) == 32 * 32 and found.spread > 10


# -- command line -------------------------------------------------------------------------------


def test_inspect_json_lists_several_problems_at_once(home, tmp_path, capsys):
    root = broken_set(tmp_path / "ds")
    assert cli.main(["--home", str(home), "datasets", "inspect", str(root), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    kinds = {(p["kind"], p["severity"], p["file"]) for p in report["problems"]}
    assert ("empty_class", "blocking", "train/empty") in kinds
    assert ("unreadable", "warning", "train/cat/1.jpg") in kinds
    assert ("unreadable", "warning", "train/dog/zero.png") in kinds
    assert report["summary"] == {"blocking": 1, "warning": 2, "info": 0}


def test_inspect_text_groups_problems_by_severity(home, tmp_path, capsys):
    root = broken_set(tmp_path / "ds")
    assert cli.main(["--home", str(home), "datasets", "inspect", str(root)]) == 1
    out = capsys.readouterr().out
    assert "1 blocking, 2 warnings, 0 info" in out
    lines = out.splitlines()
    first_warning = next(i for i, ln in enumerate(lines) if ln.strip().startswith("warning"))
    first_blocking = next(i for i, ln in enumerate(lines) if ln.strip().startswith("blocking"))
    assert first_blocking < first_warning
    assert any("train/cat/1.jpg" in ln for ln in lines)
