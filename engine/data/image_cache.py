"""Decoded images kept in memory, so a small dataset is decoded once per run, not once per epoch.

What is kept is the decoded image at the reduced size training reads it (engine.data.images,
`decode_size`), before any random transform: a cached sample goes through the same
augmentation as one read from its file, with identical pixels. The cache holds at most
`budget` bytes and refuses an image beyond it (that one is read from its file each time).

The trainer fills it in its main process before the loaders start (threads decode in
parallel: Pillow releases the GIL), so loader workers forked afterwards share it
copy-on-write instead of each decoding and keeping its own copy.
`cache_images`: `auto` caches a split only where the whole split fits the budget (estimated
from a sample of headers, then enforced image by image), `on` caches up to the budget, `off`
never. The budget is a quarter of the memory available when the run starts (the machine's, or
its container's cgroup limit less its usage where lower), shared by the run's processes on the
machine (each keeps its own cache).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from engine.data.images import decoded_size

MEMORY_SHARE = 0.25  # of the memory available at the start, for all of a machine's caches
ESTIMATE_SAMPLE = 200  # image headers read to estimate a split's bytes
BYTES_PER_PIXEL = 3  # RGB, 8 bits
CGROUP_ROOT = Path("/sys/fs/cgroup")  # the process's memory limit in a container (cgroup_room)
NO_LIMIT = 1 << 60  # a cgroup v1 limit at or above this means none (it writes ~2**63)


class ImageCache:
    """file path → its decoded RGB image, up to `budget` bytes in all (one cache for every
    split of a run)."""

    def __init__(self, budget: int):
        self.budget = int(budget)
        self.used = 0
        self.arrays: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.arrays)

    def __contains__(self, path: str) -> bool:
        return str(path) in self.arrays

    def get(self, path: str) -> Image.Image | None:
        array = self.arrays.get(str(path))
        return None if array is None else Image.fromarray(array, "RGB")

    def put(self, path: str, image: Image.Image) -> bool:
        """Keep `image` (RGB) for `path`; False, keeping nothing, when it would go over the
        budget."""
        if str(path) in self.arrays:
            return True
        need = image.width * image.height * BYTES_PER_PIXEL
        if self.used + need > self.budget:
            return False
        self.arrays[str(path)] = np.asarray(image, dtype=np.uint8)
        self.used += need
        return True

    def fill(self, paths: Sequence[str], read: Callable[[str], Image.Image], threads=4) -> int:
        """Read the images not kept yet and keep what fits; returns how many are kept. An
        image that cannot be read is left to the loader, which names it."""

        def load(path: str) -> Image.Image | None:
            try:
                return read(path)
            except Exception:
                return None

        todo = list(dict.fromkeys(str(p) for p in paths if p not in self))
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            # In chunks, so a budget reached early stops the decoding too.
            for start in range(0, len(todo), 64):
                chunk = todo[start : start + 64]
                for path, image in zip(chunk, pool.map(load, chunk)):
                    if image is not None and not self.put(path, image):
                        return len(self)
        return len(self)


def available_memory() -> int:
    """Bytes of memory available to new allocations: the machine's (Linux: MemAvailable, else
    the total), or less where the process's cgroup (a container) allows less."""
    memory = _machine_memory()
    room = cgroup_room()
    return memory if room is None else min(memory, room)


def _machine_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _read_bytes(path: Path) -> int | None:
    """The number in a cgroup file; None where it is missing, "max" or absurdly large (cgroup
    v1 writes a huge number for "no limit")."""
    try:
        value = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return value if 0 <= value < NO_LIMIT else None


def cgroup_room(root: Path | None = None) -> int | None:
    """Bytes the cgroup at `root` (default CGROUP_ROOT) still lets this process allocate:
    its limit less its usage (cgroup v2 memory.max / memory.current, v1 memory.limit_in_bytes /
    memory.usage_in_bytes); None where no limit is set or readable."""
    root = Path(CGROUP_ROOT if root is None else root)
    for limit, usage in (
        (root / "memory.max", root / "memory.current"),
        (root / "memory" / "memory.limit_in_bytes", root / "memory" / "memory.usage_in_bytes"),
    ):
        cap = _read_bytes(limit)
        if cap is not None:
            return max(0, cap - (_read_bytes(usage) or 0))
    return None


def processes_here(total: int) -> int:
    """The run's processes on this machine, of `total` on every machine: the local world size
    torchrun (under `accelerate launch`) sets, else `total`."""
    try:
        return max(1, int(os.environ["LOCAL_WORLD_SIZE"]))
    except (KeyError, ValueError):
        return max(1, total)


def cache_budget(processes: int = 1, memory: int | None = None) -> int:
    """Bytes one process's caches may hold: MEMORY_SHARE of the available memory, shared by
    the `processes` of the run on this machine."""
    memory = available_memory() if memory is None else memory
    return int(memory * MEMORY_SHARE) // max(1, processes)


def estimate_bytes(paths: Sequence[str], decode_size: int | None, seed: int = 0) -> int:
    """The bytes a split's decoded images take, from the headers of a sample of them."""
    if not paths:
        return 0
    sample = list(paths)
    if len(sample) > ESTIMATE_SAMPLE:
        sample = random.Random(seed).sample(sample, ESTIMATE_SAMPLE)
    total = 0
    for path in sample:
        try:
            width, height = decoded_size(path, decode_size)
        except Exception:
            continue  # unreadable: the loader names it
        total += width * height * BYTES_PER_PIXEL
    return int(total * len(paths) / len(sample))


def plan_cache(mode: str, needed: int, budget: int) -> int | None:
    """The budget of a split's cache under `cache_images` = mode, or None for no cache."""
    if mode == "off" or budget <= 0:
        return None
    if mode == "auto" and needed > budget:
        return None
    return budget
