"""The last finished epoch, for resume: accelerate's state plus the trainer's own (TrainState).

A checkpoint is written into `checkpoint.new`, then swapped in with two renames, so a kill at
any moment leaves one whole checkpoint: `checkpoint`, or between the renames `checkpoint.old`.
The schedule and the trainer state are JSON rather than accelerate's custom-object pickle, so
a resume never unpickles.

A resumed run is the same run: accelerate's state holds every process's random states
(python, numpy, torch, the device's), checked after loading, and the loaders need none of
their own, as each epoch's shuffle and augmentation are seeded from the run's seed and the
epoch's number (engine.tasks), which TrainState keeps.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import RNG_STATE_NAME
from accelerate.utils import load as load_saved

from engine.run_folder import RunFolder, write_json

TRAINER_STATE = "trainer.json"  # written last: a folder holding it is a whole checkpoint
SCHEDULE_STATE = "schedule.json"


class CheckpointError(Exception):
    """A checkpoint that cannot be restored whole."""


@dataclass
class TrainState:
    """What a checkpoint must remember besides the model, optimizer and schedule."""

    epoch: int = 0  # last finished epoch
    step: int = 0
    best: float | None = None
    best_epoch: int = 0
    since_best: int = 0


def save_checkpoint(accelerator, folder: RunFolder, state: TrainState, schedule) -> None:
    """Every process calls this; the main process writes the trainer's files and swaps."""
    new = folder.checkpoint_new
    if accelerator.is_main_process and new.exists():
        shutil.rmtree(new)  # a save that a kill interrupted
    accelerator.wait_for_everyone()
    accelerator.save_state(str(new), safe_serialization=True)
    if accelerator.is_main_process:
        write_json(new / SCHEDULE_STATE, schedule.state_dict())
        write_json(new / TRAINER_STATE, asdict(state))
        swap_checkpoint(folder)
    accelerator.wait_for_everyone()


def swap_checkpoint(folder: RunFolder) -> None:
    """Make `checkpoint.new` the checkpoint; the one it replaces lives on as `checkpoint.old`
    until the new one is in place."""
    current, new, old = folder.checkpoint, folder.checkpoint_new, folder.checkpoint_old
    if old.exists() and current.exists():
        shutil.rmtree(old)  # a kill after the swap, before the clean-up
    # Without `current`, a kill came between the renames: `old` is the whole one, kept until
    # the new one is in place.
    if current.exists():
        current.rename(old)
    new.rename(current)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(accelerator, folder: RunFolder, schedule) -> TrainState | None:
    """Restore the newest whole checkpoint into the prepared objects; None when there is none."""
    for path in (folder.checkpoint, folder.checkpoint_old):
        if (path / TRAINER_STATE).exists():
            accelerator.load_state(str(path))
            check_random_states(path, accelerator.process_index)
            schedule.load_state_dict(json.loads((path / SCHEDULE_STATE).read_text()))
            return TrainState(**json.loads((path / TRAINER_STATE).read_text()))
    return None


def check_random_states(path: Path, process_index: int) -> None:
    """Raise CheckpointError unless this process's random states are the checkpoint's.

    accelerate restores them inside a try/except that only logs, so a resume could silently
    keep the new process's states and no longer be the same run. A process without a file
    of its own (the run has more processes than when it was saved) has nothing to restore.
    """
    file = Path(path) / f"{RNG_STATE_NAME}_{process_index}.pkl"
    if not file.exists():
        return
    try:
        saved = load_saved(file)  # accelerate's own reader: torch.load with weights_only
    except Exception as exc:
        raise CheckpointError(f"cannot read the random states in {file}: {exc}") from exc
    restored = {
        "python": random.getstate() == saved["random_state"],
        "numpy": all(
            np.array_equal(a, b)
            for a, b in zip(np.random.get_state(), saved["numpy_random_seed"], strict=True)
        ),
        "torch": torch.equal(torch.get_rng_state(), saved["torch_manual_seed"]),
    }
    if not all(restored.values()):
        missed = ", ".join(name for name, same in restored.items() if not same)
        raise CheckpointError(f"the {missed} random state(s) in {file} were not restored")
