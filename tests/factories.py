"""Test data: small real digit datasets in every supported layout.

Everything is drawn by engine.sample_datasets' helpers (the same pictures as the sample datasets), so
these functions only lay files out. Detection sets write the SAME images and boxes in every
format; `digits_boxes` returns them for comparison.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
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


# Who acts in tests that are not about permissions: an admin, whom only a run's state limits.
ADMIN = {"username": "admin", "role": "admin"}


# -- dataset layouts as tools export them (issue #10) ------------------------------------------
#
# Each builder lays out the same small digits dataset exactly as a tool writes it (file names,
# folder names, JSON keys) and returns a `Layout`: what reading it through auto-detection must
# find. Split names are the canonical train / val / test; a builder writes them as its tool does
# (Roboflow: valid/).


@dataclass
class Layout:
    task: str
    format: str
    classes: list[str]
    # images per split as read: {"train": n, "val": n, "test": n}, or {"all": n} when the
    # dataset has no split of its own (seeded)
    counts: dict[str, int]
    boxes: dict = field(default_factory=dict)  # detection: file name → (boxes xyxy, labels)
    root: Path | None = None  # the dataset folder inside the one built, when nested
    ignored: tuple[str, ...] = ()  # files that must be listed as ignored


def _split_of(k: int, n: int, three: bool) -> str:
    """Deterministic splits for n images: the last one stays in train (the background image)."""
    if not three or k == n - 1:
        return "train"
    return {1: "val", 3: "test"}.get(k % 4, "train")


def layout_records(n_images: int = 9, classes: int = 3, three: bool = True) -> list[dict]:
    """digits_boxes' images (the last one background) with a split each."""
    records = digits_boxes(n_images, canvas=48, classes=classes)
    for k, r in enumerate(records):
        r["split"] = _split_of(k, n_images, three)
    return records


def _expect_detection(fmt, records, classes, three, names=None, **kw) -> Layout:
    names = names or {r["file"]: r["file"] for r in records}
    counts = Counter(r["split"] for r in records) if three else {"all": len(records)}
    boxes = {names[r["file"]]: (r["boxes"], r["labels"]) for r in records}
    return Layout("detection", fmt, [str(c) for c in range(classes)], dict(counts), boxes, **kw)


def _roboflow_name(file: str) -> str:
    """Roboflow renames every image: img003.png → img003_png.rf.<hash>.jpg."""
    stem, ext = file.rsplit(".", 1)
    return f"{stem}_{ext}.rf.{hashlib.md5(file.encode()).hexdigest()}.jpg"


ROBOFLOW_SPLITS = {"train": "train", "val": "valid", "test": "test"}


def _roboflow_readmes(root: Path) -> tuple[str, ...]:
    (root / "README.dataset.txt").write_text(
        "# digits > 2024-01-01\nhttps://universe.roboflow.com\n"
    )
    (root / "README.roboflow.txt").write_text("This dataset was exported via roboflow.com\n")
    return ("README.dataset.txt", "README.roboflow.txt")


def _voc_xml(file: str, image, names, boxes, folder: str = "", roboflow: bool = False) -> str:
    objects = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>0</difficult>{'<occluded>0</occluded>' if roboflow else ''}<bndbox>"
        f"<xmin>{x1:g}</xmin><ymin>{y1:g}</ymin><xmax>{x2:g}</xmax><ymax>{y2:g}</ymax>"
        "</bndbox></object>"
        for name, (x1, y1, x2, y2) in zip(names, boxes.tolist())
    )
    source = "<source><database>roboflow.ai</database></source>" if roboflow else ""
    return (
        f"<annotation>\n\t<folder>{folder}</folder>\n\t<filename>{file}</filename>\n"
        f"\t<path>{file}</path>\n\t{source}\n\t<size><width>{image.width}</width>"
        f"<height>{image.height}</height><depth>3</depth></size>\n\t<segmented>0</segmented>\n"
        f"\t{objects}\n</annotation>\n"
    )


