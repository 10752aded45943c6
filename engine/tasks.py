"""What differs between the tasks in training: data, one step's loss, and evaluation.

One class per task of engine.choices.TASKS. A task builds a loader per split the run uses
(each sample carries its index, so gathered predictions find their files), computes a batch's
loss (with its parts, where the model reports them), and evaluates a split into metrics and
the predictions the run keeps. Each epoch is evaluated on `eval_split` (val where the dataset
declares one, else test); with val, the best model is scored once more on `final_split`
(test) at the end. The trainer picks one with create_task(cfg.task, ...).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from accelerate.utils import DataLoaderConfiguration
from torch.utils.data import DataLoader, Dataset

from engine import choices, evaluate
from engine.config import RunConfig
from engine.data import (
    ClassificationDataset,
    DatasetSplits,
    DetectionDataset,
    DetectionTransform,
    build_transform,
    collate_detection,
    read_image,
)
from engine.data.image_cache import ImageCache, cache_budget, estimate_bytes, plan_cache
from engine.data.images import run_decode_size
from engine.launch import trains_on_cpu
from engine.models import head_prefixes, keep_batchnorm_statistics


def dataloader_config(cfg: RunConfig) -> DataLoaderConfiguration:
    """accelerate's loader settings that Task.start_epoch relies on: a seedable sampler, so the
    shuffle of epoch e is seeded with seed + e."""
    return DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation in one epoch."""
    return int(np.random.SeedSequence((seed, epoch, index)).generate_state(1, np.uint64)[0])


class Indexed(Dataset):
    """Adds the sample index, so gathered predictions can be matched to their files.

    With a seed (the train split), each sample's random augmentation is drawn from its own
    seed, sample_seed(seed, epoch, index): the same whichever process or loader worker reads
    it, and the same after a resume, as no random stream is carried from epoch to epoch. The
    epoch sits in shared memory, so persistent loader workers see each set_epoch.
    """

    def __init__(self, dataset, seed: int | None = None):
        self.dataset = dataset
        self.seed = seed
        self.epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self.epoch.fill_(epoch)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        if self.seed is None:
            return (i, *self.dataset[i])
        # Augmentation draws from torch's RNG only (engine.data.transforms); forking it keeps
        # the process's own stream (dropout's, with num_workers=0) untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, int(self.epoch), i))
            return (i, *self.dataset[i])


