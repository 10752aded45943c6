"""New run: a form over every config key, grouped as in engine.config.GROUPS.

Widget keys are `cfg_<key>`. Submitting validates with RunConfig.from_dict (errors show
beside their fields), then runs engine.preflight.check_run (the model exists, the dataset reads,
pre-trained weights are here: the same check as `visionboard train`), then queues the run with
store.create_run and opens its page. The dashboard never trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from dashboard import state
from dashboard.data_check import draw_check, split_by_severity
from engine import choices, store
from engine.config import (
    GROUPS,
    ConfigError,
    RunConfig,
    as_used,
    auto_bn_statistics,
    field_info,
    task_default,
)
from engine.data import preview_augmentations
from engine.launch import configs_dir, list_accelerate_configs
from engine.preflight import check_run, resolve_paths

state.page_setup()

KEY = "cfg_"
OTHER_MODEL = "other timm name…"
OTHER_PATH = "a path on the server…"
ERRORS = "new_run_errors"
TWINS = "new_run_twins"  # (form values, ids of queued or running runs with that config)
# Increments of the +/- buttons of float fields; the others step by 0.1 (or 1 for ints).
FLOAT_STEPS = {"lr": 1e-4, "weight_decay": 1e-4, "test_ratio": 0.05, "early_stopping_delta": 1e-3,
               "backbone_lr_factor": 0.05, "label_smoothing": 0.05}  # fmt: skip
# Keys drawn by hand (their choices depend on the task or the registered datasets).
CUSTOM = ("task", "dataset", "model", "metric", "dataset_format", "accelerate_config")
OPEN_GROUPS = ("Data", "Model")
# Labels where the key's words read badly; the rest is the key with spaces.
LABELS = {"lr": "Learning rate", "lr_gamma": "LR gamma", "lr_schedule": "LR schedule",
          "augment_hflip": "Horizontal flips", "augment_vflip": "Vertical flips",
          "augment_color": "Colour changes", "augment_rotation": "Rotation (degrees)",
          "augment_crop": "Random crops", "num_workers": "Num workers",
          "main_process_ip": "Main process IP", "accelerate_config": "Accelerate config file",
          "backbone_lr_factor": "Backbone LR factor"}  # fmt: skip

FIELDS = field_info()
BY_NAME = {f["name"]: f for f in FIELDS}


def kind_of(info: dict[str, Any]) -> tuple[str, bool]:
    """('int' | 'float' | 'bool' | 'str', optional) from field_info's type string."""
    text = str(info["type"])
    return text.split("|")[0].strip(), "None" in text


def widget_value(name: str, value: Any) -> Any:
    """A config value in the type its widget holds (number inputs reject int/float mixes)."""
    kind, optional = kind_of(BY_NAME[name])
    if value is None:
        return None if optional else BY_NAME[name]["default"]
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            return bool(value)
    except (TypeError, ValueError):
        return BY_NAME[name]["default"]
    return str(value)


def label_of(name: str) -> str:
    return LABELS.get(name) or name.replace("_", " ").capitalize()


def allowed_range(info: dict[str, Any]) -> str:
    """ "16…2048", "at least 0", or "" for fields without bounds."""
    low, high = info.get("min"), info.get("max")
    if low is not None and high is not None:
        return f"{low:g}…{high:g}"
    if low is not None:
        return f"at least {low:g}"
    if high is not None:
        return f"at most {high:g}"
    return ""


def with_key(info: dict[str, Any]) -> str:
    """The help text, the allowed range, and the key's name (the word config files use)."""
    bounds = allowed_range(info)
    allowed = f"\n\nAllowed: {bounds}." if bounds else ""
    return f"{info.get('help') or ''}{allowed}\n\nConfig key: `{info['name']}`."


def models_for(task: str) -> list[str]:
    info = choices.get_task(task)
    return [*info.models, OTHER_MODEL] if info.any_timm_model else list(info.models)


def metrics_for(task: str) -> list[str]:
    return list(choices.metrics_for(task))


def formats_for(task: str) -> list[str]:
    return [choices.AUTO_FORMAT, *choices.formats_for(task)]


def datasets() -> dict[str, dict]:
    return {d["name"]: d for d in store.list_datasets(state.get_db())}


