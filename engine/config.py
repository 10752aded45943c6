"""RunConfig: every key of a run, its default, what is allowed, and validation.

The keys are the public contract (shared/DESIGN.md): the form, config files, the database,
the compare table and the CLI all use these names. This module imports nothing heavy so the
dashboard can use it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import choices

GROUPS = (
    "Data",
    "Model",
    "Optimization",
    "Schedule",
    "Early stopping",
    "Augmentation",
    "Devices",
)


def _key(
    default,
    group: str,
    help: str,
    allowed: tuple | None = None,
    minimum=None,
    maximum=None,
    shown_default: str | None = None,
    shown_allowed: str | None = None,
    tasks: tuple[str, ...] | None = None,
    instead: str | None = None,
    off=None,
):
    """A config key: its default plus the metadata the form, the validator and the README's
    config table read. `shown_default` / `shown_allowed` say in words what a None default or
    a per-task choice means (the table prints them). `tasks` names the tasks the key applies
    to (None: every task): the form hides it for the others and validation refuses a value
    other than its default or its `off` value (the one that does nothing, what a run of
    another task stores) there, naming the key that does apply (`instead`)."""
    meta = {"group": group, "help": help, "choices": allowed, "min": minimum, "max": maximum}
    meta |= {"shown_default": shown_default, "shown_allowed": shown_allowed}
    meta |= {"tasks": tasks, "instead": instead, "off": off}
    return field(default=default, metadata=meta)


def _per_task(pick) -> str:
    """ "classification: a, b; detection: c" from pick(TaskInfo) → names."""
    return "; ".join(f"{t.name}: {', '.join(pick(t))}" for t in choices.TASKS.values())


def _model_choices(task: choices.TaskInfo) -> tuple[str, ...]:
    return (*task.models, "any timm name") if task.any_timm_model else task.models


def _metric_choices(task: choices.TaskInfo) -> tuple[str, ...]:
    metrics = choices.metrics_for(task.name).values()
    return tuple(m.name + (" (lower is better)" if m.mode == "min" else "") for m in metrics)


def _gamma_defaults() -> str:
    # Schedules that follow the metric cut by plateau_factor: gamma means nothing to them.
    cutting = [s for s in choices.LR_SCHEDULES.values() if not s.follows_metric]
    return ", ".join(f"{s.name}: {s.default_gamma:g}" for s in cutting)


def _lr_defaults() -> str:
    return ", ".join(f"{o.name}: {o.default_lr:g}" for o in choices.OPTIMIZERS.values())


def _task_default(key: str, default: Any) -> str:
    """How the config table shows a default some task overrides, e.g. "32 (detection: 4)"."""

    def shown(value: Any) -> str:
        return str(value).lower() if isinstance(value, bool) else str(value)

    others = [
        f"{t.name}: {shown(dict(t.task_defaults)[key])}"
        for t in choices.TASKS.values()
        if key in dict(t.task_defaults)
    ]
    return f"{shown(default)} ({', '.join(others)})" if others else shown(default)


@dataclass
class RunConfig:
    # Data
    task: str = _key(
        "classification",
        "Data",
        "What the model learns: one label per image (classification) or boxes around objects (detection).",
        tuple(choices.TASKS),
    )
    dataset: str = _key(
        "",
        "Data",
        "Path of the dataset root, or the name of a dataset registered on the Datasets page.",
    )
    dataset_format: str = _key(
        "auto",
        "Data",
        "How the dataset is laid out. `auto` detects image folders, CSV, COCO, VOC and YOLO.",
        choices.format_names(),
    )
    test_ratio: float = _key(
        0.2,
        "Data",
        "Share of images held out for testing when the dataset has no split of its own. "
        "Raise it for a more reliable metric on a small dataset.",
        minimum=0.01,
        maximum=0.9,
    )
    seed: int = _key(
        0, "Data", "One seed for the split, initialisation, augmentation and shuffling.", minimum=0
    )
    name: str = _key(
        "", "Data", "A name for the run; left empty, one is made from the model and dataset."
    )
    cache_images: str = _key(
        "auto",
        "Data",
        "Classification only: keep the decoded images in memory (at the reduced size training "
        "reads them), so each is decoded once per run, not once per epoch. `auto`: when they "
        "all fit in a quarter of the free memory (or of the container's limit); `on`: as many "
        "as fit; `off`: never.",
        tuple(choices.IMAGE_CACHE),
        tasks=("classification",),
        instead="no image cache (each image is read from its file)",
        off="off",
    )
    # Model
    model: str | None = _key(
        None,
        "Model",
        "efficientnet_b0 is fastest, b4 (the default) balances speed and accuracy, b7 is the most "
        "accurate and the slowest. Any timm model name works for classification; Faster R-CNN "
        "variants for detection.",
        shown_default=" / ".join(t.default_model for t in choices.TASKS.values()),
        shown_allowed=_per_task(_model_choices),
    )
    pretrained: bool = _key(
        True,
        "Model",
        "Start from weights trained on ImageNet (classification) or COCO (detection). Almost "
        "always better on small datasets; needs the weights cached or imported on this server.",
    )
    retrained_layers: int | None = _key(
        None,
        "Model",
        "How many backbone stages, counted from the output end, are fine-tuned; the rest stay "
        "frozen and the head always trains. More layers can fit a big dataset better but overfit "
        "a small one. Empty = the model's default: every stage for timm models; for Faster "
        "R-CNN 3 of the 5 backbone layers when pretrained, all 5 from scratch.",
        minimum=0,
        shown_default="per model",
    )
    image_size: int | None = _key(
        None,
        "Model",
        "Classification only: input size in pixels for training and prediction. Empty = the "
        "model's default. Smaller is faster; larger sees finer detail.",
        shown_default="model's default",
        minimum=16,
        maximum=2048,
        tasks=("classification",),
        instead="min_size and max_size",
    )
    min_size: int = _key(
        800,
        "Model",
        "Detection only: the shorter image side after resizing (torchvision's min_size). Lower it "
        "(e.g. 512) to train faster when the objects are large.",
        minimum=32,
        maximum=2048,
        tasks=("detection",),
        instead="image_size",
    )
    max_size: int = _key(
        1333,
        "Model",
        "Detection only: the longer image side is capped at this size.",
        minimum=32,
        maximum=4096,
        tasks=("detection",),
        instead="image_size",
    )
    # Optimization
    optimizer: str = _key(
        "adam",
        "Optimization",
        "Adam is a safe default; SGD (Nesterov momentum, its own lr 0.01) fine-tunes as well "
        "with the default recipe (bench/README.md) and can generalise better on long runs.",
        tuple(choices.OPTIMIZERS),
    )
    lr: float | None = _key(
        None,
        "Optimization",
        "Initial learning rate of the head, reached at the end of the warmup; pre-trained layers "
        "learn at lr × backbone_lr_factor. Empty = the optimizer's own default ("
        + _lr_defaults()
        + ").",
        minimum=0.0,
        maximum=10.0,
        shown_default=_lr_defaults(),
    )
    backbone_lr_factor: float = _key(
        0.1,
        "Optimization",
        "With pre-trained weights, the pre-trained layers learn at lr × this while the new head "
        "learns at lr: the backbone keeps what it knows and the head, starting small, catches "
        "up. 0.1 (with keep_bn_statistics) won the fine-tuning benchmark for Adam and SGD alike "
        "(bench/README.md); 1 is one rate for all; 0 trains the head only. Left unset, "
        "detection uses 1.",
        minimum=0.0,
        maximum=1.0,
        shown_default=_task_default("backbone_lr_factor", 0.1),
    )
    keep_bn_statistics: str = _key(
        "auto",
        "Optimization",
        "Classification with pre-trained weights: `on` keeps BatchNorm layers normalising with "
        "the statistics they were pre-trained with (their scale and shift still train) instead "
        "of re-estimating them from each batch, which on a small dataset cost about 12 points "
        "of top-1 with SGD and 11 with Adam in the fine-tuning benchmark; `off` re-estimates "
        "them. `auto`: on while backbone_lr_factor is at most "
        f"{choices.KEPT_STATISTICS_MAX_FACTOR:g} (the pre-trained layers move slowly enough "
        "for the statistics to fit them; they won at 0.03 to 0.3), off above it (at 1 they "
        "made SGD collapse). A model trained from scratch always estimates its own.",
        tuple(choices.BN_STATISTICS),
        tasks=("classification",),
        instead="frozen BatchNorm in a pre-trained backbone, as torchvision's detectors do",
        off="off",
    )
    label_smoothing: float = _key(
        0.1,
        "Optimization",
        "Classification only: the training targets give this share of their weight to the "
        "other classes, so the model does not grow over-confident on a small dataset. 0 = off.",
        minimum=0.0,
        maximum=0.9,
        tasks=("classification",),
        instead="the detector's own losses",
        off=0.0,
    )
    roi_samples: int = _key(
        128,
        "Optimization",
        "Detection only: region proposals sampled per image to train the box head (a quarter of "
        "them at most on objects, the rest background). torchvision's default is 512; with 128 a "
        "whole run took half the time on a CPU, at the same accuracy on a small dataset "
        "(bench/README.md).",
        minimum=16,
        maximum=2048,
        tasks=("detection",),
        instead="no proposals",
    )
    weight_decay: float = _key(
        0.0,
        "Optimization",
        "L2 penalty on the weights; a little (1e-4) curbs overfitting.",
        minimum=0.0,
    )
    momentum: float = _key(
        0.9, "Optimization", "Momentum for SGD and RMSprop.", minimum=0.0, maximum=1.0
    )
    nesterov: bool = _key(
        True,
        "Optimization",
        "SGD only: Nesterov momentum (runs stored before this key used plain momentum, and "
        "keep it when resumed or run again).",
    )
    batch_size: int = _key(
        32,
        "Optimization",
        "Images per step on EACH device: the global batch is batch size × processes. A bigger "
        "batch trains faster but needs more device memory. Left unset, detection uses 4.",
        minimum=1,
        maximum=4096,
        shown_default=_task_default("batch_size", 32),
    )
    epochs: int = _key(
        50,
        "Optimization",
        "Upper limit on the number of epochs. Left unset, detection uses 20.",
        minimum=1,
        maximum=10000,
        shown_default=_task_default("epochs", 50),
    )
    num_workers: int = _key(
        2,
        "Optimization",
        "Data-loading worker processes per training process. 0 loads in the training process, "
        "as does a run on the CPU whose images all fit the image cache (cache_images).",
        minimum=0,
        maximum=64,
    )
    # Schedule
    lr_schedule: str = _key(
        "plateau",
        "Schedule",
        "How the learning rate decays at the end of each epoch: when the metric stops improving "
        "(plateau), every few epochs (step), or a little every epoch (exponential).",
        tuple(choices.LR_SCHEDULES),
    )
    plateau_patience: int = _key(
        2, "Schedule", "Plateau: epochs without improvement before the LR is cut.", minimum=0
    )
    plateau_factor: float = _key(
        0.1, "Schedule", "Plateau: the LR is multiplied by this when cut.", minimum=0.0, maximum=1.0
    )
    step_size: int = _key(10, "Schedule", "Step: epochs between two cuts of the LR.", minimum=1)
    lr_gamma: float | None = _key(
        None,
        "Schedule",
        "Step and exponential: the LR is multiplied by this at each cut. Empty = "
        + ", ".join(
            f"{s.default_gamma:g} for {s.name}"
            for s in choices.LR_SCHEDULES.values()
            if not s.follows_metric
        )
        + ".",
        minimum=0.0,
        maximum=1.0,
        shown_default=_gamma_defaults(),
    )
    warmup: bool = _key(
        True,
        "Schedule",
        "Raise the LR linearly from near zero to `lr` over the first epoch, so early large "
        "gradients do not wreck pre-trained weights.",
    )
    # Early stopping
    metric: str | None = _key(
        None,
        "Early stopping",
        "The metric that picks the best epoch, drives early stopping and the plateau schedule, "
        "measured each epoch on the val split (the test split where the dataset has no val "
        "split; with both, the best epoch's model is scored on test at the end). Default: "
        + ", ".join(f"{t.default_metric} ({t.name})" for t in choices.TASKS.values())
        + ".",
        shown_default=" / ".join(t.default_metric for t in choices.TASKS.values()),
        shown_allowed=_per_task(_metric_choices),
    )
    early_stopping: bool = _key(True, "Early stopping", "Stop when the metric stops improving.")
    early_stopping_patience: int = _key(
        5, "Early stopping", "Epochs without an improvement before stopping.", minimum=1
    )
    early_stopping_delta: float = _key(
        0.001, "Early stopping", "The smallest change that counts as an improvement.", minimum=0.0
    )
    # Augmentation
    # On by default: the fine-tuning benchmark (bench/bench_quality.py) measures what they give.
    augment_color: bool = _key(
        True,
        "Augmentation",
        "Random hue, contrast and brightness per image per epoch.",
        shown_default=_task_default("augment_color", True),
    )
    augment_hflip: bool = _key(True, "Augmentation", "Random horizontal flips.")
    augment_vflip: bool = _key(
        False, "Augmentation", "Random vertical flips (for aerial or microscope images)."
    )
    augment_rotation: float = _key(
        0.0,
        "Augmentation",
        "Maximum random rotation in degrees (0 = off).",
        minimum=0.0,
        maximum=180.0,
    )
    augment_crop: bool = _key(
        True,
        "Augmentation",
        "Random crops that keep at least `crop_min_ratio` of the area.",
        shown_default=_task_default("augment_crop", True),
    )
    crop_min_ratio: float = _key(
        0.75,
        "Augmentation",
        "Smallest share of the image area a random crop keeps.",
        minimum=0.05,
        maximum=1.0,
    )
    # Devices
    device: str = _key(
        "auto", "Devices", "`auto` uses GPUs when present, else the CPU.", tuple(choices.DEVICES)
    )
    num_processes: int = _key(
        1,
        "Devices",
        "Training processes on each machine: one per GPU, or CPU processes. The worker hands a "
        "run free GPUs.",
        minimum=1,
        maximum=1024,
    )
    mixed_precision: str = _key(
        "no",
        "Devices",
        "fp16 or bf16 halve memory and speed up training on recent GPUs; keep `no` on CPU.",
        tuple(choices.MIXED_PRECISIONS),
    )
    channels_last: bool = _key(
        True, "Devices", "Channels-last memory layout: faster convolutions on CPU and recent GPUs."
    )
    num_machines: int = _key(
        1,
        "Devices",
        "Machines the run trains on at once. The worker starts the run on its host as "
        "`machine_rank`; each other host joins with `python -m engine.launch --run-id N "
        "--machine-rank R` (README: Several machines).",
        minimum=1,
        maximum=1024,
    )
    machine_rank: int = _key(
        0,
        "Devices",
        "The rank of the machine whose worker launches the run; rank 0 holds the main process.",
        minimum=0,
        maximum=1023,
    )
    main_process_ip: str = _key(
        "",
        "Devices",
        "Address of the rank-0 machine that every machine of the run can reach; needed when "
        "num_machines > 1.",
    )
    main_process_port: int | None = _key(
        None,
        "Devices",
        "Port on the rank-0 machine where the processes meet. Empty = a free port on one machine, "
        "29500 across machines.",
        minimum=1,
        maximum=65535,
        shown_default="a free port / 29500",
    )
    accelerate_config: str = _key(
        "",
        "Devices",
        "An accelerate config file (made by `accelerate config`) that decides processes, "
        "machines and addresses in place of the keys above; the form lists the files in "
        "<data dir>/accelerate or $VISIONBOARD_ACCELERATE_CONFIGS. Empty = the worker's flags.",
    )

    # -- derived values -------------------------------------------------------------------
    # These read unvalidated configs too (a form being filled in): an unknown task or schedule
    # falls back on the first registered one instead of raising.
    @property
    def task_info(self) -> choices.TaskInfo:
        return choices.TASKS.get(self.task) or next(iter(choices.TASKS.values()))

    @property
    def model_name(self) -> str:
        return self.model or self.task_info.default_model

    @property
    def metric_name(self) -> str:
        return self.metric or self.task_info.default_metric

    @property
    def learning_rate(self) -> float:
        """lr, or the optimizer's default where it is left empty."""
        if self.lr is not None:
            return self.lr
        info = choices.OPTIMIZERS.get(self.optimizer)
        return (info or next(iter(choices.OPTIMIZERS.values()))).default_lr

    @property
    def bn_statistics(self) -> str:
        """keep_bn_statistics as `on` or `off`: `auto` follows backbone_lr_factor."""
        if self.keep_bn_statistics != "auto":
            return self.keep_bn_statistics
        return auto_bn_statistics(self.backbone_lr_factor)

    @property
    def gamma(self) -> float:
        if self.lr_gamma is not None:
            return self.lr_gamma
        schedule = choices.LR_SCHEDULES.get(self.lr_schedule)
        return (schedule or next(iter(choices.LR_SCHEDULES.values()))).default_gamma

    @property
    def metric_mode(self) -> str:
        return choices.metric_mode(self.metric_name)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build and validate a config; raise ConfigError listing every bad field at once."""
        errors = []
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in data.items():
            if key not in known:
                errors.append(FieldError(key, value, "a known key: " + ", ".join(sorted(known))))
                continue
            try:
                kwargs[key] = _coerce(known[key], value)
            except ValueError as exc:
                errors.append(FieldError(key, value, str(exc)))
        task = kwargs.get("task", known["task"].default)
        if task in choices.TASKS:  # an unknown task is reported by errors() below
            for key, value in choices.TASKS[task].task_defaults:
                kwargs.setdefault(key, value)
        cfg = cls(**kwargs)
        errors += cfg.errors()
        if errors:
            raise ConfigError(errors)
        return cfg

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> RunConfig:
        """from_dict for a config stored by an earlier run, read as that run used it
        (as_used): resuming or re-running it trains as it did."""
        return cls.from_dict(as_used(data))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved(self) -> dict[str, Any]:
        """The config with task-dependent defaults filled in: what the run will really use."""
        data = self.to_dict()
        data["model"] = self.model_name
        data["metric"] = self.metric_name
        data["lr_gamma"] = self.gamma
        data["lr"] = self.learning_rate
        data["keep_bn_statistics"] = self.bn_statistics
        for f in dataclasses.fields(self):  # a key of another task: what this run really uses
            tasks, off = f.metadata.get("tasks"), f.metadata.get("off")
            if tasks is not None and self.task not in tasks and off is not None:
                data[f.name] = off
        return data

    # -- validation ---------------------------------------------------------------------
    def errors(self) -> list[FieldError]:
        """Every problem with the values, each naming the field, the value and what is allowed."""
        errors = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            meta = f.metadata
            if value is None:
                continue
            if isinstance(value, float) and not math.isfinite(value):
                # nan slips past every comparison below and inf past a missing maximum; either
                # would be queued and fail later, blaming another setting.
                errors.append(FieldError(f.name, value, _finite_range(meta)))
                continue
            if meta.get("choices") and value not in meta["choices"]:
                errors.append(FieldError(f.name, value, "one of " + ", ".join(meta["choices"])))
            if meta.get("min") is not None and value < meta["min"]:
                errors.append(FieldError(f.name, value, f"a value of at least {meta['min']}"))
            if meta.get("max") is not None and value > meta["max"]:
                errors.append(FieldError(f.name, value, f"a value of at most {meta['max']}"))
        if not str(self.dataset).strip():
            errors.append(FieldError("dataset", self.dataset, "a dataset path or registered name"))
        if self.task not in choices.TASKS:
            return errors
        task = choices.TASKS[self.task]
        errors += self._task_key_errors()
        if self.dataset_format in choices.DATASET_FORMATS:
            allowed = choices.formats_for(self.task)
            if self.dataset_format not in allowed:
                errors.append(
                    FieldError(
                        "dataset_format",
                        self.dataset_format,
                        f"for {self.task}: {choices.AUTO_FORMAT}, " + ", ".join(allowed),
                    )
                )
        metrics = choices.metrics_for(self.task)
        if self.metric is not None and self.metric not in metrics:
            errors.append(
                FieldError("metric", self.metric, f"for {self.task}: " + ", ".join(metrics))
            )
        if self.model is not None:
            if not self.model.strip():
                errors.append(FieldError("model", self.model, "a model name"))
            elif self.model not in task.models and (
                not task.any_timm_model or self.model in choices.listed_models()
            ):
                # A closed list takes only its own models; an open one (any timm name) still
                # refuses the models another task lists.
                what = ", ".join(task.models) + (" or a timm name" if task.any_timm_model else "")
                errors.append(FieldError("model", self.model, f"for {self.task}: {what}"))
        if (
            self.task == "detection"
            and self.retrained_layers is not None
            and self.retrained_layers > 5
        ):
            errors.append(
                FieldError("retrained_layers", self.retrained_layers, "for detection: 0 to 5")
            )
        if self.task == "detection" and self.min_size > self.max_size:
            errors.append(
                FieldError("min_size", self.min_size, f"at most max_size ({self.max_size})")
            )
        precision = choices.MIXED_PRECISIONS.get(self.mixed_precision)
        if self.device == "cpu" and precision and not precision.on_cpu:
            on_cpu = [p.name for p in choices.MIXED_PRECISIONS.values() if p.on_cpu]
            errors.append(
                FieldError(
                    "mixed_precision", self.mixed_precision, "on cpu: " + " or ".join(on_cpu)
                )
            )
        errors += self._machine_errors()
        return errors

    def _task_key_errors(self) -> list[FieldError]:
        """A key of another task (image_size for detection) would be silently ignored: it must
        keep its default, and the error names the key this task reads instead."""
        errors = []
        for f in dataclasses.fields(self):
            tasks, off = f.metadata.get("tasks"), f.metadata.get("off")
            value = getattr(self, f.name)
            if tasks is None or self.task in tasks or value in (f.default, off):
                continue
            default = "empty" if f.default in (None, "") else str(f.default)
            if off is not None:
                default = f"{off} (or unset)"
            errors.append(
                FieldError(
                    f.name,
                    value,
                    f"{default} for {self.task}: {f.name} applies to {' and '.join(tasks)} "
                    f"only; {self.task} uses {f.metadata['instead']}",
                )
            )
        return errors

    def _machine_errors(self) -> list[FieldError]:
        """Keys that must agree across machines; an accelerate config file decides them alone."""
        if self.accelerate_config:
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            return [
                FieldError(
                    key,
                    getattr(self, key),
                    f"its default ({'empty' if defaults[key] in (None, '') else defaults[key]}) "
                    "with accelerate_config: the file decides it",
                )
                for key in MACHINE_KEYS
                if getattr(self, key) != defaults[key]
            ]
        errors = []
        if self.machine_rank >= self.num_machines:
            errors.append(
                FieldError(
                    "machine_rank",
                    self.machine_rank,
                    f"less than num_machines ({self.num_machines})",
                )
            )
        if self.num_machines > 1 and not self.main_process_ip.strip():
            errors.append(
                FieldError(
                    "main_process_ip",
                    self.main_process_ip,
                    "the rank-0 machine's address when num_machines > 1",
                )
            )
        return errors


# What a run's accelerate_config file decides in place of the run's own keys.
MACHINE_KEYS = (
    "num_processes",
    "num_machines",
    "machine_rank",
    "main_process_ip",
    "main_process_port",
)

# Keys added after runs were first stored, with the value those runs trained with: a stored
# config that lacks one is read with it (RunConfig.from_stored), not with today's default.
STORED_BEFORE = {
    "label_smoothing": 0.0,
    "backbone_lr_factor": 1.0,
    "nesterov": False,
    "roi_samples": 512,
    "keep_bn_statistics": "off",
}


def auto_bn_statistics(backbone_lr_factor: float) -> str:
    """What keep_bn_statistics `auto` gives at this factor: kept statistics fit only
    pre-trained layers that move slowly (choices.KEPT_STATISTICS_MAX_FACTOR)."""
    return "on" if backbone_lr_factor <= choices.KEPT_STATISTICS_MAX_FACTOR else "off"


def task_default(task: str, key: str) -> Any:
    """A key's default for a task: the task's own (choices.TaskInfo.task_defaults), else
    RunConfig's."""
    info = choices.TASKS.get(task)
    own = dict(info.task_defaults) if info else {}
    return own[key] if key in own else RunConfig.__dataclass_fields__[key].default


