import csv
import io
import random

import numpy as np
import pytest
import torch
from factories import write_digits_csv, write_digits_imagefolder
from PIL import Image

from engine.config import RunConfig
from engine.data import (
    ClassificationDataset,
    ClassSample,
    DatasetError,
    ImageError,
    build_transform,
    detect_format,
    inspect_dataset,
    load_splits,
    read_image,
)
from engine.data.images import probe_image
from engine.data.splits import split_seeded
from engine.sample_datasets import digit_image

# -- image folders --------------------------------------------------------------------------


def test_imagefolder_without_split_gets_a_seeded_stratified_split(tmp_path):
    root = write_digits_imagefolder(tmp_path / "ds", per_class=6)
    splits = load_splits(root, "classification", test_ratio=0.2, seed=0)
    assert splits.format == "imagefolder"
    assert splits.classes == [str(d) for d in range(10)]
    assert splits.split_source == "seeded"
    assert len(splits.train) + len(splits.test) == 60
    for label in range(10):  # every class is in both splits
        assert sum(s.label == label for s in splits.test) == 1
        assert sum(s.label == label for s in splits.train) == 5
    for s in splits.train:  # labels match the folder the file is in
        assert s.path.split("/")[-2] == splits.classes[s.label]
    assert splits.problems == []


def test_imagefolder_with_train_and_test_folders_keeps_that_split(tmp_path):
    root = write_digits_imagefolder(tmp_path / "ds", per_class=6, split=True)
    splits = load_splits(root, "classification")
    assert splits.split_source == "dataset"
    assert (len(splits.train), len(splits.test)) == (40, 20)
    assert all("/train/" in s.path for s in splits.train)
    assert all("/test/" in s.path for s in splits.test)


def test_a_layouts_own_folder_beside_the_classes_is_no_class(tmp_path):
    # Detection tells the layout by the class folders alone; reading must agree.
    root = write_digits_imagefolder(tmp_path / "ds", per_class=4, classes=range(3))
    (root / "masks").mkdir()
    Image.new("L", (32, 32)).save(root / "masks" / "0_000.png")
    splits = load_splits(root, "classification", test_ratio=0.25, seed=0)
    assert splits.classes == ["0", "1", "2"]


def test_val_folder_counts_as_the_test_split(tmp_path):
    root = write_digits_imagefolder(tmp_path / "ds", per_class=3, classes=range(2), split=True)
    (root / "test").rename(root / "val")
    splits = load_splits(root, "classification")
    assert splits.split_source == "dataset" and len(splits.test) == 2


def test_empty_class_folder_is_an_error_naming_the_class(tmp_path):
    root = write_digits_imagefolder(tmp_path / "ds", per_class=2, classes=range(3))
    (root / "empty_class").mkdir()
    with pytest.raises(DatasetError, match="class 'empty_class' has no training images"):
        load_splits(root, "classification")


def test_a_single_class_is_an_error(tmp_path):
    root = write_digits_imagefolder(tmp_path / "ds", per_class=3, classes=[7])
    with pytest.raises(DatasetError, match="only one class \\('7'\\)"):
        load_splits(root, "classification")


def test_unreadable_images_are_skipped_counted_and_listed(tmp_path):
    root = write_digits_imagefolder(tmp_path / "ds", per_class=4, classes=range(2))
    (root / "0" / "garbage.jpg").write_bytes(b"this is not an image")
    good = io.BytesIO()
    digit_image(5, 32).save(good, "PNG")
    (root / "1" / "truncated.png").write_bytes(good.getvalue()[:200])
    splits = load_splits(root, "classification")
    assert len(splits.train) + len(splits.test) == 8
    assert splits.counts["skipped_images"] == 2
    files = sorted(p["file"] for p in splits.problems)
    assert files == ["0/garbage.jpg", "1/truncated.png"]
    assert all("cannot read image" in p["message"] for p in splits.problems)


def test_a_class_whose_images_are_all_broken_is_an_error(tmp_path):
    root = write_digits_imagefolder(tmp_path / "ds", per_class=2, classes=range(2))
    (root / "broken").mkdir()
    (root / "broken" / "a.png").write_bytes(b"nope")
    with pytest.raises(DatasetError, match="class 'broken' has no readable training images"):
        load_splits(root, "classification")


# -- CSV ------------------------------------------------------------------------------------


