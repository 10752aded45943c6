"""The trainer: `accelerate launch -m engine.train --run-id N [--home DIR] [--resume]`.

Reads the run's config from the database, trains, evaluates on the test split each epoch and
writes metrics, heartbeat and summary back. Only the main process writes. Every process reads
the cancel flag through a broadcast from the main process, so all stop at the same step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, broadcast, set_seed
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from engine import evaluate, store
from engine.config import RunConfig
from engine.data import (
    ClassificationDataset,
    DetectionDataset,
    DetectionTransform,
    build_transform,
    collate_detection,
    load_splits,
)
from engine.models import count_parameters, create_model, model_input
from engine.optim import create_optimizer, create_schedule

FLUSH_SECONDS = 2.0  # how often step metrics, heartbeat and the cancel flag travel


class Cancelled(Exception):
    pass


@dataclass
class TrainState:
    """What a checkpoint must remember besides the model, optimizer and schedule."""

    epoch: int = 0  # last finished epoch
    step: int = 0
    best: float | None = None
    best_epoch: int = 0
    since_best: int = 0


class Indexed(torch.utils.data.Dataset):
    """Adds the sample index, so gathered predictions can be matched to their files."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return (i, *self.dataset[i])


def collate_indexed_detection(batch):
    images, targets = collate_detection([b[1:] for b in batch])
    return [b[0] for b in batch], images, targets


