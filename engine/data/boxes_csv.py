"""Detection CSV: an image path column with a column of JSON box lists, or one row per box.

A JSON list holds {"bbox": [x, y, width, height], "category": name} in pixels, origin top
left; an empty cell or [] makes a background image. One row per box is TensorFlow Object
Detection's layout (also Roboflow's "TensorFlow CSV", one `_annotations.csv` per split folder):
`filename,width,height,class,xmin,ymin,xmax,ymax`, corners in pixels; a row with empty corners
is a background image. Rows of the same image add up.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.data.detection import RawDetection, RawImage, to_number
from engine.data.errors import DatasetError, Problems
from engine.data.images import natural_key
from engine.data.tables import (
    ANNOTATION_COLUMNS,
    BOX_COLUMNS,
    LABEL_COLUMNS,
    column_names,
    find_csv_files,
    find_path_column,
    find_split_column,
    has_box_columns,
    is_dataset_csv,
    pick_column,
    read_rows,
    resolve_image,
    split_value,
)


def looks_like_box_list(value: str) -> bool:
    value = (value or "").strip()
    if not value.startswith("["):
        return False
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return False
    return isinstance(parsed, list) and all(isinstance(x, dict) for x in parsed)


def find_annotation_column(header, rows, csv_name: str, explicit: str | None = None) -> str:
    """The column holding JSON box lists: named, a usual name whose values are lists, or the
    first column whose values are."""
    if explicit:
        return pick_column(header, ANNOTATION_COLUMNS, "annotations", csv_name, explicit)
    lowered = {h.lower(): h for h in header}
    ordered = [lowered[n] for n in ANNOTATION_COLUMNS if n in lowered]
    ordered += [h for h in header if h not in ordered]
    for column in ordered:
        values = [(row.get(column) or "").strip() for _, row in rows]
        filled = [v for v in values if v]
        # any of the first rows: one malformed cell must not hide the column (its reader
        # then names that line)
        if any(looks_like_box_list(v) for v in filled[:20]):
            return column
    raise DatasetError(
        f"{csv_name}: no column with JSON box lists like "
        '[{"bbox": [x, y, width, height], "category": "cat"}] '
        f"(columns found: {column_names(header)})"
    )


def read_detection_csv(path: Path, problems: Problems, columns: dict | None = None) -> RawDetection:
    columns = columns or {}
    files = find_csv_files(path, keep=None if columns else is_dataset_csv)
    parts: dict[str, dict[Path, RawImage]] = {"train": {}, "val": {}, "test": {}}
    pending = []  # (image, split, category name, box, entry) until all classes are known
    for file_split, csv_path in files.items():
        header, rows = read_rows(csv_path)
        name = csv_path.name
        path_col = find_path_column(header, rows, name, columns.get("path"))
        per_box = has_box_columns(header) and not columns.get("annotations")
        if per_box:
            corners = [pick_column(header, (c,), c, name) for c in BOX_COLUMNS]
            ann_col = pick_column(header, LABEL_COLUMNS, "class", name, columns.get("label"))
        else:
            ann_col = find_annotation_column(header, rows, name, columns.get("annotations"))
        split_col = find_split_column(header) if file_split == "all" else None
        # A bad row (or box in a row) is listed as blocking and skipped; the next is read.
        for line, row in rows:
            where = f"{name} line {line}"
            with problems.entry(csv_path):
                image_path = resolve_image(csv_path, row.get(path_col, ""), where)
                split = file_split
                if split == "all":
                    split = split_value(row.get(split_col, ""), where) if split_col else "train"
                image = parts[split].setdefault(image_path, RawImage(image_path, csv_path))
                if per_box:
                    box = _row_box(row, corners, where)
                    if box is not None:
                        category = (row.get(ann_col) or "").strip()
                        if not category:
                            raise DatasetError(f"{where}: empty class in column {ann_col!r}")
                        pending.append((image, category, box, f"line {line}"))
                    continue
                for i, obj in enumerate(_row_entries(row, ann_col, where), 1):
                    with problems.entry(csv_path):
                        entry = f"line {line} entry {i}"
                        category, box = _entry_box(obj, f"{name} {entry}")
                        pending.append((image, category, box, entry))
    classes = sorted({p[1] for p in pending}, key=natural_key)
    for image, category, box, entry in pending:
        image.boxes.append(box)
        image.labels.append(classes.index(category))
        image.entries.append(entry)
    train, val, test = (list(parts[k].values()) or None for k in ("train", "val", "test"))
    if not train:
        raise DatasetError(f"{path.name}: no rows (or no training rows)")
    return RawDetection(classes, train, test, val, list(files.values()))


def _row_entries(row: dict, ann_col: str, where: str) -> list:
    """The JSON list of boxes in a row's annotations cell ([] when empty)."""
    text = (row.get(ann_col) or "").strip()
    if not text:
        return []
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{where}: column {ann_col!r} is not valid JSON ({exc.msg} at character {exc.pos})"
        ) from None
    if not isinstance(entries, list):
        raise DatasetError(f"{where}: column {ann_col!r} must be a JSON list of boxes")
    return entries


def _entry_box(obj, at: str) -> tuple[str, list[float]]:
    """(category, [x1, y1, x2, y2]) of one {"bbox", "category"} entry; DatasetError naming it."""
    if not isinstance(obj, dict):
        raise DatasetError(f"{at}: expected an object with 'bbox' and 'category'")
    category = next((obj[k] for k in ("category", "label", "class") if k in obj), None)
    if category is None or str(category).strip() == "":
        raise DatasetError(f"{at}: missing 'category'")
    bbox = obj.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise DatasetError(f"{at}: bbox must be [x, y, width, height], got {bbox!r}")
    x, y, w, h = (to_number(v, f"{at}: bbox") for v in bbox)
    return str(category).strip(), [x, y, x + w, y + h]


def _row_box(row: dict, corners: list[str], where: str) -> list[float] | None:
    """[xmin, ymin, xmax, ymax] of a one-row-per-box line; None when all four are empty."""
    values = [(row.get(c) or "").strip() for c in corners]
    if not any(values):
        return None  # an image listed without a box: background
    return [to_number(v, f"{where}: {c}") for v, c in zip(values, corners)]
