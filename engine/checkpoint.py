"""The last finished epoch, for resume: accelerate's state plus the trainer's own (TrainState).

A checkpoint is written into `checkpoint.new`, then swapped in with two renames, so a kill at
any moment leaves one whole checkpoint: `checkpoint`, or between the renames `checkpoint.old`.
The schedule and the trainer state are JSON rather than accelerate's custom-object pickle, so
a resume never unpickles.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass

from engine.run_folder import RunFolder, write_json

TRAINER_STATE = "trainer.json"  # written last: a folder holding it is a whole checkpoint
SCHEDULE_STATE = "schedule.json"


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
            schedule.load_state_dict(json.loads((path / SCHEDULE_STATE).read_text()))
            return TrainState(**json.loads((path / TRAINER_STATE).read_text()))
    return None
