"""Files under a dataset root that are no part of it: listed as ignored, never dropped silently.

After a reader has read a dataset, every file it neither used as an image nor read as an
annotation (README, LICENSE, stats.json, .DS_Store, an image outside the class folders, a
masks/ folder) is listed with why it was left aside. A folder none of whose files was used is
listed once, with its file count, so a SegmentationClass/ of 3000 PNGs is one line.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from engine.data.images import IMAGE_EXTENSIONS

# Beyond this many entries only the count is kept (like errors.MAX_PROBLEMS).
MAX_IGNORED = 200
SYSTEM_FILES = frozenset({".ds_store", "thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"})
SYSTEM_DIRS = frozenset({"__macosx", "$recycle.bin", "system volume information"})
# VisionBoard's own file in a dataset it is building (engine.data.upload: who started the
# upload): not the dataset's, so never listed.
UPLOAD_MARKER = ".visionboard-upload.json"
DOC_PREFIXES = ("readme", "license", "licence", "copying", "changelog", "citation", "notice")
DOC_SUFFIXES = frozenset({".md", ".rst", ".pdf", ".html", ".htm"})
METADATA_SUFFIXES = frozenset({".json", ".yaml", ".yml", ".csv", ".tsv", ".xml", ".txt", ".names"})
# Why an image file was not taken, per format.
IMAGE_REASONS = {
    "imagefolder": "image outside the class folders",
    "csv": "image the CSV does not list",
}
IMAGE_REASON = "image the annotations do not name"


def is_system_file(name: str) -> bool:
    """Files operating systems leave behind: .DS_Store, Thumbs.db, ._resource forks."""
    lowered = name.lower()
    return lowered in SYSTEM_FILES or lowered.startswith("._")


def is_skipped_dir(name: str) -> bool:
    """Folders never looked into: hidden ones and archive debris such as __MACOSX."""
    return name.startswith(".") or name.lower() in SYSTEM_DIRS


def reason_for(name: str, fmt: str) -> str:
    lowered = name.lower()
    suffix = os.path.splitext(lowered)[1]
    if is_system_file(name):
        return "system file"
    if lowered.startswith(DOC_PREFIXES) or suffix in DOC_SUFFIXES:
        return "documentation"
    if suffix in IMAGE_EXTENSIONS:
        return IMAGE_REASONS.get(fmt, IMAGE_REASON)
    if suffix in METADATA_SUFFIXES:
        return "metadata, not read"
    return "not a dataset file"


def find_ignored(root: Path, used: Iterable[str | Path], fmt: str) -> tuple[list[dict], int]:
    """([{"file", "reason"}, ...], number of files ignored) for the files under `root` that are
    not in `used` (absolute or root-relative paths). Paths are relative to `root`."""
    if not root.is_dir():
        return [], 0
    root = root.resolve()
    used_rel = set()
    for p in used:
        p = Path(p)
        try:
            used_rel.add((p if p.is_absolute() else root / p).resolve().relative_to(root))
        except (ValueError, OSError):
            continue  # outside the root: not ours to list
    entries: list[dict] = []
    files: list[Path] = []
    for folder, dirs, names in os.walk(root):
        rel_folder = Path(folder).relative_to(root)
        for d in sorted(dirs):
            if is_skipped_dir(d):
                entries.append(
                    {"file": (rel_folder / d).as_posix() + "/", "reason": "system folder"}
                )
        dirs[:] = sorted(d for d in dirs if not is_skipped_dir(d))
        files += [rel_folder / n for n in sorted(names) if n != UPLOAD_MARKER]
    unused = [f for f in files if f not in used_rel]
    # Folders with no used file at all are listed once (the topmost such folder).
    used_dirs = {parent for f in used_rel for parent in f.parents}
    per_dir: Counter = Counter()
    loose = []
    for f in unused:
        top = next((p for p in reversed(f.parents[:-1]) if p not in used_dirs), None)
        if top is None:
            loose.append(f)
        else:
            per_dir[top] += 1
    for folder, n in per_dir.items():
        entries.append({"file": folder.as_posix() + "/", "reason": f"folder not read ({n} files)"})
    for f in loose:
        entries.append({"file": f.as_posix(), "reason": reason_for(f.name, fmt)})
    entries.sort(key=lambda e: e["file"])
    total = len(unused)
    if len(entries) > MAX_IGNORED:
        more = len(entries) - MAX_IGNORED
        entries = entries[:MAX_IGNORED] + [{"file": "", "reason": f"... and {more} more"}]
    return entries, total
