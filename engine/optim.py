"""Optimizer and learning-rate schedule from a RunConfig, by the names in engine.choices.

The schedule has two clocks: `step_batch()` after every optimizer step drives the first epoch's
linear warmup; `step_epoch(metric)` at every epoch's end drives the decay (plateau, step,
exponential). Both are torch.optim.lr_scheduler classes, which chain on the same optimizer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler

from engine import choices
from engine.architectures import head_prefixes
from engine.config import RunConfig, task_default


def create_optimizer(
    cfg: RunConfig, model: nn.Module, log: Callable[[str], None] | None = None
) -> torch.optim.Optimizer:
    """cfg.optimizer over the model's trainable parameters (frozen ones are left out). With
    pre-trained weights and a backbone_lr_factor other than 1, two parameter groups: the head
    at cfg's learning rate first (the rate the schedule reports), then the pre-trained layers
    at that times backbone_lr_factor. A factor that cannot apply is said in one line to `log`
    (default: this module's logger, as a warning)."""
    info = choices.get_optimizer(cfg.optimizer)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters: raise retrained_layers")
    lr = cfg.learning_rate
    groups = [{"params": [p for _, p in named], "lr": lr}]
    head = head_prefixes(model) if cfg.pretrained and cfg.backbone_lr_factor != 1.0 else ()
    # Left at its task's default, a run from scratch has nothing to say.
    default = task_default(cfg.task, "backbone_lr_factor")
    trained_head = [p for n, p in named if head and n.startswith(head)]
    if trained_head:  # a model whose head is unknown keeps one rate for all
        backbone = [p for n, p in named if not n.startswith(head)]
        groups = [{"params": trained_head, "lr": lr}]
        if backbone:
            groups.append({"params": backbone, "lr": lr * cfg.backbone_lr_factor})
    elif cfg.backbone_lr_factor != 1.0 and (cfg.pretrained or cfg.backbone_lr_factor != default):
        why = "pretrained is off" if not cfg.pretrained else "the model's head is not known"
        (log or logging.getLogger(__name__).warning)(
            f"backbone_lr_factor {cfg.backbone_lr_factor:g} ignored: {why}, so every trained "
            f"layer learns at lr {lr:g}"
        )
    kwargs = {"lr": lr, "weight_decay": cfg.weight_decay}
    if info.has_momentum:
        kwargs["momentum"] = cfg.momentum
    if info.has_nesterov and cfg.momentum:  # torch refuses Nesterov without momentum
        kwargs["nesterov"] = cfg.nesterov
    return getattr(torch.optim, info.torch_class)(groups, **kwargs)


# The arguments of each registered schedule's class (choices.LR_SCHEDULES names the class).
SCHEDULE_ARGS = {
    "plateau": lambda cfg: {
        "mode": cfg.metric_mode,
        "factor": cfg.plateau_factor,
        "patience": cfg.plateau_patience,
    },
    "step": lambda cfg: {"step_size": cfg.step_size, "gamma": cfg.gamma},
    "exponential": lambda cfg: {"gamma": cfg.gamma},
}
choices.check_implemented("lr_schedule", choices.LR_SCHEDULES, SCHEDULE_ARGS)


def create_schedule(
    cfg: RunConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> LRSchedule:
    choices.get_schedule(cfg.lr_schedule)  # an unknown name fails here, listing the valid ones
    return LRSchedule(cfg, optimizer, steps_per_epoch)


class LRSchedule:
    """Warmup per batch over the first epoch, then cfg.lr_schedule per epoch."""

    def __init__(self, cfg: RunConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
        self.optimizer = optimizer
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.steps = 0
        self.epochs = 0
        self.warmup = None
        if cfg.warmup and self.steps_per_epoch > 1:
            # Step k of epoch 1 runs at lr * (k + 1) / n: from lr / n (a zero LR would waste a
            # step) up to lr on the last step.
            n = self.steps_per_epoch
            self.warmup = lr_scheduler.LinearLR(
                optimizer, start_factor=1 / n, end_factor=1.0, total_iters=n - 1
            )
        # Built after the warmup: the decay schedulers start from the LR it left.
        schedule = choices.get_schedule(cfg.lr_schedule)
        decay_class = getattr(lr_scheduler, schedule.torch_class)
        self.decay = decay_class(optimizer, **SCHEDULE_ARGS[schedule.name](cfg))
        self.follows_metric = schedule.follows_metric
        self.warming = self.warmup is not None

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def step_batch(self) -> None:
        """Call after every optimizer step."""
        self.steps += 1
        if self.warming:
            if self.warmup.last_epoch < self.warmup.total_iters:
                self.warmup.step()
            if self.warmup.last_epoch >= self.warmup.total_iters:
                self._end_warmup()

    def step_epoch(self, metric_value: float | None = None) -> None:
        """Call at every epoch's end with the epoch's metric (used by plateau)."""
        self.epochs += 1
        if self.warming:  # an epoch shorter than announced still ends the warmup at lr
            self._end_warmup()
        if self.follows_metric:
            # No metric (or NaN, e.g. ROC AUC with a class missing from the test split) is no
            # evidence either way: it does not count as an epoch without improvement.
            if metric_value is not None and math.isfinite(float(metric_value)):
                self.decay.step(float(metric_value))
        else:
            self.decay.step()

    def _end_warmup(self) -> None:
        # Land exactly on lr: the chained factors of LinearLR leave rounding errors.
        for group, base in zip(self.optimizer.param_groups, self.warmup.base_lrs):
            group["lr"] = base
        self.warming = False

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "epochs": self.epochs,
            "warming": self.warming,
            "warmup": self.warmup.state_dict() if self.warmup is not None else None,
            "decay": self.decay.state_dict(),
            # The LRs themselves, so a resume continues the curve whatever order the optimizer's
            # own state is restored in.
            "lrs": [group["lr"] for group in self.optimizer.param_groups],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]
        self.epochs = state["epochs"]
        if self.warmup is not None and state.get("warmup") is not None:
            self.warmup.load_state_dict(state["warmup"])
            self.warming = state["warming"]
        else:
            self.warming = False
        self.decay.load_state_dict(state["decay"])
        for group, lr in zip(self.optimizer.param_groups, state["lrs"]):
            group["lr"] = lr
