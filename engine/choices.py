"""Every named choice of a run, declared once, with the data each choice carries.

Registries in timm's OptimInfo style: a frozen dataclass per choice, one ordered registry per
kind, and a `get_*` lookup whose ValueError lists the valid names. RunConfig's validation, the
New run form, the CLI, optim, evaluate, the dataset readers and export all read these; none
keeps a list of its own. Code that implements a registry (optim's constructors, the dataset
readers, the exporters) calls `check_implemented` at import, so a name added here without
its implementation (or the reverse) fails at once instead of at a user's run.

Pure data: this module imports nothing heavy (the dashboard imports it through
engine.config), so torch classes are named by strings and resolved where torch is loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


def _registry(*infos) -> Mapping[str, Any]:
    """name → info in declaration order (the order forms and error messages show), read-only."""
    out = {info.name: info for info in infos}
    if len(out) != len(infos):
        raise ValueError(f"duplicate names in {[info.name for info in infos]}")
    return MappingProxyType(out)


def _lookup(registry: Mapping[str, Any], kind: str, name: str) -> Any:
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}: expected one of {', '.join(registry)}")
    return registry[name]


def check_implemented(kind: str, registry: Iterable[str], implemented: Iterable[str]) -> None:
    """Raise when the names a module implements differ from the registered ones."""
    registered, done = list(registry), list(implemented)
    missing = [n for n in registered if n not in done]
    extra = [n for n in done if n not in registered]
    if missing or extra:
        raise RuntimeError(
            f"{kind}: registered in engine.choices but not implemented: {missing or 'none'}; "
            f"implemented but not registered: {extra or 'none'}"
        )


# -- tasks --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskInfo:
    name: str
    default_model: str
    default_metric: str
    models: tuple[str, ...]  # offered by the form and pulled by `weights pull`
    any_timm_model: bool  # whether a model outside `models` may be named (any timm name)
    description: str
    # This task's defaults over RunConfig's, for keys a config file, `--set` or the form leaves
    # unset: a detector at 800x1333 needs a far smaller batch than a 380 px classifier.
    task_defaults: tuple[tuple[str, Any], ...] = ()


TASKS = _registry(
    TaskInfo(
        "classification",
        default_model="efficientnet_b4",
        default_metric="roc_auc",
        models=("efficientnet_b0", "efficientnet_b4", "efficientnet_b7"),
        any_timm_model=True,
        description="one label per image",
    ),
    TaskInfo(
        "detection",
        default_model="fasterrcnn_resnet50_fpn",
        default_metric="f1",
        models=(
            "fasterrcnn_resnet50_fpn",
            "fasterrcnn_resnet50_fpn_v2",
            "fasterrcnn_mobilenet_v3_large_fpn",
            "fasterrcnn_mobilenet_v3_large_320_fpn",
        ),
        any_timm_model=False,
        description="boxes around objects",
        # torchvision's detection reference recipe augments with flips only.
        task_defaults=(
            ("batch_size", 4),
            ("epochs", 20),
            ("augment_color", False),
            ("augment_crop", False),
            # Measured for classification only (bench/README.md): a detector keeps one rate.
            ("backbone_lr_factor", 1.0),
        ),
    ),
)


def get_task(name: str) -> TaskInfo:
    return _lookup(TASKS, "task", name)


def listed_models() -> tuple[str, ...]:
    """Every model a task offers by name, in task order."""
    return tuple(m for task in TASKS.values() for m in task.models)


# -- optimizers and learning-rate schedules -----------------------------------------------


@dataclass(frozen=True)
class OptimizerInfo:
    name: str
    torch_class: str  # the class in torch.optim
    has_momentum: bool  # takes the config's `momentum`
    # What `lr` means when left empty: each optimizer's step size lives on its own scale
    # (SGD's steps are the gradient's size, Adam's about lr whatever the gradient's).
    default_lr: float
    description: str
    has_nesterov: bool = False  # takes the config's `nesterov` (with momentum)


OPTIMIZERS = _registry(
    OptimizerInfo("adam", "Adam", False, 1e-3, "adaptive moments; a safe default"),
    # Nesterov momentum: the fine-tuning benchmark's SGD (bench/bench_quality.py).
    OptimizerInfo(
        "sgd", "SGD", True, 1e-2, "SGD with Nesterov momentum", has_nesterov=True
    ),  # fmt: skip
    OptimizerInfo("rmsprop", "RMSprop", True, 1e-3, "RMSprop with momentum"),
    OptimizerInfo("adamax", "Adamax", False, 2e-3, "Adam with the infinity norm"),
    OptimizerInfo("adagrad", "Adagrad", False, 1e-2, "per-parameter rates that only shrink"),
    OptimizerInfo("adadelta", "Adadelta", False, 1.0, "Adagrad without the shrinking rates"),
)


def get_optimizer(name: str) -> OptimizerInfo:
    return _lookup(OPTIMIZERS, "optimizer", name)


@dataclass(frozen=True)
class ScheduleInfo:
    name: str
    torch_class: str  # the class in torch.optim.lr_scheduler
    follows_metric: bool  # steps with the epoch's metric rather than by the epoch count
    # What `lr_gamma` means when left empty. Plateau cuts by `plateau_factor` instead; its
    # value is only what the resolved config records.
    default_gamma: float
    description: str


LR_SCHEDULES = _registry(
    ScheduleInfo("plateau", "ReduceLROnPlateau", True, 0.1, "cut when the metric stops improving"),
    ScheduleInfo("step", "StepLR", False, 0.1, "cut every `step_size` epochs"),
    ScheduleInfo("exponential", "ExponentialLR", False, 0.95, "cut a little every epoch"),
)


def get_schedule(name: str) -> ScheduleInfo:
    return _lookup(LR_SCHEDULES, "lr_schedule", name)


# -- metrics ------------------------------------------------------------------------------


METRIC_MODES = ("max", "min")  # larger is better, smaller is better


@dataclass(frozen=True)
class MetricInfo:
    name: str
    task: str
    mode: str  # one of METRIC_MODES
    label: str  # how people write it


METRICS = (
    MetricInfo("roc_auc", "classification", "max", "ROC AUC"),
    MetricInfo("accuracy", "classification", "max", "Accuracy"),
    MetricInfo("f1", "classification", "max", "F1"),
    MetricInfo("precision", "classification", "max", "Precision"),
    MetricInfo("recall", "classification", "max", "Recall"),
    MetricInfo("log_loss", "classification", "min", "Log loss"),
    MetricInfo("average_precision", "classification", "max", "Average precision"),
    MetricInfo("f1", "detection", "max", "F1"),
    MetricInfo("precision", "detection", "max", "Precision"),
    MetricInfo("recall", "detection", "max", "Recall"),
    MetricInfo("map", "detection", "max", "mAP@[.5:.95]"),
    MetricInfo("map_50", "detection", "max", "mAP@.5"),
)
# The same name means the same thing across tasks (f1, precision, recall), so it is one key
# per task: a task's registry is its own.
_METRICS_BY_TASK = {task: _registry(*(m for m in METRICS if m.task == task)) for task in TASKS}


def metrics_for(task: str) -> Mapping[str, MetricInfo]:
    """name → MetricInfo of the metrics a task reports, in the order the form offers them."""
    return _METRICS_BY_TASK[get_task(task).name]


def get_metric(task: str, name: str) -> MetricInfo:
    return _lookup(metrics_for(task), f"metric for {task}", name)


def metric_mode(name: str) -> str:
    """ "min" for a metric where smaller is better (log_loss, the loss), else "max".

    Task-free on purpose: the compare page sees metric names (`test_log_loss` without its
    prefix) from runs of either task, and a name means the same in both.
    """
    minimized = any(m.name == name and m.mode == "min" for m in METRICS)
    return "min" if minimized or name == "loss" else "max"


# -- dataset formats ----------------------------------------------------------------------

AUTO_FORMAT = "auto"  # not a format: the reader detects one


@dataclass(frozen=True)
class FormatInfo:
    name: str
    tasks: tuple[str, ...]  # the tasks it can hold; a CSV's content tells which
    description: str


DATASET_FORMATS = _registry(
    FormatInfo("imagefolder", ("classification",), "one folder per class"),
    FormatInfo("csv", ("classification", "detection"), "an image column and a label column"),
    FormatInfo("coco", ("detection",), "COCO JSON"),
    FormatInfo("voc", ("detection",), "Pascal VOC Annotations/ folder"),
    FormatInfo("yolo", ("detection",), "YOLO data.yaml with labels/"),
)


def get_format(name: str) -> FormatInfo:
    return _lookup(DATASET_FORMATS, "dataset format", name)


def formats_for(task: str) -> tuple[str, ...]:
    """The formats a task reads, without `auto`: those only it reads first (they tell the task
    apart), then those it shares (csv)."""
    task = get_task(task).name
    read = [f for f in DATASET_FORMATS.values() if task in f.tasks]
    return tuple(f.name for f in sorted(read, key=lambda f: len(f.tasks)))


def format_names() -> tuple[str, ...]:
    """What `dataset_format` accepts: `auto` first, then every format."""
    return (AUTO_FORMAT, *DATASET_FORMATS)


# -- auto / on / off settings ---------------------------------------------------------------


@dataclass(frozen=True)
class SwitchInfo:
    """One value of a key that is `auto`, `on` or `off` (engine.config reads booleans too)."""

    name: str
    description: str


# cache_images: decoded images kept in memory.
IMAGE_CACHE = _registry(
    SwitchInfo("auto", "decoded images kept in memory when every one fits the budget"),
    SwitchInfo("on", "decoded images kept in memory up to the budget, the rest read again"),
    SwitchInfo("off", "every image read from its file each time"),
)

# keep_bn_statistics: BatchNorm statistics when fine-tuning.
BN_STATISTICS = _registry(
    SwitchInfo("auto", "kept while backbone_lr_factor is low enough, re-estimated above"),
    SwitchInfo("on", "the pre-trained statistics kept in training"),
    SwitchInfo("off", "re-estimated from each batch in training"),
)

# Up to this backbone_lr_factor, `auto` keeps the pre-trained statistics: the fine-tuning
# benchmark (bench/README.md) won with them at 0.03, 0.1 and 0.3 and lost them at 1, where the
# pre-trained layers drift from the statistics they keep.
KEPT_STATISTICS_MAX_FACTOR = 0.3


# -- devices and precision ----------------------------------------------------------------


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    description: str


DEVICES = _registry(
    DeviceInfo("auto", "GPUs when present, else the CPU"),
    DeviceInfo("cpu", "the CPU"),
    DeviceInfo("cuda", "NVIDIA GPUs"),
)


def get_device(name: str) -> DeviceInfo:
    return _lookup(DEVICES, "device", name)


@dataclass(frozen=True)
class PrecisionInfo:
    name: str
    on_cpu: bool  # whether a CPU run can use it
    description: str


MIXED_PRECISIONS = _registry(
    PrecisionInfo("no", True, "float32 throughout"),
    PrecisionInfo("fp16", False, "float16 autocast with loss scaling (GPU only)"),
    PrecisionInfo("bf16", True, "bfloat16 autocast"),
)


def get_precision(name: str) -> PrecisionInfo:
    return _lookup(MIXED_PRECISIONS, "mixed_precision", name)


# -- export formats -----------------------------------------------------------------------


@dataclass(frozen=True)
class ExportFormatInfo:
    name: str
    suffix: str  # of the exported file: model.<suffix>
    # The run folder already holds the model in this format (model.safetensors), so the run
    # page offers its download rather than an export button.
    in_run_folder: bool
    description: str


EXPORT_FORMATS = _registry(
    ExportFormatInfo("onnx", "onnx", False, "ONNX graph for ONNX Runtime and friends"),
    ExportFormatInfo("torchscript", "pt", False, "TorchScript for C++ and Python without engine"),
    ExportFormatInfo("safetensors", "safetensors", True, "the state dict, for engine.models"),
)


def get_export_format(name: str) -> ExportFormatInfo:
    return _lookup(EXPORT_FORMATS, "format", name)


# -- people -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleInfo:
    name: str
    description: str


# What each role may do is decided in engine.store; this is the list of names and what they mean.
ROLES = _registry(
    RoleInfo("admin", "everything: any run, datasets, weights and the users"),
    RoleInfo("member", "launches runs and manages their own"),
    RoleInfo("viewer", "reads runs, datasets and results"),
)


def get_role(name: str) -> RoleInfo:
    return _lookup(ROLES, "role", name)


@dataclass(frozen=True)
class UserSourceInfo:
    name: str
    description: str


# Where an account comes from: a built-in one signs in with a password, an OIDC one through
# the team's identity provider (st.login), and has no password here.
USER_SOURCES = _registry(
    UserSourceInfo("local", "a built-in account with a password"),
    UserSourceInfo("oidc", "the team's identity provider (OpenID Connect)"),
)