class Task:
    """The shared part: loaders. Subclasses give datasets, the step and the evaluation."""

    collate = None  # the DataLoader's collate_fn; None is torch's default

    def __init__(self, cfg: RunConfig, splits: DatasetSplits, model_input: dict[str, Any]):
        self.cfg = cfg
        self.splits = splits
        self.classes = splits.classes
        self.input = model_input
        self.notes: list[str] = []  # what prepare_model did, for the run's log

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def cache_images(self, processes: int) -> str | None:
        """Keep the decoded images of the splits the run reads in memory, where the task
        and cfg.cache_images allow (`processes`: the run's processes on this machine, which
        share its memory); what was done, for the log (None: nothing to say)."""
        return None

    def loader_workers(self) -> int:
        """Loader worker processes per loader: cfg.num_workers."""
        return self.cfg.num_workers

    @property
    def eval_split(self) -> str:
        """The split evaluated each epoch (best epoch, early stopping, plateau schedule): val
        where the dataset declares one, else test."""
        return "val" if self.splits.val else "test"

    @property
    def final_split(self) -> str | None:
        """The split the best model is scored on once the run ends: test, when val took its
        place each epoch; None when the per-epoch split is test already."""
        return "test" if self.eval_split == "val" and self.splits.test else None

    def dataset(self, samples: list, train: bool) -> Dataset:
        """A split's Dataset: augmented for training, resized and normalised only otherwise."""
        raise NotImplementedError

    def loaders(self, num_processes: int) -> dict[str, DataLoader]:
        """{"train": ..., eval_split: ..., final_split: ...}: a loader per split the run uses."""
        cfg = self.cfg
        workers = self.loader_workers()
        common = {
            # Not the global RNG: the loader draws its workers' base seed when its workers
            # start (each epoch, or once when persistent), which would move dropout's stream.
            "generator": torch.Generator().manual_seed(cfg.seed),
            "batch_size": cfg.batch_size,
            "num_workers": workers,
            "persistent_workers": workers > 0,
            "pin_memory": torch.cuda.is_available() and cfg.device != "cpu",
            "collate_fn": self.collate,
        }
        # A last batch of one image breaks BatchNorm in train mode; drop the remainder instead.
        drop_last = len(self.splits.train) > cfg.batch_size * num_processes
        self.train_set = Indexed(self.dataset(self.splits.train, train=True), seed=cfg.seed)
        loaders = {"train": DataLoader(self.train_set, shuffle=True, drop_last=drop_last, **common)}
        for split in filter(None, (self.eval_split, self.final_split)):
            evaluated = Indexed(self.dataset(getattr(self.splits, split), train=False))
            loaders[split] = DataLoader(evaluated, shuffle=False, **common)
        return loaders

    def start_epoch(self, train_loader, epoch: int) -> None:
        """Seed the epoch's shuffle and augmentation from the epoch's number, not from how many
        epochs this process has run, so a resumed run draws what the uninterrupted one drew.
        `train_loader` is the one accelerate prepared with dataloader_config(cfg)."""
        train_loader.set_epoch(epoch)
        self.train_set.set_epoch(epoch)

    def train_step(self, model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """The batch's mean loss, its named parts, and the number of images."""
        raise NotImplementedError

    def evaluate(self, model, split: str, loader, accelerator, beat) -> tuple[dict, dict]:
        """Metrics over the whole split (gathered from every process) and its predictions;
        `loader` is the split's, from loaders(); `beat` keeps the heartbeat going."""
        raise NotImplementedError


class ClassificationTask(Task):
    def __init__(self, cfg: RunConfig, splits: DatasetSplits, model_input: dict[str, Any]):
        super().__init__(cfg, splits, model_input)
        self.decode_size = run_decode_size(cfg, model_input["image_size"])
        self.image_cache: ImageCache | None = None
        self.all_cached = False  # every image the run reads is in the cache (cache_images)

    def used_paths(self) -> list[str]:
        """The files of every split the run reads: train, then the evaluated ones."""
        names = ["train", *filter(None, (self.eval_split, self.final_split))]
        return [s.path for name in names for s in getattr(self.splits, name)]

    def cache_images(self, processes):
        paths, mode = self.used_paths(), self.cfg.cache_images
        if mode == "off":
            return "image cache off: images read from their files each time"
        # Only `auto` weighs the estimate (reading up to 200 image headers) against the budget.
        needed = estimate_bytes(paths, self.decode_size, self.cfg.seed) if mode == "auto" else 0
        allowed = cache_budget(processes)
        budget = plan_cache(mode, needed, allowed)
        if budget is None:
            why = f" (about {needed >> 20} MiB needed, {allowed >> 20} MiB allowed)"
            return f"image cache {mode}: images read from their files each time" + (
                why if mode == "auto" else ""
            )
        self.image_cache = ImageCache(budget)
        kept = self.image_cache.fill(paths, lambda path: read_image(path, self.decode_size))
        self.all_cached = kept == len({str(p) for p in paths})
        return (
            f"image cache: {kept} of {len(paths)} images decoded once, kept in memory "
            f"({self.image_cache.used >> 20} MiB)"
        )

    def loader_workers(self):
        """No workers (0) when the run trains on the CPU and the cache holds every image it
        reads: there a worker would copy a cached image out and back over a queue, and take a
        core from the training, which costs more than the transform it saves
        (bench/bench_vs_timm.py, on 2 cores: 1.9 s an epoch without workers, 2.2 s with 2).
        On a GPU the workers stay: they augment while the device computes. (The config cannot
        tell a num_workers left at its default from one set to it, so on the CPU both drop.)"""
        if self.all_cached and trains_on_cpu(self.cfg.device, torch.cuda.device_count()):
            return 0
        return self.cfg.num_workers

    def prepare_model(self, model):
        if self.cfg.pretrained:
            self.notes += self.keep_statistics(model)
        if self.cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def keep_statistics(self, model) -> list[str]:
        """keep_bn_statistics for a fine-tuned model; returns what the run log says of it."""
        setting = self.cfg.keep_bn_statistics
        batchnorm = torch.nn.modules.batchnorm._BatchNorm
        if not any(isinstance(m, batchnorm) for m in model.modules()):
            return []  # no BatchNorm that trains (a ViT; a frozen stage's is FrozenBatchNorm)
        if self.cfg.bn_statistics == "off":
            return [f"BatchNorm: statistics re-estimated from each batch (keep_bn_statistics {setting})"]  # fmt: skip
        kept = keep_batchnorm_statistics(model)
        if not kept:
            return []  # its BatchNorm layers are all in the head
        notes = [
            f"BatchNorm: {kept} layers keep their pre-trained statistics (keep_bn_statistics "
            f"{setting})"
        ]
        if not head_prefixes(model):  # engine.optim: no known head, one rate for all
            notes.append(
                "warning: this model's head is unknown, so every layer learns at lr, too fast "
                "for kept statistics (in the fine-tuning benchmark SGD lost 63 points of top-1 "
                "at one rate); set keep_bn_statistics to off"
            )
        elif self.cfg.backbone_lr_factor > choices.KEPT_STATISTICS_MAX_FACTOR:
            notes.append(
                f"warning: the pre-trained layers learn at lr x {self.cfg.backbone_lr_factor:g} "
                "with keep_bn_statistics on: at that rate they drift from the statistics they "
                "keep (in the fine-tuning benchmark SGD lost 63 points of top-1 at 1); set "
                "keep_bn_statistics to auto, or backbone_lr_factor to 0.1"
            )
        return notes

    def dataset(self, samples, train):
        size, mean, std = self.input["image_size"], self.input["mean"], self.input["std"]
        transform = build_transform(self.cfg, train, size, mean, std)
        return ClassificationDataset(samples, transform, self.decode_size, self.image_cache)

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        if self.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def train_step(self, model, batch):
        _, images, labels = batch
        # Smoothed targets in training only: the evaluated loss stays the plain log loss.
        loss = torch.nn.functional.cross_entropy(
            model(self._images(images)), labels, label_smoothing=self.cfg.label_smoothing
        )
        return loss, {}, len(labels)

    @torch.no_grad()
    def evaluate(self, model, split, loader, accelerator, beat):
        model.eval()
        indices, probs, targets, losses = [], [], [], []
        for index, images, labels in loader:
            with accelerator.autocast():
                logits = model(self._images(images)).float()
            loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
            gathered = accelerator.gather_for_metrics(
                (index.to(logits.device), logits.softmax(-1), labels, loss)
            )
            for bucket, value in zip((indices, probs, targets, losses), gathered):
                bucket.append(value.cpu())
            beat()
        idx = torch.cat(indices).numpy()
        p = torch.cat(probs).numpy().astype(np.float64)
        t = torch.cat(targets).numpy()
        metrics = evaluate.classification_metrics(p, t)
        metrics["loss"] = float(torch.cat(losses).mean())
        samples = getattr(self.splits, split)
        predictions = {
            "task": "classification",
            "split": split,
            "classes": self.classes,
            "paths": [samples[i].path for i in idx],
            "targets": t.tolist(),
            "probs": np.round(p, 6).tolist(),
        }
        return metrics, predictions


def collate_indexed_detection(batch):
    images, targets = collate_detection([b[1:] for b in batch])
    return [b[0] for b in batch], images, targets


class DetectionTask(Task):
    collate = staticmethod(collate_indexed_detection)

    def dataset(self, samples, train):
        return DetectionDataset(samples, DetectionTransform(self.cfg, train=train))

    def train_step(self, model, batch):
        _, images, targets = batch
        losses = model(images, targets)  # torchvision detectors return their loss parts
        return sum(losses.values()), losses, len(images)

    @torch.no_grad()
    def evaluate(self, model, split, loader, accelerator, beat):
        model.eval()
        records = []
        for index, images, targets in loader:
            with accelerator.autocast():
                outputs = model(images)
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
            beat()
        records = accelerator.gather_for_metrics(records, use_gather_object=True)
        # Padding of the last batch can repeat a sample on another process: keep one of each.
        records = list({r["index"]: r for r in records}.values())
        preds = [r["pred"] for r in records]
        targets = [r["target"] for r in records]
        metrics = evaluate.detection_metrics(preds, targets, len(self.classes))
        samples = getattr(self.splits, split)
        predictions = {
            "task": "detection",
            "split": split,
            "classes": self.classes,
            "paths": [samples[r["index"]].path for r in records],
            "targets": targets,
            "preds": preds,
        }
        return metrics, predictions


TASKS = {"classification": ClassificationTask, "detection": DetectionTask}
choices.check_implemented("task", choices.TASKS, TASKS)


def create_task(cfg: RunConfig, splits: DatasetSplits, model_input: dict[str, Any]) -> Task:
    return TASKS[choices.get_task(cfg.task).name](cfg, splits, model_input)
