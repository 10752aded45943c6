"""The speed levers of issue #12, by their behaviour (bench/bench_vs_timm.py measures them):
JPEGs decoded at reduced size, the in-memory image cache, the data check's probe cache, and the
short cuts that keep torch and timm out of `visionboard train` before the launch."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from engine import choices
from engine.architectures import model_family
from engine.config import RunConfig
from engine.data import ClassificationDataset, build_transform, image_cache, probe_cache
from engine.data import images as images_module
from engine.data.errors import ImageError
from engine.data.image_cache import ImageCache, estimate_bytes, plan_cache
from engine.data.images import decoded_size, probe_images, read_image, run_decode_size
from engine.data.records import ClassSample
from engine.tasks import Indexed
from engine.worker import Job, Worker

ROOT = Path(__file__).resolve().parent.parent
SIZE = 64
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def write_photo(path, width, height, seed=0):
    """A smooth picture with a shape on it, as a JPEG: what a photo folder holds."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(30, 220, (max(2, height // 40), max(2, width // 40), 3), np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    ImageDraw.Draw(img).ellipse([width // 4, height // 4, width // 2, height // 2], "red")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=90)
    return path


@pytest.fixture
def photos(tmp_path):
    sizes = [(900, 600), (640, 480), (480, 640), (1600, 1200), (300, 200), (50, 40)]
    return [
        ClassSample(str(write_photo(tmp_path / f"c{i % 2}" / f"{i}.jpg", w, h, i)), i % 2)
        for i, (w, h) in enumerate(sizes)
    ]


def cfg(**keys):
    return RunConfig.from_dict({"dataset": "x", "image_size": SIZE, **keys})


# -- draft decode ---------------------------------------------------------------------------


def test_a_jpeg_is_decoded_at_reduced_size_but_never_under_the_size_asked(photos):
    for sample in photos:
        full = read_image(sample.path)
        small = read_image(sample.path, 2 * SIZE)
        assert decoded_size(sample.path, 2 * SIZE) == small.size
        assert min(small.size) >= min(2 * SIZE, *full.size)
        if min(full.size) >= 4 * SIZE:  # room for at least a halving
            assert small.width <= full.width // 2 and small.height <= full.height // 2
        assert small.mode == "RGB"


def test_draft_decoded_samples_match_full_decoded_ones(photos):
    transform = build_transform(cfg(), False, SIZE, MEAN, STD)
    full = ClassificationDataset(photos, transform)
    draft = ClassificationDataset(photos, transform, decode_size=2 * SIZE)
    for i in range(len(photos)):
        (a, label_a), (b, label_b) = full[i], draft[i]
        assert label_a == label_b and a.shape == b.shape == (3, SIZE, SIZE)
        # Normalised with std 0.25: 0.04 is 1 % of the [0, 1] range on average.
        assert (a - b).abs().mean() < 0.04, i


def test_decode_size_is_twice_the_input_or_more_for_small_crops():
    assert run_decode_size(cfg(augment_crop=False), SIZE) == 2 * SIZE
    assert run_decode_size(cfg(augment_crop=True, crop_min_ratio=0.75), SIZE) == 2 * SIZE
    assert run_decode_size(cfg(augment_crop=True, crop_min_ratio=0.0625), SIZE) == 4 * SIZE


def test_draft_decode_can_be_switched_off_for_the_bench(monkeypatch):
    monkeypatch.setenv("VISIONBOARD_DRAFT_DECODE", "0")
    assert run_decode_size(cfg(), SIZE) is None


# -- the image cache ------------------------------------------------------------------------


def augmented_samples(dataset, epoch=3):
    indexed = Indexed(dataset, seed=7)
    indexed.set_epoch(epoch)
    return [indexed[i] for i in range(len(dataset))]


