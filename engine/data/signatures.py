"""What a file or folder is, by its content: the evidence layouts are recognised by.

Shared by the format detection (formats.py) and the readers, so a stray file (stats.json with an
"images" key, a metadata.yaml) is never taken for an annotation file by either. Folder names
match in any case.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import yaml

from engine.data.images import is_image_file, natural_key
from engine.data.strays import is_skipped_dir
from engine.data.tables import split_of_folder
from engine.data_roots import PathRefused, open_inside, read_text_inside

# A JSON this large is checked for the three lists by scanning, not parsed twice.
COCO_PARSE_LIMIT = 32 << 20
_COCO_LIST = {k: re.compile(rf'"{k}"\s*:\s*\[') for k in ("images", "annotations", "categories")}
# An XML is VOC when its first characters open an <annotation> element.
VOC_HEAD = 4096
_VOC_ROOT = re.compile(r"<annotation[\s>]")


def child(folder: Path, *names: str) -> Path | None:
    """The sub-folder of `folder` named one of `names`, in any case (first name first)."""
    if not folder.is_dir():
        return None
    by_name = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    return next((by_name[n.lower()] for n in names if n.lower() in by_name), None)


def subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_skipped_dir(p.name))


# Folders that belong to a layout, so never a class of an image folder.
LAYOUT_FOLDERS = frozenset(
    {"images", "labels", "annotations", "jpegimages", "imagesets", "segmentationclass",
     "segmentationobject", "masks"}
)  # fmt: skip


def class_folders(top: Path) -> list[Path]:
    """The class folders of an image folder's `top` (the root, or a split folder), in natural
    order: sub-folders that are neither skipped, a layout's own folder, nor a split."""
    found = [
        p
        for p in subfolders(top)
        if p.name.lower() not in LAYOUT_FOLDERS and not split_of_folder(p.name)
    ]
    return sorted(found, key=lambda p: natural_key(p.name))


def split_folders(root: Path) -> dict[str, Path]:
    """{"train": ..., "val": ..., "test": ...}: sub-folders named like splits (any case)."""
    found: dict[str, Path] = {}
    for sub in subfolders(root):
        split = split_of_folder(sub.name)
        if split and split not in found:
            found[split] = sub
    return found


# -- what a file is, by its content ------------------------------------------------------------


@lru_cache(maxsize=256)
def _coco_check(path: Path, size: int, mtime: float) -> bool:
    if size > COCO_PARSE_LIMIT:
        found = set()
        with open_inside(path, encoding="utf-8", errors="replace") as fh:
            tail = ""
            while chunk := fh.read(1 << 22):
                text = tail + chunk
                found |= {k for k, pattern in _COCO_LIST.items() if pattern.search(text)}
                tail = text[-64:]
        return len(found) == len(_COCO_LIST)
    try:
        with open_inside(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (ValueError, UnicodeDecodeError):  # PathRefused too: a symlink out is no COCO file
        return False
    return isinstance(data, dict) and all(isinstance(data.get(k), list) for k in _COCO_LIST)


def is_coco_json(path: Path) -> bool:
    """A .json that parses with `images`, `annotations` and `categories` lists."""
    if path.suffix.lower() != ".json" or path.name.startswith("."):
        return False
    try:
        stat = path.stat()
        return _coco_check(path, stat.st_size, stat.st_mtime)
    except (OSError, PathRefused):
        return False


def is_yolo_yaml(path: Path) -> bool:
    """A .yaml that parses with `names` (YOLO's data.yaml)."""
    if path.suffix.lower() not in (".yaml", ".yml") or path.name.startswith("."):
        return False
    try:
        data = yaml.safe_load(read_text_inside(path, errors="replace"))
    except (OSError, PathRefused, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "names" in data


def is_voc_xml(path: Path) -> bool:
    """An .xml whose root element is <annotation> (Pascal VOC, LabelImg, CVAT, Roboflow)."""
    if path.suffix.lower() != ".xml" or path.name.startswith("."):
        return False
    try:
        with open_inside(path, encoding="utf-8", errors="replace") as fh:
            head = fh.read(VOC_HEAD)
    except (OSError, PathRefused):
        return False
    return _VOC_ROOT.search(head) is not None


def is_voc_content(data: bytes) -> bool:
    """is_voc_xml for a file's bytes, already read (to be parsed next: the file is opened once)."""
    # What is_voc_xml reads: the first VOC_HEAD characters, newlines translated as text mode
    # does; VOC_HEAD characters of UTF-8 are at most 4 * VOC_HEAD bytes.
    text = data[: 4 * VOC_HEAD].decode("utf-8", errors="replace")
    head = text.replace("\r\n", "\n").replace("\r", "\n")[:VOC_HEAD]
    return _VOC_ROOT.search(head) is not None


def has_images(folder: Path) -> bool:
    """Any image file under `folder`, at any depth."""
    return any(is_image_file(p) for p in folder.rglob("*") if p.is_file())


def coco_jsons(root: Path) -> list[Path]:
    """COCO files at the root, in annotations/ and in split folders (Roboflow)."""
    folders = [root, child(root, "annotations")] + list(split_folders(root).values())
    return [p for folder in folders for p in files_in(folder, (".json",)) if is_coco_json(p)]


def yolo_yamls(root: Path) -> list[Path]:
    return [p for p in files_in(root, (".yaml", ".yml")) if is_yolo_yaml(p)]


def files_in(folder: Path | None, suffixes: tuple[str, ...]) -> list[Path]:
    """Files of `folder` (not recursive) ending in one of `suffixes`, any case; hidden ones left out."""
    if folder is None or not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
    )
