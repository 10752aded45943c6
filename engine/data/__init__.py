"""Dataset readers, splits, transforms and torch Datasets for classification and detection.

Reading and inspecting a dataset needs no torch; the transforms, Datasets and the preview are
imported on first use (PEP 562), so the dashboard's dataset page stays quick to load.
"""

from engine.data.errors import DatasetError, ImageError
from engine.data.formats import FORMATS, detect_format, detect_task
from engine.data.images import read_image
from engine.data.inspect import inspect_dataset
from engine.data.load import load_splits
from engine.data.records import ClassSample, DatasetSplits, DetSample

_LAZY = {
    "ClassificationDataset": "engine.data.datasets",
    "DetectionDataset": "engine.data.datasets",
    "collate_detection": "engine.data.datasets",
    "build_transform": "engine.data.transforms",
    "DetectionTransform": "engine.data.transforms",
    "preview_augmentations": "engine.data.preview",
}

__all__ = [
    "FORMATS",
    "ClassSample",
    "ClassificationDataset",
    "DatasetError",
    "DatasetSplits",
    "DetSample",
    "DetectionDataset",
    "DetectionTransform",
    "ImageError",
    "build_transform",
    "collate_detection",
    "detect_format",
    "detect_task",
    "inspect_dataset",
    "load_splits",
    "preview_augmentations",
    "read_image",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'engine.data' has no attribute {name!r}")