def test_cached_samples_are_the_same_pixels_with_random_augmentation(photos):
    keys = {"augment_crop": True, "augment_color": True, "augment_hflip": True}
    transform = build_transform(cfg(**keys), True, SIZE, MEAN, STD)
    plain = ClassificationDataset(photos, transform, decode_size=2 * SIZE)
    cache = ImageCache(budget=1 << 30)
    assert cache.fill([s.path for s in photos], lambda p: read_image(p, 2 * SIZE)) == len(photos)
    cached = ClassificationDataset(photos, transform, decode_size=2 * SIZE, cache=cache)
    for (i, a, label_a), (j, b, label_b) in zip(
        augmented_samples(plain), augmented_samples(cached)
    ):
        assert (i, label_a) == (j, label_b)
        assert torch.equal(a, b)
    # Another epoch draws other augmentations, from the same cached pixels.
    other = augmented_samples(cached, epoch=4)
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(augmented_samples(cached), other))


def test_the_cache_refuses_what_would_exceed_its_budget(photos):
    paths = [s.path for s in photos]
    sizes = [decoded_size(p, 2 * SIZE) for p in paths]
    one = sizes[0][0] * sizes[0][1] * 3
    cache = ImageCache(budget=one + 10)
    assert cache.put(paths[0], read_image(paths[0], 2 * SIZE))
    assert not cache.put(paths[1], read_image(paths[1], 2 * SIZE))
    assert len(cache) == 1 and cache.used == one <= cache.budget
    assert paths[1] not in cache and cache.get(paths[1]) is None

    small = ImageCache(budget=3 * one)
    kept = small.fill(paths, lambda p: read_image(p, 2 * SIZE))
    assert 0 < kept < len(paths) and small.used <= small.budget
    # A sample the cache could not keep is read from its file, the same image.
    dataset = ClassificationDataset(photos, None, decode_size=2 * SIZE, cache=small)
    for i, path in enumerate(paths):
        assert torch.equal(
            dataset[i][0],
            ClassificationDataset(photos, None, decode_size=2 * SIZE)[i][0],
        ), path


def test_auto_caches_only_what_fits_whole_and_on_caches_up_to_the_budget(photos):
    paths = [s.path for s in photos]
    needed = estimate_bytes(paths, 2 * SIZE)
    exact = sum(w * h * 3 for w, h in (decoded_size(p, 2 * SIZE) for p in paths))
    assert needed == exact  # a sample of every file: the estimate is the sum
    assert plan_cache("auto", needed, needed) == needed
    assert plan_cache("auto", needed, needed - 1) is None
    assert plan_cache("on", needed, needed - 1) == needed - 1
    assert plan_cache("off", needed, 10 * needed) is None
    assert RunConfig.from_dict({"dataset": "x"}).cache_images == "auto"
    assert set(choices.IMAGE_CACHE) == {"auto", "on", "off"}


def test_the_cache_budget_stays_within_the_containers_cgroup_limit(tmp_path, monkeypatch):
    assert image_cache.available_memory() > 64 << 20  # this machine's, or its container's
    monkeypatch.setattr(image_cache, "CGROUP_ROOT", tmp_path)
    machine = 1 << 30
    monkeypatch.setattr(image_cache, "_machine_memory", lambda: machine)  # MemAvailable moves
    assert image_cache.available_memory() == machine  # no cgroup files: the machine's memory
    (tmp_path / "memory.max").write_text("max\n")  # v2 without a limit
    (tmp_path / "memory.current").write_text(f"{10 << 20}\n")
    assert image_cache.available_memory() == machine
    (tmp_path / "memory.max").write_text(f"{64 << 20}\n")  # v2: limit less usage
    assert image_cache.available_memory() == 54 << 20
    assert image_cache.cache_budget(processes=2) == (54 << 20) // 4 // 2
    (tmp_path / "memory.max").unlink()
    v1 = tmp_path / "memory"
    v1.mkdir()
    (v1 / "memory.limit_in_bytes").write_text(f"{2**63 - 4096}\n")  # v1 without a limit
    (v1 / "memory.usage_in_bytes").write_text(f"{8 << 20}\n")
    assert image_cache.available_memory() == machine
    (v1 / "memory.limit_in_bytes").write_text(f"{32 << 20}\n")
    assert image_cache.available_memory() == 24 << 20