def as_used(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored run config as its run used it: keys it predates take the values that run
    used (STORED_BEFORE), not today's defaults; keys of another task than the run's are left
    out (a detection key means nothing to a classification run, which never used it, and a
    later change of its default must not make the stored config invalid)."""
    task = stored.get("task", RunConfig.task)
    tasks = {f.name: f.metadata.get("tasks") for f in dataclasses.fields(RunConfig)}

    def used(key: str) -> bool:
        return tasks.get(key) is None or task in tasks[key]

    predates = {k: v for k, v in STORED_BEFORE.items() if k not in stored}
    return {k: v for k, v in {**stored, **predates}.items() if used(k)}


@dataclass
class FieldError:
    field: str
    value: Any
    allowed: str

    def __str__(self) -> str:
        return f"{self.field}: got {self.value!r}, expected {self.allowed}"


class ConfigError(ValueError):
    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("invalid config:\n" + "\n".join(f"  - {e}" for e in errors))

    def by_field(self) -> dict[str, str]:
        return {e.field: str(e) for e in self.errors}


TRUE_WORDS = ("true", "yes", "1", "on")
FALSE_WORDS = ("false", "no", "0", "off")


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Turn a value from a file, a form or `--set` into the field's type, or raise ValueError."""
    kind = str(f.type)
    if value is None or (isinstance(value, str) and value.strip() == "" and "None" in kind):
        if "None" in kind:
            return None
        if kind == "str":
            return ""
        raise ValueError(_expected(kind))
    if kind.startswith("bool"):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in TRUE_WORDS:
            return True
        if text in FALSE_WORDS:
            return False
        raise ValueError("true or false")
    if kind.startswith("int"):
        if isinstance(value, bool):
            raise ValueError(_expected(kind))
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(_expected(kind))
        try:
            return int(str(value).strip()) if not isinstance(value, (int, float)) else int(value)
        except ValueError:
            raise ValueError(_expected(kind)) from None
    if kind.startswith("float"):
        if isinstance(value, bool):
            raise ValueError(_expected(kind))
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(_expected(kind)) from None
    if {"on", "off"} <= set(f.metadata.get("choices") or ()):  # an auto/on/off key
        text = str(value).strip().lower()  # `true` in a TOML file, `--set key=false`
        if value is True or text in TRUE_WORDS:
            return "on"
        if value is False or text in FALSE_WORDS:
            return "off"
    if not isinstance(value, str):
        raise ValueError("a string")
    return value.strip()


def _finite_range(meta) -> str:
    """ "a finite number from 0.0 to 10.0" (or "of at least 0.0", …) from a key's bounds."""
    low, high = meta.get("min"), meta.get("max")
    if low is not None and high is not None:
        return f"a finite number from {low} to {high}"
    if low is not None:
        return f"a finite number of at least {low}"
    if high is not None:
        return f"a finite number of at most {high}"
    return "a finite number"


def _expected(kind: str) -> str:
    base = kind.split("|")[0].strip()
    word = {"int": "a whole number", "float": "a number", "bool": "true or false"}.get(base, base)
    return word + (" or empty" if "None" in kind else "")


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`--set key=value` items → dict; values are coerced later with the field's type."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError([FieldError("--set", item, "key=value")])
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON config file into a dict; errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            [FieldError("config file", str(path), f"a readable file ({exc.strerror})")]
        ) from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [FieldError("config file", str(path), f"valid JSON (line {exc.lineno}: {exc.msg})")]
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([FieldError("config file", str(path), f"valid TOML ({exc})")]) from None
    if not isinstance(data, dict):
        raise ConfigError([FieldError("config file", str(path), "a table of key = value")])
    # A [run] / [config] table is accepted as well as top-level keys.
    for table in ("run", "config"):
        if isinstance(data.get(table), dict) and len(data) == 1:
            data = data[table]
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    data = read_config_file(path) if path else {}
    data.update(parse_overrides(overrides or []))
    return RunConfig.from_dict(data)


def field_info() -> list[dict[str, Any]]:
    """Every key with its default, group, help and allowed values: what the form draws."""
    out = []
    for f in dataclasses.fields(RunConfig):
        out.append({"name": f.name, "type": str(f.type), "default": f.default, **f.metadata})
    return out
