"""The data roots: the only folders whose files VisionBoard reads for its users.

A dataset path, an image path that a CSV row names and an image picked on the server from the
Predict page must lie inside one: the data directory (where the sample datasets are) or a
folder the admin lists in $VISIONBOARD_DATA_ROOTS (several separated by os.pathsep, ":" on
Linux). The dashboard and the CLI follow the same rule: the admin adds a root, nobody names a
path around it.

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

ENV = "VISIONBOARD_DATA_ROOTS"


class PathRefused(ValueError):
    """A path that is missing or outside the data roots: one message for both."""


def data_roots(home: str | Path | None = None) -> tuple[Path, ...]:
    """The real paths of the roots: the data directory, then each folder of $VISIONBOARD_DATA_ROOTS."""
    from engine.store import home_dir

    return _real_roots(str(home_dir(home)), os.environ.get(ENV, ""))


@functools.lru_cache(maxsize=16)
def _real_roots(home: str, listed: str) -> tuple[Path, ...]:
    # Cached: a CSV of 100 000 rows checks every row against the same few roots.
    roots: list[Path] = []
    for raw in [home, *listed.split(os.pathsep)]:
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
    if real is None:
        return False
    for root in data_roots() if roots is None else roots:
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
    if real is None or not is_inside(real, roots) or not os.path.exists(real):
        raise PathRefused(refusal(value, roots, what))
    return Path(real)


def outside_roots(
    paths: Iterable[str | Path], roots: Sequence[Path] | None = None
) -> list[str | Path]:
    """The entries of `paths` that lead outside the roots (a symlink out, a `..` too many)."""
    roots = data_roots() if roots is None else roots
    return [p for p in paths if not is_inside(p, roots)]
