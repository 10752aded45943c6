"""preview_augmentations: a few augmented training images for the dashboard's preview."""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw
from torchvision.transforms.v2 import functional as F

from engine.data.errors import ImageError
from engine.data.images import read_image
from engine.data.records import DatasetSplits
from engine.data.transforms import DetectionTransform, build_transform

BOX_COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
              "#bfef45", "#fabed4", "#469990")  # fmt: skip
PREVIEW_SIZE = 224  # classification: the model's size when the config leaves it empty


def preview_augmentations(
    splits: DatasetSplits, cfg, n: int = 6, image_size: int | None = None
) -> list[tuple[Image.Image, str]]:
    """n augmented training images with captions (class; for detection the boxes drawn).

    Seeded by cfg.seed so the same settings show the same preview, without touching the
    global RNG that training uses.
    """
    samples = splits.train
    if not samples or n <= 0:
        return []
    seed = int(getattr(cfg, "seed", 0) or 0)
    out = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        order = torch.randperm(len(samples)).tolist()
        if splits.task == "classification":
            size = image_size or getattr(cfg, "image_size", None) or PREVIEW_SIZE
            transform = build_transform(cfg, True, size)
        else:
            transform = DetectionTransform(cfg, True)
        for index in order:
            if len(out) >= n:
                break
            sample = samples[index]
            try:
                image = read_image(sample.path)
            except ImageError:
                continue
            name = sample.path.replace("\\", "/").rsplit("/", 1)[-1]
            if splits.task == "classification":
                picture = F.to_pil_image(transform(image).clamp(0, 1))
                out.append((picture, f"{splits.classes[sample.label]} · {name}"))
            else:
                tensor, boxes, labels = transform(image, sample.boxes, sample.labels)
                picture = _draw_boxes(
                    F.to_pil_image(tensor.clamp(0, 1)), boxes, labels, splits.classes
                )
                if image_size and max(picture.size) > image_size:
                    picture.thumbnail((image_size, image_size))
                out.append((picture, f"{name} · {len(labels)} box(es)"))
    return out


def _draw_boxes(picture: Image.Image, boxes, labels, classes) -> Image.Image:
    draw = ImageDraw.Draw(picture)
    width = max(1, round(max(picture.size) / 150))
    for box, label in zip(boxes.tolist(), labels.tolist()):
        color = BOX_COLORS[int(label) % len(BOX_COLORS)]
        draw.rectangle(box, outline=color, width=width)
        draw.text((box[0] + 2, box[1] + 1), classes[int(label)], fill=color)
    return picture
