"""Test data: small real digit datasets in every supported layout.

Everything is drawn by engine.sample_datasets' helpers (the same pictures as the sample datasets), so
these functions only lay files out. Detection sets write the SAME images and boxes in every
format; `digits_boxes` returns them for comparison.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from engine.choices import formats_for
from engine.sample_datasets import compose_canvases, digit_images, write_coco, write_imagefolder

# Every registered detection format: a new one fails here until the factory writes it.
DETECTION_FORMATS = formats_for("detection")


def write_digits_imagefolder(
    root, per_class: int = 6, size: int = 32, classes=range(10), split: bool = False
) -> Path:
    """root/<digit>/*.png, or with split=True root/train/<digit>/ and root/test/<digit>/
    (a third of each class, at least one, in test)."""
    root = Path(root)
    items = digit_images(per_class=per_class, size=size, classes=classes)
    if not split:
        return write_imagefolder(root, items)
    n_test = max(1, per_class // 3)
    test = [item for k, item in enumerate(items) if k % per_class < n_test]
    train = [item for k, item in enumerate(items) if k % per_class >= n_test]
    write_imagefolder(root, train, "train")
    write_imagefolder(root, test, "test")
    return root


def write_digits_csv(root, per_class: int = 6, size: int = 32, classes=range(10)) -> Path:
    """root/images/*.png and root/labels.csv with columns filename,label. Returns the CSV."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    csv_path = root / "labels.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "label"])
        for k, (image, digit) in enumerate(digit_images(per_class, size, classes)):
            name = f"images/d{k:03d}.png"
            image.save(root / name)
            writer.writerow([name, str(digit)])
    return csv_path


def digits_boxes(
    n_images: int = 12, canvas: int = 64, classes: int = 3, split: bool = False, background: int = 1
) -> list[dict]:
    """What write_detection_set writes: [{"file", "image", "boxes" xyxy, "labels" 0-based,
    "names", "split"}]; the last `background` images have no boxes. Class names are "0".."k-1"."""
    canvases = compose_canvases(
        n_images - background, canvas=canvas, classes=range(classes), seed=0, background=background
    )
    n_test = max(1, n_images // 4) if split else 0
    records = []
    for k, (image, boxes, labels) in enumerate(canvases):
        records.append(
            {
                "file": f"img{k:03d}.png",
                "image": image,
                "boxes": boxes,
                "labels": labels,
                "names": [str(d) for d in labels.tolist()],
                # test images come before the background ones, so background stays in train
                "split": "val"
                if split and n_images - background - n_test <= k < n_images - background
                else "train",
            }
        )
    return records


def write_detection_set(
    root,
    fmt: str,
    n_images: int = 12,
    canvas: int = 64,
    classes: int = 3,
    split: bool = False,
    background: int = 1,
) -> Path:
    """The digits_boxes images and boxes in one of coco, voc, yolo, csv; returns the root."""
    if fmt not in DETECTION_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(DETECTION_FORMATS)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    records = digits_boxes(n_images, canvas, classes, split, background)
    names = [str(d) for d in range(classes)]
    {"coco": _write_coco, "voc": _write_voc, "yolo": _write_yolo, "csv": _write_csv}[fmt](
        root, records, names, split
    )
    return root


def _write_coco(root: Path, records, names, split):
    if not split:
        rows = [(r["file"], r["image"], r["boxes"], r["labels"]) for r in records]
        write_coco(root, rows, names)
        return
    for part in ("train", "val"):
        rows = [
            (f"{part}/{r['file']}", r["image"], r["boxes"], r["labels"])
            for r in records
            if r["split"] == part
        ]
        write_coco(root, rows, names, json_name=f"{part}.json")


def _write_voc(root: Path, records, names, split):
    (root / "JPEGImages").mkdir(exist_ok=True)
    (root / "Annotations").mkdir(exist_ok=True)
    for r in records:
        r["image"].save(root / "JPEGImages" / r["file"])
        objects = "".join(
            f"<object><name>{name}</name><difficult>0</difficult><bndbox>"
            f"<xmin>{x1:g}</xmin><ymin>{y1:g}</ymin><xmax>{x2:g}</xmax><ymax>{y2:g}</ymax>"
            "</bndbox></object>"
            for name, (x1, y1, x2, y2) in zip(r["names"], r["boxes"].tolist())
        )
        w, h = r["image"].size
        xml = (
            f"<annotation><folder>JPEGImages</folder><filename>{r['file']}</filename>"
            f"<size><width>{w}</width><height>{h}</height><depth>1</depth></size>"
            f"{objects}</annotation>"
        )
        (root / "Annotations" / f"{Path(r['file']).stem}.xml").write_text(xml)
    if split:
        main = root / "ImageSets" / "Main"
        main.mkdir(parents=True)
        for part in ("train", "val"):
            stems = [Path(r["file"]).stem for r in records if r["split"] == part]
            (main / f"{part}.txt").write_text("\n".join(stems) + "\n")


def _write_yolo(root: Path, records, names, split):
    for r in records:
        sub = r["split"] if split else ""
        image_path = root / "images" / sub / r["file"]
        image_path.parent.mkdir(parents=True, exist_ok=True)
        r["image"].save(image_path)
        if not len(r["labels"]):
            continue  # YOLO's way to say background: no label file
        label_path = root / "labels" / sub / f"{Path(r['file']).stem}.txt"
        label_path.parent.mkdir(parents=True, exist_ok=True)
        w, h = r["image"].size
        lines = [
            f"{label} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} "
            f"{(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
            for label, (x1, y1, x2, y2) in zip(r["labels"].tolist(), r["boxes"].tolist())
        ]
        label_path.write_text("\n".join(lines) + "\n")
    data = {"names": names, "nc": len(names)}
    data.update(
        {"train": "images/train", "val": "images/val"}
        if split
        else {"train": "images", "val": "images"}
    )
    (root / "data.yaml").write_text(yaml.safe_dump(data))


def _write_csv(root: Path, records, names, split):
    (root / "images").mkdir(exist_ok=True)
    with open(root / "annotations.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "annotations"] + (["split"] if split else []))
        for r in records:
            r["image"].save(root / "images" / r["file"])
            boxes = [
                {"bbox": [x1, y1, x2 - x1, y2 - y1], "category": name}
                for name, (x1, y1, x2, y2) in zip(r["names"], r["boxes"].tolist())
            ]
            writer.writerow(
                [f"images/{r['file']}", json.dumps(boxes)] + ([r["split"]] if split else [])
            )
