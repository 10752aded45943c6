"""Models from a RunConfig: timm classifiers and torchvision Faster R-CNN detectors.

`create_model` builds the architecture (engine.architectures), loads pre-trained weights
through engine.weights (never downloading), gives a new head small weights, and freezes the
backbone stages that `retrained_layers` leaves out. The architecture depends only on the
config, never on where the weights came from, so `create_model(cfg, n, load_weights=False)`
rebuilds a trained run's model for its saved state dict.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from torch import nn

from engine import weights
from engine.architectures import (
    ARCH_KWARGS,
    DETECTOR_FROZEN_BN_EPS,
    DETECTOR_HEAD,
    build_detector,
    classifier_heads,
    head_prefixes,
    model_family,
)
from engine.config import RunConfig

RESNET_LAYERS = ("layer4", "layer3", "layer2", "layer1", "conv1")  # output end first
DETECTOR_MAX_LAYERS = 5
DETECTOR_DEFAULT_LAYERS = 3
HEAD_INIT_STD = 0.01
BOX_INIT_STD = 0.001


def create_model(
    cfg: RunConfig,
    num_classes: int,
    home=None,
    load_weights: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """The model for `cfg` with `num_classes` outputs (detection adds the background class).

    With cfg.pretrained and load_weights, pre-trained weights come from engine.weights (an
    imported file, else the local timm/torchvision cache) or WeightsUnavailable is raised.
    kwargs go to the builder (timm.create_model or the torchvision detector, e.g.
    rpn_post_nms_top_n_train for faster tests)."""
    name = cfg.model_name
    if model_family(name) == "torchvision":
        return _create_detector(cfg, num_classes, home, load_weights, **kwargs)
    return _create_classifier(cfg, num_classes, home, load_weights, **kwargs)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def model_input(cfg: RunConfig, model: nn.Module) -> dict[str, Any]:
    """Input size and normalisation the model expects: {"image_size", "mean", "std"}.
    Detectors resize inside the model, so their image_size is None."""
    transform = getattr(model, "transform", None)
    if transform is not None and hasattr(transform, "image_mean"):
        return {
            "image_size": None,
            "mean": tuple(float(v) for v in transform.image_mean),
            "std": tuple(float(v) for v in transform.image_std),
        }
    import timm.data

    data = timm.data.resolve_data_config({}, model=model)
    return {
        "image_size": int(cfg.image_size or data["input_size"][-1]),
        "mean": tuple(float(v) for v in data["mean"]),
        "std": tuple(float(v) for v in data["std"]),
    }


def default_image_size(model_name: str) -> int | None:
    """The input size a model was pre-trained at, without building it; None for detectors."""
    if model_family(model_name) == "torchvision":
        return None
    import timm

    cfg = timm.get_pretrained_cfg(model_name)
    return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else 224


# -- classification ---------------------------------------------------------------------------


def _create_classifier(cfg, num_classes, home, load_weights, **kwargs) -> nn.Module:
    import timm

    name = cfg.model_name
    kwargs = {**ARCH_KWARGS.get(name, {}), **kwargs}
    pretrained_cfg = timm.get_pretrained_cfg(name)
    if cfg.image_size and pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        # ViT-like models bake the size into position embeddings: build them at the asked size
        # (timm's checkpoint filter resizes the pre-trained embeddings on load).
        kwargs.setdefault("img_size", cfg.image_size)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    head_loaded = False
    if cfg.pretrained and load_weights:
        state_dict = weights.load_pretrained(name, home)
        head_loaded = weights.load_into(
            model, state_dict, head_prefixes(model), f"pre-trained weights for {name}"
        )
    if not head_loaded:
        _init_classifier(model)
    freeze_stages(model, cfg.retrained_layers)
    return model


def keep_batchnorm_statistics(model: nn.Module) -> int:
    """Make the trained BatchNorm layers outside the head normalise with their running
    (pre-trained) statistics in training too, as in evaluation, and never update them; their
    scale and shift still train. The layers a frozen stage holds are FrozenBatchNorm already.
    For the trainer only (a forward pre-hook: the saved state dict is a plain model's).
    Returns how many layers keep their statistics."""
    head = head_prefixes(model)
    kept = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not name.startswith(head):
            module.register_forward_pre_hook(_normalise_with_running_statistics)
            kept += 1
    return kept


def _normalise_with_running_statistics(module: nn.Module, args) -> None:
    module.training = False  # model.train() sets it back; this runs before every forward


def _init_classifier(model: nn.Module) -> None:
    # Small random logits at first: large gradients through a random head would wreck the
    # pre-trained backbone in the first steps.
    for head in classifier_heads(model):
        for module in head.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.normal_(module.weight, std=HEAD_INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)


def backbone_stages(model: nn.Module) -> tuple[list[list[str]], list[str]]:
    """(stages, head): parameter names per backbone stage, input end first, and the names that
    always train. Stages are timm's coarse parameter groups (group_matcher(coarse=True): stem,
    then one per stage/block); the head is the classifier plus what timm attaches to the last
    stage as a head-side appendix (EfficientNet's conv_head/bn2, ViT's final norm)."""
    names = [n for n, _ in model.named_parameters()]
    classifier = head_prefixes(model)
    matcher = model.group_matcher(coarse=True) if hasattr(model, "group_matcher") else None
    if isinstance(matcher, dict):
        keys = {n: _stage_key(n, _compile_matcher(matcher)) for n in names}
    else:
        if matcher is None:  # no timm grouping: one stage per top-level child
            order = {c: i for i, (c, _) in enumerate(model.named_children())}
            groups = {}
            for n in names:
                groups.setdefault(order[n.split(".")[0]], []).append(n)
        else:
            from timm.models import group_parameters

            groups = group_parameters(model, matcher)
        last = max(groups)
        keys = {n: (None if i == last else (i,)) for i, group in groups.items() for n in group}
    head = [n for n in names if keys[n] is None or any(n.startswith(p) for p in classifier)]
    order = sorted({keys[n] for n in names if n not in head})
    stages = [[n for n in names if n not in head and keys[n] == key] for key in order]
    return stages, head


def _compile_matcher(matcher: dict) -> list:
    # timm's group_with_matcher format: {group: regex | [(regex, suffix), ...]}.
    compiled = []
    for ordinal, spec in enumerate(matcher.values()):
        if spec is None:
            continue
        for regex, suffix in spec if isinstance(spec, (list, tuple)) else [(spec, None)]:
            compiled.append((re.compile(regex), ordinal, suffix))
    return compiled


def _stage_key(name: str, compiled: list) -> tuple | None:
    from timm.models._manipulate import MATCH_PREV_GROUP

    for regex, ordinal, suffix in compiled:
        match = regex.match(name)
        if match:
            if suffix is not None and tuple(suffix) == MATCH_PREV_GROUP:
                return None  # attached after the last stage: head side
            digits = [float(g) for g in match.groups() if g is not None]
            return (ordinal, *digits, *(suffix or ()))
    return None  # timm leaves head layers unmatched


def freeze_stages(model: nn.Module, retrained_layers: int | str | None) -> None:
    """Train the last `retrained_layers` backbone stages and the head; freeze the rest, with
    their BatchNorm statistics (FrozenBatchNorm, as timm.utils.freeze does).
    None or "all": everything trains; 0: the head only."""
    for param in model.parameters():
        param.requires_grad_(True)
    if retrained_layers is None or retrained_layers == "all":
        return
    layers = int(retrained_layers)
    if layers < 0:
        raise ValueError(f"retrained_layers: got {layers}, expected 0 or more, or 'all'")
    stages, _ = backbone_stages(model)
    frozen = set(itertools.chain.from_iterable(stages[: max(len(stages) - layers, 0)]))
    if not frozen:
        return
    modules = [
        name
        for name, module in model.named_modules()
        if module._parameters
        and all(f"{name}.{p}" in frozen for p, v in module._parameters.items() if v is not None)
    ]
    from timm.utils import freeze

    freeze(model, modules)


# -- detection --------------------------------------------------------------------------------


def _create_detector(cfg, num_classes, home, load_weights, **kwargs) -> nn.Module:
    name = cfg.model_name
    defaults = RunConfig()
    # The config's defaults (800/1333) are torchvision's own; leave them out so a detector with
    # other defaults (the 320 model: 320/640) keeps its own.
    for key in ("min_size", "max_size"):
        if getattr(cfg, key) != getattr(defaults, key):
            kwargs.setdefault(key, getattr(cfg, key))
    kwargs.setdefault("box_batch_size_per_image", cfg.roi_samples)  # training only
    frozen_bn = cfg.pretrained and name in DETECTOR_FROZEN_BN_EPS
    model = build_detector(name, num_classes + 1, frozen_bn, **kwargs)
    head_loaded = False
    if cfg.pretrained and load_weights:
        state_dict = weights.load_pretrained(name, home)
        head_loaded = weights.load_into(
            model, state_dict, DETECTOR_HEAD, f"pre-trained weights for {name}"
        )
    if not head_loaded:
        predictor = model.roi_heads.box_predictor
        nn.init.normal_(predictor.cls_score.weight, std=HEAD_INIT_STD)
        nn.init.normal_(predictor.bbox_pred.weight, std=BOX_INIT_STD)
        nn.init.zeros_(predictor.cls_score.bias)
        nn.init.zeros_(predictor.bbox_pred.bias)
    layers = cfg.retrained_layers
    if layers is None or layers == "all":
        layers = (
            DETECTOR_DEFAULT_LAYERS if cfg.pretrained and layers is None else DETECTOR_MAX_LAYERS
        )
    freeze_detector_backbone(model, int(layers))
    return model


def freeze_detector_backbone(model: nn.Module, layers: int) -> None:
    """torchvision's trainable_backbone_layers on a built detector: the last `layers` backbone
    stages train (ResNet: layer4, layer3, layer2, layer1, conv1; MobileNet: its strided stages),
    5 = the whole backbone. FPN, RPN and box heads always train."""
    if not 0 <= layers <= DETECTOR_MAX_LAYERS:
        raise ValueError(f"retrained_layers: got {layers}, expected 0 to {DETECTOR_MAX_LAYERS}")
    for param in model.parameters():
        param.requires_grad_(True)
    body = model.backbone.body
    children = dict(body.named_children())
    if "layer4" in children:
        train = list(RESNET_LAYERS[:layers]) + (["bn1"] if layers == DETECTOR_MAX_LAYERS else [])
        for name, param in body.named_parameters():
            param.requires_grad_(any(name.split(".")[0] == t for t in train))
        return
    blocks = list(children.values())
    # torchvision's _mobilenet_extractor: stages start at the strided ("_is_cn") blocks.
    starts = [0] + [i for i, b in enumerate(blocks) if getattr(b, "_is_cn", False)]
    starts.append(len(blocks) - 1)
    trained = len(starts) if layers == DETECTOR_MAX_LAYERS else layers
    freeze_before = len(blocks) if trained == 0 else starts[len(starts) - trained]
    for block in blocks[:freeze_before]:
        for param in block.parameters():
            param.requires_grad_(False)