def applies(info: dict[str, Any], task: str) -> bool:
    """Whether a key means something to the task (engine.config's `tasks`): the form draws
    and sends only those; the others keep their defaults, which validation requires."""
    return info.get("tasks") is None or task in info["tasks"]


def dataset_options(registered: dict[str, dict], task: str) -> list[str]:
    """The registered datasets of the task, then a path on the server."""
    return [*(n for n, d in registered.items() if d["task"] == task), OTHER_PATH]


# -- session state: defaults, filling from a past run -----------------------------------------


def init_state(registered: dict[str, dict]) -> None:
    """Give every widget a value in session state once (widgets then read only their key)."""
    ss = st.session_state
    for info in FIELDS:
        if info["name"] not in CUSTOM:
            ss.setdefault(KEY + info["name"], widget_value(info["name"], info["default"]))
    ss.setdefault(KEY + "task", BY_NAME["task"]["default"])
    task = ss[KEY + "task"]
    if ss.get(KEY + "model") not in models_for(task):
        ss[KEY + "model"] = choices.get_task(task).default_model
    if ss.get(KEY + "metric") not in metrics_for(task):
        ss[KEY + "metric"] = choices.get_task(task).default_metric
    if ss.get(KEY + "dataset_format") not in formats_for(task):
        ss[KEY + "dataset_format"] = choices.AUTO_FORMAT
    ss.setdefault(KEY + "model_other", "")
    ss.setdefault(KEY + "accelerate_config", "")
    ss.setdefault(KEY + "dataset_path", "")
    ss.setdefault(KEY + "tags", "")
    options = dataset_options(registered, task)
    if ss.get(KEY + "dataset_choice") not in options:
        ss[KEY + "dataset_choice"] = "digits" if "digits" in options else options[0]


def use_task_defaults(task: str) -> None:
    info = choices.get_task(task)
    st.session_state[KEY + "model"] = info.default_model
    st.session_state[KEY + "metric"] = info.default_metric
    # The task's proposals (a detector's small batch); switching back restores RunConfig's.
    for name in {n for t in choices.TASKS.values() for n, _ in t.task_defaults}:
        st.session_state[KEY + name] = widget_value(name, task_default(task, name))


# About 1.5 GB of accelerator memory per 800x1333 image when training Faster R-CNN R50-FPN
# (torchvision's reference recipe runs 2 images per 16 GB GPU with room to spare).
GB_PER_DETECTION_IMAGE = 1.5
DETECTION_REFERENCE_PIXELS = 800 * 1333
MEMORY_WARNING_GB = 8.0  # above this, a warning: a CPU run or an 8 GB GPU struggles


def detection_memory_hint(batch_size: Any, min_size: Any, max_size: Any) -> tuple[float, str]:
    """(GB, a sentence): a rough memory figure for training a detection batch."""
    try:
        images = int(batch_size) * int(min_size) * int(max_size) / DETECTION_REFERENCE_PIXELS
    except (TypeError, ValueError):
        return 0.0, ""
    gigabytes = images * GB_PER_DETECTION_IMAGE
    return gigabytes, (
        f"Batch {batch_size} at {min_size}x{max_size} needs roughly {gigabytes:.0f} GB of "
        "memory per device to train a Faster R-CNN (about 1.5 GB per 800x1333 image); a CPU "
        "is slow at it. On a CPU or a small GPU, lower batch_size (2-4) or min_size and max_size."
    )


def on_task_change() -> None:
    ss = st.session_state
    task = ss[KEY + "task"]
    use_task_defaults(task)
    ss[KEY + "dataset_format"] = choices.AUTO_FORMAT
    options = dataset_options(datasets(), task)
    if ss.get(KEY + "dataset_choice") not in options:
        ss[KEY + "dataset_choice"] = options[0]


def on_dataset_change() -> None:
    """A registered dataset (one of the chosen task's) knows its format: set it."""
    ss = st.session_state
    chosen = datasets().get(ss[KEY + "dataset_choice"])
    if not chosen:
        return
    fmt = chosen.get("format")
    ss[KEY + "dataset_format"] = (
        fmt if fmt in formats_for(ss[KEY + "task"]) else choices.AUTO_FORMAT
    )


