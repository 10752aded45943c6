"""Checkpoints: save and load with the trainer state, and a swap that survives a kill."""

import json
import random

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from engine.checkpoint import (
    TRAINER_STATE,
    CheckpointError,
    TrainState,
    load_checkpoint,
    save_checkpoint,
)
from engine.run_folder import RunFolder


class Schedule:
    """Stands in for optim.LRSchedule: what a checkpoint needs is its state as a dict."""

    def __init__(self, steps=0):
        self.steps = steps

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


@pytest.fixture
def trainer(tmp_path):
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, RunFolder(tmp_path, 1).create()


def saved_epoch(path):
    return json.loads((path / TRAINER_STATE).read_text())["epoch"]


def test_save_and_load_restore_the_weights_the_schedule_and_the_trainer_state(trainer):
    accelerator, model, folder = trainer
    state = TrainState(epoch=3, step=30, best=0.5, best_epoch=2, since_best=1)
    save_checkpoint(accelerator, folder, state, Schedule(30))
    weights = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.zero_()
    schedule = Schedule()
    assert load_checkpoint(accelerator, folder, schedule) == state
    assert torch.equal(model.weight, weights) and schedule.steps == 30
    assert not folder.checkpoint_new.exists() and not folder.checkpoint_old.exists()


def test_nothing_to_load_without_a_checkpoint(trainer):
    accelerator, _, folder = trainer
    assert load_checkpoint(accelerator, folder, Schedule()) is None


def test_a_kill_between_the_renames_keeps_the_previous_checkpoint(trainer):
    accelerator, _, folder = trainer
    save_checkpoint(accelerator, folder, TrainState(epoch=1), Schedule())
    # Killed during epoch 2's swap: the current one renamed away, the new one not yet in place.
    folder.checkpoint.rename(folder.checkpoint_old)
    folder.checkpoint_new.mkdir()
    assert load_checkpoint(accelerator, folder, Schedule()).epoch == 1
    save_checkpoint(accelerator, folder, TrainState(epoch=2), Schedule())
    assert saved_epoch(folder.checkpoint) == 2
    assert not folder.checkpoint_old.exists() and not folder.checkpoint_new.exists()


def test_a_kill_mid_save_or_before_the_clean_up_loads_the_newest_whole_one(trainer):
    accelerator, _, folder = trainer
    save_checkpoint(accelerator, folder, TrainState(epoch=1), Schedule())
    save_checkpoint(accelerator, folder, TrainState(epoch=2), Schedule())
    # Killed while writing epoch 3 (no trainer state yet), with epoch 1's folder not yet removed.
    folder.checkpoint_new.mkdir()
    (folder.checkpoint_new / "model.safetensors").write_bytes(b"half")
    folder.checkpoint_old.mkdir()
    assert load_checkpoint(accelerator, folder, Schedule()).epoch == 2
    save_checkpoint(accelerator, folder, TrainState(epoch=3), Schedule())
    assert saved_epoch(folder.checkpoint) == 3
    assert not folder.checkpoint_old.exists() and not folder.checkpoint_new.exists()


def draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_a_load_restores_every_random_state(trainer):
    # Dropout, detector sampling and anything else drawing from these continue where the
    # checkpoint left them: the resumed run draws what the uninterrupted one drew.
    accelerator, _, folder = trainer
    save_checkpoint(accelerator, folder, TrainState(epoch=1), Schedule())
    expected = draws()
    draws()
    load_checkpoint(accelerator, folder, Schedule())
    assert draws() == expected


def test_random_states_accelerate_could_not_restore_are_refused(trainer):
    # accelerate only logs when it cannot restore them; a resume must not go on silently.
    accelerator, _, folder = trainer
    save_checkpoint(accelerator, folder, TrainState(epoch=1), Schedule())
    states = folder.checkpoint / "random_states_0.pkl"
    assert states.exists()
    states.write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="random_states_0.pkl"):
        load_checkpoint(accelerator, folder, Schedule())
