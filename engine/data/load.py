"""load_splits: read any supported dataset into train, val and test samples, ready for a Dataset.

Every split a dataset declares is kept (records.py says which one the trainer uses for what),
and, for the data check, every file under its root that no reader took is listed in `ignored`.
"""

from __future__ import annotations

from pathlib import Path

from engine import data_roots
from engine.data.classification import LabelledFiles
from engine.data.detection import RawDetection, RawImage, drop_unused_classes, to_samples
from engine.data.errors import DatasetError, Problems
from engine.data.formats import detect_layout, get_reader
from engine.data.images import probe_images
from engine.data.records import ClassSample, DatasetSplits
from engine.data.splits import detection_groups, split_seeded
from engine.data.strays import find_ignored


def load_splits(
    path: str | Path,
    task: str = "classification",
    fmt: str = "auto",
    test_ratio: float = 0.2,
    seed: int = 0,
    columns: dict | None = None,
    strict: bool = True,
    list_ignored: bool = False,
) -> DatasetSplits:
    """Read a dataset and split it (its own split, else seeded and stratified by class).

    `columns` names CSV columns when their names are not the usual ones:
    {"path": ..., "label": ...} (classification) or {"path": ..., "annotations": ...}.
    Raises DatasetError with a message naming the file and entry; unreadable images are
    skipped and listed in `problems`. With strict=False, problems that would stop a run but
    leave the rest readable (an empty class, a single class, a malformed box or label line, an
    annotation naming a missing image) are listed as blocking problems instead of raised, so
    the data check can show all of them at once; with strict=True the error names them all.
    With list_ignored, the files under the root that no reader took are listed in `ignored`
    (and counted in counts["ignored_files"]): a walk of the whole tree, which only the data
    check shows, so a run's load leaves it out.
    """
    path = confine_dataset(path)
    fmt, path = detect_layout(path, task, fmt)  # path: the folder inside a download's wrapper
    return read_splits(path, task, fmt, test_ratio, seed, columns, strict, list_ignored)


def read_splits(
    path: Path,
    task: str,
    fmt: str,
    test_ratio: float = 0.2,
    seed: int = 0,
    columns: dict | None = None,
    strict: bool = True,
    list_ignored: bool = False,
) -> DatasetSplits:
    """load_splits of a dataset whose layout is known: `path` and `fmt` as detect_layout
    found them inside the data roots (confine_dataset), so nothing is detected again."""
    reader = get_reader(task, fmt)
    problems = Problems(path)
    try:
        try:
            raw = reader(path, problems, columns)
        except data_roots.PathRefused as exc:  # a class list or list file linked out of the roots
            raise DatasetError(str(exc)) from None
        arrange_splits(raw, problems)
        check_inside_roots(raw, problems)
    except DatasetError as exc:
        if not problems.blocking:
            raise
        # The bad entries read before it stay listed with it: none hides another.
        problems.block("", str(exc))
        problems.raise_blocking()
    if task == "classification":
        splits = _finish_classification(raw, problems, test_ratio, seed)
    else:
        splits = _finish_detection(raw, problems, test_ratio, seed)
    splits.format = fmt
    splits.root = path.resolve()
    if strict:
        problems.raise_blocking()
    splits.problems = problems.as_list()
    extra = dict(problems.counts)
    if list_ignored:
        # A dataset named by its annotation file has no folder of its own to list.
        found = find_ignored(problems.root, used_files(raw), fmt) if path.is_dir() else ([], 0)
        splits.ignored, extra["ignored_files"] = found
    splits.counts = count_splits(splits, extra)
    return splits


SPLIT_FIELDS = ("train", "val", "test")


def arrange_splits(raw: LabelledFiles | RawDetection, problems: Problems) -> None:
    """val beside test stays val; a lone val becomes the held-out `test` (records.py). A split
    the dataset declares but leaves empty (a test/ folder without class folders) is said, and
    treated as not declared."""
    for split in ("val", "test"):
        if getattr(raw, split) is not None and not getattr(raw, split):
            problems.add(
                problems.root,
                f"the dataset's {split} split holds no images: not used",
                "empty_split",
                "info",
            )
            setattr(raw, split, None)
    if raw.val is not None and raw.test is None:
        raw.test, raw.val = raw.val, None


def _raw_items(raw: LabelledFiles | RawDetection) -> list:
    return [item for split in SPLIT_FIELDS for item in (getattr(raw, split) or [])]