def stored_values(config: dict[str, Any]) -> dict[str, Any]:
    """Every key's form value for a stored config: a key it lacks takes what its run used
    (engine.config.as_used) or the task's default, never what the form held before; a key of
    another task its default; an lr equal to its optimizer's default stays empty, so that
    choosing another optimizer takes that one's default, and keep_bn_statistics equal to what
    `auto` gives stays `auto`, so that a changed backbone_lr_factor still decides it."""
    config = as_used(config)
    task = config.get("task", BY_NAME["task"]["default"])
    values = {}
    for info in FIELDS:
        name = info["name"]
        value = config[name] if name in config else task_default(task, name)
        if not applies(info, task):
            value = info["default"]
        values[name] = value
    optimizer = choices.OPTIMIZERS.get(values["optimizer"])
    if optimizer is not None and values["lr"] == optimizer.default_lr:
        values["lr"] = None
    factor = values["backbone_lr_factor"]
    auto = auto_bn_statistics(factor) if isinstance(factor, (int, float)) else None
    if values["keep_bn_statistics"] == auto:
        values["keep_bn_statistics"] = "auto"
    return values


def fill_from_run(run_id: int | None) -> None:
    """Copy a past run's config into the form (the name is left empty for a fresh one)."""
    if run_id is None:
        return
    run = store.get_run(state.get_db(), int(run_id))
    if run is None:
        return
    ss = st.session_state
    config = run["config"] or {}
    for name, value in stored_values(config).items():
        if name not in ("dataset", "model", "name"):
            ss[KEY + name] = widget_value(name, value)
    task = config.get("task", BY_NAME["task"]["default"])
    model = config.get("model") or choices.get_task(task).default_model
    if model in models_for(task):
        ss[KEY + "model"] = model
    else:
        ss[KEY + "model"] = OTHER_MODEL
        ss[KEY + "model_other"] = model
    dataset = str(config.get("dataset", ""))
    match = [n for n, d in datasets().items() if dataset in (n, d["path"])]
    if match:
        ss[KEY + "dataset_choice"] = match[0]
    else:
        ss[KEY + "dataset_choice"] = OTHER_PATH
        ss[KEY + "dataset_path"] = dataset
    ss[KEY + "name"] = ""
    ss[KEY + "tags"] = ", ".join(run.get("tags") or [])
    ss.pop(ERRORS, None)


def on_start_from() -> None:
    fill_from_run(st.session_state.get("start_from"))


def turn_pretrained_off() -> None:
    st.session_state[KEY + "pretrained"] = False


# -- values → config ---------------------------------------------------------------------------


def draw_dataset_check(dataset: dict) -> None:
    """The data check of a registered dataset, as it was at registration, before Start."""
    info = dataset.get("info") or {}
    found = split_by_severity(info)
    blocking, warnings = len(found["blocking"]), len(found["warning"])
    if not blocking and not warnings:
        st.caption("Data check: no problems found when it was registered.")
        return
    with st.container(border=True):  # not an expander: draw_check folds what was ignored
        st.markdown(f"**Data check**: {blocking} blocking, {warnings} warning(s)")
        draw_check(info, key="new_run_check")
        st.caption("As checked when it was registered; the Datasets page checks it again.")


def dataset_value(registered: dict[str, dict]) -> str:
    ss = st.session_state
    choice = ss.get(KEY + "dataset_choice")
    if choice in registered:
        return registered[choice]["path"]
    return str(ss.get(KEY + "dataset_path") or "").strip()


def model_value() -> str:
    ss = st.session_state
    model = ss.get(KEY + "model")
    if model == OTHER_MODEL:
        return str(ss.get(KEY + "model_other") or "").strip()
    return str(model or "")


def collect_values(registered: dict[str, dict]) -> dict[str, Any]:
    values = {}
    task = st.session_state.get(KEY + "task", BY_NAME["task"]["default"])
    for info in FIELDS:
        name = info["name"]
        if not applies(info, task):
            values[name] = info["default"]  # hidden: a past run's value must not linger
        elif name == "dataset":
            values[name] = dataset_value(registered)
        elif name == "model":
            values[name] = model_value()
        else:
            values[name] = st.session_state.get(KEY + name, info["default"])
    return values


