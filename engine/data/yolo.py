"""YOLO: data.yaml (names, train, val, test) with images/ and labels/ folders.

Label lines are `class cx cy w h`, normalised to 0..1 (a segmentation polygon counts by its
enclosing box). An image without a label file is a background image. `train`, `val` and `test`
may be folders, .txt lists of images or lists of those (Roboflow writes `../train/images`);
every one given is kept; when val is the train folder, the seeded split applies. Without a
data.yaml, Label Studio's YOLO export (`classes.txt`, `images/`, `labels/`) is read with the
seeded split.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from engine.data.detection import RawDetection, RawImage, to_number
from engine.data.errors import DatasetError, Problems, Where
from engine.data.images import is_image_file, list_images
from engine.data.signatures import child, yolo_yamls
from engine.data_roots import PathRefused, exists_inside, read_text_inside

YOLO_CLASS_FILES = ("classes.txt", "obj.names")


def find_yolo_yaml(path: Path) -> Path | None:
    if path.is_file():
        return path if path.suffix.lower() in (".yaml", ".yml") else None
    preferred = ("data.yaml", "data.yml", "dataset.yaml", "dataset.yml")
    found = sorted(yolo_yamls(path), key=lambda p: (p.name not in preferred, p.name))
    return found[0] if found else None


def _any_yaml(path: Path) -> Path | None:
    """A YAML file without 'names': read, so the error says that 'names' is missing."""
    if path.is_file():
        return None
    found = sorted(p for p in path.glob("*.y*ml") if p.suffix.lower() in (".yaml", ".yml"))
    return next((p for p in found if p.stem in ("data", "dataset")), found[0] if found else None)


def read_yolo(path: Path, problems: Problems, columns: dict | None = None) -> RawDetection:
    yaml_path = find_yolo_yaml(path) or _any_yaml(path)
    if yaml_path is None and path.is_dir():
        class_file = next((path / n for n in YOLO_CLASS_FILES if (path / n).is_file()), None)
        if class_file and child(path, "images"):
            return _read_yolo_without_yaml(path, class_file, problems)
    if yaml_path is None:
        raise DatasetError(f"{path}: no data.yaml with 'names' (YOLO needs one)")
    root = yaml_path.parent
    problems.root = root
    name = yaml_path.name
    try:
        data = yaml.safe_load(read_text_inside(yaml_path))
    except yaml.YAMLError as exc:
        raise DatasetError(f"{name}: malformed YAML{yaml_position(exc)}") from None
    if not isinstance(data, dict) or "names" not in data:
        raise DatasetError(f"{name}: missing 'names' (the class names)")
    names = data["names"]
    if isinstance(names, dict):
        try:
            names = [str(names[k]) for k in sorted(names, key=int)]
        except (TypeError, ValueError):
            raise DatasetError(f"{name}: 'names' keys must be class numbers 0, 1, ...") from None
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{name}: 'names' must be a list of class names")
    classes = [str(n) for n in names]
    base = root
    if data.get("path"):
        base = Path(str(data["path"]))
        base = base if base.is_absolute() else root / base
        if not base.is_dir():
            base = root  # a path from the machine the export was made on
    if not data.get("train"):
        raise DatasetError(f"{name}: missing 'train' (the training images folder or list)")
    files = {"train": _yolo_images(data["train"], base, root, name, "train", problems)}
    for key in ("val", "test"):
        if data.get(key):
            found = _yolo_images(data[key], base, root, name, key, problems)
            # val (or test) the train folder: the data has no split of its own
            if found and set(found) != set(files["train"]) and found not in files.values():
                files[key] = found
    parts = {k: [_read_yolo_labels(p, classes, problems) for p in v] for k, v in files.items()}
    return RawDetection(classes, parts["train"], parts.get("test"), parts.get("val"), [yaml_path])


def _read_yolo_without_yaml(path: Path, class_file: Path, problems: Problems) -> RawDetection:
    """Label Studio's YOLO export: classes.txt (one name a line), images/, labels/."""
    problems.root = path
    lines = read_text_inside(class_file, errors="replace").splitlines()
    classes = [line.strip() for line in lines if line.strip()]
    if not classes:
        raise DatasetError(f"{class_file.name}: no class names (one a line)")
    images = list_images(child(path, "images"))
    train = [_read_yolo_labels(p, classes, problems, class_file.name) for p in images]
    return RawDetection(classes, train, None, None, [class_file])


