"""Pascal VOC: Annotations/*.xml and JPEGImages/, split by ImageSets/Main/train.txt, val.txt.

Coordinates are read as written (most tools write 0-based pixels). Class names come from a
labels.txt (or classes.txt) when there is one, else from the objects, sorted. Without
ImageSets, images that have no XML file are background images.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from engine.data.detection import RawDetection, RawImage, to_number
from engine.data.errors import DatasetError, Problems
from engine.data.images import IMAGE_EXTENSIONS, list_images, natural_key

VOC_IMAGE_DIRS = ("JPEGImages", "images", "Images")
VOC_CLASS_FILES = ("labels.txt", "classes.txt", "class_names.txt")


def read_voc(path: Path, problems: Problems, columns: dict | None = None) -> RawDetection:
    ann_dir = path / "Annotations"
    if not ann_dir.is_dir():
        raise DatasetError(f"{path}: no Annotations/ folder (Pascal VOC needs Annotations/*.xml)")
    image_dir = next((path / d for d in VOC_IMAGE_DIRS if (path / d).is_dir()), None)
    if image_dir is None:
        raise DatasetError(f"{path}: no JPEGImages/ folder next to Annotations/")
    class_file = next((path / f for f in VOC_CLASS_FILES if (path / f).is_file()), None)
    fixed_classes = None
    if class_file:
        fixed_classes = [ln.strip() for ln in class_file.read_text().splitlines() if ln.strip()]
    parsed: dict[str, tuple[Path | None, list[tuple[str, list, str]]]] = {}
    for xml_path in sorted(ann_dir.glob("*.xml"), key=lambda p: natural_key(p.name)):
        parsed[xml_path.stem] = _parse_voc_xml(xml_path, problems.rel(xml_path), image_dir)
    names = {obj[0] for _, objects in parsed.values() for obj in objects}
    if fixed_classes is not None:
        classes = fixed_classes
        for stem, (_, objects) in parsed.items():
            for name, _, entry in objects:
                if name not in classes:
                    raise DatasetError(
                        f"Annotations/{stem}.xml: {entry}: class {name!r} is not in "
                        f"{class_file.name} ({', '.join(classes)})"
                    )
    else:
        classes = sorted(names, key=natural_key)

    def raw(stem: str) -> RawImage:
        image_path, objects = parsed[stem]
        xml_path = ann_dir / f"{stem}.xml"
        if image_path is None:
            raise DatasetError(
                f"Annotations/{stem}.xml: image not found in {image_dir.name}/ "
                "(looked for its <filename> and for the same name with an image extension)"
            )
        image = RawImage(image_path, xml_path)
        for name, box, entry in objects:
            image.boxes.append(box)
            image.labels.append(classes.index(name))
            image.entries.append(entry)
        return image

    split_files = _voc_split_files(path)
    if split_files:
        sets = {}
        for split, list_path in split_files.items():
            ids = []
            for line_no, line in enumerate(list_path.read_text().splitlines(), 1):
                stem = line.split()[0] if line.split() else ""
                if not stem:
                    continue
                if stem not in parsed:
                    raise DatasetError(
                        f"{problems.rel(list_path)} line {line_no}: no Annotations/{stem}.xml"
                    )
                ids.append(stem)
            sets[split] = [raw(s) for s in ids]
        return RawDetection(classes, sets["train"], sets["test"])
    images = [raw(stem) for stem in parsed]
    annotated = {im.path.resolve() for im in images}
    # Images without an XML file are background images, as in YOLO's layout.
    for p in list_images(image_dir):
        if p.resolve() not in annotated:
            images.append(RawImage(p, p))
    return RawDetection(classes, images, None)


def _voc_split_files(root: Path) -> dict[str, Path] | None:
    main = root / "ImageSets" / "Main"
    train = next(
        (main / f"{n}.txt" for n in ("train", "trainval") if (main / f"{n}.txt").is_file()), None
    )
    test = next((main / f"{n}.txt" for n in ("val", "test") if (main / f"{n}.txt").is_file()), None)
    if train and test:
        return {"train": train, "test": test}
    return None


def _parse_voc_xml(xml_path: Path, name: str, image_dir: Path):
    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as exc:
        raise DatasetError(f"{name}: malformed XML ({exc})") from None
    node = tree.getroot()
    file_name = (node.findtext("filename") or "").strip()
    image_path = image_dir / file_name if file_name else None
    if image_path is None or not image_path.is_file():
        image_path = next(
            (
                p
                for p in sorted(image_dir.glob(f"{xml_path.stem}.*"))
                if p.suffix.lower() in IMAGE_EXTENSIONS
            ),
            None,
        )
    objects = []
    for i, obj in enumerate(node.findall("object"), 1):
        entry = f"object {i}"
        label = (obj.findtext("name") or "").strip()
        if not label:
            raise DatasetError(f"{name}: {entry}: missing <name>")
        box = obj.find("bndbox")
        if box is None:
            raise DatasetError(f"{name}: {entry} ({label}): missing <bndbox>")
        coords = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            text = box.findtext(tag)
            if text is None:
                raise DatasetError(f"{name}: {entry} ({label}): missing <{tag}> in <bndbox>")
            coords.append(to_number(text.strip(), f"{name}: {entry} ({label}): {tag}"))
        objects.append((label, coords, entry))
    return image_path, objects
