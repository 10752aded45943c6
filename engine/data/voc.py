"""Pascal VOC: XML files with <annotation> roots, in one of two layouts.

- `Annotations/*.xml` and `JPEGImages/` (folder names in any case; `images/` also works), split
  by `ImageSets/Main/{train,val,test}.txt` (or `trainval.txt`): every list there is kept, so a
  test list beside val is the final-report split. CVAT's Pascal VOC 1.1 writes
  `ImageSets/Main/default.txt` (no split: the seeded split applies) and `labelmap.txt`.
- XML beside the images (LabelImg, Roboflow's VOC export), in the dataset folder or in one
  folder per split (`train/`, `valid/`, `test/`).

Coordinates are read as written (most tools write 0-based pixels). Class names come from a
labels.txt, classes.txt or CVAT labelmap.txt when there is one, else from the objects, sorted.
Without split lists, images that have no XML file are background images.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from engine.data.detection import RawDetection, RawImage, to_number
from engine.data.errors import WARNING, DatasetError, Problems, Where
from engine.data.images import IMAGE_EXTENSIONS, is_image_file, list_images, natural_key
from engine.data.signatures import (
    VOC_HEAD,
    child,
    files_in,
    is_voc_content,
    is_voc_xml,
    split_folders,
)
from engine.data_roots import PathRefused, exists_inside, open_inside, read_text_inside

VOC_IMAGE_DIRS = ("JPEGImages", "images")
VOC_CLASS_FILES = ("labels.txt", "classes.txt", "class_names.txt", "labelmap.txt")
# ImageSets/Main lists, per split, most specific first (VOC2007 ships train, val and trainval).
VOC_LISTS = {"train": ("train", "trainval"), "val": ("val",), "test": ("test",)}


def read_voc(path: Path, problems: Problems, columns: dict | None = None) -> RawDetection:
    ann_dir = child(path, "Annotations")
    if ann_dir is not None and files_in(ann_dir, (".xml",)):
        return _read_voc_folders(path, ann_dir, problems)
    folders = [f for f in [path, *split_folders(path).values()] if _has_voc_xml(f)]
    if folders:
        return _read_voc_beside(path, problems)
    raise DatasetError(
        f"{path}: no Annotations/ folder and no .xml files beside the images "
        "(Pascal VOC needs Annotations/*.xml and JPEGImages/, or an .xml beside each image)"
    )


def _has_voc_xml(folder: Path) -> bool:
    return any(is_voc_xml(p) for p in files_in(folder, (".xml",))[:3])


def _read_class_file(path: Path) -> tuple[list[str] | None, Path | None]:
    """Class names from labels.txt / classes.txt (one a line) or CVAT's labelmap.txt
    (`name:color:parts:actions`, `#` comments, a `background` entry)."""
    class_file = next((path / f for f in VOC_CLASS_FILES if (path / f).is_file()), None)
    if class_file is None:
        return None, None
    names = []
    for line in read_text_inside(class_file, errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name = line.split(":")[0].strip() if class_file.name == "labelmap.txt" else line
        if name and not (class_file.name == "labelmap.txt" and name == "background"):
            names.append(name)
    return names, class_file


def _classes(path, parsed, problems) -> tuple[list[str], list[Path]]:
    """The class list (a class file's, checked against the objects, or the objects' names).
    An object of a class the class file does not name is listed as blocking and left out."""
    fixed, class_file = _read_class_file(path)
    if fixed is None:
        names = {obj[0] for _, objects in parsed.values() for obj in objects or ()}
        return sorted(names, key=natural_key), []
    for xml_path, (_, objects) in parsed.items():
        if objects is None:
            continue
        for obj in list(objects):
            name, _, entry = obj
            if name not in fixed:
                problems.block(
                    xml_path,
                    f"{problems.rel(xml_path)}: {entry}: class {name!r} is not in "
                    f"{class_file.name} ({', '.join(fixed)})",
                    "bad_annotation",
                )
                objects.remove(obj)
    return fixed, [class_file]


def _raw(
    xml_path: Path, image_path, objects, classes, image_dir: Path, problems
) -> RawImage | None:
    """The image an XML file describes; None (listed as blocking) when its image is missing,
    or when the file itself was malformed (listed when it was parsed)."""
    if objects is None:
        return None
    if image_path is None:
        problems.block(
            xml_path,
            f"{problems.rel(xml_path)}: image not found in {problems.rel(image_dir)}/ "
            "(looked for its <filename> and for the same name with an image extension)",
            "missing_image",
        )
        return None
    image = RawImage(image_path, xml_path)
    for name, box, entry in objects:
        image.boxes.append(box)
        image.labels.append(classes.index(name))
        image.entries.append(entry)
    return image


def _read_voc_folders(path: Path, ann_dir: Path, problems: Problems) -> RawDetection:
    image_dir = child(path, *VOC_IMAGE_DIRS)
    if image_dir is None:
        raise DatasetError(f"{path}: no JPEGImages/ folder next to {ann_dir.name}/")
    parsed = {
        xml_path: _parse_voc_xml(xml_path, image_dir, problems)
        for xml_path in sorted(files_in(ann_dir, (".xml",)), key=lambda p: natural_key(p.name))
    }
    classes, read = _classes(path, parsed, problems)
    by_stem = {xml_path.stem: xml_path for xml_path in parsed}

    def raws(xml_paths) -> list[RawImage]:
        found = [_raw(x, *parsed[x], classes, image_dir, problems) for x in xml_paths]
        return [image for image in found if image is not None]

    lists = _voc_split_files(path)
    if "train" in lists:
        sets, listed = {}, set()
        for split, list_path in lists.items():
            stems = _read_list(list_path, by_stem, problems)
            listed.update(stems)
            sets[split] = raws(by_stem[stem] for stem in stems)
        _warn_unlisted(set(by_stem) - listed, lists, problems)
        read += list(lists.values())
        return RawDetection(classes, sets["train"], sets.get("test"), sets.get("val"), read)
    if "all" in lists:  # CVAT's default.txt: every image it names, no split
        named = set(_read_list(lists["all"], by_stem, problems))
        _warn_unlisted(set(by_stem) - named, lists, problems)
        images = raws(by_stem[stem] for stem in by_stem if stem in named)
        read.append(lists["all"])
        return RawDetection(classes, images, None, None, read)
    images = raws(parsed)
    background = _background(list_images(image_dir), images, parsed)
    return RawDetection(classes, images + background, None, None, read)


def _warn_unlisted(unlisted: set[str], lists: dict[str, Path], problems: Problems) -> None:
    """Annotated images that no ImageSets list names are a split the dataset leaves out (a
    test.txt not shipped, a list cut short): said, not only listed among the ignored files."""
    if not unlisted:
        return
    folder = next(iter(lists.values())).parent
    names = ", ".join(p.name for p in lists.values())
    problems.add(
        folder,
        f"{len(unlisted)} annotated image(s) are in no ImageSets list ({names}): a split "
        "left out, not used (add them to a list to use them)",
        "unlisted_images",
        WARNING,
    )


def _background(candidates: list[Path], images: list[RawImage], parsed: dict) -> list[RawImage]:
    """Images without an XML file: background images, as in YOLO's layout. The image of a
    malformed XML file (listed as blocking) is no background image: it is left out."""
    annotated = {im.path.resolve() for im in images}
    malformed = {x.stem for x, (_, objects) in parsed.items() if objects is None}
    return [
        RawImage(p, p)
        for p in candidates
        if p.resolve() not in annotated and p.stem not in malformed
    ]


def _read_list(list_path: Path, by_stem: dict, problems: Problems) -> list[str]:
    stems = []
    for line_no, line in enumerate(read_text_inside(list_path).splitlines(), 1):
        stem = line.split()[0] if line.split() else ""
        if not stem:
            continue
        if stem not in by_stem:
            problems.block(
                list_path,
                f"{problems.rel(list_path)} line {line_no}: no annotation file {stem}.xml",
                "bad_annotation",
            )
            continue
        stems.append(stem)
    return stems


def _voc_split_files(root: Path) -> dict[str, Path]:
    """{"train": list, "val": ..., "test": ...} from ImageSets/Main, or {"all": default.txt}."""
    image_sets = child(root, "ImageSets")
    main = child(image_sets, "Main") if image_sets else None
    by_stem = {p.stem.lower(): p for p in files_in(main, (".txt",))}
    lists = {}
    for split, names in VOC_LISTS.items():
        found = next((by_stem[n] for n in names if n in by_stem), None)
        if found:
            lists[split] = found
    if "train" in lists and "val" not in lists and "test" not in lists:
        lists = {"all": lists["train"]}  # one list: the images to use, no split
    if not lists and "default" in by_stem:
        lists = {"all": by_stem["default"]}
    return lists


def _read_voc_beside(path: Path, problems: Problems) -> RawDetection:
    """XML beside the images, in `path` or in its split folders."""
    splits = split_folders(path)
    folders = {"all": path} if _has_voc_xml(path) or not splits else splits
    parsed_by_split = {}
    for split, folder in folders.items():
        xmls = sorted(files_in(folder, (".xml",)), key=lambda p: natural_key(p.name))
        parsed = {x: _parse_voc_xml(x, folder, problems, voc_only=True) for x in xmls}
        parsed_by_split[split] = {x: found for x, found in parsed.items() if found is not None}
    everything = {k: v for parsed in parsed_by_split.values() for k, v in parsed.items()}
    classes, read = _classes(path, everything, problems)
    sets = {}
    for split, parsed in parsed_by_split.items():
        folder = folders[split]
        images = [_raw(x, im, objs, classes, folder, problems) for x, (im, objs) in parsed.items()]
        images = [image for image in images if image is not None]
        loose = [p for p in folder.iterdir() if p.is_file() and is_image_file(p)]
        images += _background(sorted(loose), images, parsed)
        sets[split] = images
    if "all" in sets:
        return RawDetection(classes, sets["all"], None, None, read)
    if "train" not in sets:
        raise DatasetError(f"{path}: split folders ({', '.join(sets)}) but no train/ folder")
    return RawDetection(classes, sets["train"], sets.get("test"), sets.get("val"), read)


def _parse_voc_xml(xml_path: Path, image_dir: Path, problems: Problems, voc_only: bool = False):
    """(image path or None, [(class name, box, entry)]); objects None for a malformed file.
    A malformed file or object is listed as blocking and left out, and reading goes on.
    With voc_only (XML beside the images, where other XML may lie), None for a file that
    is_voc_xml would not take: the file is opened once for both."""
    try:
        with open_inside(xml_path, "rb") as fh:
            data = fh.read(4 * VOC_HEAD)  # enough for is_voc_content; the rest if it is VOC
            if voc_only and not is_voc_content(data):
                return None
            data += fh.read()
    except PathRefused as exc:  # a symlink out of the roots: refused, nothing read
        if voc_only:
            return None
        problems.block(xml_path, str(exc), "bad_annotation")
        return None, None
    except OSError:
        if voc_only:
            return None
        raise
    name = Where(problems, xml_path)  # named only in a message
    try:
        node = ET.fromstring(data)
    except ET.ParseError as exc:
        problems.block(xml_path, f"{name}: malformed XML ({exc})", "bad_annotation")
        return None, None
    file_name = (node.findtext("filename") or "").strip()
    image_path = image_dir / file_name if file_name else None
    if image_path is None or not exists_inside(image_path):
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
        with problems.entry(xml_path):
            objects.append(_read_object(obj, f"object {i}", name))
    return image_path, objects


def _read_object(obj: ET.Element, entry: str, name: str | Where) -> tuple[str, list[float], str]:
    """(class name, [xmin, ymin, xmax, ymax], entry) of one <object>; DatasetError naming the
    file and the object when it is malformed."""
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
        coords.append(to_number(text.strip(), name + f": {entry} ({label}): {tag}"))
    return label, coords, entry
