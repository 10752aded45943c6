"""CSV helpers shared by the classification and detection CSV readers.

Columns are found by their usual names (case-insensitive) or named explicitly; image paths are
relative to the CSV's folder (or its images/ folder); an optional `split` column (train / val /
test), separate train.csv, val.csv and test.csv files, or one CSV per split folder (Roboflow's
train/_annotations.csv, valid/_annotations.csv, test/_annotations.csv) give the dataset's own
split.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

from engine import data_roots
from engine.data.errors import DatasetError
from engine.data.images import IMAGE_EXTENSIONS

PATH_COLUMNS = ("path", "file", "filename", "file_name", "filepath", "file_path", "image",
                "image_path", "image_file", "img")  # fmt: skip
LABEL_COLUMNS = ("label", "class", "category", "target", "class_name", "category_name")
ANNOTATION_COLUMNS = ("annotations", "annotation", "boxes", "bboxes", "objects", "targets",
                      "labels", "label")  # fmt: skip
# One row per box, as TensorFlow Object Detection (and Roboflow's "TensorFlow CSV") write it.
BOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax")
SPLIT_COLUMNS = ("split", "subset")
_NAME = re.compile(r"[A-Za-z_][\w .-]{0,39}")  # what a one-column header looks like
TRAIN_NAMES = ("train", "training")
VAL_NAMES = ("val", "valid", "validation")
TEST_NAMES = ("test", "testing")
SPLIT_NAMES = {"train": TRAIN_NAMES, "val": VAL_NAMES, "test": TEST_NAMES}


def split_of_folder(name: str) -> str | None:
    """ "train", "val" or "test" for a folder or file stem named like one (any case)."""
    name = name.lower()
    return next((split for split, names in SPLIT_NAMES.items() if name in names), None)


def csv_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.glob("*") if p.suffix.lower() == ".csv" and not p.name.startswith(".")
    )


def find_csv_files(path: Path, keep=None) -> dict[str, Path]:
    """{"all": file} for one CSV, {"train": ..., "val": ..., "test": ...} for split files or
    one CSV per split folder. `keep` tells a dataset CSV from a stray one (metadata)."""
    if path.is_file():
        if path.suffix.lower() != ".csv":
            # Never read on: the first line of a file that is no CSV (a key, a password file)
            # would come back as its "columns" in the next error.
            raise DatasetError(
                f"{path.name}: not a .csv file; a CSV dataset is a .csv file whose first row "
                "names its columns (image path, label), or a folder holding one"
            )
        return {"all": path}
    files = [f for f in csv_files(path) if keep is None or keep(f)]
    if len(files) == 1:
        return {"all": files[0]}
    by_split: dict[str, Path] = {}
    for f in files:
        stem = f.stem.lower()
        for prefix_suffix in (stem, stem.removesuffix("_labels"), stem.removeprefix("labels_")):
            split = split_of_folder(prefix_suffix)
            if split and split not in by_split:
                by_split[split] = f
                break
    if not files:
        for folder in sorted(p for p in path.iterdir() if p.is_dir()):
            split = split_of_folder(folder.name)
            inside = [f for f in csv_files(folder) if keep is None or keep(f)]
            if split and len(inside) == 1 and split not in by_split:
                by_split[split] = inside[0]
    if "train" in by_split:
        return by_split
    if not files and keep is not None and csv_files(path):
        # Only CSVs that list no images: read them anyway, so the error names their columns.
        return find_csv_files(path)
    if not files:
        raise DatasetError(f"{path}: no .csv file found")
    names = ", ".join(f.name for f in files)
    raise DatasetError(
        f"{path}: several CSV files ({names}); pass one of them as the dataset, "
        "or name them train.csv, val.csv and test.csv"
    )


def is_dataset_csv(csv_path: Path) -> bool:
    """A CSV that lists images: one of its columns holds image file names. Metadata CSVs
    (statistics, class lists) next to a dataset are not read as one."""
    try:
        header, rows = read_rows(csv_path, limit=HEAD_ROWS)  # never the whole file
    except DatasetError:
        return False
    return any(_looks_like_image_paths(rows, h) for h in header)


def has_box_columns(header: Sequence[str]) -> bool:
    """One row per box: xmin, ymin, xmax, ymax columns (any case)."""
    lowered = {h.lower() for h in header}
    return all(c in lowered for c in BOX_COLUMNS)


# Rows a CSV is recognised by (a column of image names, JSON box lists): its first ones.
HEAD_ROWS = 20


def read_rows(
    csv_path: Path, limit: int | None = None
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and (line number, row) pairs; line numbers as a text editor shows them. With
    `limit`, only the header and the first `limit` rows that are not empty are read."""
    try:
        with data_roots.open_inside(csv_path, newline="", encoding="utf-8-sig") as fh:
            first = fh.readline()
            fh.seek(0)
            delimiter = max(",;\t", key=first.count) if first.strip() else ","
            reader = csv.DictReader(fh, delimiter=delimiter)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            rows = []
            for row in reader:
                if any((v or "").strip() for k, v in row.items() if k is not None):
                    rows.append((reader.line_num, row))
                    if len(rows) == limit:
                        break
    except data_roots.PathRefused as exc:  # a symlink out of the roots: nothing read
        raise DatasetError(str(exc)) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{csv_path.name}: cannot read CSV ({exc})") from exc
    if not header:
        raise DatasetError(f"{csv_path.name}: empty file, expected a header row")
    return header, rows