def _coco_dict(records, names, categories, image_name, first_id=1, tool="") -> dict:
    """A COCO dict with the keys `tool` writes (roboflow, cvat, label-studio)."""
    info = {
        "roboflow": {"year": "2024", "version": "1", "description": "Exported from roboflow.com",
                     "contributor": "", "url": "https://public.roboflow.com", "date_created": ""},
        "cvat": {"contributor": "", "date_created": "", "description": "", "url": "",
                 "version": "", "year": ""},
        "label-studio": {"year": 2024, "version": "1.0", "description": "", "contributor":
                         "Label Studio", "url": "", "date_created": "2024-01-01 00:00:00"},
    }[tool]  # fmt: skip
    data = {
        "info": info,
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "categories": categories,
        "images": [],
        "annotations": [],
    }
    by_name = {c["name"]: c["id"] for c in categories}
    for k, r in enumerate(records):
        image_id = k + first_id
        entry = {"id": image_id, "width": r["image"].width, "height": r["image"].height,
                 "file_name": image_name(r)}  # fmt: skip
        if tool == "cvat":
            entry.update(license=0, flickr_url="", coco_url="", date_captured=0)
        if tool == "roboflow":
            entry.update(license=1, date_captured="2024-01-01T00:00:00+00:00")
        data["images"].append(entry)
        for name, (x1, y1, x2, y2) in zip(r["names"], r["boxes"].tolist()):
            ann = {
                "id": len(data["annotations"]) + first_id,
                "image_id": image_id,
                "category_id": by_name[names[int(name)]],
                "segmentation": [],
                "area": (x2 - x1) * (y2 - y1),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "iscrowd": 0,
            }
            if tool == "cvat":
                ann["attributes"] = {"occluded": False, "rotation": 0.0}
            if tool == "label-studio":
                ann["ignore"] = 0
            data["annotations"].append(ann)
    return data


