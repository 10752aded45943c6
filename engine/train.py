"""The trainer: `accelerate launch -m engine.train --run-id N [--home DIR] [--resume]`.

Reads the run's config from the database, trains, evaluates on the test split each epoch and
writes metrics, heartbeat and summary back; only the main process writes. This file keeps the
set-up, the epoch loop and the stop decision; each other job lives in a module named for it:
engine.tasks (data, step and evaluation per task), engine.metric_log (the run's row, and the
cancel check every process meets at the same step), engine.checkpoint (resume),
engine.early_stopping and engine.best_model (the run's model, card and predictions).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from engine import disk, store
from engine.best_model import is_number, model_card, save_best_model
from engine.checkpoint import TrainState, load_checkpoint, save_checkpoint
from engine.config import RunConfig
from engine.data import load_splits
from engine.early_stopping import EarlyStopping
from engine.launch import trains_on_cpu
from engine.metric_log import Cancelled, MetricLog
from engine.models import count_parameters, create_model, model_input
from engine.optim import create_optimizer, create_schedule
from engine.run_folder import RunFolder
from engine.tasks import create_task, dataloader_config


class Trainer:
    def __init__(self, run_id: int, home: str | None, resume: bool):
        self.home = store.home_dir(home)
        self.db = store.connect(self.home)
        run = store.get_run(self.db, run_id)
        if run is None:
            raise SystemExit(f"run {run_id} not found in {self.home}")
        self.run_id, self.resume = run_id, resume
        self.folder = RunFolder(self.home, run_id).create()
        self.cfg = RunConfig.from_dict(run["config"])
        self.accelerator = Accelerator(
            # device=auto without a GPU is the CPU (else each process of a --multi_gpu launch
            # would train alone); the worker also says so with ACCELERATE_USE_CPU.
            cpu=trains_on_cpu(self.cfg.device, torch.cuda.device_count()),
            mixed_precision=self.cfg.mixed_precision,
            dataloader_config=dataloader_config(self.cfg),
        )
        self.main = self.accelerator.is_main_process
        self.metric_log = MetricLog(self.accelerator, self.db, run_id)
        self.state = TrainState()
        self.early_stopping = EarlyStopping.from_config(self.cfg)
        if self.accelerator.device.type == "cpu":
            # One process per core group: several CPU processes must not fight for threads.
            cores = os.cpu_count() or 1
            torch.set_num_threads(max(1, cores // self.accelerator.num_processes))

    def print(self, message: str) -> None:
        self.accelerator.print(message, flush=True)  # main process only

    # -- set-up -----------------------------------------------------------------------
    def build(self) -> None:
        cfg, procs = self.cfg, self.accelerator.num_processes
        set_seed(cfg.seed)
        dataset_path = store.resolve_dataset(self.db, cfg.dataset)
        splits = load_splits(dataset_path, cfg.task, cfg.dataset_format, cfg.test_ratio, cfg.seed)
        for problem in splits.problems:
            self.print(f"dataset problem: {problem['file']}: {problem['message']}")
        self.print(
            f"dataset {dataset_path}: {splits.format}, {len(splits.classes)} classes, "
            f"{len(splits.train)} train / {len(splits.test)} test images"
        )
        model = create_model(cfg, len(splits.classes), home=self.home)
        self.task = create_task(cfg, splits, model_input(cfg, model))
        trainable, total = count_parameters(model)
        self.print(f"model {cfg.model_name}: {trainable:,} of {total:,} parameters trainable")
        model = self.task.prepare_model(model)
        optimizer = create_optimizer(cfg, model)
        train_loader, test_loader = self.task.loaders(procs)
        self.model, self.optimizer, self.train_loader, self.test_loader = self.accelerator.prepare(
            model, optimizer, train_loader, test_loader
        )
        self.schedule = create_schedule(cfg, self.optimizer, len(self.train_loader))
        self.metric_log.summary(
            stop_reason=None,  # a resumed run's earlier ending no longer holds
            metric=cfg.metric_name,
            classes=splits.classes,
            train_images=len(splits.train),
            test_images=len(splits.test),
            skipped_images=splits.counts["skipped_images"],
            trainable_params=trainable,
            total_params=total,
            num_processes=procs,
            global_batch_size=cfg.batch_size * procs,
            steps_per_epoch=len(self.train_loader),
            epochs=cfg.epochs,
            device=str(self.accelerator.device),
        )
        self.print(
            f"{procs} process(es) on {self.accelerator.device}, batch {cfg.batch_size} per "
            f"process, global batch {cfg.batch_size * procs}"
        )

    # -- the loop ---------------------------------------------------------------------
    def fit(self) -> str:
        if self.resume:
            state = load_checkpoint(self.accelerator, self.folder, self.schedule)
            self.state = state or self.state
            self.print(
                f"resuming after epoch {state.epoch} (step {state.step})"
                if state
                else "no checkpoint found: starting from the first epoch"
            )
        if self.main:
            store.delete_metrics_after(self.db, self.run_id, self.state.epoch)
        started, first_epoch = time.monotonic(), self.state.epoch + 1
        while (reason := self.stop_reason()) is None:
            epoch = self.state.epoch + 1
            epoch_start = time.monotonic()
            values = self.train_epoch(epoch)
            train_seconds = time.monotonic() - epoch_start
            test_metrics, predictions = self.task.evaluate(
                self.model, self.test_loader, self.accelerator, self.metric_log.beat
            )
            value = test_metrics.get(self.cfg.metric_name, float("nan"))
            self.schedule.step_epoch(value)
            self.state.epoch = epoch
            improved = self.early_stopping.update(self.state, epoch, value)
            if improved:
                card = model_card(
                    self.run_id, self.cfg, self.task.classes, self.task.input, test_metrics, epoch
                )
                # A full disk stops the run here, with room left to record why (engine.disk).
                disk.require_space(self.folder.path, disk.model_bytes(self.model))
                save_best_model(self.accelerator, self.model, self.folder, card, predictions)
            values |= {f"test_{k}": v for k, v in test_metrics.items() if is_number(v)}
            self.metric_log.record_epoch(self.state.step, epoch, values)
            needed = disk.checkpoint_bytes(self.model, self.optimizer)
            disk.require_space(self.folder.path, needed)
            save_checkpoint(self.accelerator, self.folder, self.state, self.schedule)
            per_epoch = (time.monotonic() - started) / (epoch - first_epoch + 1)
            images = len(self.train_loader) * self.cfg.batch_size * self.accelerator.num_processes
            self.metric_log.summary(
                epoch=epoch,
                epochs_trained=epoch,
                step=self.state.step,
                best_metric=self.state.best,
                best_epoch=self.state.best_epoch,
                epochs_since_best=self.state.since_best,
                images_per_second=images / max(train_seconds, 1e-9),
                eta_seconds=per_epoch * (self.cfg.epochs - epoch),
                last_metrics=values,
            )
            self.print(
                f"epoch {epoch}/{self.cfg.epochs}: "
                + ", ".join(f"{k} {v:.4f}" for k, v in values.items())
                + f", lr {self.schedule.lr:.2e}"
                + (" (best)" if improved else "")
            )
        return reason

    def stop_reason(self) -> str | None:
        """Why training stops before the next epoch, if it does: asked at the start (a resumed
        run may be done already) and after every epoch."""
        if self.early_stopping.should_stop(self.state):
            return "early stop"
        if self.state.epoch >= self.cfg.epochs:
            return "epoch limit"
        return None

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        self.task.start_epoch(self.train_loader, epoch)
        device = self.accelerator.device
        count = torch.zeros(1, device=device)
        sums: dict[str, torch.Tensor] = {}  # loss and its parts, summed over images
        for batch in self.train_loader:
            with self.accelerator.autocast():
                loss, parts, n = self.task.train_step(self.model, batch)
            lr = self.schedule.lr  # the rate this step uses, logged with it
            self.optimizer.zero_grad(set_to_none=True)
            self.accelerator.backward(loss)
            self.optimizer.step()
            self.schedule.step_batch()
            self.state.step += 1
            count += n
            for name, value in {"loss": loss, **parts}.items():
                sums.setdefault(name, torch.zeros(1, device=device))
                sums[name] += value.detach() * n
            # The loss stays a tensor: the metric log syncs once per flush, not per step.
            self.metric_log.record_step(
                self.state.step, epoch, {"lr": lr, "train_loss_step": loss.detach()}
            )
        count = self.accelerator.reduce(count, "sum")
        return {
            f"train_{name}": (self.accelerator.reduce(total, "sum") / count).item()
            for name, total in sums.items()
        }


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
        reason, code = trainer.fit(), 0
    except Cancelled:
        reason, code = "cancelled", 0
    except Exception as exc:  # the run records why it failed; the traceback goes to the log
        traceback.print_exc()
        reason, code = "failed", 1
        if trainer is None or trainer.main:
            db = trainer.db if trainer else store.connect(store.home_dir(args.home))
            where = trainer.folder.path if trainer else store.home_dir(args.home)
            message = disk.disk_full_message(exc, where) or f"{type(exc).__name__}: {exc}"
            store.record_trainer_error(db, args.run_id, message)
    if trainer is not None:
        trainer.metric_log.flush()
        trainer.metric_log.summary(stop_reason=reason)
        trainer.print(f"stopped: {reason}")
        trainer.accelerator.end_training()
    return code


if __name__ == "__main__":
    sys.exit(main())
