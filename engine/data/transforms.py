"""Augmentation and tensor conversion for both tasks, built from a RunConfig.

All randomness comes from torch's global RNG (torchvision.transforms.v2 draws from it), and
only from it: the trainer seeds it for each sample from the run's seed, the epoch and the
sample's index (engine.tasks.Indexed), which makes augmentation reproducible, the same in every
loader worker, and the same after a resume.

Detection transforms move the boxes with the image (torchvision's BoundingBoxes: flips,
rotation by the four corners' enclosing box, crop), clip boxes cut by the border and drop boxes
pushed out entirely (SanitizeBoundingBoxes). They do not resize: Faster R-CNN resizes inside
the model (min_size / max_size).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

COLOR_JITTER = {"brightness": 0.3, "contrast": 0.3, "hue": 0.05}
GEOMETRY_TRIES = 10  # draws of flips/rotation/crop before giving up on keeping a box


def _size_of(flat_inputs: list[Any]) -> tuple[int, int]:
    for inpt in flat_inputs:
        if isinstance(inpt, Image.Image | tv_tensors.Image) or type(inpt) is torch.Tensor:
            height, width = F.get_size(inpt)
            return height, width
    raise TypeError("RandomAreaCrop needs an image among its inputs")


class RandomAreaCrop(v2.Transform):
    """Crop a window holding a random share in [min_ratio, 1] of the image's area, with the
    image's own aspect ratio, anywhere in the image. Boxes are shifted and clipped with it."""

    def __init__(self, min_ratio: float):
        super().__init__()
        self.min_ratio = float(min_ratio)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _size_of(flat_inputs)
        share = self.min_ratio + (1.0 - self.min_ratio) * torch.rand(()).item()
        scale = math.sqrt(share)
        crop_h, crop_w = max(1, round(height * scale)), max(1, round(width * scale))
        top = int(torch.randint(0, height - crop_h + 1, ()).item())
        left = int(torch.randint(0, width - crop_w + 1, ()).item())
        return {"top": top, "left": left, "height": crop_h, "width": crop_w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


def _geometric_ops(cfg) -> list:
    ops = []
    if getattr(cfg, "augment_hflip", False):
        ops.append(v2.RandomHorizontalFlip())
    if getattr(cfg, "augment_vflip", False):
        ops.append(v2.RandomVerticalFlip())
    if getattr(cfg, "augment_rotation", 0):
        degrees = float(cfg.augment_rotation)
        ops.append(v2.RandomRotation(degrees, interpolation=v2.InterpolationMode.BILINEAR))
    return ops


def build_transform(cfg, train: bool, image_size: int, mean=None, std=None) -> v2.Compose:
    """PIL image → float tensor CHW at image_size x image_size, normalised with mean/std (left
    in [0, 1] when mean is None, as the augmentation preview wants). train=True adds the
    config's augmentation."""
    ops: list = []
    if train and getattr(cfg, "augment_crop", False):
        ops.append(RandomAreaCrop(cfg.crop_min_ratio))
    ops.append(v2.Resize((image_size, image_size), antialias=True))
    if train:
        ops += _geometric_ops(cfg)
        if getattr(cfg, "augment_color", False):
            ops.append(v2.ColorJitter(**COLOR_JITTER))
    ops += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if mean is not None:
        ops.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(ops)


class DetectionTransform:
    """(PIL image, boxes [N,4] xyxy, labels [N]) → (float tensor CHW in [0, 1], boxes, labels).

    With train=True: flips, rotation and crop move the boxes with the image; a box cut by the
    border is clipped, one pushed out entirely is dropped. When an image had boxes and a random
    draw would leave none, the draw is repeated (and after GEOMETRY_TRIES the geometry is left
    out), so a training image never silently becomes background.
    """

    def __init__(self, cfg, train: bool):
        self.train = train
        ops = _geometric_ops(cfg) if train else []
        if train and getattr(cfg, "augment_crop", False):
            ops.append(RandomAreaCrop(cfg.crop_min_ratio))
        self.geometry = v2.Compose([*ops, v2.SanitizeBoundingBoxes()]) if ops else None
        self.color = (
            v2.ColorJitter(**COLOR_JITTER)
            if train and getattr(cfg, "augment_color", False)
            else None
        )

    def __call__(self, image: Image.Image, boxes, labels):
        pixels = (
            F.pil_to_tensor(image) if isinstance(image, Image.Image) else torch.as_tensor(image)
        )
        height, width = pixels.shape[-2:]
        sample = {
            "image": tv_tensors.Image(pixels),
            "boxes": tv_tensors.BoundingBoxes(
                torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4),
                format="XYXY",
                canvas_size=(height, width),
            ),
            "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64)).reshape(-1),
        }
        if self.geometry is not None:
            for _ in range(GEOMETRY_TRIES):
                moved = self.geometry(sample)
                if len(moved["labels"]) or not len(sample["labels"]):
                    sample = moved
                    break
        out = sample["image"]
        if self.color is not None:
            out = self.color(out)
        tensor = F.to_dtype(out, torch.float32, scale=True).as_subclass(torch.Tensor)
        box_tensor = sample["boxes"].as_subclass(torch.Tensor).to(torch.float32).reshape(-1, 4)
        return tensor, box_tensor, sample["labels"].to(torch.int64)
