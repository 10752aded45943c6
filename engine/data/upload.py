"""Datasets uploaded from the browser: a zip, or image files of one class, unpacked safely
into `<data dir>/datasets/<name>/` and registered once the data check finds nothing blocking.

Nothing in an upload is trusted:

- every zip entry is checked before a byte is written: no absolute name, no `..`, no symlink,
  no encrypted entry, no name twice; at most `max_files` files, `max_folders` folders (named
  or implied by a file's path: each is an inode), `max_depth` levels and `max_unpacked_bytes`
  bytes as declared, and neither an entry nor the zip as a whole that inflates more than
  `max_ratio` times (a decompression bomb, or many small ones);
- while extracting, the bytes really written are counted against the same limits (a zip can
  lie about its sizes), and a name the filesystem refuses (too long) is refused by name;
- a zip inside the zip is a file like any other: kept as it is, never unpacked;
- an image whose header claims more than `max_image_pixels` pixels is refused (Pillow would
  refuse to decode it anyway, after allocating for it);
- everything is written into a hidden temporary folder inside the datasets folder and renamed
  into place at the end, so a refused or failed upload leaves nothing behind.

A dataset built from image files one class at a time stays unregistered until its data check
passes (one class alone does not); meanwhile a marker file in its folder (strays.UPLOAD_MARKER)
names who started it, so no other member can add to it and register it as theirs.

Limits are settings: defaults below, each overridden by an environment variable. The largest
file a browser may send is Streamlit's server.maxUploadSize (.streamlit/config.toml, in MB),
which must stay equal to max_upload_bytes (a test checks it).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import IO, Any

from PIL import Image

from engine import data_roots, store
from engine.data.images import is_image_file
from engine.data.strays import UPLOAD_MARKER
from engine.data.tables import split_of_folder

MB = 1 << 20
Progress = Callable[[float, str], None]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_CLASS = re.compile(r"\w[\w .+-]{0,63}")
_JUNK_DIRS = ("__MACOSX",)  # macOS resource forks: ._ copies of every file, never images
# Small entries may compress very well (XML, blank masks): not bombs. Many of them together,
# past a few MB, are held to the same ratio as one large entry.
_BOMB_MIN_BYTES = MB
_BOMB_MIN_TOTAL = 8 * MB
_CHUNK = MB


class UploadError(ValueError):
    """The upload is refused; the message names the entry and the limit."""


@dataclass(frozen=True)
class UploadLimits:
    max_upload_bytes: int = 1024 * MB  # = server.maxUploadSize in .streamlit/config.toml
    max_unpacked_bytes: int = 8192 * MB
    max_files: int = 100_000
    max_folders: int = 10_000
    max_depth: int = 16  # path parts, the file's own name included
    max_ratio: float = 100.0
    max_image_pixels: int = 89_478_485  # Pillow's own MAX_IMAGE_PIXELS default

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> UploadLimits:
        """Defaults, each overridden by VISIONBOARD_UPLOAD_<FIELD> (e.g. _MAX_FILES=5000)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(env_name(f.name))
            if raw is None or not raw.strip():
                continue
            kind = float if f.type in (float, "float") else int
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise UploadError(
                    f"{env_name(f.name)}={raw!r} is not a number ({kind.__name__})"
                ) from None
        return cls(**values)


def size_text(n: int) -> str:
    return f"{round(n / MB, 1):g} MB" if n >= MB else f"{n} bytes"


def env_name(field_name: str) -> str:
    return "VISIONBOARD_UPLOAD_" + field_name.upper()


def datasets_dir(home: str | Path | None = None) -> Path:
    """Where uploaded (and sample) datasets live: `<data dir>/datasets`, a data root."""
    return data_roots.datasets_dir(home)


def check_name(name: str) -> str:
    """A dataset name that is also a safe folder name."""
    name = (name or "").strip()
    if not _NAME.fullmatch(name):
        raise UploadError(
            f"name: {name!r} is not a valid dataset name; use 1-64 letters, digits, '-', '_' "
            "or '.', starting with a letter or digit"
        )
    return name


def check_class_name(name: str) -> str:
    """A class name that is a safe folder name and is not read as a split folder."""
    name = (name or "").strip()
    if not _CLASS.fullmatch(name):
        raise UploadError(
            f"class: {name!r} is not a valid class name; use 1-64 letters, digits, spaces, "
            "'-', '_', '+' or '.', starting with a letter or digit"
        )
    if split_of_folder(name):
        raise UploadError(f"class: {name!r} names a split folder; call the class otherwise")
    return name