def _resolve_yolo_path(entry: str, base: Path, root: Path) -> Path | None:
    p = Path(entry)
    if p.is_absolute():
        return p if exists_inside(p) else None
    candidates = [base / p, root / p]
    stripped = entry
    while stripped.startswith("../"):  # Roboflow writes ../train/images next to data.yaml
        stripped = stripped[3:]
        candidates.append(root / stripped)
    return next((c for c in candidates if exists_inside(c)), None)


def _yolo_images(
    entry, base: Path, root: Path, name: str, key: str, problems: Problems
) -> list[Path]:
    """The images a data.yaml entry names: a folder, an image, a .txt list (a line naming a
    missing image is listed as blocking and skipped) or a list of those."""
    entries = entry if isinstance(entry, list) else [entry]
    files: list[Path] = []
    for item in entries:
        found = _resolve_yolo_path(str(item), base, root)
        if found is None:
            raise DatasetError(f"{name}: {key} path {str(item)!r} not found")
        if found.is_dir():
            files += list_images(found)
        elif found.suffix.lower() == ".txt":  # a list of image paths, one a line
            for line_no, line in enumerate(read_text_inside(found).splitlines(), 1):
                line = line.strip()
                if not line:
                    continue
                image = _resolve_yolo_path(line, base, found.parent) or _resolve_yolo_path(
                    line, found.parent, root
                )
                if image is None:
                    problems.block(
                        found,
                        f"{found.name} line {line_no}: image {line!r} not found",
                        "missing_image",
                    )
                    continue
                files.append(image)
        elif is_image_file(found):
            files.append(found)
        else:
            raise DatasetError(f"{name}: {key} path {str(item)!r} is not a folder or a .txt list")
    unique = list(dict.fromkeys(f.resolve() for f in files))
    return unique


def yolo_label_path(image: Path) -> Path:
    """images/train/a.jpg → labels/train/a.txt (the last `images` folder becomes `labels`)."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i].lower() == "images":
            parts[i] = "Labels" if parts[i] == "Images" else "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def _read_yolo_labels(
    image: Path, classes: list[str], problems: Problems, names_from: str = "the data.yaml"
) -> RawImage:
    label_path = yolo_label_path(image)
    raw = RawImage(image, label_path, normalized=True)
    if not os.path.lexists(label_path):
        return raw  # YOLO's convention: no label file, no objects
    name = Where(problems, label_path)  # named only in a message
    try:
        lines = read_text_inside(label_path).splitlines()
    except PathRefused as exc:  # a symlink out of the roots: refused, never read as background
        problems.block(label_path, str(exc), "bad_annotation")
        lines = []
    except (OSError, UnicodeDecodeError) as exc:
        problems.block(label_path, f"{name}: cannot read ({exc})", "bad_annotation")
        lines = []
    for line_no, line in enumerate(lines, 1):
        if not line.split():
            continue
        with problems.entry(label_path):  # a bad line is listed and skipped, the next read
            where = Where(problems, label_path, f" line {line_no}")
            cls, box = _read_label_line(line.split(), where, classes, names_from)
            raw.boxes.append(box)
            raw.labels.append(cls)
            raw.entries.append(f"line {line_no}")
    return raw


def yaml_position(exc: yaml.YAMLError) -> str:
    """Where a YAML error is, never what is there: PyYAML's message quotes the offending line,
    which must not reach an error (the file may be a symlink to a secret)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""


def _read_label_line(
    tokens, where: str | Where, classes, names_from: str
) -> tuple[int, list[float]]:
    """(class, [x1, y1, x2, y2] in 0..1) of one label line; DatasetError naming the line."""
    if len(tokens) != 5 and (len(tokens) < 7 or len(tokens) % 2 == 0):
        raise DatasetError(
            f"{where}: expected 'class cx cy w h' (5 numbers) or a polygon "
            f"'class x1 y1 x2 y2 ...', got {len(tokens)} values"
        )
    try:
        cls = int(tokens[0])
    except ValueError:
        raise DatasetError(f"{where}: class {tokens[0]!r} is not a class number") from None
    if not 0 <= cls < len(classes):
        raise DatasetError(
            f"{where}: class {cls} is not in names (0..{len(classes) - 1} in {names_from})"
        )
    values = [to_number(t, where) for t in tokens[1:]]
    if len(values) == 4:
        cx, cy, w, h = values
        return cls, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    xs, ys = values[0::2], values[1::2]  # segmentation polygon: its enclosing box
    return cls, [min(xs), min(ys), max(xs), max(ys)]
