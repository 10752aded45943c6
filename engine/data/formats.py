"""Which format a dataset is in, which task it serves, and the registry of readers.

Readers are data (timm style): FORMATS[task][name] → reader(path, problems, columns), for
exactly the formats engine.choices.DATASET_FORMATS registers for each task.
"""

from __future__ import annotations

from pathlib import Path

from engine import choices
from engine.data.boxes_csv import find_annotation_column, looks_like_box_list, read_detection_csv
from engine.data.classification import read_classification_csv, read_imagefolder
from engine.data.coco import read_coco
from engine.data.errors import DatasetError
from engine.data.images import is_image_file
from engine.data.tables import find_csv_files, read_rows
from engine.data.voc import read_voc
from engine.data.yolo import find_yolo_yaml, read_yolo

FORMATS = {
    "classification": {"imagefolder": read_imagefolder, "csv": read_classification_csv},
    "detection": {
        "coco": read_coco,
        "voc": read_voc,
        "yolo": read_yolo,
        "csv": read_detection_csv,
    },
}
for _task in choices.TASKS:
    choices.check_implemented(
        f"{_task} dataset formats", choices.formats_for(_task), FORMATS[_task]
    )
choices.check_implemented("tasks with dataset readers", choices.TASKS, FORMATS)
_COCO_KEYS = ('"images"', '"annotations"', '"categories"')


def _is_coco_json(path: Path) -> bool:
    """Peek at the start of a .json file: COCO files name their lists near the top."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return False
    return any(key in head for key in _COCO_KEYS)


def _coco_candidates(root: Path) -> list[Path]:
    found = list(root.glob("*.json")) + list(root.glob("annotations/*.json"))
    found += [
        p
        for d in root.iterdir()
        if d.is_dir() and not d.name.startswith(".")
        for p in d.glob("*.json")
    ]
    return [p for p in found if not p.name.startswith(".") and _is_coco_json(p)]


def _has_class_folders(root: Path, at_least: int = 1) -> bool:
    found = 0
    for sub in root.iterdir():
        if sub.is_dir() and not sub.name.startswith("."):
            if any(is_image_file(p) for p in sub.rglob("*") if p.is_file()):
                found += 1
                if found >= at_least:
                    return True
    return False


def _loose_files(root: Path, patterns: tuple[str, ...]) -> list[Path]:
    return [p for pattern in patterns for p in root.glob(pattern) if not p.name.startswith(".")]


def detect_format(path: str | Path) -> str:
    """One of imagefolder, csv, coco, voc, yolo; DatasetError when none fits."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    if path.is_file():
        by_suffix = {".csv": "csv", ".json": "coco", ".yaml": "yolo", ".yml": "yolo"}
        if path.suffix.lower() in by_suffix:
            return by_suffix[path.suffix.lower()]
        raise DatasetError(
            f"{path}: a dataset file must be a .csv, a COCO .json or a YOLO data.yaml"
        )
    if find_yolo_yaml(path):
        return "yolo"
    if (path / "Annotations").is_dir():
        return "voc"
    if _coco_candidates(path):
        return "coco"
    if any(not p.name.startswith(".") for p in path.glob("*.csv")):
        return "csv"
    # A broken annotation file must not make a COCO or YOLO set pass for an image folder with
    # one class ("images"): name the format it is meant to be, so its reader says what is wrong.
    if not _has_class_folders(path, at_least=2):
        if (path / "labels").is_dir() and _loose_files(path, ("*.yaml", "*.yml")):
            return "yolo"
        if _loose_files(path, ("*.json", "annotations/*.json")):
            return "coco"
    if _has_class_folders(path):
        return "imagefolder"
    raise DatasetError(
        f"{path}: cannot tell the dataset format; expected one folder per class (imagefolder), "
        "a .csv file, a COCO .json, a Pascal VOC Annotations/ folder or a YOLO data.yaml"
    )


def detect_task(path: str | Path, fmt: str) -> str:
    """The task a dataset serves: a format's only task, or for CSV, detection when it holds
    JSON box lists."""
    tasks = _format_info(fmt).tasks
    if len(tasks) == 1:
        return tasks[0]
    if fmt == "csv":
        csv_path = next(iter(find_csv_files(Path(path)).values()))
        header, rows = read_rows(csv_path)
        try:
            column = find_annotation_column(header, rows[:20], csv_path.name)
        except DatasetError:
            return "classification"
        values = [(row.get(column) or "").strip() for _, row in rows[:20]]
        return "detection" if any(looks_like_box_list(v) for v in values) else "classification"
    raise DatasetError(f"dataset format {fmt!r} serves {', '.join(tasks)}: no rule tells which")


def _format_info(fmt: str) -> choices.FormatInfo:
    if fmt not in choices.DATASET_FORMATS:
        valid = ", ".join(choices.format_names())
        raise DatasetError(f"unknown dataset format {fmt!r}; valid: {valid}")
    return choices.DATASET_FORMATS[fmt]


def get_reader(task: str, fmt: str):
    if task not in choices.TASKS:
        raise DatasetError(f"unknown task {task!r}; valid: {', '.join(choices.TASKS)}")
    info = _format_info(fmt)
    if task not in info.tasks:
        raise DatasetError(
            f"{fmt} is a {' or '.join(info.tasks)} format; {task} reads {', '.join(FORMATS[task])}"
        )
    return FORMATS[task][fmt]