def build_kaggle_imagefolder(root, splits=("train", "val", "test"), nested: str = "") -> Layout:
    """Kaggle / torchvision ImageFolder: [nested/]{train,val,test}/<class>/*.jpeg, or
    <class>/*.png without split folders (splits=()). Classes NORMAL and PNEUMONIA."""
    root = Path(root)
    base = root / nested if nested else root
    items = digit_images(per_class=6, size=16, classes=range(2))
    names = {0: "NORMAL", 1: "PNEUMONIA"}
    counts: Counter = Counter()
    for k, (image, digit) in enumerate(items):
        split = (splits[k % 3] if k % 3 < len(splits) else splits[0]) if splits else ""
        folder = base / split / names[digit] if split else base / names[digit]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"IM-{k:04d}-0001.jpeg")
        counts[split or "all"] += 1
    if "val" in counts and "test" not in counts:
        counts["test"] = counts.pop("val")  # a lone val split is the held-out `test` (records.py)
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    first_class = base / (splits[0] if splits else "") / names[0]
    (first_class / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    # paths relative to the dataset folder (inside the wrapper when nested)
    thumbs = (first_class / "Thumbs.db").relative_to(base).as_posix()
    ignored = (thumbs,) if nested else (".DS_Store", thumbs)
    return Layout("classification", "imagefolder", ["NORMAL", "PNEUMONIA"], dict(counts),
                  root=base if nested else None, ignored=ignored)  # fmt: skip


def build_imagefolder_with_stats_json(root) -> Layout:
    """train/ and val/ class folders with a stray stats.json (it has an "images" key) and a
    README.md at the root: an image folder, not COCO."""
    layout = build_kaggle_imagefolder(root, splits=("train", "val"))
    stats = {"images": 12, "annotations": "none", "classes": ["NORMAL", "PNEUMONIA"]}
    (Path(root) / "stats.json").write_text(json.dumps(stats))
    (Path(root) / "README.md").write_text("# Chest X-ray\n")
    layout.ignored += ("stats.json", "README.md")
    return layout


def build_roboflow_coco(root) -> Layout:
    """Roboflow "COCO": {train,valid,test}/_annotations.coco.json beside the (renamed, .jpg)
    images; category 0 is the dataset's super-category, which no box uses."""
    root = Path(root)
    records = layout_records()
    names = ["0", "1", "2"]
    categories = [{"id": 0, "name": "digits", "supercategory": "none"}] + [
        {"id": i + 1, "name": n, "supercategory": "digits"} for i, n in enumerate(names)
    ]
    renamed = {r["file"]: _roboflow_name(r["file"]) for r in records}
    for split, folder in ROBOFLOW_SPLITS.items():
        part = [r for r in records if r["split"] == split]
        (root / folder).mkdir(parents=True, exist_ok=True)
        for r in part:
            r["image"].convert("RGB").save(root / folder / renamed[r["file"]])
        data = _coco_dict(part, names, categories, lambda r: renamed[r["file"]], 0, "roboflow")
        (root / folder / "_annotations.coco.json").write_text(json.dumps(data))
    ignored = _roboflow_readmes(root)
    return _expect_detection("coco", records, 3, True, renamed, ignored=ignored)


def build_roboflow_yolo(root) -> Layout:
    """Roboflow "YOLOv5/v8 PyTorch": data.yaml with ../train/images paths and
    {train,valid,test}/{images,labels}/."""
    root = Path(root)
    records = layout_records()
    renamed = {r["file"]: _roboflow_name(r["file"]) for r in records}
    for r in records:
        folder = root / ROBOFLOW_SPLITS[r["split"]]
        _save_yolo(folder / "images" / renamed[r["file"]], folder / "labels", r)
    (root / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\nnc: 3\n"
        "names: ['0', '1', '2']\n\nroboflow:\n  workspace: digits\n  project: digits\n"
        "  version: 1\n  license: CC BY 4.0\n  url: https://universe.roboflow.com/digits/1\n"
    )
    ignored = _roboflow_readmes(root)
    return _expect_detection("yolo", records, 3, True, renamed, ignored=ignored)


def _save_yolo(image_path: Path, label_dir: Path, r: dict) -> None:
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    r["image"].convert("RGB").save(image_path)
    w, h = r["image"].size
    lines = [
        f"{label} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} "
        f"{(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
        for label, (x1, y1, x2, y2) in zip(r["labels"].tolist(), r["boxes"].tolist())
    ]
    # Roboflow and Label Studio write an empty label file for a background image
    (label_dir / f"{image_path.stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))


def build_roboflow_voc(root) -> Layout:
    """Roboflow "Pascal VOC": {train,valid,test}/ with each .jpg beside its .xml."""
    root = Path(root)
    records = layout_records()
    renamed = {r["file"]: _roboflow_name(r["file"]) for r in records}
    for r in records:
        folder = root / ROBOFLOW_SPLITS[r["split"]]
        folder.mkdir(parents=True, exist_ok=True)
        name = renamed[r["file"]]
        r["image"].convert("RGB").save(folder / name)
        xml = _voc_xml(name, r["image"], r["names"], r["boxes"], roboflow=True)
        (folder / f"{Path(name).stem}.xml").write_text(xml)
    ignored = _roboflow_readmes(root)
    return _expect_detection("voc", records, 3, True, renamed, ignored=ignored)


TFOD_HEADER = ["filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax"]


def _tfod_rows(records, names) -> list[list]:
    rows = []
    for r in records:
        w, h = r["image"].size
        for name, (x1, y1, x2, y2) in zip(r["names"], r["boxes"].tolist()):
            rows.append([names[r["file"]], w, h, name, round(x1), round(y1), round(x2), round(y2)])
    return rows


def _write_rows(path: Path, header, rows) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def build_roboflow_tfod_csv(root) -> Layout:
    """Roboflow "TensorFlow Object Detection CSV": {train,valid,test}/_annotations.csv, one row
    per box (filename,width,height,class,xmin,ymin,xmax,ymax), images beside. Boxes are whole
    pixels; an image without boxes has no row (so the background image is not read)."""
    root = Path(root)
    records = [r for r in layout_records() if len(r["labels"])]
    renamed = {r["file"]: _roboflow_name(r["file"]) for r in records}
    for split, folder in ROBOFLOW_SPLITS.items():
        part = [r for r in records if r["split"] == split]
        (root / folder).mkdir(parents=True, exist_ok=True)
        for r in part:
            r["image"].convert("RGB").save(root / folder / renamed[r["file"]])
        _write_rows(root / folder / "_annotations.csv", TFOD_HEADER, _tfod_rows(part, renamed))
    for r in records:
        r["boxes"] = r["boxes"].round()
    ignored = _roboflow_readmes(root)
    return _expect_detection("csv", records, 3, True, renamed, ignored=ignored)


def build_tfod_csv_at_root(root) -> Layout:
    """One-row-per-box CSV at the dataset root (annotations.csv) naming bare file names of the
    images in images/, a metadata CSV (no image column) beside it."""
    root = Path(root)
    records = [r for r in layout_records(three=False) if len(r["labels"])]
    (root / "images").mkdir(parents=True, exist_ok=True)
    for r in records:
        r["image"].save(root / "images" / r["file"])
    names = {r["file"]: r["file"] for r in records}
    _write_rows(root / "annotations.csv", TFOD_HEADER, _tfod_rows(records, names))
    _write_rows(root / "class_stats.csv", ["class", "boxes"], [["0", 4], ["1", 3]])
    for r in records:
        r["boxes"] = r["boxes"].round()
    return _expect_detection("csv", records, 3, False, ignored=("class_stats.csv",))


def build_cvat_coco(root) -> Layout:
    """CVAT "COCO 1.0" (unpacked): annotations/instances_default.json and images/."""
    root = Path(root)
    records = layout_records(three=False)
    names = ["0", "1", "2"]
    categories = [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(names)]
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    for r in records:
        r["image"].save(root / "images" / r["file"])
    data = _coco_dict(records, names, categories, lambda r: r["file"], 1, "cvat")
    (root / "annotations" / "instances_default.json").write_text(json.dumps(data))
    return _expect_detection("coco", records, 3, False)


def build_cvat_voc(root) -> Layout:
    """CVAT "Pascal VOC 1.1" (unpacked): Annotations/, ImageSets/Main/default.txt,
    JPEGImages/, labelmap.txt."""
    root = Path(root)
    records = layout_records(three=False)
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for r in records:
        r["image"].convert("RGB").save(root / "JPEGImages" / r["file"].replace(".png", ".jpg"))
        xml = _voc_xml(r["file"].replace(".png", ".jpg"), r["image"], r["names"], r["boxes"])
        (root / "Annotations" / f"{Path(r['file']).stem}.xml").write_text(xml)
    stems = [Path(r["file"]).stem for r in records]
    (root / "ImageSets" / "Main" / "default.txt").write_text("\n".join(stems) + "\n")
    labelmap = "# label:color_rgb:parts:actions\n" + "".join(
        f"{n}:{40 * n},{50 + n},83::\n" for n in range(3)
    )
    (root / "labelmap.txt").write_text(labelmap)
    names = {r["file"]: r["file"].replace(".png", ".jpg") for r in records}
    return _expect_detection("voc", records, 3, False, names)


def build_label_studio_coco(root) -> Layout:
    """Label Studio "COCO" export: result.json (file_name "images/<id>-<name>") + images/."""
    root = Path(root)
    records = layout_records(three=False)
    names = ["0", "1", "2"]
    categories = [{"id": i, "name": n} for i, n in enumerate(names)]
    renamed = {r["file"]: f"{hashlib.md5(r['file'].encode()).hexdigest()[:8]}-{r['file']}"
               for r in records}  # fmt: skip
    (root / "images").mkdir(parents=True, exist_ok=True)
    for r in records:
        r["image"].save(root / "images" / renamed[r["file"]])
    data = _coco_dict(
        records, names, categories, lambda r: f"images/{renamed[r['file']]}", 0, "label-studio"
    )
    (root / "result.json").write_text(json.dumps(data))
    return _expect_detection("coco", records, 3, False, renamed)


def build_label_studio_yolo(root) -> Layout:
    """Label Studio "YOLO" export: classes.txt, images/, labels/, notes.json (no data.yaml)."""
    root = Path(root)
    records = layout_records(three=False)
    for r in records:
        _save_yolo(root / "images" / r["file"], root / "labels", r)
    (root / "classes.txt").write_text("0\n1\n2\n")
    notes = {"categories": [{"id": i, "name": str(i)} for i in range(3)],
             "info": {"year": 2024, "version": "1.0", "contributor": "Label Studio"}}  # fmt: skip
    (root / "notes.json").write_text(json.dumps(notes))
    return _expect_detection("yolo", records, 3, False, ignored=("notes.json",))


def build_voc_imagesets(root, annotations: str = "Annotations", images: str = "JPEGImages"):
    """Pascal VOC (VOC2007 style): Annotations/, JPEGImages/, ImageSets/Main/{train,val,test,
    trainval}.txt and per-class lists (0_train.txt, ...); folder names as given (lowercase
    annotations/ as several public sets spell it)."""
    root = Path(root)
    records = layout_records()
    main = root / "ImageSets" / "Main"
    for folder in (root / annotations, root / images, main):
        folder.mkdir(parents=True, exist_ok=True)
    for r in records:
        r["image"].convert("RGB").save(root / images / r["file"].replace(".png", ".jpg"))
        name = r["file"].replace(".png", ".jpg")
        xml = _voc_xml(name, r["image"], r["names"], r["boxes"], folder="VOC2007")
        (root / annotations / f"{Path(r['file']).stem}.xml").write_text(xml)
    stems = {s: [Path(r["file"]).stem for r in records if r["split"] == s] for s in SPLITS3}
    stems["trainval"] = stems["train"] + stems["val"]
    for split, names in stems.items():
        (main / f"{split}.txt").write_text("\n".join(names) + "\n")
        (main / f"0_{split}.txt").write_text("".join(f"{n}  1\n" for n in names))
    for sub in ("SegmentationClass", "SegmentationObject"):
        (root / sub).mkdir()
        records[0]["image"].save(root / sub / "img000.png")
    names = {r["file"]: r["file"].replace(".png", ".jpg") for r in records}
    ignored = ("ImageSets/Main/0_train.txt", "SegmentationClass/", "SegmentationObject/")
    return _expect_detection("voc", records, 3, True, names, ignored=ignored)


SPLITS3 = ("train", "val", "test")

# Every layout people export, built from the same digits: name → builder(root) → Layout.
LAYOUTS = {
    "kaggle_imagefolder_splits": build_kaggle_imagefolder,
    "imagefolder_no_splits": lambda root: build_kaggle_imagefolder(root, splits=()),
    "imagefolder_nested": lambda root: build_kaggle_imagefolder(root, nested="chest_xray"),
    "imagefolder_stats_json": build_imagefolder_with_stats_json,
    "roboflow_coco": build_roboflow_coco,
    "roboflow_yolo": build_roboflow_yolo,
    "roboflow_voc": build_roboflow_voc,
    "roboflow_tfod_csv": build_roboflow_tfod_csv,
    "tfod_csv_at_root": build_tfod_csv_at_root,
    "cvat_coco": build_cvat_coco,
    "cvat_voc": build_cvat_voc,
    "label_studio_coco": build_label_studio_coco,
    "label_studio_yolo": build_label_studio_yolo,
    "voc_imagesets": build_voc_imagesets,
    "voc_lowercase": lambda root: build_voc_imagesets(root, "annotations", "jpegimages"),
}


def found_every_box(predictions: dict, score: float, below: float) -> dict:
    """A detection run's predictions file as if its detector had found every true box at
    `score` (a best-F1 threshold that is no round number, as real ones are); the detector's
    own detections stay, their scores kept under `below`. For reports of a detector that works,
    which a few CPU seconds of training cannot give."""
    preds = []
    for truth, pred in zip(predictions["targets"], predictions["preds"]):
        preds.append(
            {
                "boxes": list(truth["boxes"]) + list(pred["boxes"]),
                "labels": list(truth["labels"]) + list(pred["labels"]),
                "scores": [score] * len(truth["labels"]) + [min(s, below) for s in pred["scores"]],
            }
        )
    return {**predictions, "preds": preds}
