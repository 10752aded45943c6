"""Classification readers: image folders and CSV files.

Image folder: `train/` plus `val/` (or `valid/`, `validation/`, `test/`) with one folder per
class in each, or just one folder per class (then the seeded split applies). Images in nested
folders inside a class folder belong to that class.

CSV: an image path column and a label column, found by their usual names, by their content (the
one column of image file names; the one column left for the label) or named with
`columns={"path": ..., "label": ...}`; paths are relative to the CSV's folder. An image the CSV
names that does not exist is a DatasetError naming the line; a file that exists but cannot be
decoded is skipped and listed in problems, like in an image folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.data.errors import DatasetError, Problems
from engine.data.images import list_images, natural_key
from engine.data.tables import (
    TEST_NAMES,
    TRAIN_NAMES,
    find_csv_files,
    find_label_column,
    find_path_column,
    find_split_column,
    read_rows,
    resolve_image,
    split_value,
)


@dataclass
class LabelledFiles:
    """What a classification reader found, before images are probed and the split is made."""

    classes: list[str]
    train: list[tuple[Path, int]]
    test: list[tuple[Path, int]] | None  # None: the data has no split of its own


def _subdirs(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))),
        key=lambda p: natural_key(p.name),
    )


def find_split_dirs(root: Path) -> tuple[Path | None, Path | None]:
    """(train folder, test folder) of an image folder dataset, either may be None."""
    by_name = {p.name.lower(): p for p in _subdirs(root)}
    train = next((by_name[n] for n in TRAIN_NAMES if n in by_name), None)
    test = next((by_name[n] for n in TEST_NAMES if n in by_name), None)
    return train, test


def read_imagefolder(root: Path, problems: Problems, columns: dict | None = None) -> LabelledFiles:
    if not root.is_dir():
        raise DatasetError(f"{root}: an image folder dataset must be a folder")
    train_dir, test_dir = find_split_dirs(root)
    if train_dir is None and test_dir is not None:
        raise DatasetError(
            f"{root}: found {test_dir.name}/ but no train/ folder; add train/ with one folder "
            "per class, or put the class folders directly in the dataset folder"
        )
    top = [train_dir, test_dir] if train_dir else [root]
    top = [d for d in top if d is not None]
    names = {c.name for d in top for c in _subdirs(d)}
    classes = sorted(names, key=natural_key)
    if not classes:
        raise DatasetError(
            f"{top[0]}: no class folders; put the images of each class in a folder named after "
            "the class"
        )
    loose = [p for d in top for p in d.iterdir() if p.is_file() and not p.name.startswith(".")]
    loose = [p for p in loose if p.suffix.lower() not in (".csv", ".json", ".txt", ".md", ".yaml")]
    if loose:
        problems.add(
            top[0], f"{len(loose)} file(s) directly in the folder, not in a class folder: ignored"
        )

    def files_of(folder: Path) -> list[tuple[Path, int]]:
        found = []
        for index, name in enumerate(classes):
            class_dir = folder / name
            if class_dir.is_dir():
                found += [(p, index) for p in list_images(class_dir)]
        return found

    train = files_of(top[0])
    test = files_of(test_dir) if train_dir and test_dir else None
    for index, name in enumerate(classes):
        if not any(label == index for _, label in train):
            where = f"{top[0].name}/{name}/" if train_dir else f"{name}/"
            raise DatasetError(
                f"class {name!r} has no training images (folder {where}); add images or remove "
                "the folder"
            )
    return LabelledFiles(classes, train, test)


def read_classification_csv(
    path: Path, problems: Problems, columns: dict | None = None
) -> LabelledFiles:
    columns = columns or {}
    files = find_csv_files(path)
    parts: dict[str, list[tuple[Path, str]]] = {"train": [], "test": []}
    for file_split, csv_path in files.items():
        header, rows = read_rows(csv_path)
        name = csv_path.name
        path_col = find_path_column(header, rows, name, columns.get("path"))
        split_col = find_split_column(header) if file_split == "all" else None
        label_col = find_label_column(
            header, rows, name, columns.get("label"), (path_col, split_col)
        )
        for line, row in rows:
            where = f"{name} line {line}"
            label = (row.get(label_col) or "").strip()
            if not label:
                raise DatasetError(f"{where}: empty label in column {label_col!r}")
            image = resolve_image(csv_path, row.get(path_col, ""), where)
            split = file_split
            if split == "all":
                split = split_value(row.get(split_col, ""), where) if split_col else "train"
            parts[split].append((image, label))
    classes = sorted({label for part in parts.values() for _, label in part}, key=natural_key)
    index = {c: i for i, c in enumerate(classes)}
    train = [(p, index[label]) for p, label in parts["train"]]
    test = [(p, index[label]) for p, label in parts["test"]] or None
    if not train:
        raise DatasetError(f"{path.name}: no rows (or no training rows)")
    for i, name in enumerate(classes):
        if not any(label == i for _, label in train):
            raise DatasetError(f"class {name!r} has no training images in {path.name}")
    return LabelledFiles(classes, train, test)
