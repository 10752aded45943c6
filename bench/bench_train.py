"""Training throughput: the engine against a bare PyTorch loop, measured in the same run.

efficientnet_b0 at 64 px on a generated image folder, same model, data, batch and loader
settings. The engine runs for real (`visionboard train` → worker → trainer); its
images/s is the train-epoch throughput it records in the summary (last epoch, so start-up and
first-epoch warm-up are excluded, as for the bare loop). Target: engine / bare >= 0.95.
On a GPU (`--device cuda`) each side also reports its peak device memory, and `--precision`
runs both under the same mixed precision (autocast, plus a grad scaler for fp16, as
accelerate does). With `--processes 2` only the engine runs (the bare loop is one process).
One line per figure; bench/gpu_check.sh runs the GPU rows.

    .venv/bin/python bench/bench_train.py [--images 800] [--epochs 3] [--batch 32]
        [--device cpu|cuda] [--precision no|fp16|bf16] [--processes N] [--workers N] [--data DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.config import RunConfig  # noqa: E402
from engine.data import ClassificationDataset, build_transform, load_splits  # noqa: E402

CLASSES = 4
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def write_folder(root: Path, images: int, size: int = 64) -> Path:
    """Shapes of a class-specific colour and kind on noise: learnable, cheap to make."""
    rng = np.random.default_rng(0)
    for i in range(images):
        label = i % CLASSES
        noise = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
        img = Image.fromarray(noise)
        draw = ImageDraw.Draw(img)
        x, y = rng.integers(4, size // 2, 2)
        box = [int(x), int(y), int(x + size // 3), int(y + size // 3)]
        colour = [(220, 40, 40), (40, 220, 40), (40, 40, 220), (220, 220, 40)][label]
        (draw.ellipse if label % 2 else draw.rectangle)(box, fill=colour)
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i}.png")
    return root


class DeviceMemory:
    """Peak device memory used above what was in use when it started, summed over the GPUs,
    sampled from nvidia-smi: the same measure for the bare loop (this process) and the engine
    (its trainer processes), CUDA contexts included. None where nvidia-smi is missing."""

    def __init__(self, every: float = 0.1):
        self.every, self.peak, self.idle = every, None, None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    @staticmethod
    def used() -> list[int] | None:
        if shutil.which("nvidia-smi") is None:
            return None
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True, text=True,
        )  # fmt: skip
        try:
            return [int(line) for line in out.stdout.split()]
        except ValueError:
            return None

    def sample(self) -> None:
        while not self.stop.wait(self.every):
            used = self.used()
            if used is not None:
                above = sum(max(0, u - i) for u, i in zip(used, self.idle))
                self.peak = max(self.peak or 0, above)

    def __enter__(self) -> DeviceMemory:
        self.idle = self.used()
        if self.idle is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


def bare_loop(
    data: Path,
    epochs: int,
    batch: int,
    channels_last: bool,
    device: str = "cpu",
    precision: str = "no",
    workers: int = 0,
) -> float:
    """The baseline: timm model, DataLoader, Adam, cross entropy; on a GPU, autocast and (fp16)
    a grad scaler; nothing else. Loader settings and training transform (the form's default
    augmentation) as the engine's (engine/tasks.py)."""
    torch.manual_seed(0)
    cfg = RunConfig.from_dict({"dataset": str(data), "model": "efficientnet_b0", "image_size": 64})
    splits = load_splits(data, "classification", "auto", 0.2, 0)
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=CLASSES)
    cfg_in = model.pretrained_cfg
    # The engine's training transform with the form's default augmentation, as the engine
    # run below uses: both sides do the same work per image.
    transform = build_transform(cfg, True, 64, cfg_in["mean"], cfg_in["std"])
    loader = DataLoader(
        ClassificationDataset(splits.train, transform),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device == "cuda",
    )
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")

    def autocast():
        if precision not in DTYPES:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device, dtype=DTYPES[precision])

    model.train()
    rate = 0.0
    for _ in range(epochs):
        start, seen = time.perf_counter(), 0
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast():
                loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            seen += len(labels)
        if device == "cuda":
            torch.cuda.synchronize()  # the epoch ends when the GPU is done, not when queued
        rate = seen / (time.perf_counter() - start)
    return rate


