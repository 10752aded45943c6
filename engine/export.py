"""Export a run's model as ONNX, TorchScript or safetensors, with a model card beside it.

`visionboard export RUN --format F [--out PATH]`. The default file is
`<home>/<run>/export/model.<onnx|pt|safetensors>`; the card is the same name plus `.json`
(classes, input size and normalisation, threshold, metrics, config, and the inputs and outputs
of the file).

- Classification, ONNX and TorchScript: input `image` float32 [N, 3, S, S] (N free), RGB
  resized to S x S, scaled to [0, 1] and normalised with the card's mean/std; output `logits`
  [N, classes] (softmax gives the probabilities).
- Detection, ONNX and TorchScript: input `image` float32 [3, H, W] in [0, 1], any size (the
  model resizes inside); outputs `boxes` [K, 4] xyxy in the input's pixels, `scores` [K],
  `labels` [K] int64, 0-based index into the classes, best first. Keep scores >= the card's
  threshold.
- safetensors: the state dict, for engine.models.create_model(config, classes,
  load_weights=False).
"""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine import choices, store
from engine.predict import PredictError, Predictor, load_predictor
from engine.run_folder import RunFolder, write_json

ONNX_OPSET = 17


class ExportError(ValueError):
    """The run or format cannot be exported; the message says why and what works."""


class DetectorExport(nn.Module):
    """A Faster R-CNN for one image: tensors in and out, labels 0-based like the classes list.
    (torchvision's own interface takes a list of images and, scripted, returns (losses,
    detections); plain tensors are what ONNX runtimes and C++ callers want.)"""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        if hasattr(model, "_has_warned"):
            # Scripted, torchvision warns that it returns (losses, detections); this wrapper
            # takes care of that, so the warning would only puzzle the file's users.
            model._has_warned = True

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if torch.jit.is_scripting():
            _, detections = self.model([image])
        else:
            detections = self.model([image])
        found = detections[0]
        return found["boxes"], found["scores"], found["labels"] - 1


# -- one function per format: write `path`, return the file's inputs and outputs --------------


def export_onnx(predictor: Predictor, path: Path) -> dict[str, Any]:
    model = predictor.model
    if predictor.task == "detection":
        wrapper = DetectorExport(model).eval()
        example = (torch.rand(3, 320, 320),)
        names = {"input_names": ["image"], "output_names": ["boxes", "scores", "labels"]}
        axes = {"image": {1: "height", 2: "width"}, "boxes": {0: "k"}}
        axes |= {"scores": {0: "k"}, "labels": {0: "k"}}
        try:
            _quietly(torch.onnx.export, wrapper, example, str(path), opset_version=ONNX_OPSET,
                     dynamic_axes=axes, dynamo=False, **names)  # fmt: skip
        except Exception as exc:  # the tracer's failures have many types
            raise ExportError(
                f"ONNX export of the detector {predictor.cfg.model_name} failed on torch "
                f"{torch.__version__} ({type(exc).__name__}: {str(exc)[:300]}); detection "
                "models export as torchscript or safetensors"
            ) from exc
        return detection_interface()
    size = predictor.image_size
    example = (torch.randn(1, 3, size, size),)
    _quietly(torch.onnx.export, model, example, str(path), opset_version=ONNX_OPSET,
             input_names=["image"], output_names=["logits"], dynamo=False,
             dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})  # fmt: skip
    return classification_interface(predictor)


def export_torchscript(predictor: Predictor, path: Path) -> dict[str, Any]:
    if predictor.task == "detection":
        # Scripting keeps the data-dependent control flow (the number of boxes, NMS).
        scripted = _quietly(torch.jit.script, DetectorExport(predictor.model).eval())
        interface = detection_interface()
    else:
        size = predictor.image_size
        example = torch.randn(1, 3, size, size)
        scripted = _quietly(torch.jit.trace, predictor.model, example, check_trace=False)
        interface = classification_interface(predictor)
    _quietly(torch.jit.save, scripted, str(path))
    return interface


