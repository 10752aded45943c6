"""One run's folder: the names of its files, and reading and writing its model card.

`<home>/<run id>/` holds what a run leaves behind. Every module that touches these files
(train, predict, export, worker, dashboard) names them through RunFolder, so a file is
renamed in one place. Imports nothing heavy: the dashboard uses it on every page.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

MODEL = "model.safetensors"  # the best epoch's weights
CARD = "model.json"  # the model card: classes, input size, threshold, metrics, config
PREDICTIONS = "predictions.json"  # every image's prediction on the per-epoch split, best epoch
# With a val split beside test: the best model's predictions on test, made once at the end.
FINAL_PREDICTIONS = "final_predictions.json"
CHECKPOINT = "checkpoint"  # the last finished epoch, for resume
LOG = "train.log"  # the trainer's output, as the worker streams it
EXPORT = "export"  # exported models, each with its card beside it
# One file per trainer process of the current attempt, `<host>-<pid>`, holding the process's
# start time: torchrun starts each rank in a session of its own, outside the launcher's
# process group, so the ranks say where they are (engine.store.trainer_processes reads them).
TRAINERS = "trainers"
CARD_REQUIRED = ("task", "classes", "config")
# Files still being written (engine.export's ".partial", write_json's ".tmp"): never offered.
IN_PROGRESS = (".partial", ".tmp")


class CardError(ValueError):
    """A model card that cannot be read or lacks what a model needs to load."""


class RunFolder:
    """Paths of one run's files. Creating the object touches nothing on disk."""

    def __init__(self, home: str | Path, run_id: int):
        self.run_id = int(run_id)
        self.path = Path(home) / str(self.run_id)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def create(self) -> RunFolder:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def model(self) -> Path:
        return self.path / MODEL

    @property
    def card(self) -> Path:
        return self.path / CARD

    @property
    def predictions(self) -> Path:
        return self.path / PREDICTIONS

    @property
    def final_predictions(self) -> Path:
        return self.path / FINAL_PREDICTIONS

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def checkpoint_new(self) -> Path:
        """Where a checkpoint is written before it is swapped in."""
        return self.path / f"{CHECKPOINT}.new"

    @property
    def checkpoint_old(self) -> Path:
        """The previous checkpoint while a new one is swapped in."""
        return self.path / f"{CHECKPOINT}.old"

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def export_dir(self) -> Path:
        return self.path / EXPORT

    @property
    def trainers(self) -> Path:
        return self.path / TRAINERS

    def record_trainer(self, host: str, pid: int, started: str) -> None:
        """A trainer process of this attempt, written by itself at start-up."""
        self.trainers.mkdir(parents=True, exist_ok=True)
        (self.trainers / f"{host}-{pid}").write_text(started)

    def trainer_records(self) -> list[tuple[str, int, str]]:
        """(host, pid, start time) of each trainer process recorded for this attempt."""
        if not self.trainers.is_dir():
            return []
        found = []
        for file in self.trainers.iterdir():
            host, _, pid = file.name.rpartition("-")
            try:
                found.append((host, int(pid), file.read_text().strip()))
            except (OSError, ValueError):
                continue  # removed meanwhile, or not ours
        return found

    def clear_trainers(self) -> None:
        """A new attempt starts: the last attempt's processes are no longer its trainers."""
        if self.trainers.is_dir():
            for file in self.trainers.iterdir():
                file.unlink(missing_ok=True)

    def has_model(self) -> bool:
        return self.model.is_file()

    def downloads(self) -> list[Path]:
        """Files a user downloads from a finished run: model, card and every export."""
        found = [p for p in (self.model, self.card) if p.is_file()]
        if self.export_dir.is_dir():
            found += sorted(
                p
                for p in self.export_dir.iterdir()
                if p.is_file() and not p.name.endswith(IN_PROGRESS)
            )
        return found

    # -- the model card and predictions ---------------------------------------------------
    def read_card(self) -> dict[str, Any]:
        return read_card(self.card)

    def write_card(self, card: dict[str, Any]) -> None:
        write_json(self.card, card)

    def read_predictions(self, final: bool = False) -> dict[str, Any] | None:
        """The per-epoch split's predictions at the best epoch, or with final=True the final
        report's on test; None when there are none (yet)."""
        try:
            return json.loads((self.final_predictions if final else self.predictions).read_text())
        except (OSError, ValueError):
            return None

    def write_predictions(self, predictions: dict[str, Any], final: bool = False) -> None:
        write_json(self.final_predictions if final else self.predictions, predictions)


def download_name(run_id: int, run_name: str | None, path: str | Path) -> str:
    """The name a run file downloads under: `run-8-efficientnet_b0-on-digits.onnx` for
    export/model.onnx of run 8 "efficientnet_b0 on digits" (every run's files are called
    model.*, so a download folder would fill with model.onnx, model (1).onnx, ...).

    The run name is reduced to letters, digits, "_", "." and "-" so that it is a file name on
    every system; the file's own suffixes (".onnx", ".onnx.json") are kept.
    """
    name = Path(path).name
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", run_name or "").strip("-.")[:80].rstrip("-.")
    stem = f"run-{int(run_id)}" + (f"-{slug}" if slug else "")
    if name.startswith("model."):
        return stem + name.removeprefix("model")
    return f"{stem}-{name}"


def read_card(path: str | Path) -> dict[str, Any]:
    """A model card, checked for what loading a model needs; CardError names the file."""
    try:
        card = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CardError(f"cannot read the model card {path}: {exc}") from exc
    if not isinstance(card, dict):
        raise CardError(f"model card {path} is not a JSON object")
    missing = [k for k in CARD_REQUIRED if k not in card]
    if missing:
        raise CardError(f"model card {path} lacks {', '.join(missing)}")
    return card


def write_json(path: str | Path, data: Any, indent: int | None = None) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent))
    os.replace(tmp, path)