def engine_run(
    data: Path,
    epochs: int,
    batch: int,
    device: str = "cpu",
    precision: str = "no",
    processes: int = 1,
    workers: int = 0,
) -> float:
    """Queue and follow one run as a user would; its last epoch's images/s from the summary."""
    with tempfile.TemporaryDirectory() as home:
        sets = [
            f"dataset={data}", "model=efficientnet_b0", "pretrained=false", "image_size=64",
            f"batch_size={batch}", f"epochs={epochs}", f"num_workers={workers}",
            "early_stopping=false", f"device={device}", "metric=accuracy",
            "cache_images=off",  # each image decoded every epoch, as in the bare loop
            f"mixed_precision={precision}", f"num_processes={processes}",
        ]  # fmt: skip
        cmd = [sys.executable, "-m", "engine.cli", "--home", home, "train"]
        for item in sets:
            cmd += ["--set", item]
        env = dict(os.environ, VISIONBOARD_SAMPLES="0")
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            log = next(Path(home).glob("*/train.log"), None)
            tail = log.read_text()[-3000:] if log else ""
            sys.exit(f"engine run failed:\n{result.stdout}\n{result.stderr}\n{tail}")
        show = subprocess.run(
            [sys.executable, "-m", "engine.cli", "--home", home, "runs", "show", "1", "--json"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return json.loads(show.stdout)["summary"]["images_per_second"]


def print_figure(tag: str, figure: str, value: float | None, unit: str = "") -> None:
    """One line per figure: `<setting>  <figure>  <value> <unit>` (gpu_check.sh greps them)."""
    shown = "n/a (no nvidia-smi)" if value is None else f"{value:.2f} {unit}".rstrip()
    print(f"{tag:<16} {figure:<36} {shown}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("no", *DTYPES), default="no")
    parser.add_argument("--processes", type=int, default=1, help="engine processes (GPUs)")
    parser.add_argument("--workers", type=int, default=0, help="data-loading workers, both sides")
    parser.add_argument("--data", type=Path, help="image folder to reuse (written when empty)")
    args = parser.parse_args()
    if args.device == "cuda" and torch.cuda.device_count() < args.processes:
        sys.exit(f"--device cuda --processes {args.processes}: {torch.cuda.device_count()} GPU(s)")
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp) / "shapes"
        if not data.exists() or not any(data.iterdir()):
            write_folder(data, args.images)
        # The bench's images lie outside any data directory: make their folder a data root,
        # as an admin would (engine/data_roots.py), for this process and the runs it starts.
        listed = os.environ.get("VISIONBOARD_DATA_ROOTS")
        os.environ["VISIONBOARD_DATA_ROOTS"] = os.pathsep.join(filter(None, [listed, str(data)]))
        if args.device == "cpu":
            run_on_cpu(args, data)
        else:
            run_on_gpu(args, data)


def run_on_cpu(args, data: Path) -> None:
    bare = bare_loop(data, args.epochs, args.batch, channels_last=False, workers=args.workers)
    bare_cl = bare_loop(data, args.epochs, args.batch, channels_last=True, workers=args.workers)
    engine = engine_run(
        data, args.epochs, args.batch, processes=args.processes, workers=args.workers
    )
    tag = f"cpu {args.processes}proc"
    print(f"efficientnet_b0, 64 px, batch {args.batch}, {torch.get_num_threads()} threads, CPU")
    print_figure(tag, "bare loop (NCHW)", bare, "img/s")
    print_figure(tag, "bare loop (channels_last)", bare_cl, "img/s")
    print_figure(tag, "engine", engine, "img/s")
    print_figure(tag, "engine / bare NCHW", engine / bare)
    # The engine trains channels-last by default (config key channels_last): the like-for-like
    # baseline, and the target.
    print_figure(tag, "engine / bare channels_last (target >= 0.95)", engine / bare_cl)


def run_on_gpu(args, data: Path) -> None:
    # The engine first: this process must not hold a CUDA context while the engine's
    # memory is sampled (the bare loop's own context then counts in its figure, as the
    # trainer's does in the engine's).
    precision = "fp32" if args.precision == "no" else args.precision
    tag = f"cuda {precision} {args.processes}gpu"
    with DeviceMemory() as engine_memory:
        engine = engine_run(
            data, args.epochs, args.batch, "cuda", args.precision, args.processes, args.workers
        )
    print_figure(tag, "engine throughput", engine, "img/s")
    print_figure(tag, "engine peak memory", engine_memory.peak, "MiB")
    if args.processes > 1:
        return  # the bare loop is one process on one GPU
    with DeviceMemory() as bare_memory:
        # channels_last as the engine's default (config key channels_last = true)
        bare = bare_loop(data, args.epochs, args.batch, True, "cuda", args.precision, args.workers)
    print_figure(tag, "bare loop throughput", bare, "img/s")
    print_figure(tag, "bare loop peak memory", bare_memory.peak, "MiB")
    print_figure(tag, "bare loop allocator peak", torch.cuda.max_memory_allocated() / 2**20, "MiB")
    print_figure(tag, "engine / bare throughput", engine / bare)


if __name__ == "__main__":
    main()
