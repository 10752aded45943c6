"""What the image probe learnt of each file, kept in the data directory between runs.

Reading a dataset probes every image (engine.data.images.probe_images: header, checksums, a
JPEG decoded at 1/8 scale), and it is read at each submit and again by the trainer: for a
dataset of thousands of photos that is seconds, each time, for an answer that changes only
when a file does. Within `using(home)`, probe_images answers from
`<home>/cache/probes-<folder>.json` for every file whose path, size, modification and change
times and inode are the ones recorded (the dataset's fingerprint, file by file), probes only
the others, and records what it found. A file that changes, appears or goes is probed again;
a probe that failed on the operating system (permission, I/O) is not recorded, only what the
file's content says (its size, or that it is not a readable image). Splits that share a folder
share the file, each adding its own entries. A cache that cannot be read or written, or an
entry that is not as written here, is only a cache (the probe runs as without one).
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from engine.data.errors import ImageError

ENV = "VISIONBOARD_PROBE_CACHE"  # "0": no cache (bench/bench_vs_timm.py measures it)
FOLDER = "cache"  # under the data directory
MAX_ENTRIES = 500_000  # per file: past it, only the latest call's entries are kept
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
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns]


_STAMP_LEN = 4


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _from_entry(path, entry, stamp: list[int]) -> Probe | None:
    """The recorded probe if `entry` is well formed and stamped `stamp`, else None (a miss)."""
    if not isinstance(entry, list) or entry[:_STAMP_LEN] != stamp:
        return None
    value = entry[_STAMP_LEN:]
    if len(value) == 1 and isinstance(value[0], str):
        return ImageError(path, value[0])
    if len(value) == 2 and all(_is_int(v) for v in value):
        return value[0], value[1]
    return None


def _lasting(result: Probe) -> bool:
    """Whether a probe says something about the file's content, worth recording: not a failure
    of the operating system (permission, I/O: errno set), which may be gone at the next look."""
    if not isinstance(result, ImageError):
        return True
    cause = result.__cause__
    return not (isinstance(cause, OSError) and cause.errno is not None)


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
        fd, tmp = tempfile.mkstemp(prefix=f"{file.name}.", suffix=".tmp", dir=file.parent)
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(entries, out)
        os.replace(tmp, file)  # a reader never sees half a file
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _merged(entries: dict, fresh: dict, keys: list[str]) -> dict:
    """The recorded entries with this call's `fresh` ones: other calls' entries (another split
    in the same folder) are kept while their file exists; past MAX_ENTRIES only this call's."""
    probed = set(keys)
    kept = {k: v for k, v in entries.items() if k not in probed and os.path.exists(k)}
    kept.update((k, entries[k]) for k in keys if k in entries)
    kept.update(fresh)
    if len(kept) > MAX_ENTRIES:
        kept = {k: kept[k] for k in keys if k in kept}
    return kept


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
        hit = None if stamp is None else _from_entry(paths[i], entries.get(key), stamp)
        if hit is not None:
            found[i] = hit
    todo = [i for i in range(len(keys)) if i not in found]
    if not todo:
        return [found[i] for i in range(len(keys))]
    fresh = {}
    for i, result in zip(todo, probe([paths[i] for i in todo])):
        found[i] = result
        if stamps[i] is not None and _lasting(result):
            value = [result.reason] if isinstance(result, ImageError) else list(result)
            fresh[keys[i]] = stamps[i] + value
        else:
            entries.pop(keys[i], None)
    _write(file, _merged(entries, fresh, keys))
    return [found[i] for i in range(len(keys))]