ANY_HOST = "any free worker"


def on_host_value() -> str | None:
    """The host the run is pinned to (Run on host), None for the first free worker."""
    host = st.session_state.get(KEY + "on_host")
    return None if host in (None, "", ANY_HOST) else host


def tags_value() -> list[str]:
    return [
        t.strip() for t in str(st.session_state.get(KEY + "tags") or "").split(",") if t.strip()
    ]


@st.cache_data(ttl=30, show_spinner=False)
def weights_status(model: str, home: str) -> dict[str, Any]:
    """engine.weights.weights_status, cached: the form draws it on every change."""
    from engine.weights import weights_status as status

    try:
        return status(model, home=home)
    except Exception as exc:  # an unknown name is the form's job to report, not a crash
        return {"model": model, "available": False, "source": None, "error": str(exc)}


def check_custom_model() -> dict[str, str]:
    """The "other timm name" box must not be empty: an empty name would fall back to the
    default model (check_run then checks that timm knows a typed one)."""
    if st.session_state.get(KEY + "model") != OTHER_MODEL or model_value():
        return {}
    return {"model": "model: type a timm model name (e.g. resnet18), or pick one above"}


def submit() -> None:
    """Validate and queue (a button callback: it runs before the page is drawn again)."""
    ss = st.session_state
    registered = datasets()
    values = collect_values(registered)
    model_error = check_custom_model()
    try:
        cfg = RunConfig.from_dict(values)
    except ConfigError as exc:
        ss[ERRORS] = {**exc.by_field(), **model_error}
        return
    # Stored absolute, as `visionboard train` does: the trainer reads it from another directory.
    cfg = resolve_paths(cfg, state.get_db())
    # The same check as `visionboard train`: both refuse the same runs before queueing.
    errors = {p.field: str(p) for p in check_run(cfg, state.get_db())}
    errors |= model_error
    if errors:
        ss[ERRORS] = errors
        return
    config = cfg.resolved()
    twins = store.active_twins(state.get_db(), config)
    if twins and ss.get(TWINS, (None,))[0] != values:
        # Likely queued twice by mistake: say so, and queue only on a second click.
        ss[TWINS] = (values, twins)
        ss.pop(ERRORS, None)
        return
    ss.pop(TWINS, None)
    try:
        run_id = store.create_run(
            state.get_db(), config, name=cfg.name, tags=tags_value(),
            by=state.current_user(), on_host=on_host_value(),
        )  # fmt: skip
    except store.PermissionDenied as exc:  # the role changed since the page was drawn
        ss[ERRORS] = {"queue": str(exc)}
        return
    ss.pop(ERRORS, None)
    ss["new_run_queued"] = run_id
    ss["run_id"] = run_id


# -- drawing -----------------------------------------------------------------------------------


def show_error(name: str) -> None:
    message = st.session_state.get(ERRORS, {}).get(name)
    if message:
        st.error(message, icon=":material/warning:")


def draw_field(info: dict[str, Any], registered: dict[str, dict]) -> None:
    name = info["name"]
    key = KEY + name
    task = st.session_state[KEY + "task"]
    help_text = with_key(info)
    label = label_of(name)
    if name == "task":
        st.selectbox(
            label, list(info["choices"]), key=key, help=help_text, on_change=on_task_change
        )
    elif name == "dataset":
        st.selectbox(
            "Dataset",
            dataset_options(registered, task),
            key=KEY + "dataset_choice",
            help=help_text,
            on_change=on_dataset_change,
            format_func=lambda n: (
                n
                if n == OTHER_PATH
                else f"{n} ({registered[n]['task']}, {registered[n]['format']})"
            ),
        )
        chosen = registered.get(st.session_state[KEY + "dataset_choice"])
        if chosen is not None:
            draw_dataset_check(chosen)
        if st.session_state[KEY + "dataset_choice"] == OTHER_PATH:
            st.text_input(
                "Dataset path",
                key=KEY + "dataset_path",
                help="A folder (image folders, COCO, VOC, YOLO) or a CSV file on the server.",
                placeholder="/data/my_images",
            )
    elif name == "dataset_format":
        st.selectbox(label, formats_for(task), key=key, help=help_text)
    elif name == "model":
        st.selectbox("Model", models_for(task), key=key, help=help_text)
        if st.session_state[key] == OTHER_MODEL:
            st.text_input(
                "timm model name",
                key=KEY + "model_other",
                help="Any model name of the timm library, e.g. resnet18 or convnext_tiny.",
                placeholder="resnet18",
            )
        draw_weights_status()
    elif name == "metric":
        st.selectbox(label, metrics_for(task), key=key, help=help_text)
    elif name == "accelerate_config":
        draw_accelerate_config(label, help_text)
    elif info.get("choices"):
        st.selectbox(label, list(info["choices"]), key=key, help=help_text)
    else:
        draw_plain_field(info, label)
    show_error(name)
    if name == "pretrained":
        draw_pretrained_warning()


