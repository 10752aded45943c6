"""The data roots: the only folders whose files VisionBoard reads for its users.

A dataset path, an image path that a CSV row names, every annotation or metadata file a reader
opens and an image picked on the server from the Predict page must lie inside one: the datasets
folder of the data directory (`<home>/datasets`, where the sample datasets and uploads are) or
a folder the admin lists in $VISIONBOARD_DATA_ROOTS (several separated by os.pathsep, ":" on
Linux). Not the data directory itself: it holds visionboard.db (password and session hashes)
and every user's run folders. The dashboard, the CLI and the store follow the same rule: the
admin adds a root, nobody names a path around it.

Paths are checked once os.path.realpath has resolved them, so a symlink that leads out of a
root is outside (one inside a root that points inside is fine). Nothing is URL-decoded here:
"%2e%2e" is a file name, never "..". A refused path gets the same message whether it exists
or not, so an error never tells what the server holds outside the roots.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from engine.home import home_dir

ENV = "VISIONBOARD_DATA_ROOTS"
HOME_ENV = "VISIONBOARD_HOME"  # engine.home.home_dir's default data directory


class PathRefused(ValueError):
    """A path that is missing or outside the data roots: one message for both."""


DATASETS = "datasets"


def datasets_dir(home: str | Path | None = None) -> Path:
    """`<home>/datasets`: the data directory's root, where sample and uploaded datasets live
    (created, so its real path is known before the first dataset is written)."""
    folder = home_dir(home) / DATASETS
    folder.mkdir(exist_ok=True)
    return folder


def data_roots(home: str | Path | None = None) -> tuple[Path, ...]:
    """The real paths of the roots: `<home>/datasets`, then each folder of $VISIONBOARD_DATA_ROOTS."""
    # Every file a reader opens is checked against the roots (100 000 label files: 100 000
    # checks), so they are found once per data directory and list, not once per file. The key
    # holds all they depend on: another home, $VISIONBOARD_HOME, list or working directory (for
    # a relative home) finds them again, and so creates <home>/datasets as before.
    where = str(home or os.environ.get(HOME_ENV) or "")
    cwd = "" if os.path.isabs(where) else os.getcwd()  # a relative home: relative to it
    key = (where, cwd, os.environ.get(ENV, ""))
    roots = _found_roots.get(key)
    if roots is None:
        if len(_found_roots) >= 16:
            _found_roots.clear()
        roots = _found_roots[key] = _real_roots(str(datasets_dir(home)), os.environ.get(ENV, ""))
    return roots


_found_roots: dict[tuple[str, str, str], tuple[Path, ...]] = {}


@functools.lru_cache(maxsize=16)
def _real_roots(datasets: str, listed: str) -> tuple[Path, ...]:
    # Cached: a CSV of 100 000 rows checks every row against the same few roots.
    roots: list[Path] = []
    for raw in [datasets, *listed.split(os.pathsep)]:
        if raw.strip():
            real = Path(os.path.realpath(os.path.expanduser(raw.strip())))
            if real not in roots:
                roots.append(real)
    return tuple(roots)


def describe_roots(roots: Sequence[Path]) -> str:
    return ", ".join(str(r) for r in roots)


def real_path(path: str | Path) -> str | None:
    """`path` with `~`, `..` and every symlink resolved; None for a name no file can have."""
    try:
        return os.path.realpath(os.path.expanduser(str(path)))
    except (ValueError, OSError):  # an embedded NUL byte, a symlink loop
        return None


def is_inside(path: str | Path, roots: Sequence[Path] | None = None) -> bool:
    """Whether `path` (symlinks resolved) lies in one of `roots` (default: data_roots())."""
    real = real_path(path)
    return real is not None and _real_inside(real, data_roots() if roots is None else roots)


def _real_inside(real: str, roots: Sequence[Path]) -> bool:
    """is_inside for a path already resolved (resolving it again walks it again)."""
    for root in roots:
        base = str(root).rstrip(os.sep)
        if real == str(root) or real.startswith(base + os.sep):
            return True
    return False


def exists_inside(path: str | Path) -> bool:
    """Whether `path` is inside the roots and exists: asked in that order, so a reader's "not
    found" never tells whether a file outside the roots exists."""
    return is_inside(path) and Path(path).exists()


def refusal(value: str | Path, roots: Sequence[Path], what: str = "files") -> str:
    """The one message for a path that is missing or outside the roots."""
    return (
        f"{str(value)!r} does not exist inside the data roots ({describe_roots(roots)}); "
        f"{what} must lie in one of them (the admin adds folders to {ENV})"
    )


def confine(
    path: str | Path,
    home: str | Path | None = None,
    what: str = "files",
    roots: Sequence[Path] | None = None,
) -> Path:
    """The real path of `path` when it exists inside a data root; PathRefused otherwise,
    with the same message whether it exists or not. `home` is the data directory (default:
    $VISIONBOARD_HOME, else ./runs)."""
    roots = data_roots(home) if roots is None else roots
    value = str(path).strip()
    real = real_path(value) if value else None
    if real is None or not _real_inside(real, roots) or not os.path.exists(real):
        raise PathRefused(refusal(value, roots, what))
    return Path(real)


def open_inside(path: str | Path, mode: str = "r", **kwargs: Any) -> IO:
    """`open(path, mode)` once its real path is known to lie in a root: every reader and
    sniffer opens a dataset's files through this, so an annotation file, class list or CSV that
    is a symlink out of the roots is refused (PathRefused, the one message) and never read."""
    return open(confine(path), mode, **kwargs)  # noqa: SIM115 - the caller closes it


def read_text_inside(path: str | Path, encoding: str = "utf-8", errors: str | None = None) -> str:
    """The text of `path`, read through open_inside."""
    with open_inside(path, encoding=encoding, errors=errors) as fh:
        return fh.read()


def outside_roots(
    paths: Iterable[str | Path], roots: Sequence[Path] | None = None
) -> list[str | Path]:
    """The entries of `paths` that lead outside the roots (a symlink out, a `..` too many)."""
    roots = data_roots() if roots is None else roots
    return [p for p in paths if not is_inside(p, roots)]