# -- zip --------------------------------------------------------------------------------------


def plan_zip(archive: zipfile.ZipFile, limits: UploadLimits) -> list[tuple[zipfile.ZipInfo, str]]:
    """(entry, safe relative path) of every entry to extract; UploadError naming the first
    entry that is unsafe or over a limit. Nothing is written."""
    plan, seen, folders, total, packed, files = [], set(), set(), 0, 0, 0
    for info in archive.infolist():
        raw = info.filename
        name = raw.replace("\\", "/")
        if "\x00" in name:
            raise UploadError(f"{raw!r}: a NUL byte in the entry name")
        if name.startswith("/") or re.match(r"[A-Za-z]:", name):
            raise UploadError(f"{raw}: absolute path in the zip; entries must be relative")
        parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
        if ".." in parts:
            raise UploadError(f"{raw}: '..' in the path would write outside the dataset folder")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UploadError(f"{raw}: symbolic links are not accepted in an upload")
        if info.flag_bits & 0x1:
            raise UploadError(f"{raw}: encrypted entry; upload an unencrypted zip")
        if not parts or parts[0] in _JUNK_DIRS:
            continue
        rel = "/".join(parts)
        if rel in seen:
            raise UploadError(f"{raw}: appears twice in the zip")
        seen.add(rel)
        if len(parts) > limits.max_depth:
            raise UploadError(
                f"{raw}: {len(parts)} levels deep, more than {limits.max_depth} (the limit, "
                f"{env_name('max_depth')})"
            )
        # Every folder the entry names or implies is made, so each counts.
        folders.update("/".join(parts[:k]) for k in range(1, len(parts) + info.is_dir()))
        if len(folders) > limits.max_folders:
            raise UploadError(
                f"{raw}: more than {limits.max_folders} folders in the zip (the limit, "
                f"{env_name('max_folders')})"
            )
        if info.is_dir():
            plan.append((info, rel))
            continue
        files += 1
        if files > limits.max_files:
            raise UploadError(
                f"{raw}: more than {limits.max_files} files in the zip (the limit, "
                f"{env_name('max_files')})"
            )
        total += info.file_size
        if total > limits.max_unpacked_bytes:
            raise UploadError(
                f"{raw}: the files unpack to more than {size_text(limits.max_unpacked_bytes)} "
                f"(the limit, {env_name('max_unpacked_bytes')})"
            )
        packed += info.compress_size
        if info.file_size >= _BOMB_MIN_BYTES:
            _check_ratio(raw, info.compress_size, info.file_size, limits)
        plan.append((info, rel))
    if total >= _BOMB_MIN_TOTAL:
        _check_ratio("the zip", packed, total, limits)
    return plan


def _check_ratio(what: str, packed: int, size: int, limits: UploadLimits) -> None:
    ratio = size / max(packed, 1)
    if ratio > limits.max_ratio:
        raise UploadError(
            f"{what}: {packed} bytes that inflate to {size} ({ratio:.0f} times, above the "
            f"limit of {limits.max_ratio:g}, {env_name('max_ratio')}): refused as a "
            "decompression bomb"
        )


def unpack_zip(
    source: str | Path | IO[bytes],
    target: Path,
    limits: UploadLimits | None = None,
    progress: Progress | None = None,
) -> None:
    """Extract a zip into the existing folder `target` (checked entry by entry first)."""
    limits = limits or UploadLimits.from_env()
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UploadError(f"not a zip file ({exc})") from None
    base = target.resolve()
    with archive:
        plan = plan_zip(archive, limits)
        written = 0
        for k, (info, rel) in enumerate(plan):
            dest = base / rel
            if not dest.resolve().is_relative_to(base):  # belt and braces after plan_zip
                raise UploadError(f"{info.filename}: would be written outside the dataset folder")
            if info.is_dir():
                _make_folder(dest, info.filename)
            else:
                _make_folder(dest.parent, info.filename)
                written += _extract(archive, info, dest, limits, written)
                if is_image_file(dest):
                    check_image_pixels(dest, info.filename, limits)
            if progress:
                progress((k + 1) / len(plan), f"Unpacking {rel}")


