"""Whole-run time: VisionBoard against timm's own train.py, same settings, same sitting.

Both train efficientnet_b0 from scratch at 64 px, batch 16, Adam 1e-3, warmup over the first
epoch, then the LR halved every epoch, 5 epochs, channels-last, on a generated folder of JPEG
"photos" (245 train + 60 val, 4 classes of shapes on textured noise, median side ~430 px, a few
up to 2,600 px, quality 90) with the same number of loader workers. Each side keeps its own
defaults for everything else (augmentation, evaluation each epoch, checkpoints). The runs
alternate (VisionBoard, timm, VisionBoard, timm, ...) so a busy machine slows both alike.

- VisionBoard runs as a user runs it: `visionboard train --set ...` (queue, worker,
  trainer), timed from the command's start to its exit.
- timm runs as its README says: `python train.py --data-dir ...`, timed from start to exit.

It prints each round's seconds and the ratio timm / VisionBoard, then the medians (target
>= 1.10), VisionBoard's launch to first step counted from the command (target <= 8 s on CPU),
and where VisionBoard's time went (summary["timings"]: submit, launch, data check, image
cache, model; per epoch train, evaluate, checkpoint, model save; exit). With --levers, one
more VisionBoard run per lever turned off alone (draft decode, image cache, both, data-check
cache) says what each is worth.

    .venv/bin/python bench/bench_vs_timm.py --timm-dir /work/ext/timm [--rounds 2]
        [--epochs 5] [--workers 2] [--data DIR] [--levers]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ("circle", "square", "triangle", "cross")
COLOURS = ((210, 60, 50), (50, 170, 70), (60, 80, 200), (220, 200, 60))


# -- the data -------------------------------------------------------------------------------


def photo_sizes(count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """(width, height) like a phone/web photo folder: median side ~430 px, 2% up to 2,600 px."""
    sizes = []
    for i in range(count):
        if i % 50 == 7:  # a few camera originals
            long = int(rng.integers(1800, 2601))
        else:
            long = int(np.clip(rng.lognormal(np.log(470), 0.3), 200, 1200))
        short = int(long * rng.choice((0.75, 0.66, 1.0)))
        sizes.append((long, short) if rng.random() < 0.6 else (short, long))
    return sizes


def write_photo(path: Path, size: tuple[int, int], label: int, rng: np.random.Generator) -> None:
    """A shape of the class (random place, scale, colour jitter) on smooth textured noise."""
    width, height = size
    coarse = rng.integers(40, 200, (max(2, height // 32), max(2, width // 32), 3), np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
    fine = rng.integers(-20, 21, (height, width, 3))
    img = Image.fromarray(np.clip(np.asarray(img, np.int16) + fine, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    side = min(width, height)
    r = int(side * rng.uniform(0.15, 0.35))
    cx, cy = int(rng.integers(r, width - r)), int(rng.integers(r, height - r))
    colour = tuple(int(np.clip(c + rng.integers(-30, 31), 0, 255)) for c in COLOURS[label])
    shape = CLASSES[label]
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        w = max(2, r // 3)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(0.8))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=90)


def write_photos(root: Path, train: int = 245, val: int = 60, seed: int = 0) -> Path:
    """root/{train,val}/<class>/<n>.jpg, the layout both trainers read."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for i, size in enumerate(photo_sizes(count, rng)):
            label = i % len(CLASSES)
            write_photo(root / split / CLASSES[label] / f"{split}{i:04d}.jpg", size, label, rng)
    return root


def describe_photos(root: Path) -> str:
    sides = []
    for path in root.rglob("*.jpg"):
        with Image.open(path) as img:
            sides += list(img.size)
    counts = {s: len(list((root / s).rglob("*.jpg"))) for s in ("train", "val")}
    return (
        f"{counts['train']} train / {counts['val']} val JPEGs, median side "
        f"{statistics.median(sides):.0f} px, largest {max(sides)} px"
    )


# -- the two runs ---------------------------------------------------------------------------

