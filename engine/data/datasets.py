"""torch Datasets over the samples of a DatasetSplits, and the detection collate function."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from engine.data.images import read_image
from engine.data.records import ClassSample, DetSample


class ClassificationDataset(Dataset):
    """[i] → (image tensor, 0-based label).

    `decode_size`: JPEGs are decoded at reduced size, both sides at least this (read_image);
    `cache` (engine.data.image_cache): decoded images kept in memory, taken before any random
    transform, so a cached sample is augmented exactly as one read from its file."""

    def __init__(
        self,
        samples: Sequence[ClassSample],
        transform: Callable | None = None,
        decode_size: int | None = None,
        cache=None,
    ):
        self.samples = list(samples)
        self.transform = transform
        self.decode_size = decode_size
        self.cache = cache

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int):
        """The sample's decoded image, from the cache where it is kept."""
        path = self.samples[index].path
        image = self.cache.get(path) if self.cache is not None else None
        return image if image is not None else read_image(path, self.decode_size)

    def __getitem__(self, index: int):
        label = self.samples[index].label
        image = self.read(index)
        if self.transform is not None:
            tensor = self.transform(image)
        else:
            tensor = F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)
        return tensor, label


class DetectionDataset(Dataset):
    """[i] → (image tensor, {"boxes" float32 [N,4] xyxy, "labels" int64 [N] 1-based,
    "image_id": i}). Labels start at 1 because torchvision's detectors keep 0 for background."""

    def __init__(self, samples: Sequence[DetSample], transform: Callable | None = None):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        image = read_image(sample.path)
        if self.transform is not None:
            tensor, boxes, labels = self.transform(image, sample.boxes, sample.labels)
        else:
            tensor = F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)
            boxes, labels = torch.as_tensor(sample.boxes), torch.as_tensor(sample.labels)
        target = {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1) + 1,
            "image_id": index,
        }
        return tensor, target


def collate_detection(batch):
    """Images of different sizes cannot be stacked: (list of tensors, list of targets)."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)
