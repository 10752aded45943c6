"""Training throughput: the engine against a bare PyTorch loop, measured in the same run.

efficientnet_b0 at 64 px on a generated image folder, same model, data, batch and loader
settings. The engine runs for real (`visionboard train` → worker → `accelerate launch`); its
images/s is the train-epoch throughput it records in the summary (last epoch, so start-up and
first-epoch warm-up are excluded, as for the bare loop). Target: engine / bare >= 0.95.

    .venv/bin/python bench/bench_train.py [--images 320] [--epochs 3] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
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


def bare_loop(data: Path, epochs: int, batch: int, channels_last: bool) -> float:
    """The baseline: timm model, DataLoader, Adam, cross entropy; nothing else."""
    torch.manual_seed(0)
    cfg = RunConfig.from_dict({"dataset": str(data), "model": "efficientnet_b0", "image_size": 64})
    splits = load_splits(data, "classification", "auto", 0.2, 0)
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=CLASSES)
    cfg_in = model.pretrained_cfg
    transform = build_transform(cfg, False, 64, cfg_in["mean"], cfg_in["std"])
    loader = DataLoader(
        ClassificationDataset(splits.train, transform),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    rate = 0.0
    for _ in range(epochs):
        start, seen = time.perf_counter(), 0
        for images, labels in loader:
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(labels)
        rate = seen / (time.perf_counter() - start)
    return rate


def engine_run(data: Path, epochs: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as home:
        sets = [
            f"dataset={data}", "model=efficientnet_b0", "pretrained=false", "image_size=64",
            f"batch_size={batch}", f"epochs={epochs}", "num_workers=0", "early_stopping=false",
            "device=cpu", "metric=accuracy",
        ]  # fmt: skip
        cmd = [sys.executable, "-m", "engine.cli", "--home", home, "train"]
        for item in sets:
            cmd += ["--set", item]
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"engine run failed:\n{result.stdout}\n{result.stderr}")
        show = subprocess.run(
            [sys.executable, "-m", "engine.cli", "--home", home, "runs", "show", "1", "--json"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return json.loads(show.stdout)["summary"]["images_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_folder(Path(tmp) / "shapes", args.images)
        bare = bare_loop(data, args.epochs, args.batch, channels_last=False)
        bare_cl = bare_loop(data, args.epochs, args.batch, channels_last=True)
        engine = engine_run(data, args.epochs, args.batch)
    print(f"efficientnet_b0, 64 px, batch {args.batch}, {torch.get_num_threads()} threads, CPU")
    print(f"bare loop (NCHW)          {bare:8.1f} img/s")
    print(f"bare loop (channels_last) {bare_cl:8.1f} img/s")
    print(f"engine (accelerate)       {engine:8.1f} img/s")
    print(f"ratio engine / bare NCHW          {engine / bare:.2f}  (target >= 0.95)")
    print(f"ratio engine / bare channels_last {engine / bare_cl:.2f}")


if __name__ == "__main__":
    main()