class Trainer:
    def __init__(self, run_id: int, home: str | None, resume: bool):
        self.run_id = run_id
        self.home = store.home_dir(home)
        self.dir = self.home / str(run_id)
        self.db = store.connect(self.home)
        run = store.get_run(self.db, run_id)
        if run is None:
            raise SystemExit(f"run {run_id} not found in {self.home}")
        self.cfg = RunConfig.from_dict(run["config"])
        self.resume = resume
        self.accelerator = Accelerator(
            cpu=self.cfg.device == "cpu",
            mixed_precision=self.cfg.mixed_precision,
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        )
        self.main = self.accelerator.is_main_process
        self.state = TrainState()
        self.pending: list[tuple[int, int, dict]] = []
        self.last_flush = 0.0
        self.detection = self.cfg.task == "detection"
        if self.accelerator.device.type == "cpu":
            # One process per core group: several CPU processes must not fight for threads.
            cores = os.cpu_count() or 1
            torch.set_num_threads(max(1, cores // self.accelerator.num_processes))

    # -- output -----------------------------------------------------------------------
    def log(self, message: str) -> None:
        if self.main:
            print(message, flush=True)

    def summary(self, **fields) -> None:
        if self.main:
            store.update_summary(self.db, self.run_id, **fields)

    def record(self, step: int, epoch: int, values: dict, flush: bool = False) -> None:
        """Buffer metric rows (main process), then tick: every process calls this each step."""
        if self.main:
            self.pending.append((step, epoch, values))
        self.tick(force=flush)

    def tick(self, force: bool = False) -> None:
        """Write what is due and learn whether to stop. The main process decides and
        broadcasts, so every process stops at the same step (no DDP deadlock)."""
        stop = torch.zeros(1, device=self.accelerator.device)
        if self.main and (force or time.monotonic() - self.last_flush > FLUSH_SECONDS):
            self.write_pending()
            stop[0] = float(store.cancel_requested(self.db, self.run_id))
        if self.accelerator.num_processes > 1:
            stop = broadcast(stop)
        if stop.item():
            raise Cancelled()

    def write_pending(self) -> None:
        self.last_flush = time.monotonic()
        for step, epoch, values in self.pending:
            store.add_metrics(self.db, self.run_id, step, epoch, values)
        self.pending.clear()
        store.heartbeat(self.db, self.run_id)

    def beat(self) -> None:
        """Heartbeat during evaluation (main only, no collective)."""
        if self.main and time.monotonic() - self.last_flush > FLUSH_SECONDS:
            self.write_pending()

    # -- set-up -----------------------------------------------------------------------
    def build(self) -> None:
        cfg = self.cfg
        set_seed(cfg.seed)
        dataset_path = store.resolve_dataset(self.db, cfg.dataset)
        self.splits = load_splits(
            dataset_path, cfg.task, cfg.dataset_format, cfg.test_ratio, cfg.seed
        )
        for problem in self.splits.problems:
            self.log(f"dataset problem: {problem['file']}: {problem['message']}")
        self.classes = self.splits.classes
        self.log(
            f"dataset {dataset_path}: {self.splits.format}, {len(self.classes)} classes, "
            f"{len(self.splits.train)} train / {len(self.splits.test)} test images"
        )
        self.model = create_model(cfg, len(self.classes), home=self.home)
        self.input = model_input(cfg, self.model)
        trainable, total = count_parameters(self.model)
        self.log(f"model {cfg.model_name}: {trainable:,} of {total:,} parameters trainable")
        if cfg.channels_last and not self.detection:
            self.model = self.model.to(memory_format=torch.channels_last)
        optimizer = create_optimizer(cfg, self.model)
        train_loader, test_loader = self.loaders()
        self.model, self.optimizer, self.train_loader, self.test_loader = self.accelerator.prepare(
            self.model, optimizer, train_loader, test_loader
        )
        self.schedule = create_schedule(cfg, self.optimizer, len(self.train_loader))
        procs = self.accelerator.num_processes
        self.summary(
            stop_reason=None,  # a resumed run's earlier ending no longer holds
            metric=cfg.metric_name,
            classes=self.classes,
            train_images=len(self.splits.train),
            test_images=len(self.splits.test),
            skipped_images=self.splits.counts["skipped_images"],
            trainable_params=trainable,
            total_params=total,
            num_processes=procs,
            global_batch_size=cfg.batch_size * procs,
            steps_per_epoch=len(self.train_loader),
            epochs=cfg.epochs,
            device=str(self.accelerator.device),
        )
        self.log(
            f"{procs} process(es) on {self.accelerator.device}, batch {cfg.batch_size} per "
            f"process, global batch {cfg.batch_size * procs}"
        )

    def loaders(self) -> tuple[DataLoader, DataLoader]:
        cfg = self.cfg
        if self.detection:
            train_ds = DetectionDataset(self.splits.train, DetectionTransform(cfg, train=True))
            test_ds = DetectionDataset(self.splits.test, DetectionTransform(cfg, train=False))
            collate = collate_indexed_detection
        else:
            size, mean, std = self.input["image_size"], self.input["mean"], self.input["std"]
            train_ds = ClassificationDataset(
                self.splits.train, build_transform(cfg, True, size, mean, std)
            )
            test_ds = ClassificationDataset(
                self.splits.test, build_transform(cfg, False, size, mean, std)
            )
            collate = None
        common = {
            "batch_size": cfg.batch_size,
            "num_workers": cfg.num_workers,
            "persistent_workers": cfg.num_workers > 0,
            "pin_memory": torch.cuda.is_available() and cfg.device != "cpu",
        }
        per_step = cfg.batch_size * self.accelerator.num_processes
        # A last batch of one image breaks BatchNorm in train mode; drop the remainder instead.
        drop_last = len(train_ds) > per_step
        train = DataLoader(
            Indexed(train_ds), shuffle=True, drop_last=drop_last, collate_fn=collate, **common
        )
        test = DataLoader(Indexed(test_ds), shuffle=False, collate_fn=collate, **common)
        return train, test

    # -- checkpoints ------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.dir / "checkpoint"

    def save_checkpoint(self) -> None:
        """Save the last finished epoch; swap folders so a kill mid-save keeps the old one."""
        new = self.dir / "checkpoint.new"
        if self.main and new.exists():
            shutil.rmtree(new)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(new), safe_serialization=True)
        if self.main:
            (new / "trainer.json").write_text(json.dumps(asdict(self.state)))
            # JSON rather than accelerate's custom-object pickle: resume never unpickles.
            (new / "schedule.json").write_text(json.dumps(self.schedule.state_dict()))
            old = self.dir / "checkpoint.old"
            if old.exists() and self.checkpoint_dir.exists():
                shutil.rmtree(old)  # left by a kill between the two renames below
            if self.checkpoint_dir.exists():
                self.checkpoint_dir.rename(old)
            new.rename(self.checkpoint_dir)
            shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def load_checkpoint(self) -> bool:
        for folder in (self.checkpoint_dir, self.dir / "checkpoint.old"):
            if (folder / "trainer.json").exists():
                self.accelerator.load_state(str(folder))
                self.schedule.load_state_dict(json.loads((folder / "schedule.json").read_text()))
                self.state = TrainState(**json.loads((folder / "trainer.json").read_text()))
                return True
        return False

    # -- the loop ---------------------------------------------------------------------
    def fit(self) -> str:
        cfg = self.cfg
        if self.resume and self.load_checkpoint():
            self.log(f"resuming after epoch {self.state.epoch} (step {self.state.step})")
        elif self.resume:
            self.log("no checkpoint found: starting from the first epoch")
        if self.main:
            store.delete_metrics_after(self.db, self.run_id, self.state.epoch)
        if self.state.epoch >= cfg.epochs:
            return "epoch limit"
        if cfg.early_stopping and self.state.since_best >= cfg.early_stopping_patience:
            return "early stop"
        started, first_epoch = time.monotonic(), self.state.epoch + 1
        for epoch in range(first_epoch, cfg.epochs + 1):
            epoch_start = time.monotonic()
            train_metrics = self.train_epoch(epoch)
            train_seconds = time.monotonic() - epoch_start
            test_metrics, predictions = self.evaluate_epoch(epoch)
            value = test_metrics.get(cfg.metric_name, float("nan"))
            self.schedule.step_epoch(value)
            improved = evaluate.is_better(
                value, self.state.best, cfg.metric_mode, cfg.early_stopping_delta
            )
            self.state.epoch = epoch
            if improved:
                self.state.best, self.state.best_epoch, self.state.since_best = value, epoch, 0
                self.save_best(test_metrics, predictions)
            else:
                self.state.since_best += 1
            values = {
                **train_metrics,
                **{f"test_{k}": v for k, v in test_metrics.items() if _is_number(v)},
            }
            self.record(self.state.step, epoch, values, flush=True)
            self.save_checkpoint()
            seconds_per_epoch = (time.monotonic() - started) / (epoch - first_epoch + 1)
            images = len(self.train_loader) * cfg.batch_size * self.accelerator.num_processes
            self.summary(
                epoch=epoch,
                epochs_trained=epoch,
                step=self.state.step,
                best_metric=self.state.best,
                best_epoch=self.state.best_epoch,
                epochs_since_best=self.state.since_best,
                images_per_second=images / max(train_seconds, 1e-9),
                eta_seconds=seconds_per_epoch * (cfg.epochs - epoch),
                last_metrics={k: v for k, v in values.items()},
            )
            self.log(
                f"epoch {epoch}/{cfg.epochs}: "
                + ", ".join(f"{k} {v:.4f}" for k, v in values.items())
                + f", lr {self.schedule.lr:.2e}"
                + (" (best)" if improved else "")
            )
            if cfg.early_stopping and self.state.since_best >= cfg.early_stopping_patience:
                return "early stop"
        return "epoch limit"

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        device = self.accelerator.device
        total = torch.zeros(1, device=device)
        count = torch.zeros(1, device=device)
        parts: dict[str, torch.Tensor] = {}
        for batch in self.train_loader:
            with self.accelerator.autocast():
                if self.detection:
                    _, images, targets = batch
                    losses = self.model(images, targets)
                    loss = sum(losses.values())
                    n = len(images)
                else:
                    _, images, labels = batch
                    if self.cfg.channels_last:
                        images = images.contiguous(memory_format=torch.channels_last)
                    loss = torch.nn.functional.cross_entropy(self.model(images), labels)
                    losses = {}
                    n = len(labels)
            lr = self.schedule.lr  # the rate this step uses, logged with it
            self.optimizer.zero_grad(set_to_none=True)
            self.accelerator.backward(loss)
            self.optimizer.step()
            self.schedule.step_batch()
            self.state.step += 1
            loss_value = loss.detach()
            total += loss_value * n
            count += n
            for name, part in losses.items():
                parts[name] = parts.get(name, torch.zeros(1, device=device)) + part.detach() * n
            self.record(
                self.state.step,
                epoch,
                {"lr": lr, "train_loss_step": float(loss_value)},
            )
            if self.main and self.state.step % 5 == 0:
                self.summary(epoch=epoch - 1, step=self.state.step, current_epoch=epoch)
        count = self.accelerator.reduce(count, "sum")
        out = {"train_loss": (self.accelerator.reduce(total, "sum") / count).item()}
        for name, value in parts.items():
            out[f"train_{name}"] = (self.accelerator.reduce(value, "sum") / count).item()
        return out

    @torch.no_grad()
    def evaluate_epoch(self, epoch: int) -> tuple[dict, dict]:
        self.model.eval()
        if self.detection:
            return self.evaluate_detection()
        indices, probs, targets, losses = [], [], [], []
        for index, images, labels in self.test_loader:
            if self.cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with self.accelerator.autocast():
                logits = self.model(images).float()
            loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
            gathered = self.accelerator.gather_for_metrics(
                (index.to(logits.device), logits.softmax(-1), labels, loss)
            )
            for bucket, value in zip((indices, probs, targets, losses), gathered):
                bucket.append(value.cpu())
            self.beat()
        idx = torch.cat(indices).numpy()
        p = torch.cat(probs).numpy().astype(np.float64)
        t = torch.cat(targets).numpy()
        metrics = evaluate.classification_metrics(p, t)
        metrics["loss"] = float(torch.cat(losses).mean())
        predictions = {
            "task": "classification",
            "classes": self.classes,
            "paths": [self.splits.test[i][0] for i in idx],
            "targets": t.tolist(),
            "probs": np.round(p, 6).tolist(),
        }
        return metrics, predictions

    def evaluate_detection(self) -> tuple[dict, dict]:
        records = []
        for index, images, targets in self.test_loader:
            with self.accelerator.autocast():
                outputs = self.model(images)
            for i, out, target in zip(index, outputs, targets):
                records.append(
                    {
                        "index": int(i),
                        "pred": {
                            "boxes": out["boxes"].float().cpu().numpy().round(2).tolist(),
                            "scores": out["scores"].float().cpu().numpy().round(5).tolist(),
                            "labels": (out["labels"].cpu().numpy() - 1).tolist(),
                        },
                        "target": {
                            "boxes": target["boxes"].cpu().numpy().tolist(),
                            "labels": (target["labels"].cpu().numpy() - 1).tolist(),
                        },
                    }
                )
            self.beat()
        records = self.accelerator.gather_for_metrics(records, use_gather_object=True)
        # Padding of the last batch can repeat a sample on another process: keep one of each.
        records = list({r["index"]: r for r in records}.values())
        preds = [r["pred"] for r in records]
        targets = [r["target"] for r in records]
        metrics = evaluate.detection_metrics(preds, targets, len(self.classes))
        predictions = {
            "task": "detection",
            "classes": self.classes,
            "paths": [self.splits.test[r["index"]].path for r in records],
            "targets": targets,
            "preds": preds,
        }
        return metrics, predictions

    # -- outputs ----------------------------------------------------------------------
    def save_best(self, metrics: dict, predictions: dict) -> None:
        """Keep the best epoch's weights as the run's model, with its card and predictions."""
        self.accelerator.wait_for_everyone()
        if not self.main:
            return
        model = self.accelerator.unwrap_model(self.model)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        tmp = self.dir / "model.safetensors.tmp"
        save_file(state, str(tmp))
        tmp.replace(self.dir / "model.safetensors")
        card = {
            "run_id": self.run_id,
            "task": self.cfg.task,
            "model": self.cfg.model_name,
            "classes": self.classes,
            "num_classes": len(self.classes),
            "image_size": self.input.get("image_size"),
            "mean": list(self.input.get("mean") or []),
            "std": list(self.input.get("std") or []),
            "min_size": self.cfg.min_size,
            "max_size": self.cfg.max_size,
            "threshold": metrics.get("threshold"),
            "metric": self.cfg.metric_name,
            "best_epoch": self.state.best_epoch,
            "metrics": {k: v for k, v in metrics.items() if _is_number(v)},
            "config": self.cfg.resolved(),
        }
        _write_json(self.dir / "model.json", card)
        _write_json(self.dir / "predictions.json", predictions)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="engine.train", description=__doc__)
    parser.add_argument("--run-id", type=int, required=True)
    parser.add_argument("--home", default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    trainer = None
    try:
        trainer = Trainer(args.run_id, args.home, args.resume)
        trainer.build()
        reason = trainer.fit()
        code = 0
    except Cancelled:
        reason, code = "cancelled", 0
    except Exception as exc:  # the run records why it failed; the traceback goes to the log
        traceback.print_exc()
        reason, code = "failed", 1
        if trainer is None or trainer.main:
            home = store.home_dir(args.home)
            (home / str(args.run_id)).mkdir(parents=True, exist_ok=True)
            (home / str(args.run_id) / "error.txt").write_text(f"{type(exc).__name__}: {exc}")
    if trainer is not None:
        if trainer.main:
            trainer.write_pending()
        trainer.summary(stop_reason=reason)
        trainer.log(f"stopped: {reason}")
        trainer.accelerator.end_training()
    return code


if __name__ == "__main__":
    sys.exit(main())
