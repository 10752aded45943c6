"""Reading image files: RGB, EXIF orientation applied, whatever Pillow can open.

`probe_images` checks many files at once (header, size, PNG checksums, JPEGs decoded at 1/8
scale) without fully decoding them, so a dataset of thousands of images is inspected in
seconds; a file that passes the probe but fails to decode later still raises an `ImageError`
naming it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.data.errors import ImageError
from engine.data.probe_cache import cached_probes

Image.init()  # registers every plugin, so EXTENSIONS lists all Pillow can open
IMAGE_EXTENSIONS = frozenset(
    ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN
)
_EXIF_ORIENTATION = 0x0112
# Developer switch for bench/bench_vs_timm.py, which measures what each lever is worth.
DRAFT_ENV = "VISIONBOARD_DRAFT_DECODE"  # "0": decode every JPEG at full size
DRAFT_MARGIN = 2  # decode at least this many times the input size: the resize still averages
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder` (recursively), hidden files and folders left out, sorted."""
    found = [
        p
        for p in folder.rglob("*")
        if p.is_file()
        and is_image_file(p)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(found, key=lambda p: natural_key(p.as_posix()))


def natural_key(text: str) -> list:
    """Sort key that puts "img2" before "img10" and "9" before "10"."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(text))]


def to_rgb(img: Image.Image) -> Image.Image:
    """Grayscale, palette, 16-bit, CMYK and transparent images → plain RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float scans: Pillow's convert would clip everything above 255 to white.
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if arr.max() > 255 else 255.0
        arr = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels show the white page they are usually drawn on.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def run_decode_size(cfg, image_size: int) -> int | None:
    """The side under which no JPEG of a classification run (a RunConfig) is decoded, in
    training, evaluation and prediction alike (read_image): twice the input size, or more
    where a random crop may keep a small share of the image, so the crop, once resized, is
    still made of averaged pixels."""
    if os.environ.get(DRAFT_ENV) == "0":
        return None
    share = cfg.crop_min_ratio if cfg.augment_crop else 1.0
    return math.ceil(image_size * max(DRAFT_MARGIN, 1 / math.sqrt(share)))


def read_image(path: str | Path, decode_size: int | None = None) -> Image.Image:
    """The image at `path` (or an open file) in RGB with its EXIF orientation applied;
    ImageError naming the file if unreadable.

    With `decode_size`, a JPEG is decoded at 1/2, 1/4 or 1/8 scale where both sides stay at
    least that many pixels (Pillow's draft mode: the decoder skips the detail instead of
    decoding it and resizing it away): several times faster for photos read to train at 64 px.
    """
    name = getattr(path, "name", path)  # an upload: its file name, not the object's repr
    try:
        with Image.open(path) as img:
            if decode_size:
                img.draft(img.mode, (decode_size, decode_size))  # JPEG only; others: no-op
            img.load()
            oriented = ImageOps.exif_transpose(img)
            return to_rgb(oriented if oriented is not None else img)
    except FileNotFoundError as exc:
        raise ImageError(name, "file not found") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(
            name, "cannot read image (not an image, or a format Pillow cannot read)"
        ) from exc
    except _READ_ERRORS as exc:
        raise ImageError(name, f"cannot read image ({exc})") from exc


def decoded_size(path: str | Path, decode_size: int | None = None) -> tuple[int, int]:
    """(width, height) that read_image(path, decode_size) decodes, before EXIF orientation,
    from the file's header alone."""
    with Image.open(path) as img:
        if decode_size:
            img.draft(img.mode, (decode_size, decode_size))
        return img.size


def probe_image(path: str | Path) -> tuple[int, int]:
    """(width, height) after EXIF orientation, checking the file without decoding all pixels."""
    try:
        with Image.open(path) as img:
            img.verify()  # must come right after open, and leaves the image unusable: reopen
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):
                width, height = height, width  # these orientations turn the image by 90 degrees
            if img.format == "JPEG":
                # verify() checks nothing in a JPEG; decoding at 1/8 scale is cheap and still
                # catches truncated files, the usual broken download.
                img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
        return width, height
    except FileNotFoundError as exc:
        raise ImageError(path, "file not found") from exc
    except _READ_ERRORS as exc:
        raise ImageError(path, f"cannot read image ({exc})") from exc


def probe_images(paths: Iterable[Path]) -> list[tuple[int, int] | ImageError]:
    """probe_image for many files in parallel threads (Pillow releases the GIL on file reads);
    files probed before and unchanged since are answered from the data directory's cache,
    within engine.data.probe_cache.using(home)."""
    return cached_probes(list(paths), _probe_all)


def _probe_all(paths: list) -> list[tuple[int, int] | ImageError]:
    def probe(path):
        try:
            return probe_image(path)
        except ImageError as exc:
            return exc

    if len(paths) < 64:
        return [probe(p) for p in paths]
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(probe, paths, chunksize=32))
