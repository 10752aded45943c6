"""Classification readers: image folders and CSV files.

Image folder: `train/` plus `val/` (or `valid/`, `validation/`) and/or `test/` with one folder
per class in each (folder names in any case), or just one folder per class (then the seeded
split applies). Images in nested folders inside a class folder belong to that class; files
outside the class folders are listed as ignored by the loader.

CSV: an image path column and a label column, found by their usual names, by their content (the
one column of image file names; the one column left for the label) or named with
`columns={"path": ..., "label": ...}`; paths are relative to the CSV's folder. An image the CSV
names that does not exist (or an empty label, an unknown split) is a blocking problem naming the
line, and every such row is listed; a file that exists but cannot be decoded is skipped and
listed in problems, like in an image folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.data.errors import DatasetError, Problems
from engine.data.images import list_images, natural_key
from engine.data.signatures import class_folders, split_folders
from engine.data.tables import (
    find_csv_files,
    find_label_column,
    find_path_column,
    find_split_column,
    has_box_columns,
    is_dataset_csv,
    read_rows,
    resolve_image,
    split_value,
)


@dataclass
class LabelledFiles:
    """What a classification reader found, before images are probed and the split is made."""

    classes: list[str]
    train: list[tuple[Path, int]]
    test: list[tuple[Path, int]] | None  # None: the data declares no test split
    val: list[tuple[Path, int]] | None = None  # None: the data declares no val split
    files: list[Path] = field(default_factory=list)  # annotation files read (CSVs)


def read_imagefolder(root: Path, problems: Problems, columns: dict | None = None) -> LabelledFiles:
    if not root.is_dir():
        raise DatasetError(f"{root}: an image folder dataset must be a folder")
    dirs = split_folders(root)
    train_dir = dirs.get("train")
    if train_dir is None and dirs:
        held = next(iter(dirs.values()))
        raise DatasetError(
            f"{root}: found {held.name}/ but no train/ folder; add train/ with one folder "
            "per class, or put the class folders directly in the dataset folder"
        )
    top = list(dirs.values()) if train_dir else [root]
    names = {c.name for d in top for c in class_folders(d)}
    classes = sorted(names, key=natural_key)
    if not classes:
        raise DatasetError(
            f"{top[0]}: no class folders; put the images of each class in a folder named after "
            "the class"
        )
    # Files beside the class folders are listed with the dataset's ignored files (load.py).

    def files_of(folder: Path) -> list[tuple[Path, int]]:
        found = []
        for index, name in enumerate(classes):
            class_dir = folder / name
            if class_dir.is_dir():
                found += [(p, index) for p in list_images(class_dir)]
        return found

    train = files_of(train_dir or root)
    val = files_of(dirs["val"]) if "val" in dirs else None
    test = files_of(dirs["test"]) if "test" in dirs else None
    for index, name in enumerate(classes):
        if not any(label == index for _, label in train):
            where = f"{train_dir.name}/{name}/" if train_dir else f"{name}/"
            problems.block(
                f"{train_dir or root}/{name}",
                f"class {name!r} has no training images (folder {where}); add images or remove "
                "the folder",
                "empty_class",
            )
    return LabelledFiles(classes, train, test, val)


def read_classification_csv(
    path: Path, problems: Problems, columns: dict | None = None
) -> LabelledFiles:
    columns = columns or {}
    files = find_csv_files(path, keep=None if columns else is_dataset_csv)
    parts: dict[str, list[tuple[Path, str]]] = {"train": [], "val": [], "test": []}
    for file_split, csv_path in files.items():
        header, rows = read_rows(csv_path)
        name = csv_path.name
        if has_box_columns(header) and not columns.get("label"):
            raise DatasetError(
                f"{name}: one row per box (xmin, ymin, xmax, ymax columns): a detection "
                "dataset; choose task=detection"
            )
        path_col = find_path_column(header, rows, name, columns.get("path"))
        split_col = find_split_column(header) if file_split == "all" else None
        label_col = find_label_column(
            header, rows, name, columns.get("label"), (path_col, split_col)
        )
        for line, row in rows:
            where = f"{name} line {line}"
            with problems.entry(csv_path):  # a bad row is listed and skipped; the next is read
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
    val = [(p, index[label]) for p, label in parts["val"]] or None
    test = [(p, index[label]) for p, label in parts["test"]] or None
    if not train:
        raise DatasetError(f"{path.name}: no rows (or no training rows)")
    for i, name in enumerate(classes):
        if not any(label == i for _, label in train):
            problems.block(
                path, f"class {name!r} has no training images in {path.name}", "empty_class"
            )
    return LabelledFiles(classes, train, test, val, list(files.values()))
