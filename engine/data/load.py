"""load_splits: read any supported dataset into train and test samples, ready for a Dataset."""

from __future__ import annotations

from pathlib import Path

from engine.data.classification import LabelledFiles
from engine.data.detection import RawDetection, drop_unused_classes, to_samples
from engine.data.errors import DatasetError, Problems
from engine.data.formats import detect_format, get_reader
from engine.data.images import probe_images
from engine.data.records import ClassSample, DatasetSplits
from engine.data.splits import detection_groups, split_seeded


def load_splits(
    path: str | Path,
    task: str = "classification",
    fmt: str = "auto",
    test_ratio: float = 0.2,
    seed: int = 0,
    columns: dict | None = None,
) -> DatasetSplits:
    """Read a dataset and split it (its own split, else seeded and stratified by class).

    `columns` names CSV columns when their names are not the usual ones:
    {"path": ..., "label": ...} (classification) or {"path": ..., "annotations": ...}.
    Raises DatasetError with a message naming the file and entry; unreadable images are
    skipped and listed in `problems`.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    fmt = detect_format(path) if fmt in ("auto", None, "") else fmt
    reader = get_reader(task, fmt)
    problems = Problems(path)
    raw = reader(path, problems, columns)
    if task == "classification":
        splits = _finish_classification(raw, problems, test_ratio, seed)
    else:
        splits = _finish_detection(raw, problems, test_ratio, seed)
    splits.format = fmt
    splits.root = path.resolve()
    splits.problems = problems.as_list()
    splits.counts = count_splits(splits, problems.counts)
    return splits


def _finish_classification(
    raw: LabelledFiles, problems: Problems, test_ratio: float, seed: int
) -> DatasetSplits:
    if len(raw.classes) < 2:
        only = raw.classes[0] if raw.classes else "none"
        raise DatasetError(
            f"only one class ({only!r}): classification needs images of at least two classes"
        )
    parts = {"train": raw.train, "test": raw.test or []}
    files = parts["train"] + parts["test"]
    sizes = probe_images([p for p, _ in files])
    bad = set()
    for (p, _), size in zip(files, sizes):
        if isinstance(size, Exception):
            problems.add(p, f"skipped: {size.reason}")
            problems.count("skipped_images")
            bad.add(p)
    keep = {
        k: [ClassSample(str(p), label) for p, label in v if p not in bad] for k, v in parts.items()
    }
    if not keep["train"]:
        raise DatasetError("no readable training images: every image file failed to open")
    for index, name in enumerate(raw.classes):
        if not any(s.label == index for s in keep["train"]):
            raise DatasetError(f"class {name!r} has no readable training images")
    splits = DatasetSplits("classification", "", Path(), list(raw.classes))
    if raw.test is None:
        train = keep["train"]
        splits.train, splits.test = split_seeded(train, [s.label for s in train], test_ratio, seed)
    else:
        splits.train, splits.test = keep["train"], keep["test"]
        splits.split_source = "dataset"
    return splits


def _finish_detection(
    raw: RawDetection, problems: Problems, test_ratio: float, seed: int
) -> DatasetSplits:
    train = to_samples(raw.train, problems)
    test = to_samples(raw.test, problems) if raw.test is not None else None
    if not train:
        raise DatasetError("no readable training images: every image file failed to open")
    parts = [train] + ([test] if test is not None else [])
    classes, parts = drop_unused_classes(raw.classes, parts, problems, str(problems.root))
    if not classes:
        raise DatasetError("no boxes in the annotations: a detection model needs labelled objects")
    splits = DatasetSplits("detection", "", Path(), classes)
    if test is None:
        train = parts[0]
        groups = detection_groups(train, len(classes))
        splits.train, splits.test = split_seeded(train, groups, test_ratio, seed)
    else:
        splits.train, splits.test = parts
        splits.split_source = "dataset"
    return splits


def count_splits(splits: DatasetSplits, extra: dict | None = None) -> dict:
    """Images (and boxes) per split and per class: what inspect and the run summary report."""
    names = ("train", "test")
    parts = {"train": splits.train, "test": splits.test}
    counts: dict = {
        "images": {k: len(parts[k]) for k in names},
        "images_per_class": {c: dict.fromkeys(names, 0) for c in splits.classes},
    }
    if splits.task == "classification":
        for k in names:
            for s in parts[k]:
                counts["images_per_class"][splits.classes[s.label]][k] += 1
    else:
        counts["boxes"] = dict.fromkeys(names, 0)
        counts["boxes_per_class"] = {c: dict.fromkeys(names, 0) for c in splits.classes}
        counts["background_images"] = dict.fromkeys(names, 0)
        for k in names:
            for s in parts[k]:
                counts["boxes"][k] += len(s.labels)
                if not len(s.labels):
                    counts["background_images"][k] += 1
                for label in s.labels:
                    counts["boxes_per_class"][splits.classes[int(label)]][k] += 1
                for label in set(int(x) for x in s.labels):
                    counts["images_per_class"][splits.classes[label]][k] += 1
        counts["boxes_clipped"] = 0
        counts["boxes_dropped"] = 0
    counts["skipped_images"] = 0
    counts.update(extra or {})
    return counts
