"""The trainer: `python -m engine.train --run-id N [--home DIR] [--resume]`, under `accelerate
launch` for several processes (engine.launch builds the command).

Reads the run's config from the database, trains, evaluates each epoch on the val split (the
test split where the dataset has no val) and writes metrics, heartbeat and summary back; with
a val split, the best model is scored once on test when training ends. Only the main process
writes. This file keeps the set-up, the epoch loop, the stop decision and the final report;
each other job lives in a module named for it:
engine.tasks (data, step and evaluation per task), engine.metric_log (the run's row, and the
cancel check every process meets at the same step), engine.checkpoint (resume),
engine.early_stopping and engine.best_model (the run's model, card and predictions).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast, set_seed

from engine import disk, store
from engine.best_model import (
    final_report,
    is_number,
    load_best_model,
    model_card,
    save_best_model,
    save_final_report,
)
from engine.checkpoint import TrainState, load_checkpoint, save_checkpoint
from engine.config import RunConfig
from engine.data import load_splits, probe_cache
from engine.data.image_cache import processes_here
from engine.early_stopping import EarlyStopping
from engine.launch import DIRECT, LAUNCHED_ENV, VIA_ACCELERATE, trains_on_cpu
from engine.metric_log import Cancelled, MetricLog
from engine.models import count_parameters, create_model, model_input
from engine.optim import create_optimizer, create_schedule
from engine.run_folder import RunFolder
from engine.tasks import create_task, dataloader_config
from engine.timings import Timings


class Trainer:
    def __init__(self, run_id: int, home: str | None, resume: bool):
        self.timings = Timings()  # the launch ends here: interpreters and imports are done
        self.home = store.home_dir(home)
        self.db = store.connect(self.home)
        run = store.get_run(self.db, run_id)
        if run is None:
            raise SystemExit(f"run {run_id} not found in {self.home}")
        self.run_id, self.resume = run_id, resume
        self.folder = RunFolder(self.home, run_id).create()
        self.cfg = RunConfig.from_stored(run["config"])
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
        # Images probed at submit (or by an earlier run) and unchanged since are not probed again.
        with self.timings.phase("data_check"), probe_cache.using(self.home):
            splits = load_splits(
                dataset_path, cfg.task, cfg.dataset_format, cfg.test_ratio, cfg.seed
            )
        for problem in splits.problems:
            self.print(f"dataset problem: {problem['file']}: {problem['message']}")
        self.print(
            f"dataset {dataset_path}: {splits.format}, {len(splits.classes)} classes, "
            f"{len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test images"
        )
        with self.timings.phase("model"):
            model = create_model(cfg, len(splits.classes), home=self.home)
            self.task = create_task(cfg, splits, model_input(cfg, model))
            trainable, total = count_parameters(model)
            model = self.task.prepare_model(model)
            optimizer = create_optimizer(cfg, model, log=self.print)
        with self.timings.phase("image_cache"):  # before the loaders' workers start
            cached = self.task.cache_images(processes_here(procs))  # share this machine's
        with self.timings.phase("model"):
            loaders = self.task.loaders(procs)  # train, then the evaluated splits
            self.model, self.optimizer, *prepared = self.accelerator.prepare(
                model, optimizer, *loaders.values()
            )
        self.print(f"model {cfg.model_name}: {trainable:,} of {total:,} parameters trainable")
        for note in self.task.notes:
            self.print(note)
        if cached:
            self.print(cached)
        self.loaders = dict(zip(loaders, prepared))
        self.train_loader = self.loaders["train"]
        self.schedule = create_schedule(cfg, self.optimizer, len(self.train_loader))
        self.metric_log.plan_run(len(self.train_loader), cfg.batch_size * procs, cfg.epochs)
        self.metric_log.summary(
            stop_reason=None,  # a resumed run's earlier ending no longer holds
            final_test=None,
            metric=cfg.metric_name,
            eval_split=self.task.eval_split,  # the split behind the per-epoch test_* metrics
            classes=splits.classes,
            train_images=len(splits.train),
            val_images=len(splits.val),
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
        while (reason := self.stop_reason()) is None:
            epoch = self.state.epoch + 1
            # Images/s and the ETA come from step timing, at every flush (engine.metric_log).
            self.metric_log.start_epoch(epoch, self.state.step)
            phase = self.timings.phase
            with phase("train", epoch):
                values = self.train_epoch(epoch)
            split = self.task.eval_split
            with phase("evaluate", epoch):
                scores, predictions = self.task.evaluate(
                    self.model, split, self.loaders[split], self.accelerator, self.metric_log.beat
                )
            value = scores.get(self.cfg.metric_name, float("nan"))
            self.schedule.step_epoch(value)
            self.state.epoch = epoch
            improved = self.early_stopping.update(self.state, epoch, value)
            if improved:
                card = model_card(
                    self.run_id,
                    self.cfg,
                    self.task.classes,
                    self.task.input,
                    scores,
                    epoch,
                    split,
                )
                # A full disk stops the run here, with room left to record why (engine.disk).
                with phase("save", epoch):
                    self.require_space(disk.model_bytes(self.model))
                    save_best_model(self.accelerator, self.model, self.folder, card, predictions)
            # test_* whichever split it was (the public metric names; summary.eval_split says).
            values |= {f"test_{k}": v for k, v in scores.items() if is_number(v)}
            # The cancel check comes after the checkpoint and the summary: a cancel seen at the
            # end of an epoch keeps that epoch.
            with phase("log", epoch):
                self.metric_log.record_epoch(self.state.step, epoch, values, check=False)
            with phase("checkpoint", epoch):
                self.require_space(disk.checkpoint_bytes(self.model, self.optimizer))
                save_checkpoint(self.accelerator, self.folder, self.state, self.schedule)
            self.metric_log.summary(
                epoch=epoch,
                epochs_trained=epoch,
                step=self.state.step,
                best_metric=self.state.best,
                best_epoch=self.state.best_epoch,
                epochs_since_best=self.state.since_best,
                last_metrics=values,
                timings=self.timings.summary(),
            )
            self.print(
                f"epoch {epoch}/{self.cfg.epochs}: "
                + ", ".join(f"{k} {v:.4f}" for k, v in values.items())
                + f", lr {self.schedule.lr:.2e}"
                + (" (best)" if improved else "")
            )
            self.metric_log.check()
        return reason

    def stop_loader_workers(self) -> None:
        """Persistent loader workers stop now, not in the interpreter's teardown."""
        for loader in getattr(self, "loaders", {}).values():
            iterator = getattr(loader, "_iterator", None)
            if hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()

    def require_space(self, needed: int) -> None:
        """disk.require_space, decided by the main process for all: every process stops at
        the same write (no DDP deadlock), and the main one, which writes trainer_error, knows
        why. The free space travels in the collective every process meets here anyway."""
        free = disk.free_bytes(self.folder.path) if self.main else 0
        if self.accelerator.num_processes > 1:
            message = torch.tensor([float(free)], device=self.accelerator.device)
            free = int(broadcast(message).item())
        if free < needed + disk.RESERVE_BYTES:
            raise disk.DiskFull(self.folder.path, free, needed + disk.RESERVE_BYTES)

    def report_final_test(self) -> None:
        """With a val split beside test: the best epoch's model, scored once on the test split
        when training ends (not after a cancel or a failure)."""
        split = self.task.final_split
        if split is None:
            return
        if not load_best_model(self.accelerator, self.model, self.folder):
            self.print(f"no best model was saved: no final report on the {split} split")
            return
        with self.timings.phase("final_test"):
            metrics, predictions = self.task.evaluate(
                self.model, split, self.loaders[split], self.accelerator, self.metric_log.beat
            )
        report = final_report(metrics, split, self.state.best_epoch, len(predictions["paths"]))
        save_final_report(self.accelerator, self.folder, report, predictions)
        self.metric_log.summary(final_test=report)
        self.print(
            f"final report on the {split} split (best epoch {self.state.best_epoch}): "
            + ", ".join(f"{k} {v:.4f}" for k, v in report["metrics"].items())
        )

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
            self.timings.step_done()
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


