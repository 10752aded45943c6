"""Whole-run time: a VisionBoard Faster R-CNN run against torchvision's detection reference.

torchvision's `references/detection/train.py` (from a checkout given by path; pytorch/vision's
history up to commit acccf86 is in chanwutk/vision_references) and VisionBoard both train
fasterrcnn_resnet50_fpn from scratch (no weights, no backbone weights) on the same generated
COCO set (digits on 128 px canvases, written in COCO's own layout: train2017/, val2017/,
annotations/instances_{train,val}2017.json), at min_size 128, batch 2, SGD lr 0.0025 (the
reference's 0.02 for 16 images a step, scaled to 2: at 0.01 it diverged here) momentum 0.9,
weight decay 1e-4 with the reference's first-epoch warmup, horizontal flips, the same epochs
and loader workers, on the CPU. The reference has no flag for the input size: it runs through
a few lines here that give torchvision's model builder min_size=128, nothing else.

The runs alternate (VisionBoard, reference, ...). It prints each side's seconds (VisionBoard:
`visionboard train` from the command to its exit; the reference: its process start to exit),
the ratio reference / VisionBoard (target >= 1.10) and both mAP@[.5:.95] and mAP@.5 on
val2017 (the reference's COCO evaluation, VisionBoard's own), which should be in the same
ballpark. One class by default (`--classes`, digits 0..N-1): from scratch a one-class set leaves
an mAP of zero within the first epoch, where ten classes need far more epochs than a CPU bench
can give.

    .venv/bin/python bench/bench_detection_vs_torchvision.py \
        --references /work/ext/vision_references/references/detection \
        [--rounds 1] [--epochs 3] [--train 48] [--val 16] [--classes 1] [--workers 2]
        [--lr 0.0025]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.sample_datasets import coco_annotation, compose_canvases  # noqa: E402

CLASSES = ["0"]  # --classes sets them
MIN_SIZE = 128
SETTINGS = {
    "task": "detection",
    "model": "fasterrcnn_resnet50_fpn",
    "pretrained": "false",
    "min_size": str(MIN_SIZE),
    "batch_size": "2",
    "optimizer": "sgd",
    "momentum": "0.9",
    "weight_decay": "0.0001",
    "warmup": "true",
    "lr_schedule": "step",
    "step_size": "100",  # the reference's first cut comes at epoch 16
    "augment_hflip": "true",
    "early_stopping": "false",
    "metric": "map",
    "device": "cpu",
}
# torchvision's reference, with the model builder given the input size it has no flag for.
REFERENCE_RUNNER = """
import runpy, sys
import torchvision
build = torchvision.models.get_model
torchvision.models.get_model = lambda *a, **k: build(*a, min_size={min_size}, **k)
sys.path.insert(0, {folder!r})
sys.argv = [{script!r}] + {args!r}
runpy.run_path({script!r}, run_name="__main__")
"""


def write_coco_set(root: Path, train: int, val: int) -> Path:
    """COCO's own layout, which the reference reads and VisionBoard detects."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count, seed in (("train", train, 0), ("val", val, 1)):
        folder = root / f"{split}2017"
        folder.mkdir(parents=True, exist_ok=True)
        coco: dict = {
            "images": [],
            "annotations": [],
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)],
        }
        canvases = compose_canvases(count, canvas=MIN_SIZE, classes=range(len(CLASSES)), seed=seed)
        for image_id, (image, boxes, labels) in enumerate(canvases, 1):
            name = f"{split}{image_id:04d}.jpg"
            image.convert("RGB").save(folder / name, quality=90)
            coco["images"].append(
                {"id": image_id, "file_name": name, "width": image.width, "height": image.height}
            )
            for box, label in zip(boxes.tolist(), labels.tolist()):
                x1, y1, x2, y2 = box
                annotation = coco_annotation(len(coco["annotations"]) + 1, image_id, box, label)
                # The reference's COCO reader wants one: the box as a polygon.
                annotation["segmentation"] = [[x1, y1, x2, y1, x2, y2, x1, y2]]
                coco["annotations"].append(annotation)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(coco))
    return root