def test_csv_reads_the_same_dataset_as_the_folder(tmp_path):
    csv_path = write_digits_csv(tmp_path / "ds", per_class=6)
    for path in (csv_path, csv_path.parent):  # the file itself, or its folder
        splits = load_splits(path, "classification")
        assert splits.format == "csv"
        assert splits.classes == [str(d) for d in range(10)]
        assert len(splits.train) + len(splits.test) == 60
        assert all(sum(s.label == c for s in splits.test) == 1 for c in range(10))


def _rewrite_csv(csv_path, header, rows):
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _csv_rows(csv_path):
    with open(csv_path, newline="") as fh:
        return list(csv.reader(fh))[1:]


def test_csv_without_known_columns_names_the_columns_it_found(tmp_path):
    csv_path = write_digits_csv(tmp_path / "ds", per_class=2, classes=range(2))
    rows = _csv_rows(csv_path)
    _rewrite_csv(csv_path, ["a", "b"], [["x", label] for _, label in rows])
    with pytest.raises(DatasetError, match=r"labels\.csv: no image path column.*found: a, b\)"):
        load_splits(csv_path, "classification")
    # Two columns of image paths: which one is meant cannot be guessed.
    _rewrite_csv(csv_path, ["picture", "mask", "kind"], [[p, p, label] for p, label in rows])
    with pytest.raises(DatasetError, match="several columns hold image paths: picture, mask"):
        load_splits(csv_path, "classification")
    splits = load_splits(csv_path, "classification", columns={"path": "picture", "label": "kind"})
    assert len(splits.train) + len(splits.test) == 4


def test_csv_columns_with_unusual_names_are_found_by_their_content(tmp_path):
    # "Image File" holds file names, so it is the path column; "Diagnosis" is all that is left.
    csv_path = write_digits_csv(tmp_path / "ds", per_class=3, classes=range(2))
    _rewrite_csv(csv_path, ["Image File", "Diagnosis"], _csv_rows(csv_path))
    splits = load_splits(csv_path, "classification")
    assert splits.classes == ["0", "1"]
    assert len(splits.train) + len(splits.test) == 6
    assert inspect_dataset(csv_path.parent)["error"] is None


def test_csv_row_naming_a_missing_image_names_the_line(tmp_path):
    csv_path = write_digits_csv(tmp_path / "ds", per_class=2, classes=range(2))
    rows = _csv_rows(csv_path)
    rows[2][0] = "images/nothere.png"
    _rewrite_csv(csv_path, ["filename", "label"], rows)
    with pytest.raises(
        DatasetError, match=r"labels\.csv line 4: image 'images/nothere\.png' not found"
    ):
        load_splits(csv_path, "classification")


def test_csv_split_column_gives_the_dataset_split(tmp_path):
    csv_path = write_digits_csv(tmp_path / "ds", per_class=3, classes=range(2))
    rows = _csv_rows(csv_path)
    rows = [r + ["val" if k % 3 == 0 else "train"] for k, r in enumerate(rows)]
    _rewrite_csv(csv_path, ["file", "class", "split"], rows)
    splits = load_splits(csv_path, "classification")
    assert splits.split_source == "dataset"
    assert (len(splits.train), len(splits.test)) == (4, 2)
    rows[1][2] = "holdout"
    _rewrite_csv(csv_path, ["file", "class", "split"], rows)
    with pytest.raises(
        DatasetError, match="line 3: split 'holdout' is not one of train, val, test"
    ):
        load_splits(csv_path, "classification")


def test_csv_split_column_with_val_and_test_keeps_all_three(tmp_path):
    csv_path = write_digits_csv(tmp_path / "ds", per_class=4, classes=range(2))
    names = {0: "train", 1: "train", 2: "val", 3: "test"}
    rows = [r + [names[k % 4]] for k, r in enumerate(_csv_rows(csv_path))]
    _rewrite_csv(csv_path, ["file", "class", "split"], rows)
    splits = load_splits(csv_path, "classification")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4, 2, 2)
    assert splits.per_epoch == splits.val and splits.final == splits.test
    assert splits.counts["images"] == {"train": 4, "val": 2, "test": 2}


# -- images ---------------------------------------------------------------------------------


def test_read_image_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display turned 90 degrees clockwise
    path = tmp_path / "photo.jpg"
    img.save(path, exif=exif.tobytes(), quality=95)
    out = read_image(path)
    assert out.size == (20, 40) and probe_image(path) == (20, 40)
    top, bottom = np.asarray(out)[5, 10], np.asarray(out)[35, 10]
    assert top[0] > 200 and top[2] < 60  # the red half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "I;16", "LA"])