# Each key the same setting on both sides (timm's flags in timm_command).
SETTINGS = {
    "model": "efficientnet_b0",
    "pretrained": "false",
    "image_size": "64",
    "batch_size": "16",
    "optimizer": "adam",
    "lr": "0.001",
    "warmup": "true",
    "lr_schedule": "step",
    "step_size": "1",
    "lr_gamma": "0.5",
    "channels_last": "true",
    "early_stopping": "false",
    "metric": "accuracy",
    "device": "cpu",
}


def visionboard_run(
    data: Path, epochs: int, workers: int, extra: dict[str, str], env_extra: dict[str, str]
) -> dict:
    """`visionboard train` as a user types it; its wall time, the run's summary and where the
    time went (summary["timings"], plus what the trainer cannot see: before the launch, after
    the trainer's end)."""
    with tempfile.TemporaryDirectory() as home:
        sets = {**SETTINGS, "dataset": str(data), "epochs": str(epochs)}
        sets |= {"num_workers": str(workers), **extra}
        cmd = [sys.executable, "-m", "engine.cli", "--home", home, "train"]
        for key, value in sets.items():
            cmd += ["--set", f"{key}={value}"]
        env = dict(os.environ, VISIONBOARD_SAMPLES="0", **env_extra)
        start = time.time()
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        end = time.time()
        if result.returncode != 0:
            log = next(Path(home).glob("*/train.log"), None)
            tail = log.read_text()[-3000:] if log else ""
            sys.exit(f"VisionBoard run failed:\n{result.stdout}\n{result.stderr}\n{tail}")
        show = subprocess.run(
            [sys.executable, "-m", "engine.cli", "--home", home, "runs", "show", "1", "--json"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        summary = json.loads(show.stdout)["summary"]
    timings = summary["timings"]
    launched = timings.get("launched_at") or start
    return {
        "seconds": end - start,
        "top1": (summary.get("last_metrics") or {}).get("test_accuracy"),
        "timings": timings,
        "submit": launched - start,  # the command's check and queueing, the worker's start
        "exit": end - launched - timings["total"],  # trainer's end to the command's exit
        "first_step": launched - start + timings["launch_to_first_step"],
    }


def timm_command(timm_dir: Path, data: Path, out: Path, epochs: int, workers: int) -> list[str]:
    return [
        sys.executable, str(timm_dir / "train.py"), "--data-dir", str(data),
        "--train-split", "train", "--val-split", "val", "--num-classes", str(len(CLASSES)),
        "--model", "efficientnet_b0", "--img-size", "64", "-b", "16", "--opt", "adam",
        "--lr", "0.001", "--sched", "step", "--decay-epochs", "1", "--decay-rate", "0.5",
        "--warmup-epochs", "1", "--epochs", str(epochs), "--channels-last",
        "-j", str(workers), "--output", str(out), "--device", "cpu",
    ]  # fmt: skip


def timm_run(timm_dir: Path, data: Path, epochs: int, workers: int) -> dict:
    """timm's train.py as its README runs it (from its checkout); wall time and top-1."""
    with tempfile.TemporaryDirectory() as out:
        cmd = timm_command(timm_dir, data, Path(out), epochs, workers)
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
        start = time.time()
        result = subprocess.run(cmd, cwd=timm_dir, capture_output=True, text=True, env=env)
        seconds = time.time() - start
        if result.returncode != 0:
            sys.exit(f"timm run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    text = result.stdout + result.stderr
    found = re.findall(r"Acc@1:\s+\S+\s+\(\s*([\d.]+)\)", text)
    return {"seconds": seconds, "top1": float(found[-1]) / 100 if found else None}


def breakdown(vb: dict) -> list[str]:
    """Where one VisionBoard run's time went, line by line."""
    t = vb["timings"]
    epochs = t["epochs"]

    def per_epoch(key: str) -> str:
        return " ".join(f"{e.get(key, 0.0):.2f}" for e in epochs)

    lines = [
        f"  submit (check, queue, worker start)   {vb['submit']:6.2f} s",
        f"  launch (interpreter, imports)         {t.get('launch', 0.0):6.2f} s",
        f"  data check                            {t.get('data_check', 0.0):6.2f} s",
        f"  image cache fill                      {t.get('image_cache', 0.0):6.2f} s",
        f"  model and loaders                     {t.get('model', 0.0):6.2f} s",
        f"  launch to first step                  {vb['first_step']:6.2f} s (from the command)",
        f"  per epoch train                       {per_epoch('train')} s",
        f"  per epoch evaluate                    {per_epoch('evaluate')} s",
        f"  per epoch checkpoint                  {per_epoch('checkpoint')} s",
        f"  per epoch model save (when best)      {per_epoch('save')} s",
        f"  per epoch metric log                  {per_epoch('log')} s",
        f"  exit (trainer end to command exit)    {vb['exit']:6.2f} s",
    ]
    return lines


# Each lever turned off alone, on top of the defaults.
LEVERS = {
    "no draft decode (full-size JPEG decode)": ({}, {"VISIONBOARD_DRAFT_DECODE": "0"}),
    "no image cache (cache_images=off)": ({"cache_images": "off"}, {}),
    "neither draft decode nor image cache": (
        {"cache_images": "off"},
        {"VISIONBOARD_DRAFT_DECODE": "0"},
    ),
    "no data-check cache": ({}, {"VISIONBOARD_PROBE_CACHE": "0"}),
    "a host sync every step": ({}, {"VISIONBOARD_STEP_SYNC": "1"}),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--timm-dir", type=Path, required=True, help="a checkout of timm")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="loader workers, both sides")
    parser.add_argument("--data", type=Path, help="photo folder to reuse (written when empty)")
    parser.add_argument("--levers", action="store_true", help="one run per lever turned off")
    args = parser.parse_args()
    if not (args.timm_dir / "train.py").is_file():
        sys.exit(f"--timm-dir {args.timm_dir}: no train.py there (expected a checkout of timm)")
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp) / "photos"
        if not data.exists() or not any(data.iterdir()):
            write_photos(data)
        # The photos lie outside any data directory: their folder is made a data root, as an
        # admin would (engine/data_roots.py), for the runs this bench starts.
        listed = os.environ.get("VISIONBOARD_DATA_ROOTS")
        os.environ["VISIONBOARD_DATA_ROOTS"] = os.pathsep.join(filter(None, [listed, str(data)]))
        print(f"{describe_photos(data)}; {os.cpu_count()} CPU(s)", flush=True)
        rounds = []
        for n in range(1, args.rounds + 1):
            vb = visionboard_run(data, args.epochs, args.workers, {}, {})
            tm = timm_run(args.timm_dir, data, args.epochs, args.workers)
            rounds.append((vb, tm))
            print(
                f"round {n}: visionboard {vb['seconds']:6.1f} s (top-1 {vb['top1']:.3f}), "
                f"timm train.py {tm['seconds']:6.1f} s (top-1 {tm['top1'] or float('nan'):.3f}), "
                f"timm / visionboard {tm['seconds'] / vb['seconds']:.2f}",
                flush=True,
            )
        vb_med = statistics.median(vb["seconds"] for vb, _ in rounds)
        tm_med = statistics.median(tm["seconds"] for _, tm in rounds)
        first = statistics.median(vb["first_step"] for vb, _ in rounds)
        print(f"whole run, median   visionboard {vb_med:.1f} s, timm train.py {tm_med:.1f} s")
        print(f"timm / visionboard  {tm_med / vb_med:.2f} (target >= 1.10)")
        print(f"launch to first step (visionboard, median)  {first:.1f} s (target <= 8 s)")
        fastest = min((vb for vb, _ in rounds), key=lambda vb: vb["seconds"])
        print("where visionboard's time went (its fastest round):")
        print("\n".join(breakdown(fastest)), flush=True)
        if args.levers:
            print("levers (one run each, the lever alone changed; compare with the rounds):")
            for name, (keys, env) in LEVERS.items():
                vb = visionboard_run(data, args.epochs, args.workers, keys, env)
                trains = [e["train"] for e in vb["timings"]["epochs"]]
                print(
                    f"  {name:<52} {vb['seconds']:6.1f} s, train/epoch "
                    f"{statistics.mean(trains):.2f} s, data check "
                    f"{vb['timings'].get('data_check', 0):.2f} s",
                    flush=True,
                )


if __name__ == "__main__":
    main()