def draw_plain_field(info: dict[str, Any], label: str) -> None:
    # No min_value/max_value on the number inputs: the browser would keep showing a typed
    # out-of-range value while the widget silently keeps the last valid one, and that one got
    # queued. RunConfig.validate reports the range beside the field instead.
    name = info["name"]
    key = KEY + name
    kind, optional = kind_of(info)
    help_text = with_key(info)
    if kind == "bool":
        st.checkbox(label, key=key, help=help_text)
    elif kind == "int":
        st.number_input(
            label,
            key=key,
            help=help_text,
            step=1,
            placeholder=("default" if name == "main_process_port" else "model default")
            if optional
            else None,
        )
    elif kind == "float":
        st.number_input(
            label,
            key=key,
            help=help_text,
            step=FLOAT_STEPS.get(name, 0.1),
            format="%g",
            placeholder=float_placeholder(name) if optional else None,
        )
    else:
        st.text_input(label, key=key, help=help_text)


def float_placeholder(name: str) -> str:
    """What an empty float field means: the chosen optimizer's own learning rate for lr."""
    info = choices.OPTIMIZERS.get(st.session_state.get(KEY + "optimizer"))
    if name == "lr" and info is not None:
        return f"{info.name} default: {info.default_lr:g}"
    return "default"


def draw_accelerate_config(label: str, help_text: str) -> None:
    """The accelerate config files of the configured folder (stored by absolute path), and the
    run's own file when it was filled from a past run."""
    key = KEY + "accelerate_config"
    files = [str(p) for p in list_accelerate_configs(state.home())]
    current = st.session_state.get(key) or ""
    options = ["", *files, *([current] if current and current not in files else [])]
    st.selectbox(
        label,
        options,
        key=key,
        help=help_text,
        format_func=lambda p: (
            "none: the worker's own flags" if not p else (Path(p).name if p in files else p)
        ),
    )
    if not files:
        st.caption(f"No accelerate config files in {configs_dir(state.home())}.")


def draw_weights_status() -> None:
    model = model_value()
    if not model:
        return
    status = weights_status(model, str(state.home()))
    if status.get("available"):
        st.caption(
            f":green[:material/check_circle:] Pre-trained weights for `{model}` are on this server ({status.get('source')})."
        )
    else:
        st.caption(
            f":orange[:material/cancel:] No pre-trained weights for `{model}` on this server."
        )


def draw_pretrained_warning() -> None:
    if not st.session_state.get(KEY + "pretrained"):
        return
    model = model_value()
    status = weights_status(model, str(state.home())) if model else None
    if status is None or status.get("available"):
        return
    st.warning(
        f"`pretrained` is on but no pre-trained weights for `{model}` are on this server. "
        f"Import them (`visionboard weights import {model} FILE`, or `visionboard weights pull "
        f"{model}` where there is internet) or train from scratch.",
        icon=":material/warning:",
    )
    st.button("Train from scratch instead", key="train_from_scratch", on_click=turn_pretrained_off)


