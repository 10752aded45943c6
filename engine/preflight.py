"""The check before a run is queued: what a valid config cannot know on its own.

RunConfig.validate checks each key against its allowed values. `check_run` checks the config
against this machine: the model name is one timm or torchvision builds, the dataset exists and
reads as the task (with its classes), and pre-trained weights are here when asked for (training
never downloads). The New run form and `visionboard train` both call it, so they refuse the
same runs, before anything is queued; both first call `resolve_paths`, so the path checked is
the absolute one the run's config stores and the trainer reads.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from engine import data_roots, store
from engine.config import RunConfig
from engine.launch import check_launch, gpu_count, resolve_accelerate_config


@dataclass(frozen=True)
class Problem:
    """Why a run cannot start: the config key at fault and what it should be."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def resolve_paths(cfg: RunConfig, db) -> RunConfig:
    """`cfg` with a dataset path made absolute against this process's working directory, as
    stored in the run's config at submit: the trainer runs in another directory, so a relative
    path checked here would be read from somewhere else there. Registered names stay names."""
    # A bare accelerate config name is one of the folder the form lists.
    cfg = dataclasses.replace(
        cfg, accelerate_config=resolve_accelerate_config(cfg.accelerate_config, db.home)
    )
    if not cfg.dataset.strip() or store.get_dataset(db, cfg.dataset):
        return cfg
    return dataclasses.replace(cfg, dataset=absolute_path(cfg.dataset))


def absolute_path(path: str) -> str:
    # abspath, not resolve: the path keeps the user's symlinks, only `~`, `.` and `..` go.
    return os.path.abspath(os.path.expanduser(path))


def check_run(cfg: RunConfig, db) -> list[Problem]:
    """Every problem that would stop `cfg` once queued; empty when it can run here.
    `db` resolves registered dataset names; weights are looked for in its data directory."""
    problems = [check_model(cfg), check_dataset(cfg, db)]
    if problems[0] is None:  # weights are looked up by a model name that exists
        problems.append(check_weights(cfg, db.home))
    problems.append(check_devices(cfg, db.home))
    return [p for p in problems if p is not None]


def check_model(cfg: RunConfig) -> Problem | None:
    """A model name timm or torchvision builds (RunConfig.validate checks it fits the task)."""
    from engine.architectures import model_family

    try:
        model_family(cfg.model_name)
    except ValueError as exc:  # names the valid choices and the close matches
        return Problem("model", str(exc))
    return None


def check_dataset(cfg: RunConfig, db) -> Problem | None:
    """A dataset that exists and reads as cfg.task in cfg.dataset_format, with its classes."""
    from engine.data import inspect_dataset, probe_cache

    registered = store.get_dataset(db, cfg.dataset)
    # The resolution resolve_paths applies at submit, so an unresolved cfg is checked alike.
    path = Path(registered["path"]).expanduser() if registered else Path(absolute_path(cfg.dataset))
    try:
        data_roots.confine(path, db.home)
    except data_roots.PathRefused:
        # One message whether the path is missing or outside the roots: it must not tell.
        roots = data_roots.describe_roots(data_roots.data_roots(db.home))
        if registered:
            return Problem(
                "dataset",
                f"the registered dataset {cfg.dataset!r} is at {path}, which does not exist "
                f"any more inside the data roots ({roots}): register it again from its new "
                "place, or pick another",
            )
        names = ", ".join(d["name"] for d in store.list_datasets(db)) or "none registered"
        return Problem(
            "dataset",
            f"{cfg.dataset!r} does not exist inside the data roots ({roots}) and is not a "
            "registered dataset; expected a dataset folder or CSV file under a data root "
            f"(the admin adds folders to {data_roots.ENV}), or a registered name ({names})",
        )
    # Only blocking problems refuse a run: the cross-file checks (hashing every image) are
    # the Datasets page's and `datasets inspect`'s, not something to wait for at each submit.
    with probe_cache.using(db.home):  # the trainer reads the same probes back (engine.train)
        info = inspect_dataset(
            str(path),
            task=cfg.task,
            fmt=cfg.dataset_format,
            test_ratio=cfg.test_ratio,
            seed=cfg.seed,
            deep=False,
        )
    if info.get("error"):
        return Problem("dataset", info["error"])
    return None


def check_weights(cfg: RunConfig, home) -> Problem | None:
    """Pre-trained weights on this machine when cfg.pretrained (the trainer never downloads)."""
    if not cfg.pretrained:
        return None
    from engine import weights

    if weights.weights_status(cfg.model_name, home=home)["available"]:
        return None
    return Problem("pretrained", weights.how_to_get(cfg.model_name))


def check_devices(cfg: RunConfig, home) -> Problem | None:
    """A mixed precision this machine's device can do (device=auto without a GPU is the CPU),
    and an accelerate config file that exists and reads."""
    problem = check_launch(cfg.to_dict(), gpu_count(), home)
    return Problem(problem.field, str(problem)) if problem else None


class RunRefused(ValueError):
    """A config that check_run refuses; `.problems` names each field at fault."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("nothing queued:\n" + "\n".join(f"  - {p}" for p in problems))


def submit_run(cfg: RunConfig, db, *, tags=(), by: dict, on_host: str | None = None) -> int:
    """Queue a validated config as `visionboard train` and the API do: the sample datasets
    present when the run names one (so `dataset = "digits"` works on a fresh install; a run
    on the user's own data does not wait for them), paths made absolute, the check above
    (RunRefused), then store.create_run as `by` (`on_host`: pinned to that host's workers).
    Returns the run id."""
    from engine import sample_datasets

    if cfg.dataset.strip() in sample_datasets.NAMES:
        sample_datasets.ensure_samples(db, db.home)
    cfg = resolve_paths(cfg, db)  # a relative path means this directory, not the worker's
    problems = check_run(cfg, db)
    if problems:
        raise RunRefused(problems)
    return store.create_run(db, cfg.resolved(), name=cfg.name, tags=tags, by=by, on_host=on_host)
