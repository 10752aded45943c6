"""What the image probe learnt of each file, kept in the data directory between runs.

Reading a dataset probes every image (engine.data.images.probe_images: header, checksums, a
JPEG decoded at 1/8 scale), and it is read at each submit and again by the trainer: for a
dataset of thousands of photos that is seconds, each time, for an answer that changes only
when a file does. Within `using(home)`, probe_images answers from
`<home>/cache/probes-<folder>.json` for every file whose path, size and modification time
are the ones recorded (the dataset's fingerprint, file by file), probes only the others, and
records what it found. A file that changes, appears or goes is probed again; a cache that
cannot be read or written is only a cache (the probe runs as without one).
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from engine.data.errors import ImageError

ENV = "VISIONBOARD_PROBE_CACHE"  # "0": no cache (bench/bench_vs_timm.py measures it)
FOLDER = "cache"  # under the data directory
_current: contextvars.ContextVar[Path | None] = contextvars.ContextVar("probe_cache", default=None)

Probe = tuple[int, int] | ImageError


@contextmanager
def using(home: str | Path | None) -> Iterator[None]:
    """Probes within the block use the cache in `home` (None, or ENV=0: no cache)."""
    folder = Path(home) / FOLDER if home and os.environ.get(ENV) != "0" else None
    token = _current.set(folder)
    try:
        yield
    finally:
        _current.reset(token)


def _stamp(path: str) -> list[int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _file_for(folder: Path, paths: Sequence[str]) -> Path:
    """One file per dataset: named by the folder that holds all the probed images."""
    try:
        common = os.path.commonpath([os.path.abspath(p) for p in paths])
    except ValueError:  # paths on different drives
        common = ""
    return folder / f"probes-{hashlib.sha1(common.encode()).hexdigest()[:16]}.json"


def _read(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(file: Path, entries: dict) -> None:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries))
        tmp.replace(file)  # a reader never sees half a file
    except OSError:
        pass


def cached_probes(paths: Sequence, probe: Callable[[list[str]], list[Probe]]) -> list[Probe]:
    """probe(paths), answered from the cache in use where the files are unchanged."""
    folder = _current.get()
    if folder is None or not paths:
        return probe(list(paths))
    keys = [os.path.abspath(p) for p in paths]
    file = _file_for(folder, keys)
    entries = _read(file)
    stamps = [_stamp(k) for k in keys]
    found: dict[int, Probe] = {}
    for i, (key, stamp) in enumerate(zip(keys, stamps)):
        entry = entries.get(key)
        if stamp is None or not isinstance(entry, list) or entry[:2] != stamp:
            continue
        found[i] = ImageError(paths[i], entry[2]) if len(entry) == 3 else (entry[2], entry[3])
    todo = [i for i in range(len(keys)) if i not in found]
    if not todo:
        return [found[i] for i in range(len(keys))]
    for i, result in zip(todo, probe([paths[i] for i in todo])):
        found[i] = result
        if stamps[i] is not None:
            value = [result.reason] if isinstance(result, ImageError) else list(result)
            entries[keys[i]] = stamps[i] + value
    _write(file, {k: entries[k] for k in keys if k in entries})  # files gone are forgotten
    return [found[i] for i in range(len(keys))]
