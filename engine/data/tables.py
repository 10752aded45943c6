"""CSV helpers shared by the classification and detection CSV readers.

Columns are found by their usual names (case-insensitive) or named explicitly; image paths are
relative to the CSV's folder; an optional `split` column (train / val / test) or separate
train.csv and val.csv (or test.csv) files give the dataset's own split.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from engine.data.errors import DatasetError
from engine.data.images import IMAGE_EXTENSIONS

PATH_COLUMNS = ("path", "file", "filename", "file_name", "filepath", "file_path", "image",
                "image_path", "image_file", "img")  # fmt: skip
LABEL_COLUMNS = ("label", "class", "category", "target", "class_name", "category_name")
ANNOTATION_COLUMNS = ("annotations", "annotation", "boxes", "bboxes", "objects", "targets",
                      "labels", "label")  # fmt: skip
SPLIT_COLUMNS = ("split", "subset")
TRAIN_NAMES = ("train", "training")
TEST_NAMES = ("val", "valid", "validation", "test", "testing")


def find_csv_files(path: Path) -> dict[str, Path]:
    """{"all": file} for one CSV, {"train": ..., "test": ...} for split files."""
    if path.is_file():
        return {"all": path}
    files = sorted(p for p in path.glob("*.csv") if not p.name.startswith("."))
    if len(files) == 1:
        return {"all": files[0]}
    if not files:
        raise DatasetError(f"{path}: no .csv file found")
    by_split = {}
    for split, names in (("train", TRAIN_NAMES), ("test", TEST_NAMES)):
        for name in names:  # val before test: the validation file is what tunes a model
            hits = [
                f for f in files if f.stem.lower() in (name, f"{name}_labels", f"labels_{name}")
            ]
            if hits:
                by_split[split] = hits[0]
                break
    if "train" in by_split:
        return by_split
    names = ", ".join(f.name for f in files)
    raise DatasetError(
        f"{path}: several CSV files ({names}); pass one of them as the dataset, "
        "or name them train.csv and val.csv (or test.csv)"
    )


def read_rows(csv_path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and (line number, row) pairs; line numbers as a text editor shows them."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
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
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{csv_path.name}: cannot read CSV ({exc})") from exc
    if not header:
        raise DatasetError(f"{csv_path.name}: empty file, expected a header row")
    return header, rows


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
            f"{csv_name}: no column {explicit!r} for the {what}; columns: {', '.join(header)}"
        )
    lowered = {h.lower(): h for h in header}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    raise DatasetError(
        f"{csv_name}: no {what} column; name one of {', '.join(candidates)} "
        f"(columns found: {', '.join(header) or 'none'})"
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
        f"{', '.join(header) or 'none'}{found})"
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
        f"(columns found: {', '.join(header) or 'none'})"
    )


def find_split_column(header: Sequence[str]) -> str | None:
    lowered = {h.lower(): h for h in header}
    return next((lowered[n] for n in SPLIT_COLUMNS if n in lowered), None)


def split_value(value: str, where: str) -> str:
    v = (value or "").strip().lower()
    if v in TRAIN_NAMES:
        return "train"
    if v in TEST_NAMES:
        return "test"
    raise DatasetError(f"{where}: split {value!r} is not one of train, val, test")


def resolve_image(csv_path: Path, value: str, where: str) -> Path:
    """The file a CSV cell names, relative to the CSV's folder; DatasetError if missing."""
    value = (value or "").strip()
    if not value:
        raise DatasetError(f"{where}: empty image path")
    path = Path(value)
    if not path.is_absolute():
        path = csv_path.parent / path
    if not path.is_file():
        raise DatasetError(
            f"{where}: image {value!r} not found (paths are relative to the CSV's folder)"
        )
    return path