def record_trainer_process(run_id: int, home: str | None) -> None:
    """Say where this trainer process is, and die with its launcher. torchrun starts each
    rank in a session of its own, out of reach of a kill of the launcher's process group: the
    worker finds the ranks by these records (store.trainer_processes), and on Linux the kernel
    kills a rank whose launcher dies (PR_SET_PDEATHSIG). A trainer the worker started itself
    (engine.launch.DIRECT) leads its own process group and outlives a worker that dies, as a
    launcher does; a trainer run in-process (tests) has no launcher: neither applies."""
    launched = os.environ.get(LAUNCHED_ENV)
    if launched not in (VIA_ACCELERATE, DIRECT):
        return
    if launched == VIA_ACCELERATE and sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the launcher died before the line above
            os._exit(1)
    pid = os.getpid()
    started = store.process_started(pid) or ""
    try:
        RunFolder(store.home_dir(home), run_id).record_trainer(store.host_name(), pid, started)
    except OSError as exc:  # a full disk: the launcher's group and PDEATHSIG still hold it
        print(f"could not record trainer process {pid}: {exc}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="engine.train", description=__doc__)
    parser.add_argument("--run-id", type=int, required=True)
    parser.add_argument("--home", default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    record_trainer_process(args.run_id, args.home)
    trainer = None
    try:
        trainer = Trainer(args.run_id, args.home, args.resume)
        trainer.build()
        reason, code = trainer.fit(), 0
        trainer.report_final_test()
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
        trainer.metric_log.summary(
            stop_reason=reason, timings=trainer.timings.summary(finished=True)
        )
        trainer.print(f"stopped: {reason}")
        trainer.accelerator.end_training()
        trainer.stop_loader_workers()
    return code


if __name__ == "__main__":
    exit_code = main()
    # The run is written and its loaders' workers are stopped: leave without the interpreter's
    # teardown of torch, timm and the rest, seconds before the worker sees the run end.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