def visionboard_run(data: Path, epochs: int, workers: int, lr: float) -> dict:
    with tempfile.TemporaryDirectory() as home:
        sets = {**SETTINGS, "dataset": str(data), "epochs": str(epochs), "lr": str(lr)}
        sets["num_workers"] = str(workers)
        cmd = [sys.executable, "-m", "engine.cli", "--home", home, "train"]
        for key, value in sets.items():
            cmd += ["--set", f"{key}={value}"]
        env = dict(os.environ, VISIONBOARD_SAMPLES="0")
        start = time.time()
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        seconds = time.time() - start
        if result.returncode != 0:
            log = next(Path(home).glob("*/train.log"), None)
            tail = log.read_text()[-3000:] if log else ""
            sys.exit(f"VisionBoard run failed:\n{result.stdout}\n{result.stderr}\n{tail}")
        show = subprocess.run(
            [sys.executable, "-m", "engine.cli", "--home", home, "runs", "show", "1", "--json"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
    summary = json.loads(show.stdout)["summary"]
    metrics = summary.get("last_metrics") or {}
    return {
        "seconds": seconds,
        "map": metrics.get("test_map"),
        "map_50": metrics.get("test_map_50"),
        "split": summary.get("eval_split"),
    }


def reference_run(references: Path, data: Path, epochs: int, workers: int, lr: float) -> dict:
    with tempfile.TemporaryDirectory() as out:
        args = [
            "--dataset", "coco", "--data-path", str(data), "--model", "fasterrcnn_resnet50_fpn",
            "--device", "cpu", "--batch-size", "2", "--epochs", str(epochs), "--workers",
            str(workers), "--lr", str(lr), "--output-dir", out,
        ]  # fmt: skip
        script = str(references / "train.py")
        code = REFERENCE_RUNNER.format(
            min_size=MIN_SIZE, folder=str(references), script=script, args=args
        )
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
        start = time.time()
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=references, capture_output=True, text=True, env=env
        )
        seconds = time.time() - start
    text = result.stdout + result.stderr
    if result.returncode != 0:
        sys.exit(f"reference run failed:\n{text[-4000:]}")
    found = {
        key: re.findall(
            rf"Average Precision\s+\(AP\) @\[ IoU={iou}\s+\| area=\s+all \| maxDets=100 \] = "
            r"(-?[\d.]+)",
            text,
        )
        for key, iou in (("map", r"0\.50:0\.95"), ("map_50", r"0\.50"))
    }
    return {"seconds": seconds, **{k: float(v[-1]) if v else None for k, v in found.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--references", type=Path, required=True, help="references/detection")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train", type=int, default=48, help="training images")
    parser.add_argument("--val", type=int, default=16, help="validation images")
    parser.add_argument("--classes", type=int, default=1, choices=range(1, 11), help="digits")
    parser.add_argument("--workers", type=int, default=2, help="loader workers, both sides")
    parser.add_argument("--lr", type=float, default=0.0025, help="SGD learning rate, both sides")
    args = parser.parse_args()
    CLASSES[:] = [str(digit) for digit in range(args.classes)]
    if not (args.references / "train.py").is_file():
        sys.exit(f"--references {args.references}: no train.py (expected references/detection)")
    with tempfile.TemporaryDirectory() as tmp:
        data = write_coco_set(Path(tmp) / "coco", args.train, args.val)
        listed = os.environ.get("VISIONBOARD_DATA_ROOTS")
        os.environ["VISIONBOARD_DATA_ROOTS"] = os.pathsep.join(filter(None, [listed, str(data)]))
        print(
            f"{args.train} train / {args.val} val images ({MIN_SIZE} px, {len(CLASSES)} classes), "
            f"{args.epochs} epoch(s), batch 2, SGD lr {args.lr:g}, {os.cpu_count()} CPU(s)",
            flush=True,
        )
        rounds = []
        for n in range(1, args.rounds + 1):
            vb = visionboard_run(data, args.epochs, args.workers, args.lr)
            print(f"round {n}: visionboard {vb['seconds']:.1f} s", flush=True)
            ref = reference_run(args.references, data, args.epochs, args.workers, args.lr)
            rounds.append((vb, ref))
            print(
                f"round {n}: visionboard {vb['seconds']:6.1f} s (mAP {vb['map']:.3f}, mAP@.5 "
                f"{vb['map_50']:.3f} on {vb['split']}), reference {ref['seconds']:6.1f} s (mAP "
                f"{ref['map']:.3f}, mAP@.5 {ref['map_50']:.3f}), "
                f"reference / visionboard {ref['seconds'] / vb['seconds']:.2f}",
                flush=True,
            )
        vb_med = statistics.median(vb["seconds"] for vb, _ in rounds)
        ref_med = statistics.median(ref["seconds"] for _, ref in rounds)
        print(f"whole run, median   visionboard {vb_med:.1f} s, reference {ref_med:.1f} s")
        print(f"reference / visionboard  {ref_med / vb_med:.2f} (target >= 1.10)")


if __name__ == "__main__":
    main()
