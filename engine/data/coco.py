"""COCO JSON: one annotations file with an images folder, or train and val files.

Layouts read: `annotations.json` + `images/`; `annotations/instances_train2017.json` +
`train2017/`; Roboflow's `train/valid/test/_annotations.coco.json` next to its images; CVAT's
`annotations/instances_default.json` + `images/`; Label Studio's `result.json` + `images/`;
`train.json` + `val.json` (+ `test.json`). Only JSON files with `images`, `annotations` and
`categories` lists count (signatures.is_coco_json): a stray stats.json is no annotation file. A
file_name is looked up next to its JSON, in `images/`, the dataset root and its sub-folders.
Crowd annotations (iscrowd=1) are left out and counted.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.data.detection import RawDetection, RawImage, split_of_name, subdirs, to_number
from engine.data.errors import DatasetError, Problems
from engine.data.images import natural_key
from engine.data.signatures import child, coco_jsons, files_in
from engine.data_roots import PathRefused, exists_inside, open_inside


def find_coco_files(path: Path) -> tuple[Path, dict[str, Path]]:
    """(dataset root, {"all": json} or {"train": json, "val": json, "test": json})."""
    if path.is_file():
        root = path.parent.parent if path.parent.name.lower() == "annotations" else path.parent
        return root, {"all": path}
    # No file passes for COCO: read the one that looks meant to be, so its error says why.
    found = (
        coco_jsons(path)
        or (files_in(path, (".json",)) + files_in(child(path, "annotations"), (".json",)))[:1]
    )
    if len(found) == 1:
        return path, {"all": found[0]}
    if not found:
        raise DatasetError(f"{path}: no COCO annotation file (.json) found")
    by_split: dict[str, list[Path]] = {}
    for p in found:
        in_split_folder = p.parent != path and p.parent.name.lower() != "annotations"
        name = f"{p.parent.name}/{p.stem}" if in_split_folder else p.stem
        split = split_of_name(name)
        if split:
            by_split.setdefault(split, []).append(p)
    for split, paths in by_split.items():
        if len(paths) > 1:  # COCO itself ships instances_, captions_ and person_keypoints_ files
            preferred = [p for p in paths if p.stem.startswith("instances")]
            by_split[split] = preferred or paths
    if by_split.get("train") and all(len(paths) == 1 for paths in by_split.values()):
        return path, {split: paths[0] for split, paths in by_split.items()}
    names = ", ".join(sorted(p.relative_to(path).as_posix() for p in found))
    raise DatasetError(
        f"{path}: several annotation files ({names}); keep one, or name them train and val"
    )


def _load_json(path: Path, name: str):
    try:
        with open_inside(path, encoding="utf-8") as fh:
            return json.load(fh)
    except PathRefused as exc:  # a symlink out of the roots: the one refusal, nothing read
        raise DatasetError(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{name}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{name}: cannot read ({exc})") from None


def _image_bases(json_path: Path, root: Path) -> list[Path]:
    """Folders a COCO file_name may be relative to, most likely first."""
    bases = [json_path.parent, json_path.parent / "images", root, root / "images"]
    bases += subdirs(root) + subdirs(root / "images")
    unique = []
    for b in bases:
        if b.is_dir() and b not in unique:
            unique.append(b)
    return unique


def read_coco(path: Path, problems: Problems, columns: dict | None = None) -> RawDetection:
    root, files = find_coco_files(path)
    problems.root = root
    parsed = {}
    for split, json_path in files.items():
        name = problems.rel(json_path)
        data = _load_json(json_path, name)
        if not isinstance(data, dict):
            raise DatasetError(
                f"{name}: expected a JSON object with images, annotations, categories"
            )
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise DatasetError(
                    f"{name}: missing the {key!r} list (COCO needs images, annotations, categories)"
                )
        parsed[split] = (json_path, name, data)

    # Classes in the order of the first file's category ids; a later file may add names.
    classes: list[str] = []
    categories = {}  # per file: its well-formed categories entries
    for split, (json_path, name, data) in parsed.items():
        cats = []
        for i, cat in enumerate(data["categories"]):
            if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
                problems.block(json_path, f"{name}: categories entry {i}: needs 'id' and 'name'")
                continue
            cats.append(cat)
        categories[split] = cats
        for cat in sorted(cats, key=lambda c: natural_key(str(c["id"]))):
            if str(cat["name"]) not in classes:
                classes.append(str(cat["name"]))

    out: dict[str, list[RawImage]] = {}
    for split, (json_path, name, data) in parsed.items():
        labels = {c["id"]: classes.index(str(c["name"])) for c in categories[split]}
        out[split] = _read_coco_file(json_path, name, data, root, labels, problems)
    read = list(files.values())
    if "all" in out:
        return RawDetection(classes, out["all"], None, None, read)
    return RawDetection(classes, out["train"], out.get("test"), out.get("val"), read)


def _read_coco_file(json_path, name, data, root, category_label, problems) -> list[RawImage]:
    """The images of one COCO file with their boxes. A bad entry (an image entry or file that
    is missing, an annotation with an unknown image or category or a malformed bbox) is listed
    as a blocking problem and skipped, so every one is listed; annotations of an image entry
    that was skipped are left out without a problem of their own."""
    bases = _image_bases(json_path, root)
    images: dict = {}
    skipped = set()  # ids of image entries listed as problems
    last_base = bases[0] if bases else json_path.parent
    for i, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
            if isinstance(entry, dict) and "id" in entry:
                skipped.add(entry["id"])
            problems.block(json_path, f"{name}: images entry {i}: needs 'id' and 'file_name'")
            continue
        file_name = str(entry["file_name"]).replace("\\", "/")  # exports made on Windows
        # Most files share one folder: try the last one that worked before searching.
        base = next((b for b in [last_base, *bases] if exists_inside(b / file_name)), None)
        if base is None:
            looked = ", ".join(problems.rel(b) + "/" for b in bases[:4])
            skipped.add(entry["id"])
            problems.block(
                json_path,
                f"{name}: image id {entry['id']}: file {file_name!r} not found (looked in {looked})",
                "missing_image",
            )
            continue
        last_base = base
        images[entry["id"]] = RawImage(base / file_name, json_path)
    crowd = 0
    for i, ann in enumerate(data["annotations"]):
        with problems.entry(json_path):
            crowd += _read_annotation(i, ann, name, images, skipped, category_label)
    if crowd:
        problems.add(json_path, f"{crowd} crowd annotation(s) (iscrowd=1) left out")
        problems.count("crowd_annotations", crowd)
    return list(images.values())


def _read_annotation(i, ann, name, images, skipped, category_label) -> int:
    """Add one annotation's box to its image; 1 for a crowd annotation (left out), else 0.
    DatasetError naming the file and the annotation when it is malformed."""
    if not isinstance(ann, dict):
        raise DatasetError(f"{name}: annotations entry {i}: expected an object")
    entry = f"annotation id {ann['id']}" if "id" in ann else f"annotations entry {i}"
    where = f"{name}: {entry}"
    if ann.get("image_id") in skipped:
        return 0  # its image entry is listed as a problem already
    if ann.get("image_id") not in images:
        raise DatasetError(f"{where}: image_id {ann.get('image_id')!r} is not in images")
    if ann.get("category_id") not in category_label:
        valid = ", ".join(str(k) for k in category_label)
        raise DatasetError(
            f"{where}: category_id {ann.get('category_id')!r} is not in categories ({valid})"
        )
    if ann.get("iscrowd"):
        return 1  # crowd regions mark many objects at once; torchvision's recipe skips them
    bbox = ann.get("bbox")
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        raise DatasetError(f"{where}: bbox must be [x, y, width, height], got {bbox!r}")
    x, y, w, h = (to_number(v, f"{where}: bbox") for v in bbox)
    image = images[ann["image_id"]]
    image.boxes.append([x, y, x + w, y + h])
    image.labels.append(category_label[ann["category_id"]])
    image.entries.append(entry)
    return 0
