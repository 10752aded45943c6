"""The data check: what a reader cannot see file by file, found before a run starts.

The readers list what is wrong with one file or one entry (unreadable images, bad boxes, empty
classes). This module looks across files, once per image (bytes hashed, pixels read at reduced
size: Pillow's draft mode decodes a JPEG at 1/8 scale):

- leakage: the same image in two splits, byte for byte or resized/re-encoded, which makes
  test metrics lie. Candidates share most bits of a 64-bit difference hash; a 32x32 grey
  thumbnail then confirms them (correlation), since small or simple pictures (handwritten
  digits, mostly empty canvases) share their hash without being the same picture;
- exact duplicates within a split;
- placeholder-like images: tiny (under 16 px a side), one flat colour, or a GIF among photos
  (the "image not found" picture a scraper saves);
- class imbalance (largest / smallest class above 10) and classes missing from a test split;
- what was ignored (stray files beside the data).

All of these are warnings: the run can go on, but the user should know before it does.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageStat

from engine import data_roots
from engine.data.errors import INFO, Problems
from engine.data.images import _READ_ERRORS, list_images, probe_images
from engine.data.records import DatasetSplits

TINY_SIDE = 16  # pixels: below this a "photo" is an icon, a tracking pixel or a placeholder
FLAT_SPREAD = 2.0  # grey-level standard deviation (0-255) under which an image is one colour
HASH_DISTANCE = 6  # differing bits of 64 for two images to be compared as candidates
# Thumbnail correlation of a picture and its resized or re-encoded copy stays above this;
# two different handwritten digits of the sample set reach 0.984.
SAME_PICTURE = 0.99
IMBALANCE_RATIO = 10  # largest / smallest class
SPLIT_ORDER = ("train", "val", "test")
_BANDS = 8  # hash split in 8 bands of 8 bits: two hashes within 7 bits share a band exactly
_MAX_BUCKET = 512  # a band value shared by more images than this says nothing (flat areas)
_SHOWN = 3  # files named in one message; the rest are counted


@dataclass(frozen=True)
class Fingerprint:
    """What the checks need of one image file."""

    path: str
    split: str
    label: str | None  # the class name for classification; None for detection
    digest: str  # of the bytes
    dhash: int  # 64-bit difference hash of the 9x8 grey thumbnail
    width: int
    height: int
    format: str
    spread: float  # grey-level standard deviation of the thumbnail
    has_objects: bool  # classification: always; detection: the image has boxes
    thumb: bytes  # 32x32 grey thumbnail


def fingerprint(path: str | Path, split: str = "", label: str | None = None, objects=True):
    """The Fingerprint of one image, or None when it cannot be read (listed elsewhere)."""
    try:
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as img:  # one read of the file for hash and pixels
            width, height, fmt = img.width, img.height, img.format or ""
            img.draft("L", (64, 64))  # JPEG: decode at the smallest scale still >= 64 px
            grey = img.convert("L")
    except _READ_ERRORS:
        return None
    thumb = grey.resize((9, 8), Image.Resampling.BOX)
    px = thumb.tobytes()
    bits = 0
    for row in range(8):
        for col in range(8):
            bits = (bits << 1) | (px[row * 9 + col] < px[row * 9 + col + 1])
    small = grey.resize((32, 32), Image.Resampling.BOX)
    spread = ImageStat.Stat(small).stddev[0]
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    return Fingerprint(
        str(path),
        split,
        label,
        digest,
        bits,
        width,
        height,
        fmt,
        spread,
        bool(objects),
        small.tobytes(),
    )


def fingerprint_all(items: Sequence[tuple]) -> list[Fingerprint]:
    """fingerprint(*item) for many images in threads (Pillow releases the GIL while decoding)."""
    if len(items) < 64:
        found = [fingerprint(*item) for item in items]
    else:
        with ThreadPoolExecutor(max_workers=8) as pool:
            found = list(pool.map(lambda item: fingerprint(*item), items, chunksize=16))
    return [f for f in found if f is not None]


def split_items(splits: DatasetSplits) -> list[tuple]:
    """(path, split, label, has objects) of every sample, in every split the dataset has."""
    items = []
    for split in SPLIT_ORDER:
        for s in getattr(splits, split, None) or []:
            if splits.task == "classification":
                items.append((s.path, split, splits.classes[s.label], True))
            else:
                items.append((s.path, split, None, len(s.labels) > 0))
    return items


def check_splits(splits: DatasetSplits, problems: Problems) -> None:
    """Add every cross-file problem of a dataset that was read, and what it ignored."""
    prints = fingerprint_all(split_items(splits))
    check_leakage(prints, problems)
    check_duplicates(prints, problems)
    check_placeholders(prints, problems)
    check_balance(splits, problems)
    for entry in getattr(splits, "ignored", None) or []:
        file, reason = _ignored_entry(entry)
        problems.add(file, f"ignored: {reason}", "ignored", INFO)


def check_loose_files(root: Path, problems: Problems, limit: int = 20000) -> None:
    """What can still be said of a dataset whose layout could not be read: every image file
    under `root` that cannot be opened, duplicates and placeholders."""
    if not root.is_dir() or not data_roots.is_inside(root):
        return  # nothing is read outside the data roots, not even to list what is broken
    files = list_images(root)[:limit]
    outside = set(data_roots.outside_roots(files))  # a symlink out of the root is not followed
    files = [p for p in files if p not in outside]
    for path, size in zip(files, probe_images(files)):
        if isinstance(size, Exception):
            problems.add(path, f"cannot be read: {size.reason}", "unreadable")
    prints = fingerprint_all([(p, "all") for p in files])
    check_duplicates(prints, problems)
    check_placeholders(prints, problems)


def check_leakage(prints: Sequence[Fingerprint], problems: Problems) -> None:
    """The same image in two splits: same bytes, or the same picture resized or re-encoded."""
    groups = _group(prints, _same_bytes_pairs(prints) + _similar_pairs(prints))
    for group in groups:
        splits = {p.split for p in group}
        if len(splits) < 2:
            continue
        same = len({p.digest for p in group}) == 1
        how = "identical files" if same else "the same picture (resized or re-encoded)"
        ordered = sorted(group, key=lambda p: (_split_rank(p.split), p.path))
        names = _names(problems, ordered, with_split=True)
        problems.add(
            ordered[0].path,
            f"leakage: {how} in {' and '.join(_ordered(splits))}: {names}; test metrics will be "
            "too good, keep one copy in one split",
            "leakage",
        )


def check_duplicates(prints: Sequence[Fingerprint], problems: Problems) -> None:
    """Byte-identical files within one split (counted twice; with two labels, contradictory)."""
    by_key: dict[tuple[str, str], list[Fingerprint]] = defaultdict(list)
    for p in prints:
        by_key[(p.split, p.digest)].append(p)
    for (split, _), group in by_key.items():
        if len(group) < 2:
            continue
        group = sorted(group, key=lambda p: p.path)
        labels = sorted({p.label for p in group if p.label is not None})
        where = f" in {split}" if split != "all" else ""
        clash = f" with different labels ({', '.join(labels)})" if len(labels) > 1 else ""
        problems.add(
            group[0].path,
            f"duplicate: {len(group)} identical files{where}{clash}: {_names(problems, group)}",
            "duplicate",
        )


def check_placeholders(prints: Sequence[Fingerprint], problems: Problems) -> None:
    """Images that are not pictures of anything: tiny, one flat colour, a GIF among photos."""
    formats = Counter(p.format for p in prints)
    main_format = formats.most_common(1)[0][0] if formats else ""
    for p in prints:
        reasons = []
        if min(p.width, p.height) < TINY_SIDE:
            reasons.append(f"only {p.width}x{p.height} px")
        # A flat background image is fine in detection; a flat image said to show something is not.
        if p.spread < FLAT_SPREAD and p.has_objects:
            reasons.append("one flat colour")
        if p.format == "GIF" and main_format != "GIF":
            reasons.append(f"a GIF among {main_format} images, as 'not found' pictures often are")
        if reasons:
            where = f" (class {p.label})" if p.label is not None else ""
            problems.add(
                p.path,
                f"placeholder-like image{where}: {', '.join(reasons)}; remove it if it is not "
                "a real example",
                "placeholder",
            )


def check_balance(splits: DatasetSplits, problems: Problems) -> None:
    """Class imbalance in train, and classes absent from a split that has images."""
    counts = splits.counts or {}
    what = "boxes" if splits.task == "detection" else "images"
    per_class = counts.get(f"{what}_per_class") or {}
    train = {c: n.get("train", 0) for c, n in per_class.items()}
    present = {c: n for c, n in train.items() if n > 0}
    if len(present) >= 2:
        big = max(present, key=present.get)
        small = min(present, key=present.get)
        ratio = present[big] / present[small]
        if ratio > IMBALANCE_RATIO:
            problems.add(
                splits.root,
                f"class imbalance: {big!r} has {present[big]} training {what}, {small!r} "
                f"{present[small]} ({ratio:.0f} to 1, above {IMBALANCE_RATIO}); the model will "
                "favour the large class: add examples of the small one, or watch its recall",
                "imbalance",
            )
    split_sizes = counts.get("images") or {}
    for split in SPLIT_ORDER[1:]:
        if not split_sizes.get(split):
            continue
        missing = [c for c, n in per_class.items() if n.get(split, 0) == 0 and train.get(c)]
        if missing:
            problems.add(
                splits.root,
                f"class(es) with no {what} in {split}: {', '.join(map(repr, missing))}; their "
                f"{split} metric cannot be measured",
                "empty_class",
            )


# -- helpers -------------------------------------------------------------------------------


def _same_bytes_pairs(prints: Sequence[Fingerprint]) -> list[tuple[int, int]]:
    first: dict[str, int] = {}
    pairs = []
    for i, p in enumerate(prints):
        if p.digest in first:
            pairs.append((first[p.digest], i))
        else:
            first[p.digest] = i
    return pairs


def _similar_pairs(prints: Sequence[Fingerprint]) -> list[tuple[int, int]]:
    """Pairs in different splits whose hashes differ in at most HASH_DISTANCE bits.

    Comparing every pair is quadratic; two hashes that close agree exactly on at least one of
    eight 8-bit bands, so only images sharing a band are compared.
    """
    if len({p.split for p in prints}) < 2:
        return []
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, p in enumerate(prints):
        if p.spread < FLAT_SPREAD:  # flat images all hash alike; they are placeholders anyway
            continue
        for band in range(_BANDS):
            buckets[(band, (p.dhash >> (8 * band)) & 0xFF)].append(i)
    pairs = set()
    for members in buckets.values():
        if len(members) < 2 or len(members) > _MAX_BUCKET:
            continue
        for k, i in enumerate(members):
            for j in members[k + 1 :]:
                a, b = prints[i], prints[j]
                if a.split == b.split or (i, j) in pairs:
                    continue
                if (
                    bin(a.dhash ^ b.dhash).count("1") <= HASH_DISTANCE
                    and _same_shape(a, b)
                    and _correlation(a.thumb, b.thumb) >= SAME_PICTURE
                ):
                    pairs.add((i, j))
    return sorted(pairs)


def _same_shape(a: Fingerprint, b: Fingerprint) -> bool:
    """Resizing keeps the aspect ratio (within rounding); a crop or another photo does not."""
    return abs(a.width * b.height - b.width * a.height) <= 0.05 * a.width * b.height


def _correlation(a: bytes, b: bytes) -> float:
    x = np.frombuffer(a, np.uint8).astype(np.float64)
    y = np.frombuffer(b, np.uint8).astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    scale = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / scale) if scale else 0.0


def _group(prints: Sequence[Fingerprint], pairs: Iterable[tuple[int, int]]) -> list[list]:
    parent = list(range(len(prints)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        parent[root(i)] = root(j)
    groups: dict[int, list[Fingerprint]] = defaultdict(list)
    for i in {i for pair in pairs for i in pair}:
        groups[root(i)].append(prints[i])
    return list(groups.values())


def _names(problems: Problems, group: Sequence[Fingerprint], with_split: bool = False) -> str:
    shown = [problems.rel(p.path) + (f" ({p.split})" if with_split else "") for p in group[:_SHOWN]]
    more = len(group) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def _split_rank(split: str) -> int:
    return SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER)


def _ordered(splits: set[str]) -> list[str]:
    return sorted(splits, key=_split_rank)


def _ignored_entry(entry) -> tuple[str, str]:
    """An ignored file as the reader listed it: a path, or {"file", "reason"}."""
    if isinstance(entry, dict):
        file = entry.get("file") or entry.get("path") or ""
        return str(file), str(
            entry.get("reason") or entry.get("message") or "not part of the layout"
        )
    return str(entry), "not part of the dataset layout"