def column_names(header: Sequence[str]) -> str:
    """The header row for an error message, when it is one. A first row with no separator and
    no name-like cell is no header (a key, a line of a password file): it is not repeated."""
    if len(header) > 1 or (header and _NAME.fullmatch(header[0])):
        return ", ".join(header)
    return "none" if not header else "no column names: the first row has no , ; or tab"


def pick_column(
    header: Sequence[str],
    candidates: Sequence[str],
    what: str,
    csv_name: str,
    explicit: str | None = None,
) -> str:
    """The column named `explicit`, else the first header matching a usual name for `what`."""
    if explicit:
        if explicit in header:
            return explicit
        raise DatasetError(
            f"{csv_name}: no column {explicit!r} for the {what}; columns: {column_names(header)}"
        )
    lowered = {h.lower(): h for h in header}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    raise DatasetError(
        f"{csv_name}: no {what} column; name one of {', '.join(candidates)} "
        f"(columns found: {column_names(header)})"
    )


def _looks_like_image_paths(rows, column: str) -> bool:
    values = [(row.get(column) or "").strip() for _, row in rows[:200]]
    values = [v for v in values if v]
    return bool(values) and all(Path(v).suffix.lower() in IMAGE_EXTENSIONS for v in values)


def find_path_column(
    header: Sequence[str], rows, csv_name: str, explicit: str | None = None
) -> str:
    """The image path column: named, a usual name, else the one column whose values all end in
    an image extension (so "Image File" or "scan" works without renaming)."""
    lowered = {h.lower() for h in header}
    if explicit or any(name in lowered for name in PATH_COLUMNS):
        return pick_column(header, PATH_COLUMNS, "image path", csv_name, explicit)
    by_content = [h for h in header if _looks_like_image_paths(rows, h)]
    if len(by_content) == 1:
        return by_content[0]
    found = f"; several columns hold image paths: {', '.join(by_content)}" if by_content else ""
    raise DatasetError(
        f"{csv_name}: no image path column; name one of {', '.join(PATH_COLUMNS)}, or put the "
        f"image paths (ending in .png, .jpg, ...) in one column (columns found: "
        f"{column_names(header)}{found})"
    )


def _looks_like_json(rows, column: str) -> bool:
    values = [(row.get(column) or "").strip() for _, row in rows[:20]]
    return any(v.startswith(("[", "{")) for v in values)


def find_label_column(
    header: Sequence[str],
    rows,
    csv_name: str,
    explicit: str | None = None,
    taken: Sequence[str | None] = (),
) -> str:
    """The label column: named, a usual name, else the only column left once the path and
    split columns are taken (and not one of JSON cells: that is a detection CSV's)."""
    lowered = {h.lower() for h in header}
    if explicit or any(name in lowered for name in LABEL_COLUMNS):
        return pick_column(header, LABEL_COLUMNS, "label", csv_name, explicit)
    left = [h for h in header if h not in taken and not _looks_like_json(rows, h)]
    if len(left) == 1:
        return left[0]
    raise DatasetError(
        f"{csv_name}: no label column; name one of {', '.join(LABEL_COLUMNS)} "
        f"(columns found: {column_names(header)})"
    )


def find_split_column(header: Sequence[str]) -> str | None:
    lowered = {h.lower(): h for h in header}
    return next((lowered[n] for n in SPLIT_COLUMNS if n in lowered), None)


def split_value(value: str, where: str) -> str:
    split = split_of_folder((value or "").strip())
    if split:
        return split
    raise DatasetError(f"{where}: split {value!r} is not one of train, val, test")


def resolve_image(csv_path: Path, value: str, where: str) -> Path:
    """The file a CSV cell names, relative to the CSV's folder or its images/ folder (TF-OD
    CSVs name bare file names); DatasetError if missing or outside the data roots."""
    value = (value or "").strip()
    if not value:
        raise DatasetError(f"{where}: empty image path")
    path = Path(value)
    near = (
        [path]
        if path.is_absolute()
        else [csv_path.parent / path, csv_path.parent / "images" / path]
    )
    # Only places inside the data roots are looked at, and missing or outside get one message:
    # a row must not tell which files the server holds elsewhere.
    found = next((p for p in near if data_roots.is_inside(p) and p.is_file()), None)
    if found is None:
        raise DatasetError(
            f"{where}: image {value!r} not found inside the data roots "
            "(paths are relative to the CSV's folder)"
        )
    return found
