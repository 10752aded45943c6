"""The speed levers of issue #12, by their behaviour (bench/bench_vs_timm.py measures them):
JPEGs decoded at reduced size, the in-memory image cache, the data check's probe cache, and the
short cuts that keep torch and timm out of `visionboard train` before the launch."""

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
from engine.data import ClassificationDataset, build_transform, probe_cache
from engine.data import images as images_module
from engine.data.errors import ImageError
from engine.data.image_cache import ImageCache, estimate_bytes, plan_cache
from engine.data.images import decoded_size, probe_images, read_image
from engine.data.records import ClassSample
from engine.tasks import Indexed, decode_size
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
    assert decode_size(cfg(augment_crop=False), SIZE) == 2 * SIZE
    assert decode_size(cfg(augment_crop=True, crop_min_ratio=0.75), SIZE) == 2 * SIZE
    assert decode_size(cfg(augment_crop=True, crop_min_ratio=0.0625), SIZE) == 4 * SIZE


def test_draft_decode_can_be_switched_off_for_the_bench(monkeypatch):
    monkeypatch.setenv("VISIONBOARD_DRAFT_DECODE", "0")
    assert decode_size(cfg(), SIZE) is None


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
    cached = ClassificationTask(cfg(num_workers=2), splits, model_input)
    assert "6 of 6 images" in cached.cache_images(processes=1)
    assert cached.loader_workers() == 0
    assert cached.loaders(1)["train"].num_workers == 0
    uncached = ClassificationTask(cfg(num_workers=2, cache_images="off"), splits, model_input)
    assert "read from their files" in uncached.cache_images(processes=1)
    assert uncached.loader_workers() == 2