def used_files(raw: LabelledFiles | RawDetection) -> set[Path]:
    """The images and annotation files a reader took (all else under the root is ignored)."""
    used = set(raw.files)
    for item in _raw_items(raw):
        if isinstance(item, RawImage):
            used.update((item.path, item.source))
        else:
            used.add(item[0])
    return used


def confine_dataset(path: str | Path) -> Path:
    """`path` (with `~` expanded) when it is inside the data roots; DatasetError otherwise, with
    the same message whether it exists or not (engine.data_roots)."""
    try:
        data_roots.confine(path, what="datasets")
    except data_roots.PathRefused as exc:
        raise DatasetError(str(exc)) from None
    return Path(path).expanduser()


def check_inside_roots(raw: LabelledFiles | RawDetection, problems: Problems) -> None:
    """Every image a reader found lies inside the data roots: a symlink, or a `../` in an
    annotation file, must not read the server's other files into a dataset. Checked before any
    image is opened."""
    paths = [item.path if isinstance(item, RawImage) else item[0] for item in _raw_items(raw)]
    outside = data_roots.outside_roots(p for p in paths if p is not None)
    if outside:
        raise DatasetError(
            f"{problems.rel(outside[0])}: {len(outside)} image(s) lead outside the data roots "
            f"({data_roots.describe_roots(data_roots.data_roots())}), through a symlink or a "
            "path in the annotations; images must lie inside a data root"
        )


def _finish_classification(
    raw: LabelledFiles, problems: Problems, test_ratio: float, seed: int
) -> DatasetSplits:
    if len(raw.classes) < 2:
        only = raw.classes[0] if raw.classes else "none"
        problems.block(
            problems.root,
            f"only one class ({only!r}): classification needs images of at least two classes",
            "too_few_classes",
        )
    parts = {k: getattr(raw, k) or [] for k in SPLIT_FIELDS}
    files = [f for part in parts.values() for f in part]
    sizes = probe_images([p for p, _ in files])
    bad = set()
    for (p, _), size in zip(files, sizes):
        if isinstance(size, Exception):
            problems.add(p, f"skipped: {size.reason}", "unreadable")
            problems.count("skipped_images")
            bad.add(p)
    keep = {
        k: [ClassSample(str(p), label) for p, label in v if p not in bad] for k, v in parts.items()
    }
    if raw.train and not keep["train"]:
        problems.block(
            problems.root,
            "no readable training images: every image file failed to open",
            "no_images",
        )
    for index, name in enumerate(raw.classes):
        # A class without any file was blocked by its reader; here: files, none readable.
        had_files = any(label == index for _, label in raw.train)
        if had_files and not any(s.label == index for s in keep["train"]):
            problems.block(
                problems.root, f"class {name!r} has no readable training images", "empty_class"
            )
    splits = DatasetSplits("classification", "", Path(), list(raw.classes))
    if raw.test is None:
        train = keep["train"]
        splits.train, splits.test = split_seeded(train, [s.label for s in train], test_ratio, seed)
    else:
        splits.train, splits.val, splits.test = keep["train"], keep["val"], keep["test"]
        splits.split_source = "dataset"
    return splits


def _finish_detection(
    raw: RawDetection, problems: Problems, test_ratio: float, seed: int
) -> DatasetSplits:
    train = to_samples(raw.train, problems)
    val = to_samples(raw.val or [], problems)
    test = to_samples(raw.test, problems) if raw.test is not None else None
    if not train:
        problems.block(
            problems.root,
            "no readable training images: every image file failed to open",
            "no_images",
        )
    parts = [train, val] + ([test] if test is not None else [])
    classes, parts = drop_unused_classes(raw.classes, parts, problems, str(problems.root))
    if not classes:
        problems.block(
            problems.root,
            "no boxes in the annotations: a detection model needs labelled objects",
            "no_boxes",
        )
    splits = DatasetSplits("detection", "", Path(), classes)
    if test is None:
        train = parts[0]
        groups = detection_groups(train, len(classes))
        splits.train, splits.test = split_seeded(train, groups, test_ratio, seed)
    else:
        splits.train, splits.val, splits.test = parts
        splits.split_source = "dataset"
    return splits


def count_splits(splits: DatasetSplits, extra: dict | None = None) -> dict:
    """Images (and boxes) per split and per class: what inspect and the run summary report."""
    names = splits.split_names()
    parts = {k: getattr(splits, k) for k in names}
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