def test_read_image_converts_every_mode_to_rgb(tmp_path, mode):
    gray = np.zeros((16, 16), np.uint8)
    gray[:, 8:] = 200
    if mode == "L":
        img = Image.fromarray(gray, "L")
    elif mode == "P":
        img = Image.fromarray(np.stack([gray] * 3, -1), "RGB").convert("P", palette=Image.ADAPTIVE)
    elif mode == "RGBA":
        rgba = np.stack([gray] * 3 + [np.full_like(gray, 255)], -1)
        rgba[:, :4, 3] = 0  # transparent strip shows white
        img = Image.fromarray(rgba, "RGBA")
    elif mode == "LA":
        img = Image.fromarray(np.stack([gray, np.full_like(gray, 255)], -1), "LA")
    else:
        img = Image.fromarray(gray.astype(np.uint16) * 257)  # 16-bit grayscale
    path = tmp_path / f"img_{mode.replace(';', '')}.png"
    img.save(path)
    out = np.asarray(read_image(path))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert abs(int(out[0, 12, 0]) - 200) <= 2 and out[0, 12].std() < 1  # gray stays gray
    expected_left = 255 if mode == "RGBA" else 0
    assert abs(int(out[0, 1, 0]) - expected_left) <= 2


def test_read_image_names_the_unreadable_file(tmp_path):
    path = tmp_path / "bad.png"
    path.write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageError, match="bad.png: cannot read image"):
        read_image(path)
    assert issubclass(ImageError, DatasetError)


# -- split ----------------------------------------------------------------------------------


def test_seeded_split_is_deterministic_and_independent_of_listing_order():
    samples = [ClassSample(f"img{i:03d}.png", i % 3) for i in range(30)] + [
        ClassSample("solo.png", 3)
    ]
    train, test = split_seeded(samples, [s.label for s in samples], 0.2, seed=4)
    shuffled = samples[:]
    random.Random(1).shuffle(shuffled)
    again = split_seeded(shuffled, [s.label for s in shuffled], 0.2, seed=4)
    assert (train, test) == again
    assert [sum(s.label == c for s in test) for c in range(4)] == [2, 2, 2, 0]
    assert ClassSample("solo.png", 3) in train  # a class with one image stays in train
    other = split_seeded(samples, [s.label for s in samples], 0.2, seed=5)
    assert other[1] != test


def test_tiny_classes_still_get_one_test_image():
    samples = [ClassSample(f"{c}_{i}.png", c) for c in range(3) for i in range(2)]
    train, test = split_seeded(samples, [s.label for s in samples], 0.1, seed=0)
    assert sorted(s.label for s in test) == [0, 1, 2] and len(train) == 3


# -- detection of format, inspect, Dataset -----------------------------------------------------


def test_auto_format_and_inspect_for_classification(tmp_path):
    folder = write_digits_imagefolder(tmp_path / "folder", per_class=3, classes=range(3))
    csv_path = write_digits_csv(tmp_path / "csv", per_class=3, classes=range(3))
    assert detect_format(folder) == "imagefolder"
    assert detect_format(csv_path) == "csv" and detect_format(csv_path.parent) == "csv"
    report = inspect_dataset(csv_path.parent)
    assert report["task"] == "classification" and report["error"] is None
    assert report["images"] == {"train": 6, "test": 3}
    assert report["images_per_class"]["2"] == {"train": 2, "test": 1}


def test_inspect_never_raises(tmp_path):
    report = inspect_dataset(tmp_path / "missing")
    assert "does not exist inside the data roots" in report["error"]
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    assert "cannot tell the dataset format" in inspect_dataset(tmp_path / "junk")["error"]
    bad = write_digits_imagefolder(tmp_path / "one", per_class=2, classes=[1])
    assert "only one class" in inspect_dataset(bad)["error"]


def test_classification_dataset_returns_normalised_tensors(tmp_path):
    root = write_digits_imagefolder(tmp_path / "ds", per_class=2, classes=range(2))
    splits = load_splits(root, "classification")
    cfg = RunConfig.from_dict({"dataset": str(root)})
    transform = build_transform(cfg, False, 48, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    image, label = ClassificationDataset(splits.train, transform)[0]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32
    assert label == splits.train[0].label
    assert image.min() >= -1.0 and image.max() <= 1.0 and image.min() < -0.9  # black → -1


def test_unreadable_upload_is_named_by_its_file_name():
    import io

    from engine.data import ImageError, read_image

    upload = io.BytesIO(b"junk")
    upload.name = "holiday.jpg"
    with pytest.raises(ImageError, match="holiday.jpg: cannot read image") as info:
        read_image(upload)
    assert "BytesIO" not in str(info.value)
