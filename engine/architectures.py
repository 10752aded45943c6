"""Model names and their bare networks: which library builds a name, and the architecture that
its pre-trained weights fit.

engine.weights checks an imported file against these architectures and engine.models builds a
run's model from them, so both import this module and neither imports the other. torch,
torchvision and timm load on first use: `model_family` is called by the New run form.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from engine import choices

if TYPE_CHECKING:
    from torch import nn

# efficientnet_b7's only ImageNet weights are TF ports (see weights.WEIGHT_SOURCES): build it the TF
# way (same padding, BatchNorm eps 1e-3) so those weights compute what they were trained to.
ARCH_KWARGS = {"efficientnet_b7": {"bn_eps": 1e-3, "pad_type": "same"}}
# torchvision freezes the BatchNorm of pre-trained detector backbones (FrozenBatchNorm2d) with
# these eps; the v2 model keeps ordinary BatchNorm.
DETECTOR_FROZEN_BN_EPS = {
    "fasterrcnn_resnet50_fpn": 0.0,
    "fasterrcnn_mobilenet_v3_large_fpn": 1e-5,
    "fasterrcnn_mobilenet_v3_large_320_fpn": 1e-5,
}
DETECTOR_HEAD = ("roi_heads.box_predictor.",)
COCO_CLASSES = 91  # the head of torchvision's pre-trained detectors, background included


# -- names ---------------------------------------------------------------------------------


def model_family(name: str) -> str:
    """ "torchvision" for the Faster R-CNN detectors, "timm" for any timm classifier name;
    ValueError naming the valid choices otherwise."""
    if name in choices.get_task("detection").models:
        return "torchvision"
    if name in choices.get_task("classification").models:
        return "timm"  # listed, so timm builds it (tests/test_speed.py): no timm import here
    import timm

    if isinstance(name, str) and timm.is_model(name):
        try:
            timm.get_pretrained_cfg(name)
        except RuntimeError as exc:  # a known architecture with a wrong pretrained tag
            raise ValueError(f"unknown model {name!r}: {exc}") from None
        return "timm"
    raise ValueError(unknown_model_message(name))


def unknown_model_message(name: str) -> str:
    import timm

    listed = choices.listed_models()
    text = str(name)
    close = timm.list_models(f"*{text}*")[:8] if text.strip() else []
    candidates = list(listed) + timm.list_models()
    for guess in difflib.get_close_matches(text, candidates, n=5, cutoff=0.6):
        if guess not in close:
            close.append(guess)
    message = (
        f"unknown model {name!r}: expected one of {', '.join(listed)} "
        "or another timm model name (timm.list_models())"
    )
    if close:
        message += "; did you mean " + ", ".join(close) + "?"
    return message


# -- bare networks -------------------------------------------------------------------------


def reference_model(name: str) -> nn.Module:
    """The architecture that `name`'s pre-trained weights fit (ImageNet/COCO head): what
    engine.weights checks an imported file against."""
    if model_family(name) == "torchvision":
        return build_detector(name, COCO_CLASSES, frozen_bn=name in DETECTOR_FROZEN_BN_EPS)
    import timm

    return timm.create_model(name, pretrained=False, **ARCH_KWARGS.get(name, {}))


def build_detector(name: str, num_classes: int, frozen_bn: bool, **kwargs) -> nn.Module:
    """A torchvision detector without weights, its backbone's BatchNorm frozen where the
    pre-trained model froze it."""
    from torchvision.models import get_model_builder

    # weights=None everywhere: torchvision would download otherwise; weights load afterwards.
    model = get_model_builder(name)(
        weights=None, weights_backbone=None, num_classes=num_classes, **kwargs
    )
    if frozen_bn:
        _freeze_batchnorm(model.backbone.body, DETECTOR_FROZEN_BN_EPS[name])
    return model


def classifier_heads(model: nn.Module) -> tuple[nn.Module, ...]:
    """The classifier module(s) of a timm model (some have two, e.g. distilled ViTs)."""
    head = model.get_classifier()
    return tuple(head) if isinstance(head, (tuple, list)) else (head,)


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict key prefixes of the classifier head: dropped from weights of another shape."""
    if hasattr(model, "roi_heads"):
        return DETECTOR_HEAD
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if not names and hasattr(model, "get_classifier"):
        heads = classifier_heads(model)
        names = [n for n, m in model.named_modules() if any(m is h for h in heads)]
    if isinstance(names, str):
        names = (names,)
    return tuple(f"{n}." for n in names or ())


def _freeze_batchnorm(module: nn.Module, eps: float) -> None:
    import torch
    from torch import nn
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=eps)
            with torch.no_grad():
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, key).copy_(getattr(child, key))
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child, eps)
