"""What every reader produces: samples per split, class names, counts and problems."""

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
    problems: list[dict[str, str]] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    split_source: str = "seeded"  # "dataset" when the data came with its own split
