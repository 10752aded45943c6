"""What all detection readers share: raw images with boxes, and turning them into DetSamples.

The readers (coco.py, voc.py, yolo.py, boxes_csv.py) return the images they found with boxes
in pixels (YOLO's normalised ones are scaled once the image size is known), and `to_samples`
makes them uniform:

- an image without boxes stays as a background image (empty boxes array);
- a box reaching outside its image is clipped, a box with no area inside it is dropped; both
  are counted (`boxes_clipped`, `boxes_dropped`) and listed in problems with their file;
- an image file that exists but cannot be read is skipped, counted and listed in problems;
- classes no box uses (COCO's unused super-category, YOLO's 80 names of which 3 are used) are
  left out and listed in problems, so the model does not get outputs it can never learn.

Errors that stop the run name the file and the entry. Those about the dataset as a whole (no
annotation file, a top-level JSON or YAML that cannot be read) raise DatasetError at once; those
about one entry (a malformed XML file, box or label line, an unknown category, an annotation
pointing at a missing image entry, an image file the annotations name that does not exist) are
blocking problems (`Problems.entry`): the entry is left out and reading goes on, so the data
check lists every one and a run is refused with all of them. A missing image blocks rather than
being skipped because it nearly always means the images folder is not where the annotations
expect it, and training on the few that happen to match would hide that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.data.errors import DatasetError, ImageError, Problems, Where
from engine.data.images import probe_images
from engine.data.records import DetSample
from engine.data.tables import TRAIN_NAMES

CLIP_TOLERANCE = 1e-3  # pixels: float noise at the image edge is not worth a problem line


@dataclass
class RawImage:
    """One image as a reader found it: boxes xyxy (pixels, or 0..1 when `normalized`)."""

    path: Path
    source: Path  # the annotation file, named in problems about the boxes
    boxes: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    entries: list[str] = field(default_factory=list)  # "annotation id 17", "line 2", ...
    normalized: bool = False


@dataclass
class RawDetection:
    classes: list[str]
    train: list[RawImage]
    test: list[RawImage] | None  # None: the data declares no test split
    val: list[RawImage] | None = None  # None: the data declares no val split
    files: list[Path] = field(default_factory=list)  # annotation files read (besides sources)


def to_number(value, where: str | Where) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise DatasetError(f"{where}: {value!r} is not a finite number")
    return number


def split_of_name(name: str) -> str | None:
    """The split a file or folder name mentions: instances_val2017, valid/_annotations.coco."""
    name = name.lower()
    if any(n in name for n in TRAIN_NAMES):
        return "train"
    if "val" in name:
        return "val"
    if "test" in name:
        return "test"
    return None


def subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def to_samples(images: list[RawImage], problems: Problems) -> list[DetSample]:
    """Probe the images, scale/clip/drop boxes, skip unreadable files (listing each)."""
    sizes = probe_images([im.path for im in images])
    samples = []
    for image, size in zip(images, sizes):
        if isinstance(size, ImageError):
            problems.add(image.path, f"skipped: {size.reason}", "unreadable")
            problems.count("skipped_images")
            continue
        width, height = size
        boxes, labels = [], []
        for box, label, entry in zip(image.boxes, image.labels, image.entries):
            x1, y1, x2, y2 = box
            if image.normalized:
                x1, x2, y1, y2 = x1 * width, x2 * width, y1 * height, y2 * height
            c = [min(max(x1, 0.0), width), min(max(y1, 0.0), height)]
            c += [min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
            if c[2] - c[0] <= 0 or c[3] - c[1] <= 0:
                what = f"has no area inside the {width}x{height} image: dropped"
                problems.add(
                    image.source,
                    _box_problem(problems, image, entry, box=(x1, y1, x2, y2), what=what),
                    "bad_box",
                )
                problems.count("boxes_dropped")
                continue
            if max(abs(a - b) for a, b in zip(c, (x1, y1, x2, y2))) > CLIP_TOLERANCE:
                what = f"reaches outside the {width}x{height} image: clipped"
                problems.add(
                    image.source,
                    _box_problem(problems, image, entry, box=(x1, y1, x2, y2), what=what),
                    "bad_box",
                )
                problems.count("boxes_clipped")
            boxes.append(c)
            labels.append(label)
        samples.append(
            DetSample(
                str(image.path),
                np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                np.asarray(labels, dtype=np.int64),
            )
        )
    return samples


def _box_problem(problems: Problems, image: RawImage, entry: str, box, what: str) -> str:
    """The message for a box with a problem, `line 2 (images/a.jpg): box [x1, y1, x2, y2] what`:
    written only then (Problems.rel resolves the image's path: for every box, most of a load)."""
    shown = ", ".join(f"{v:g}" for v in box)
    return f"{entry} ({problems.rel(image.path)}): box [{shown}] {what}"


def drop_unused_classes(
    classes: list[str], parts: list[list[DetSample]], problems: Problems, source: str
) -> tuple[list[str], list[list[DetSample]]]:
    """Leave out classes no box uses and renumber the labels."""
    used = sorted({int(label) for part in parts for s in part for label in s.labels})
    if len(used) == len(classes):
        return classes, parts
    unused = [c for i, c in enumerate(classes) if i not in used]
    shown = ", ".join(unused[:10]) + (f" and {len(unused) - 10} more" if len(unused) > 10 else "")
    if used:
        problems.add(source, f"class(es) without any box left out: {shown}", "empty_class")
    remap = np.full(len(classes), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    parts = [[DetSample(s.path, s.boxes, remap[s.labels]) for s in part] for part in parts]
    return [classes[i] for i in used], parts
