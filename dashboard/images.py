"""Pictures for the galleries: thumbnails with their boxes drawn (PIL only, no Streamlit)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

TRUE_COLOR = (40, 180, 70)
PRED_COLOR = (220, 40, 40)


def open_image(path: str | Path, base: str | Path | None = None) -> Image.Image | None:
    """An image as RGB with EXIF orientation applied; a relative path is tried under `base`."""
    candidates = [Path(path)]
    if base is not None and not Path(path).is_absolute():
        candidates.insert(0, Path(base) / path)
    for candidate in candidates:
        if candidate.is_file():
            try:
                with Image.open(candidate) as image:
                    return ImageOps.exif_transpose(image).convert("RGB")
            except OSError:
                return None
    return None


def draw_boxes(
    image: Image.Image,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    classes: Sequence[str],
    color: tuple[int, int, int],
    scores: Sequence[float] | None = None,
) -> Image.Image:
    """A copy of `image` with xyxy pixel boxes outlined and labelled (with scores when given)."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    width = max(1, round(max(out.size) / 160))
    for i, box in enumerate(boxes):
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle([x0, y0, x1, y1], outline=color, width=width)
        label = int(labels[i]) if i < len(labels) else -1
        text = classes[label] if 0 <= label < len(classes) else str(label)
        if scores is not None and i < len(scores):
            text += f" {float(scores[i]):.2f}"
        draw.text((x0 + 2, max(0.0, y0 - 11)), text, fill=color)
    return out


def detections_above(
    pred: dict, threshold: float
) -> tuple[list[Sequence[float]], list[int], list[float]]:
    """(boxes, labels, scores) of one image's detections scored at least `threshold`, the
    threshold compared as given (rounding it would hide detections scored just below)."""
    keep = [k for k, s in enumerate(pred["scores"]) if s >= threshold]
    return (
        [pred["boxes"][k] for k in keep],
        [pred["labels"][k] for k in keep],
        [pred["scores"][k] for k in keep],
    )


def upscale(image: Image.Image, min_side: int = 160) -> Image.Image:
    """Small images (32 px digits) enlarged without blur, so the gallery is readable."""
    side = min(image.size)
    if side >= min_side or side == 0:
        return image
    factor = max(1, min_side // side)
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)