def test_the_budget_is_shared_by_the_processes_on_this_machine_only(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert image_cache.processes_here(4) == 4  # no launcher said: all of them, the safe side
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # 2 machines of 2 processes each
    assert image_cache.processes_here(4) == 2


# -- the data check's probe cache -----------------------------------------------------------


def test_probes_are_cached_until_a_file_changes(tmp_path, monkeypatch):
    files = [write_photo(tmp_path / "data" / f"{i}.jpg", 120 + i, 80) for i in range(4)]
    broken = tmp_path / "data" / "broken.jpg"
    broken.write_bytes(b"not a picture")
    paths = [*files, broken]
    probed = []
    probe_all = images_module._probe_all

    def counting(batch):
        probed.append(len(batch))
        return probe_all(batch)

    monkeypatch.setattr(images_module, "_probe_all", counting)
    home = tmp_path / "home"
    with probe_cache.using(home):
        first = probe_images(paths)
        again = probe_images(paths)
    assert probed == [5]  # the second look probed nothing
    assert first[:4] == again[:4] == [(120 + i, 80) for i in range(4)]
    assert isinstance(again[4], ImageError) and again[4].reason == first[4].reason

    write_photo(files[2], 333, 99)  # the file changes: size and time
    with probe_cache.using(home):
        changed = probe_images(paths)
    assert probed == [5, 1] and changed[2] == (333, 99)
    assert changed[:2] == first[:2]

    probe_images(paths)  # outside `using`: no cache
    assert probed == [5, 1, 5]
    monkeypatch.setenv("VISIONBOARD_PROBE_CACHE", "0")
    with probe_cache.using(home):
        probe_images(paths)
    assert probed == [5, 1, 5, 5]


def _counting_probes(monkeypatch, fail=()):
    """Counts what _probe_all is asked; paths in `fail` fail as the OS refusing to read them."""
    probed = []
    probe_all = images_module._probe_all

    def counting(batch):
        probed.append(len(batch))
        out = []
        for path, result in zip(batch, probe_all(batch)):
            if str(path) in fail:
                try:
                    raise ImageError(path, "cannot read image") from PermissionError(13, "denied")
                except ImageError as exc:
                    result = exc
            out.append(result)
        return out

    monkeypatch.setattr(images_module, "_probe_all", counting)
    return probed


def test_a_probe_the_os_refused_is_not_cached_and_a_replaced_file_is_probed(tmp_path, monkeypatch):
    files = [write_photo(tmp_path / "data" / f"{i}.jpg", 60 + i, 40) for i in range(3)]
    fail = {str(files[1])}
    probed = _counting_probes(monkeypatch, fail)
    home = tmp_path / "home"
    with probe_cache.using(home):
        assert isinstance(probe_images(files)[1], ImageError)
        fail.clear()  # the permission is back
        assert probe_images(files)[1] == (61, 40)
    assert probed == [3, 1]

    # Same size and times, another file (inode): probed again.
    other = tmp_path / "other.jpg"
    write_photo(other, 60, 40, seed=5)
    stat = files[0].stat()
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(other, files[0])
    with probe_cache.using(home):
        probe_images(files)
    assert probed == [3, 1, 1]


def test_splits_sharing_a_folder_keep_each_others_probes(tmp_path, monkeypatch):
    files = [write_photo(tmp_path / "data" / f"{i}.jpg", 60 + i, 40) for i in range(4)]
    train, val = files[:2], files[2:]
    probed = _counting_probes(monkeypatch)
    home = tmp_path / "home"
    with probe_cache.using(home):
        probe_images(train)
        probe_images(val)
        probe_images(train)
        probe_images(val)
    assert probed == [2, 2]
    files[3].unlink()  # a file gone is forgotten at the next write
    new = write_photo(tmp_path / "data" / "new.jpg", 50, 40)
    with probe_cache.using(home):
        probe_images([*train, new])
    assert probed == [2, 2, 1]
    (cache,) = (home / "cache").glob("probes-*.json")
    assert sorted(json.loads(cache.read_text())) == sorted(str(f) for f in [*files[:3], new])
    assert not list((home / "cache").glob("*.tmp"))


def test_a_malformed_probe_cache_is_a_miss(tmp_path, monkeypatch):
    files = [write_photo(tmp_path / "data" / f"{i}.jpg", 60 + i, 40) for i in range(3)]
    probed = _counting_probes(monkeypatch)
    home = tmp_path / "home"
    with probe_cache.using(home):
        probe_images(files)
    (cache,) = (home / "cache").glob("probes-*.json")
    entries = json.loads(cache.read_text())
    stamp = entries[str(files[0])][:4]
    entries[str(files[0])] = stamp  # no result
    entries[str(files[1])] = [*stamp[:2]]  # the old, shorter form
    entries[str(files[2])] = [*entries[str(files[2])][:4], "62", 40]  # a width as text
    cache.write_text(json.dumps(entries))
    with probe_cache.using(home):
        assert probe_images(files) == [(60, 40), (61, 40), (62, 40)]
    cache.write_text("{not json")
    with probe_cache.using(home):
        assert probe_images(files) == [(60, 40), (61, 40), (62, 40)]
    assert probed == [3, 3, 3]


# -- before the launch ----------------------------------------------------------------------


def test_listed_classifiers_are_timm_models_so_the_check_need_not_import_timm():
    import timm

    for name in choices.get_task("classification").models:
        assert model_family(name) == "timm" and timm.is_model(name)


def test_submitting_a_listed_model_on_a_cpu_machine_imports_neither_torch_nor_timm():
    code = (
        "import sys\n"
        "from engine.architectures import model_family\n"
        "from engine.launch import gpu_count\n"
        "assert model_family('efficientnet_b0') == 'timm'\n"
        "gpu_count()\n"
        "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))\n"
    )
    env = {"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_worker_sees_a_launcher_exit_before_its_poll_is_over(tmp_path):
    worker = Worker(tmp_path / "home", poll=30.0)
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    worker.jobs[1] = Job(1, process, [], None)
    start = time.monotonic()
    worker.wait_poll()
    assert time.monotonic() - start < 15  # far less than the 30 s poll
    assert process.poll() is not None
    process.wait()


def test_a_run_whose_images_are_all_cached_loads_them_without_workers(photos):
    from engine.data.records import DatasetSplits
    from engine.tasks import ClassificationTask

    splits = DatasetSplits("classification", "", Path(), ["c0", "c1"])
    splits.train, splits.test = photos[:4], photos[4:]
    model_input = {"image_size": SIZE, "mean": MEAN, "std": STD}
    cached = ClassificationTask(cfg(num_workers=2, device="cpu"), splits, model_input)
    assert "6 of 6 images" in cached.cache_images(processes=1)
    assert cached.loader_workers() == 0
    assert cached.loaders(1)["train"].num_workers == 0
    off = cfg(num_workers=2, device="cpu", cache_images="off")
    uncached = ClassificationTask(off, splits, model_input)
    assert "read from their files" in uncached.cache_images(processes=1)
    assert uncached.loader_workers() == 2


def test_a_cached_run_on_a_gpu_keeps_its_loader_workers(photos, monkeypatch):
    from engine.data.records import DatasetSplits
    from engine.tasks import ClassificationTask

    splits = DatasetSplits("classification", "", Path(), ["c0", "c1"])
    splits.train, splits.test = photos[:4], photos[4:]
    model_input = {"image_size": SIZE, "mean": MEAN, "std": STD}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # device=auto trains on it
    task = ClassificationTask(cfg(num_workers=2, device="auto"), splits, model_input)
    assert "6 of 6 images" in task.cache_images(processes=1)
    assert task.loader_workers() == 2
