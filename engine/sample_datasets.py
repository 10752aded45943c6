"""Sample datasets made from scikit-learn's handwritten digits, so a fresh install can train.

"digits": a classification image folder, one folder per digit, no split folders (the seeded
split applies). "digits-detection": COCO, digits pasted onto black canvases with their true
boxes. The helpers that draw digits and compose canvases are also what the tests' data
factories use, so tests and samples exercise the same pictures.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from engine import data_roots, store

CLASSIFICATION_NAME = "digits"
DETECTION_NAME = "digits-detection"
INK_THRESHOLD = 40  # grey level above which a pixel is part of the digit (for tight boxes)


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    data = load_digits()
    images = np.clip(data.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    return images, data.target.astype(np.int64)


def digit_image(index: int, size: int) -> Image.Image:
    """Digit number `index` of the 1797, white on black, upscaled to size x size (grayscale)."""
    images, _ = _digits()
    return Image.fromarray(images[index], "L").resize((size, size), Image.Resampling.BICUBIC)


def pick_digits(per_class: int, classes=range(10), seed: int = 0) -> list[tuple[int, int]]:
    """(index, digit) pairs: `per_class` different handwritten samples of each digit."""
    _, targets = _digits()
    rng = random.Random(seed)
    picked = []
    for digit in classes:
        indices = [int(i) for i in np.flatnonzero(targets == digit)]
        rng.shuffle(indices)
        if per_class > len(indices):
            raise ValueError(f"digit {digit}: only {len(indices)} samples, asked for {per_class}")
        picked += [(i, int(digit)) for i in indices[:per_class]]
    return picked


def digit_images(
    per_class: int = 30, size: int = 32, classes=range(10), seed: int = 0
) -> list[tuple[Image.Image, int]]:
    return [(digit_image(i, size), d) for i, d in pick_digits(per_class, classes, seed)]


def compose_canvases(
    n: int,
    canvas: int = 128,
    classes=range(10),
    seed: int = 0,
    per_image: tuple[int, int] = (1, 3),
    scale: tuple[int, int] | None = None,
    background: int = 0,
) -> list[tuple[Image.Image, np.ndarray, np.ndarray]]:
    """n grayscale canvases with 1-3 non-overlapping digits each, plus `background` empty ones.

    Returns (image, boxes float32 [N,4] xyxy tight around the ink, digits int64 [N]). Digit
    sizes default to 3/16..5/16 of the canvas (24-40 px on 128 px).
    """
    lo, hi = scale or (canvas * 3 // 16, canvas * 5 // 16)
    images, targets = _digits()
    by_digit = {d: [int(i) for i in np.flatnonzero(targets == d)] for d in classes}
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        picture = np.zeros((canvas, canvas), dtype=np.uint8)
        taken: list[tuple[int, int, int]] = []
        boxes, labels = [], []
        for _ in range(rng.randint(*per_image)):
            digit = rng.choice(list(classes))
            patch = np.asarray(digit_image(rng.choice(by_digit[digit]), rng.randint(lo, hi)))
            size = patch.shape[0]
            for _try in range(50):  # find a free spot; a crowded canvas just gets fewer digits
                x, y = rng.randint(0, canvas - size), rng.randint(0, canvas - size)
                if all(x + size <= tx or tx + ts <= x or y + size <= ty or ty + ts <= y
                       for tx, ty, ts in taken):  # fmt: skip
                    break
            else:
                continue
            taken.append((x, y, size))
            picture[y : y + size, x : x + size] = np.maximum(
                picture[y : y + size, x : x + size], patch
            )
            ys, xs = np.nonzero(patch > INK_THRESHOLD)
            boxes.append([x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1])
            labels.append(digit)
        out.append(
            (
                Image.fromarray(picture, "L"),
                np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                np.asarray(labels, dtype=np.int64),
            )
        )
    for _ in range(background):
        empty = Image.new("L", (canvas, canvas), 0)
        out.append((empty, np.zeros((0, 4), np.float32), np.zeros(0, np.int64)))
    return out


def write_imagefolder(root: Path, items, split: str | None = None) -> Path:
    """Save (image, digit) pairs as root/[split/]<digit>/<digit>_<n>.png."""
    base = Path(root) / split if split else Path(root)
    counters: dict[int, int] = {}
    for image, digit in items:
        n = counters[digit] = counters.get(digit, -1) + 1
        folder = base / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{digit}_{n:03d}.png")
    return Path(root)


def coco_annotation(ann_id: int, image_id: int, box, label: int) -> dict:
    """One COCO annotation of an xyxy box whose label indexes the classes (ids start at 1)."""
    x1, y1, x2, y2 = box
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": int(label) + 1,
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "area": (x2 - x1) * (y2 - y1),
        "iscrowd": 0,
    }


def write_coco(
    root: Path, records, classes: list[str], json_name: str = "annotations.json"
) -> Path:
    """Save (file_name, image, boxes xyxy, labels) records as root/images/<file_name> plus a
    COCO file root/<json_name>; labels index `classes` (category ids start at 1)."""
    root = Path(root)
    coco: dict = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(classes)],
    }
    for image_id, (file_name, image, boxes, labels) in enumerate(records, 1):
        path = root / "images" / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        coco["images"].append(
            {"id": image_id, "file_name": file_name, "width": image.width, "height": image.height}
        )
        for box, label in zip(boxes.tolist(), labels.tolist()):
            coco["annotations"].append(
                coco_annotation(len(coco["annotations"]) + 1, image_id, box, label)
            )
    (root / json_name).write_text(json.dumps(coco, indent=1))
    return root


def _build_classification(folder: Path) -> None:
    write_imagefolder(folder, digit_images(per_class=30, size=32))


def _build_detection(folder: Path) -> None:
    canvases = compose_canvases(40, canvas=128, seed=1)
    records = [(f"canvas_{i:03d}.png", img, b, lab) for i, (img, b, lab) in enumerate(canvases)]
    write_coco(folder, records, [str(d) for d in range(10)])


SAMPLES = (
    (CLASSIFICATION_NAME, "imagefolder", "classification", _build_classification),
    (DETECTION_NAME, "coco", "detection", _build_detection),
)
NAMES = tuple(name for name, *_ in SAMPLES)
_DONE = ".complete"  # written last: a folder without it is an interrupted build


def ensure_samples(db, home=None) -> list[str]:
    """Write the sample datasets under <home>/datasets/ (once) and register them."""
    from engine.data import inspect_dataset

    base = data_roots.datasets_dir(home)  # a data root: the samples are read like any dataset
    names = []
    for name, fmt, task, build in SAMPLES:
        target = base / name
        if not (target / _DONE).exists():
            # Build aside and rename, so a second process never sees a half-written dataset.
            tmp = base / f".{name}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            build(tmp)
            (tmp / _DONE).touch()
            if target.exists() and not (target / _DONE).exists():
                shutil.rmtree(target, ignore_errors=True)
            try:
                os.replace(tmp, target)
            except OSError:  # another process finished first
                shutil.rmtree(tmp, ignore_errors=True)
        registered = store.get_dataset(db, name)
        if registered is None or Path(registered["path"]) != target:
            info = inspect_dataset(target, task=task, fmt=fmt)
            store.register_dataset(db, name, str(target), fmt, task, info, by=store.SERVER_USER)
        names.append(name)
    return names