def _make_folder(folder: Path, name: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a name too long, a file where a folder is needed
        raise UploadError(f"{name}: cannot be written ({exc.strerror or exc})") from None


def _extract(archive, info, dest: Path, limits: UploadLimits, written: int) -> int:
    """Copy one entry, counting what is really inflated; returns its size."""
    size = 0
    try:
        out = open(dest, "xb")
    except OSError as exc:
        raise UploadError(f"{info.filename}: cannot be written ({exc.strerror or exc})") from None
    try:
        with out, archive.open(info) as src:
            while chunk := src.read(_CHUNK):
                size += len(chunk)
                if size > info.file_size:
                    raise UploadError(
                        f"{info.filename}: inflates past its declared {info.file_size} bytes: "
                        "refused as a decompression bomb"
                    )
                if written + size > limits.max_unpacked_bytes:
                    raise UploadError(
                        f"{info.filename}: the files unpack to more than "
                        f"{size_text(limits.max_unpacked_bytes)} (the limit, "
                        f"{env_name('max_unpacked_bytes')})"
                    )
                out.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise UploadError(f"{info.filename}: cannot be extracted ({exc})") from None
    return size


def check_image_pixels(path: Path, name: str, limits: UploadLimits) -> None:
    """Refuse an image whose header claims more pixels than the limit (a pixel bomb)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
    except Image.DecompressionBombError:
        width = height = None
    except Exception:  # not an image after all: the data check lists it as unreadable
        return
    if width is None or width * height > limits.max_image_pixels:
        shown = f"{width}x{height} px" if width else "more pixels than Pillow accepts"
        raise UploadError(
            f"{name}: {shown}, above the limit of {limits.max_image_pixels} pixels "
            f"({env_name('max_image_pixels')}): refused as a decompression bomb"
        )


# -- into the data directory -----------------------------------------------------------------


def add_zip(
    home: str | Path | None,
    name: str,
    source: str | Path | IO[bytes],
    limits: UploadLimits | None = None,
    progress: Progress | None = None,
) -> Path:
    """Unpack an uploaded zip as `<datasets>/<name>/`; returns that folder.

    A zip holding one top folder (as "Compress folder" makes) has that folder as the dataset.
    """
    limits = limits or UploadLimits.from_env()
    name = check_name(name)
    _check_size(_size_of(source), getattr(source, "name", name), limits)
    target = datasets_dir(home) / name
    if target.exists():
        raise UploadError(
            f"name: a dataset folder {name!r} already exists in {target.parent}; choose "
            "another name"
        )
    with _staging(target.parent, name) as tmp:
        unpack_zip(source, tmp, limits, progress)
        root = _single_folder(tmp) or tmp
        if not any(root.iterdir()):
            raise UploadError("the zip holds no files")
        os.replace(root, target)
    return target


def add_images(
    home: str | Path | None,
    name: str,
    class_name: str,
    files: Iterable[tuple[str, bytes]],
    limits: UploadLimits | None = None,
    progress: Progress | None = None,
    owner: str = "",
) -> Path:
    """Save uploaded image files as `<datasets>/<name>/<class_name>/`; returns the dataset.

    The dataset folder is created, or must be an image folder of class folders only (one
    built by earlier uploads), so classes are added one upload at a time. A folder created
    here is marked as `owner`'s (when given) until it is registered.
    """
    limits = limits or UploadLimits.from_env()
    name, class_name = check_name(name), check_class_name(class_name)
    target = datasets_dir(home) / name
    if target.exists():
        _check_class_folders(target, name)
    files = list(files)
    if not files:
        raise UploadError("no image files given")
    if len(files) > limits.max_files:
        raise UploadError(
            f"{len(files)} files: more than the limit of {limits.max_files} "
            f"({env_name('max_files')})"
        )
    _check_size(sum(len(data) for _, data in files), f"{len(files)} files", limits)
    with _staging(target.parent, name) as tmp:
        folder = tmp / class_name
        folder.mkdir()
        for k, (file_name, data) in enumerate(files):
            base = PurePosixPath(file_name.replace("\\", "/")).name
            if not base or base.startswith(".") or not is_image_file(Path(base)):
                raise UploadError(f"{file_name}: not an image file name (.jpg, .png, ...)")
            dest = folder / base
            if dest.exists() or (target / class_name / base).exists():
                raise UploadError(f"{file_name}: class {class_name!r} already has a file so named")
            dest.write_bytes(data)
            check_image_pixels(dest, file_name, limits)
            if progress:
                progress((k + 1) / len(files), f"Saving {base}")
        if not target.exists():
            if owner:  # written before the folder appears: it is never seen unmarked
                (tmp / UPLOAD_MARKER).write_text(json.dumps({"username": owner}))
            os.replace(tmp, target)
        else:
            (target / class_name).mkdir(exist_ok=True)
            for path in folder.iterdir():
                os.replace(path, target / class_name / path.name)
    return target


def _check_size(size: int | None, what: str, limits: UploadLimits) -> None:
    if size is not None and size > limits.max_upload_bytes:
        raise UploadError(
            f"{what}: {size_text(size)}, above the upload limit of "
            f"{size_text(limits.max_upload_bytes)} ({env_name('max_upload_bytes')})"
        )


def _size_of(source) -> int | None:
    if isinstance(source, (str, Path)):
        return Path(source).stat().st_size
    size = getattr(source, "size", None)  # Streamlit's UploadedFile
    return size if isinstance(size, int) else None


def _check_class_folders(target: Path, name: str) -> None:
    entries = [p for p in target.iterdir() if p.name != UPLOAD_MARKER]
    flat = all(p.is_dir() and not p.is_symlink() and not p.name.startswith(".") for p in entries)
    if not flat or any(split_of_folder(p.name) for p in entries):
        raise UploadError(
            f"name: the dataset folder {name!r} exists and is not an image folder of class "
            "folders only; add images to a new dataset, or upload a zip of the whole dataset"
        )


class _staging:
    """A hidden temporary folder beside the target, removed on the way out whatever happens."""

    def __init__(self, parent: Path, name: str):
        parent.mkdir(parents=True, exist_ok=True)
        self.path = parent / f".upload-{name}-{secrets.token_hex(4)}"

    def __enter__(self) -> Path:
        self.path.mkdir()
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _single_folder(folder: Path) -> Path | None:
    """The one folder `folder` holds when it holds nothing else (hidden files aside), unless
    it is a split folder (a zip of train/ alone is a dataset with one split)."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and not split_of_folder(entries[0].name):
        return entries[0]
    return None


# -- register ---------------------------------------------------------------------------------


def upload_zip(
    db,
    name: str,
    source: str | Path | IO[bytes],
    *,
    by: dict[str, Any],
    limits: UploadLimits | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Unpack a zip as a new dataset, run the data check, register it when nothing blocks it.

    Returns the inspect report with "registered" and "path". A blocked upload is removed: its
    files cannot be fixed in the browser, the user fixes the zip and uploads it again.
    """
    target = datasets_dir(db.home) / check_name(name)
    check_registry(db, name, target, by)
    folder = add_zip(db.home, name, source, limits, progress)
    try:
        info = _register(db, name, folder, by)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if not info["registered"]:
        shutil.rmtree(folder, ignore_errors=True)
    return info


def upload_images(
    db,
    name: str,
    class_name: str,
    files: Iterable[tuple[str, bytes]],
    *,
    by: dict[str, Any],
    limits: UploadLimits | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Add image files of one class to a dataset (created if new), run the data check and
    register it when nothing blocks it. The files stay when something does (a first class
    alone is "only one class"): the next upload adds the class that is missing."""
    target = datasets_dir(db.home) / check_name(name)
    check_registry(db, name, target, by)
    folder = add_images(db.home, name, class_name, files, limits, progress, by["username"])
    return _register(db, name, folder, by)


def check_registry(db, name: str, target: Path, by: dict[str, Any]) -> None:
    """Before any file is written: the name is free or already this folder's, and `by` may
    add it (or change it). A folder not registered yet is its uploader's (pending_owner)."""
    row = store.get_dataset(db, name)
    if row is None:
        store.check_permission(by, "add_dataset")
        if target.exists():
            owner = pending_owner(target)
            store.check_permission(by, "edit_dataset", owner, f"dataset {name!r}")
        return
    if Path(row["path"]).resolve() != target.resolve():
        raise UploadError(
            f"name: {name!r} is already registered for {row['path']}; choose another name"
        )
    store.check_permission(by, "edit_dataset", row.get("added_by") or "", f"dataset {name!r}")


def pending_owner(folder: Path) -> str:
    """Who started the unregistered upload in `folder`: its marker's username, or "" (nobody:
    a folder put there by hand, which only admins may add to) when there is none."""
    try:
        owner = json.loads((folder / UPLOAD_MARKER).read_text()).get("username")
    except (OSError, ValueError, AttributeError):
        return ""
    return owner if isinstance(owner, str) else ""


def _register(db, name: str, folder: Path, by: dict[str, Any]) -> dict[str, Any]:
    from engine.data.inspect import inspect_dataset

    info = inspect_dataset(folder)
    info["registered"] = not info.get("error")
    if info["registered"]:
        store.register_dataset(db, name, str(folder), info["format"], info["task"], info, by=by)
        (folder / UPLOAD_MARKER).unlink(missing_ok=True)  # the store says whose it is now
    return info
