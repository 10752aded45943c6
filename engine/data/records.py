"""What every reader produces: samples per split, class names, counts and problems.

Splits (agreed with the trainer, helper T of issue #10):

- `train` trains the model.
- `test` is the held-out split when there is one: the dataset's val or test split when it
  declares only one of them (or a seeded share of `train`, `test_ratio`, when it declares none).
- `val` is filled only when the dataset declares val AND test (VOC ImageSets train/val/test,
  Roboflow train/valid/test, ...): then `val` is the per-epoch split and `test` is kept apart
  for a final report on the best model.

The trainer reads `per_epoch` (early stopping and the per-epoch metric) and `final` (the final
report; empty when the dataset has no third split), never guessing from the field names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np


class ClassSample(NamedTuple):
    path: str
    label: int  # index into DatasetSplits.classes


class DetSample(NamedTuple):
    path: str
    boxes: np.ndarray  # float32 [N, 4], xyxy in pixels of the EXIF-oriented image
    labels: np.ndarray  # int64 [N], 0-based index into DatasetSplits.classes


@dataclass
class DatasetSplits:
    task: str
    format: str
    root: Path
    classes: list[str]
    train: list = field(default_factory=list)
    test: list = field(default_factory=list)
    val: list = field(default_factory=list)  # only when the dataset declares val and test
    problems: list[dict[str, str]] = field(default_factory=list)
    # Files under the root that are no part of the dataset: {"file", "reason"}, like problems
    # (listed by load_splits(list_ignored=True) only: the data check's, not a run's).
    ignored: list[dict[str, str]] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    split_source: str = "seeded"  # "dataset" when the data came with its own split

    @property
    def per_epoch(self) -> list:
        """The split early stopping and the per-epoch metric use."""
        return self.val or self.test

    @property
    def final(self) -> list:
        """The split kept apart for the final report on the best model (may be empty)."""
        return self.test if self.val else []

    def split_names(self) -> tuple[str, ...]:
        """The splits this dataset has, in order: counts and reports are keyed by these."""
        return ("train", "val", "test") if self.val else ("train", "test")

    def samples(self) -> list:
        """Every sample of every split."""
        return self.train + self.val + self.test