def export_safetensors(predictor: Predictor, path: Path) -> dict[str, Any]:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in predictor.model.state_dict().items()}
    card = {k: predictor.card.get(k) for k in ("task", "model", "classes", "image_size")}
    save_file(state, str(path), metadata={"format": "pt", "visionboard": json.dumps(card)})
    return {
        "state_dict": "safetensors.torch.load_file(path)",
        "build": "engine.models.create_model(RunConfig.from_dict(card['config']), "
        "len(card['classes']), load_weights=False).load_state_dict(state)",
        **(
            detection_interface()
            if predictor.task == "detection"
            else classification_interface(predictor)
        ),
    }


EXPORTERS = {
    "onnx": export_onnx,
    "torchscript": export_torchscript,
    "safetensors": export_safetensors,
}
choices.check_implemented("export formats", choices.EXPORT_FORMATS, EXPORTERS)


def classification_interface(predictor: Predictor) -> dict[str, Any]:
    size = predictor.image_size
    return {
        "inputs": {"image": {"shape": ["batch", 3, size, size], "dtype": "float32"}},
        "outputs": {"logits": {"shape": ["batch", len(predictor.classes)], "dtype": "float32"}},
        "preprocessing": (
            f"RGB with EXIF orientation applied, resized to {size}x{size} (bilinear, "
            "antialiased, aspect not kept), scaled to [0, 1], then (x - mean) / std per "
            "channel; softmax(logits) gives the class probabilities"
        ),
    }


def detection_interface() -> dict[str, Any]:
    return {
        "inputs": {"image": {"shape": [3, "height", "width"], "dtype": "float32"}},
        "outputs": {
            "boxes": {"shape": ["k", 4], "dtype": "float32", "meaning": "x1, y1, x2, y2 pixels"},
            "scores": {"shape": ["k"], "dtype": "float32"},
            "labels": {"shape": ["k"], "dtype": "int64", "meaning": "0-based index in classes"},
        },
        "preprocessing": (
            "RGB with EXIF orientation applied, scaled to [0, 1], any size: the model resizes "
            "it (min_size / max_size) and normalises it itself; keep boxes scoring at least "
            "the threshold"
        ),
    }


def model_card(predictor: Predictor, fmt: str, path: Path, interface: dict) -> dict[str, Any]:
    import timm
    import torchvision

    out = {
        **predictor.card,  # the run's model card, and what this file adds to it
        "format": fmt,
        "file": path.name,
        "run_id": predictor.run_id,
        "task": predictor.task,
        "classes": predictor.classes,
        "num_classes": len(predictor.classes),
        **interface,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "timm": timm.__version__,
        },
    }
    transform = getattr(predictor.model, "transform", None)
    if predictor.task == "detection" and transform is not None:
        out["min_size"] = int(transform.min_size[0])
        out["max_size"] = int(transform.max_size)
        out["mean"] = [float(v) for v in transform.image_mean]
        out["std"] = [float(v) for v in transform.image_std]
    return out


def default_path(run_id: int, fmt: str, home=None) -> Path:
    suffix = choices.get_export_format(fmt).suffix
    return RunFolder(store.home_dir(home), run_id).export_dir / f"model.{suffix}"


def card_path(path: Path) -> Path:
    """Where the model card of an exported file goes: the file's name plus .json."""
    return path.with_name(path.name + ".json")


def export_run(run_id: int, fmt: str, out: str | Path | None = None, home=None) -> Path:
    """Write the run's model in `fmt` (onnx, torchscript, safetensors) and its card beside it;
    returns the model file's path."""
    try:
        suffix = choices.get_export_format(fmt).suffix
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    try:
        predictor = load_predictor(run_id, home=home, device="cpu")
    except PredictError as exc:
        raise ExportError(str(exc)) from exc
    path = Path(out) if out else default_path(run_id, fmt, home)
    if path.is_dir():
        path = path / f"model.{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write aside, then rename: the dashboard never offers a half-written file.
    tmp = path.with_name(path.name + ".partial")
    try:
        interface = EXPORTERS[fmt](predictor, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    card = model_card(predictor, fmt, path, interface)
    write_json(card_path(path), card, indent=2)
    return path


def _quietly(fn, *args, **kwargs):
    # The tracer warns about every constant it bakes in; none of it helps the user.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)
