"""Grad-CAM: where a classifier looked when it picked a class.

The class score's gradient with respect to the last convolutional feature map, averaged per
channel, weighs the channels of that map; their positive sum is the heatmap (Selvaraju et al.
2017). timm models split into forward_features / forward_head, so the map is taken between the
two and the backbone needs no backward pass (frozen layers included); other models get a hook
on their last Conv2d.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn


def last_conv(model: nn.Module) -> nn.Module | None:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def _activations_and_logits(model: nn.Module, x: torch.Tensor):
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        features = model.forward_features(x)
        if features.ndim == 4:  # NCHW map (CNNs); token models fall through to the hook
            features = features.detach().requires_grad_(True)
            return features, model.forward_head(features)
    conv = last_conv(model)
    if conv is None:
        raise ValueError(
            f"Grad-CAM needs a convolutional layer; {type(model).__name__} has no Conv2d"
        )
    seen: dict[str, torch.Tensor] = {}
    handle = conv.register_forward_hook(lambda _m, _i, out: seen.__setitem__("map", out))
    try:
        # An input that asks for gradients keeps the graph even when every weight is frozen.
        logits = model(x.detach().requires_grad_(True))
    finally:
        handle.remove()
    return seen["map"], logits


def gradcam(model: nn.Module, x: torch.Tensor, target: int | None = None) -> tuple[np.ndarray, int]:
    """Heatmap for one normalised input `x` [1, 3, H, W]: (float32 [H, W] in [0, 1], class).

    `target` is the class to explain; None explains the predicted class. An all-zero map means
    no region raised that class's score."""
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"gradcam takes one image as a [1, 3, H, W] tensor, got {list(x.shape)}")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            activations, logits = _activations_and_logits(model, x.clone())
            index = int(logits[0].argmax()) if target is None else int(target)
            if not 0 <= index < logits.shape[-1]:
                raise ValueError(f"target class {index}: expected 0 to {logits.shape[-1] - 1}")
            (grads,) = torch.autograd.grad(logits[0, index], activations)
    finally:
        model.train(was_training)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * activations).sum(dim=1, keepdim=True)).detach().float()
    cam = nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    cam = cam[0, 0]
    cam = cam - cam.min()
    top = float(cam.max())
    cam = cam / top if top > 1e-12 else torch.zeros_like(cam)
    return cam.cpu().numpy().astype(np.float32), index


def resize_heatmap(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A heatmap stretched to (width, height), bilinear, kept in [0, 1]."""
    image = Image.fromarray(np.asarray(heatmap, dtype=np.float32))
    out = np.asarray(image.resize(size, Image.BILINEAR), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] → uint8 RGB [H, W, 3] on the jet scale (blue cold, red hot)."""
    h = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(4.0 * h - np.array([3.0, 2.0, 1.0], dtype=np.float32)), 0, 1)
    return (rgb * 255).astype(np.uint8)


def overlay(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The image with the heatmap blended over it (the heatmap is resized to the image)."""
    if heatmap.shape != (image.height, image.width):
        heatmap = resize_heatmap(heatmap, image.size)
    colors = Image.fromarray(colorize(heatmap))
    return Image.blend(image.convert("RGB"), colors, alpha)