def draw_preview(values: dict[str, Any]) -> None:
    with st.expander("Preview of the augmentation", expanded=False):
        st.caption("A few training images of the chosen dataset with the augmentation above.")
        if not st.toggle("Show the preview", key="preview_on"):
            return
        try:
            cfg = RunConfig.from_dict(values)
        except ConfigError as exc:
            st.info("Fix the form's errors to see a preview: " + "; ".join(exc.by_field().values()))
            return
        path = store.resolve_dataset(state.get_db(), cfg.dataset)
        try:
            splits = state.load_splits(path, cfg.task, cfg.dataset_format, cfg.test_ratio, cfg.seed)
            images = preview_augmentations(splits, cfg, n=6, image_size=cfg.image_size or 128)
        except Exception as exc:  # a broken dataset is reported, not raised
            st.error(f"Cannot preview {path}: {exc}")
            return
        st.image([im for im, _ in images], caption=[c for _, c in images], width=140)
        st.button("Other samples", key="preview_again")


# -- page --------------------------------------------------------------------------------------

if "new_run_queued" in st.session_state:
    queued = st.session_state.pop("new_run_queued")
    st.switch_page("pages/run.py", query_params={"run": queued})

st.title("New run")
registered = datasets()
from_ids = state.query_run_ids("from")
if from_ids and st.session_state.get("new_run_from_applied") != from_ids[0]:
    st.session_state["new_run_from_applied"] = from_ids[0]
    fill_from_run(from_ids[0])
    # "Edit and re-run": the box names the run the form was filled from, not "a fresh config".
    st.session_state["start_from"] = from_ids[0]
init_state(registered)

runs = state.run_choices(state.get_db())
st.selectbox(
    "Start from run",
    [None, *runs, *({st.session_state.get("start_from")} - {None, *runs})],
    key="start_from",
    format_func=lambda i: "— a fresh config —" if i is None else runs.get(i, f"#{i}"),
    on_change=on_start_from,
    help="Fill the form with a past run's config, to change a few settings and launch again.",
)

task = st.session_state[KEY + "task"]
for group in GROUPS:
    with st.expander(group, expanded=group in OPEN_GROUPS):
        fields = [f for f in FIELDS if f["group"] == group and applies(f, task)]
        columns = st.columns(2)
        for i, info in enumerate(fields):
            with columns[i % 2]:
                draw_field(info, registered)
        if group == "Data":
            with columns[len(fields) % 2]:
                st.text_input(
                    "Tags",
                    key=KEY + "tags",
                    help="Comma-separated labels to find the run later, e.g. baseline, v2.",
                )

hosts = store.worker_hosts(state.get_db())
if len(hosts) > 1:  # workers on several hosts share the queue (engine/database.py)
    st.selectbox(
        "Run on host",
        [ANY_HOST, *hosts],
        key=KEY + "on_host",
        help="Only a worker on this host may train the run; by default the first free one.",
    )

if task == "detection":
    ss = st.session_state
    gigabytes, hint = detection_memory_hint(
        ss.get(KEY + "batch_size"), ss.get(KEY + "min_size"), ss.get(KEY + "max_size")
    )
    if gigabytes > MEMORY_WARNING_GB:
        st.warning(hint, icon=":material/memory:")
    elif hint:
        st.caption(hint)

draw_preview(collect_values(registered))

errors = st.session_state.get(ERRORS) or {}
if errors:
    known = {f["name"] for f in FIELDS}
    st.error(
        f"Nothing was queued: {len(errors)} problem(s), shown beside their fields.",
        icon=":material/block:",
    )
    for field, message in errors.items():
        if field not in known:
            st.error(message)
user = state.current_user()
twins = st.session_state.get(TWINS)
if twins and twins[0] != collect_values(registered):
    st.session_state.pop(TWINS)  # the form changed since: no longer the same config
    twins = None
if twins:
    st.warning(
        "The same config is already queued or running: "
        + ", ".join(f"#{i}" for i in twins[1])
        + ". Nothing was queued; click **Queue anyway** to queue it once more.",
        icon=":material/content_copy:",
    )
if store.may(user, "queue"):
    label = "Queue anyway" if twins else "Queue run"
    st.button(label, key="queue_run", type="primary", on_click=submit)
    st.caption(f"Launched as **{user['username']}**.")
else:
    st.info(
        f"You can look at the form, but your role ({user['role']}) does not queue runs: "
        "ask an admin for the member role.",
        icon=":material/lock:",
    )
