"""Which layout a dataset is in, which task it serves, and the registry of readers.

Readers are data (timm style): FORMATS[task][name] → reader(path, problems, columns), for
exactly the formats engine.choices.DATASET_FORMATS registers for each task.

A layout is recognised by content, never by the first file that happens to match: a JSON is
COCO only when it parses with `images`, `annotations` and `categories` lists, a YAML is YOLO
only with `names`, a CSV is a dataset only when a column holds image file names, an XML is VOC
only with an <annotation> root. Folder names match in any case (Annotations/annotations,
JPEGImages/jpegimages). Anything else (README, LICENSE, stats.json, .DS_Store) is a stray file:
not evidence of a layout, and listed as ignored once the dataset is read (strays.py). The task,
when known, narrows the candidates; when two layouts still fit, the error names both and how to
choose. A folder holding just one folder (an unpacked download: dataset/chest_xray/train/...)
is looked into.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from engine import choices
from engine.data.boxes_csv import find_annotation_column, looks_like_box_list, read_detection_csv
from engine.data.classification import read_classification_csv, read_imagefolder
from engine.data.coco import read_coco
from engine.data.errors import DatasetError
from engine.data.images import is_image_file
from engine.data.signatures import (
    child,
    class_folders,
    coco_jsons,
    files_in,
    has_images,
    is_voc_xml,
    split_folders,
    subfolders,
    yolo_yamls,
)
from engine.data.tables import (
    HEAD_ROWS,
    find_csv_files,
    has_box_columns,
    is_dataset_csv,
    read_rows,
)
from engine.data.voc import read_voc
from engine.data.yolo import YOLO_CLASS_FILES, read_yolo

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

# Near misses: annotation files whose name says what they are meant to be, read by their reader
# so its error says what is wrong with them (rather than "cannot tell the format").
_COCO_NAMES = re.compile(r"(annotation|instances|coco|result|_annotations|labels)", re.I)


# -- evidence per layout: a short note of what was found, or None ---------------------------------


def _coco_evidence(root: Path) -> str | None:
    found = coco_jsons(root)
    return _name_files(root, found) if found else None


def _yolo_evidence(root: Path) -> str | None:
    found = yolo_yamls(root)
    if found:
        return _name_files(root, found)
    # Label Studio's YOLO export: classes.txt, images/, labels/ (no data.yaml)
    labels, images = child(root, "labels"), child(root, "images")
    class_file = next((root / n for n in YOLO_CLASS_FILES if (root / n).is_file()), None)
    if labels and images and class_file and files_in(labels, (".txt",)):
        return f"{class_file.name}, {images.name}/ and {labels.name}/"
    return None


def _voc_evidence(root: Path) -> str | None:
    annotations = child(root, "Annotations")
    xmls = [p for p in files_in(annotations, (".xml",))[:3] if is_voc_xml(p)]
    if xmls:
        return f"{annotations.name}/*.xml"
    # XML beside the images: LabelImg, Roboflow's VOC export (one folder per split)
    for folder in [root, *split_folders(root).values()]:
        xmls = [p for p in files_in(folder, (".xml",))[:3] if is_voc_xml(p)]
        if xmls and any(is_image_file(p) for p in folder.iterdir()):
            return f"{_rel(root, folder)}*.xml beside the images"
    return None


def _csv_evidence(root: Path) -> str | None:
    keep = functools.cache(is_dataset_csv)  # asked twice of a CSV, its head read once
    try:
        files = find_csv_files(root, keep=keep)
    except DatasetError:
        return None
    files = {k: v for k, v in files.items() if keep(v)}  # not the unfiltered fallback
    return _name_files(root, list(files.values())) if files else None


def _imagefolder_evidence(root: Path) -> str | None:
    top = split_folders(root).get("train", root)
    classes = [d for d in class_folders(top) if has_images(d)]
    # One folder of images at the root is a download's wrapper, or a layout's images folder.
    if len(classes) < (1 if top != root else 2):
        return None
    shown = ", ".join(d.name for d in classes[:3]) + (", ..." if len(classes) > 3 else "")
    return f"class folders {_rel(root, top)}{{{shown}}}/"


EVIDENCE = {
    "yolo": _yolo_evidence,
    "voc": _voc_evidence,
    "coco": _coco_evidence,
    "csv": _csv_evidence,
    "imagefolder": _imagefolder_evidence,
}


def _rel(root: Path, path: Path) -> str:
    return "" if path == root else path.relative_to(root).as_posix() + "/"


def _name_files(root: Path, files: list[Path]) -> str:
    names = [p.relative_to(root).as_posix() for p in files]
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


# -- detection ----------------------------------------------------------------------------------


def csv_task(path: Path) -> str:
    """detection for one row per box (xmin..ymax) or JSON box lists, else classification."""
    try:
        csv_path = next(iter(find_csv_files(path, keep=is_dataset_csv).values()))
        header, rows = read_rows(csv_path, limit=HEAD_ROWS)
    except DatasetError:
        return "classification"
    if has_box_columns(header):
        return "detection"
    try:
        column = find_annotation_column(header, rows, csv_path.name)
    except DatasetError:
        return "classification"
    values = [(row.get(column) or "").strip() for _, row in rows]
    return "detection" if any(looks_like_box_list(v) for v in values) else "classification"


def _tasks_of(fmt: str, root: Path) -> tuple[str, ...]:
    return (csv_task(root),) if fmt == "csv" else _format_info(fmt).tasks


def layout_candidates(
    root: Path, task: str | None = None, only: str | None = None
) -> dict[str, str]:
    """{format: what was found} for every layout that fits `root` (and serves `task`);
    with `only`, that layout alone is looked for."""
    fits = {}
    for fmt, evidence in EVIDENCE.items():
        if (task is not None and task not in _format_info(fmt).tasks) or only not in (None, fmt):
            continue
        found = evidence(root)
        if found and (task is None or task in _tasks_of(fmt, root)):
            fits[fmt] = found
    return fits


def _near_miss(root: Path, task: str | None) -> str | None:
    """A layout meant but broken (a data.yaml without names, a .json that is no COCO): named, so
    its reader says what is wrong instead of "cannot tell the format"."""
    if task == "classification":
        return None
    if child(root, "labels") and files_in(root, (".yaml", ".yml")):
        return "yolo"
    jsons = files_in(root, (".json",)) + files_in(child(root, "annotations"), (".json",))
    if any(_COCO_NAMES.search(p.stem) for p in jsons):
        return "coco"
    if files_in(child(root, "Annotations"), (".xml",)):
        return "voc"
    return None


def _only_subfolder(root: Path) -> Path | None:
    """The one folder inside `root` (stray files beside it allowed), else None."""
    subs = subfolders(root)
    return subs[0] if len(subs) == 1 else None


def detect_layout(
    path: str | Path, task: str | None = None, fmt: str | None = "auto"
) -> tuple[str, Path]:
    """(format, dataset root): the layout of `path` (or of the one folder inside it), among
    those serving `task` when given. With an explicit `fmt`, only the root is found."""
    path = Path(path).expanduser()
    explicit = fmt not in ("auto", None, "")
    if explicit:
        _format_info(fmt)
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    if path.is_file():
        return (fmt if explicit else _format_of_file(path)), path
    root = path
    for _ in range(3):
        fits = layout_candidates(root, task, fmt if explicit else None)
        if explicit:
            if fmt in fits:
                return fmt, root
        elif len(fits) == 1:
            return next(iter(fits)), root
        elif len(fits) > 1:
            raise DatasetError(_ambiguous(root, fits))
        else:
            near = _near_miss(root, task)
            if near:
                return near, root
            other = layout_candidates(root) if task else {}
            if other:
                raise DatasetError(_other_task(root, task, other))
        inner = _only_subfolder(root)
        if inner is None:
            break
        root = inner
    if explicit:
        return fmt, path  # its reader says what is missing
    if task != "detection" and any(has_images(d) for d in subfolders(path)):
        return "imagefolder", path  # one class folder: its reader says a class is missing
    raise DatasetError(_cannot_tell(path, task))


ARCHIVE_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar")


def _format_of_file(path: Path) -> str:
    if path.name.lower().endswith(ARCHIVE_SUFFIXES):
        # Unpacking belongs to the upload (engine.data.upload), which checks every entry.
        raise DatasetError(
            f"{path.name}: an archive, not a dataset; unpack it into a folder inside the data "
            "roots, or upload it on the dashboard's Datasets page (it is unpacked there)"
        )
    by_suffix = {".csv": "csv", ".json": "coco", ".yaml": "yolo", ".yml": "yolo"}
    if path.suffix.lower() in by_suffix:
        return by_suffix[path.suffix.lower()]
    raise DatasetError(f"{path}: a dataset file must be a .csv, a COCO .json or a YOLO data.yaml")


def _ambiguous(root: Path, fits: dict[str, str]) -> str:
    found = "; ".join(f"{fmt} ({what})" for fmt, what in fits.items())
    choose = " or ".join(f"dataset_format={fmt}" for fmt in fits)
    return f"{root}: more than one layout fits: {found}; choose one with {choose}"


def _other_task(root: Path, task: str, fits: dict[str, str]) -> str:
    found = "; ".join(f"{fmt} ({what})" for fmt, what in fits.items())
    tasks = sorted({t for fmt in fits for t in _tasks_of(fmt, root)})
    return f"{root}: holds a {' or '.join(tasks)} dataset ({found}), not {task}; choose task=" + (
        " or task=".join(tasks)
    )


def _cannot_tell(path: Path, task: str | None) -> str:
    expected = {
        "imagefolder": "one folder per class (imagefolder)",
        "csv": "a .csv file listing images",
        "coco": "a COCO .json",
        "voc": "a Pascal VOC Annotations/ folder",
        "yolo": "a YOLO data.yaml",
    }
    names = choices.formats_for(task) if task in choices.TASKS else tuple(expected)
    order = [f for f in expected if f in names]
    return (
        f"{path}: cannot tell the dataset format; expected "
        + ", ".join(expected[f] for f in order[:-1])
        + f" or {expected[order[-1]]}"
    )


def detect_format(path: str | Path, task: str | None = None) -> str:
    """One of imagefolder, csv, coco, voc, yolo; DatasetError when none or several fit."""
    return detect_layout(path, task)[0]


def detect_task(path: str | Path, fmt: str) -> str:
    """The task a dataset serves: a format's only task, or for CSV, detection when it holds
    boxes (one row per box, or JSON box lists)."""
    path = Path(path).expanduser()
    if fmt == "csv" and path.is_dir():
        path = detect_layout(path, fmt="csv")[1]
    return layout_task(path, fmt)


def layout_task(root: Path, fmt: str) -> str:
    """detect_task for a dataset root that detect_layout found: not looked for again."""
    tasks = _format_info(fmt).tasks
    if len(tasks) == 1:
        return tasks[0]
    if fmt == "csv":
        return csv_task(root)
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
