"""Use a finished run's model: load it, predict images, explain a classification.

`load_predictor(run_id)` rebuilds the run's architecture from its model card and loads its
weights (engine.run_folder names both; safetensors only: nothing is unpickled). Images go through the run's
own test-time preprocessing: `Predictor.read` (engine.data.read_image: EXIF orientation, RGB;
a classifier's JPEGs decoded at the reduced size its evaluation read them at, so a file's
prediction matches its row in the run's test report), then the test transform of
classification (resize to image_size, normalise) or detection (to a [0, 1] tensor; Faster R-CNN
resizes inside the model, so boxes come back in the original image's pixels).

`predict_files` is `visionboard predict`: files and folders (recursive), batched, with a
progress bar on stderr. Unreadable files get a row with an `error` and do not stop the rest.
Output by the extension of `out` (no `out`: CSV on stdout):

- `.csv`, classification: one row per image, columns `path, label, score, prob_<class>...,
  error`. Detection: one row per box, columns `path, label, score, x1, y1, x2, y2, error`
  (xyxy pixels); an image without a box above the threshold gets one row with empty fields.
- `.jsonl`: one object per image: {"path", "label", "score", "probs": {class: p}} or
  {"path", "boxes": [[x1, y1, x2, y2]], "scores", "labels": [class]}, or {"path", "error"}.

Detection keeps boxes scoring at least `threshold`: by default the run's saved one (the
confidence of the best F1 on its test split), else DEFAULT_THRESHOLD.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine import choices, store
from engine.config import ConfigError, RunConfig
from engine.run_folder import CardError, RunFolder, read_card

DEFAULT_THRESHOLD = 0.5
OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class PredictError(ValueError):
    """A run, file or option prediction cannot use; the message says which and why."""


# -- loading ----------------------------------------------------------------------------------


def model_files(run_id: int, home=None) -> tuple[Path, Path]:
    """(weights, model card) of a run; PredictError when the run or its model is missing."""
    home_path = store.home_dir(home)
    db = store.connect(home_path)
    try:
        run = store.get_run(db, int(run_id))
    finally:
        db.conn.close()
    if run is None:
        raise PredictError(f"run {run_id} not found in {home_path} (`visionboard runs` lists them)")
    folder = RunFolder(home_path, run_id)
    if not folder.has_model():
        raise PredictError(
            f"run {run_id} ({run['status']}) has no trained model: {folder.model} is missing "
            "(a run writes it when its first epoch ends)"
        )
    if not folder.card.is_file():
        raise PredictError(f"run {run_id}: model card {folder.card} is missing")
    return folder.model, folder.card


def card_config(card: dict[str, Any]) -> RunConfig:
    """The run's RunConfig from its card. Keys this version does not know are left out, so a
    model trained by an older or newer VisionBoard still loads."""
    known = {f.name for f in dataclasses.fields(RunConfig)}
    data = {k: v for k, v in card["config"].items() if k in known}
    data.setdefault("dataset", "unknown")
    try:
        return RunConfig.from_stored(data)  # as the trainer read it
    except ConfigError as exc:
        raise PredictError(f"the model card's config is invalid: {exc}") from exc


def resolve_device(device: str) -> torch.device:
    if device not in choices.DEVICES:
        raise PredictError(f"device {device!r}: expected one of {', '.join(choices.DEVICES)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise PredictError("device 'cuda': torch sees no CUDA GPU here; use cpu or auto")
    return torch.device(device)


def load_predictor(run_id: int, home=None, device: str = "cpu") -> Predictor:
    """The run's best model, ready to predict; PredictError if the run or its model is missing."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from engine.models import create_model

    weights, card_path = model_files(run_id, home)
    try:
        card = read_card(card_path)
    except CardError as exc:  # callers catch PredictError for every reason a run won't load
        raise PredictError(str(exc)) from exc
    cfg = card_config(card)
    # The same config as training (pretrained included: it decides where torchvision freezes
    # BatchNorm), but no pre-trained weights are looked for: the run's own replace them.
    try:
        model = create_model(cfg, len(card["classes"]), home=home, load_weights=False)
    except ValueError as exc:  # e.g. a model name this timm no longer knows
        raise PredictError(f"run {run_id}: cannot build {cfg.model_name}: {exc}") from exc
    try:
        state = load_file(str(weights), device="cpu")
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, ValueError, SafetensorError) as exc:
        raise PredictError(
            f"run {run_id}: cannot load {weights} into {cfg.model_name} with "
            f"{len(card['classes'])} classes: {str(exc)[:500]}"
        ) from exc
    return Predictor(model, card, cfg, resolve_device(device), run_id=int(run_id))


# -- the predictor ----------------------------------------------------------------------------


class Predictor:
    """A run's model with its preprocessing. predict() takes PIL images: read them with
    read() (a path, an open file or an upload's buffer), which decodes as the run's
    evaluation did."""

    def __init__(self, model, card: dict, cfg: RunConfig, device=None, run_id: int | None = None):
        self.card = card
        self.cfg = cfg
        self.run_id = run_id
        self.task = card["task"]
        self.classes = list(card["classes"])
        self.device = torch.device(device or "cpu")
        self.model = model.to(self.device).eval()
        self.threshold = card.get("threshold")
        self.decode_size: int | None = None  # detection decodes at full size, as it trained
        if self.task == "detection":
            from engine.data import DetectionTransform

            detection = DetectionTransform(cfg, train=False)
            self.transform = lambda image: detection(image, np.zeros((0, 4)), np.zeros(0))[0]
        else:
            from engine.data import build_transform
            from engine.data.images import run_decode_size

            self.image_size = int(card["image_size"])
            self.decode_size = run_decode_size(cfg, self.image_size)
            self.transform = build_transform(
                cfg, False, self.image_size, card.get("mean"), card.get("std")
            )

    def read(self, source) -> Image.Image:
        """The image at `source` (a path or an open file) as the run's evaluation decodes it:
        engine.data.read_image at the run's decode size. ImageError if unreadable."""
        from engine.data import read_image

        return read_image(source, self.decode_size)

    @property
    def default_threshold(self) -> float:
        """Detection: the run's best-F1 confidence, else DEFAULT_THRESHOLD."""
        return float(self.threshold) if self.threshold is not None else DEFAULT_THRESHOLD

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The run's test transform: CHW float tensor (normalised for classification)."""
        return self.transform(image.convert("RGB") if image.mode != "RGB" else image)

    @torch.no_grad()
    def predict(self, images: Sequence[Image.Image], threshold: float | None = None) -> list[dict]:
        """One dict per image. Classification: {"label", "index", "score", "probs": {class: p}}.
        Detection: {"boxes": [[x1, y1, x2, y2]] (original pixels), "scores", "labels" (class
        names), "label_ids" (0-based)}, best first, keeping scores >= threshold (None: every
        box the model returns)."""
        if isinstance(images, Image.Image):
            images = [images]
        if not images:
            return []
        tensors = [self.preprocess(image) for image in images]
        if self.task == "detection":
            return self.predict_detection(tensors, threshold)
        return self.predict_classification(torch.stack(tensors))

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(batch.to(self.device)).float()

    def predict_classification(self, batch: torch.Tensor) -> list[dict]:
        probs = self.logits(batch).softmax(-1).double().cpu().numpy()
        out = []
        for row in probs:
            index = int(row.argmax())
            out.append(
                {
                    "label": self.classes[index],
                    "index": index,
                    "score": float(row[index]),
                    "probs": {c: float(p) for c, p in zip(self.classes, row)},
                }
            )
        return out

    def predict_detection(self, tensors: list[torch.Tensor], threshold: float | None) -> list[dict]:
        with torch.no_grad():
            outputs = self.model([t.to(self.device) for t in tensors])
        out = []
        for o in outputs:
            keep = o["scores"] >= threshold if threshold is not None else slice(None)
            boxes = o["boxes"][keep].float().cpu().numpy()
            scores = o["scores"][keep].float().cpu().numpy()
            ids = (o["labels"][keep].cpu().numpy() - 1).astype(int)  # 0 is the background
            out.append(
                {
                    "boxes": boxes.tolist(),
                    "scores": scores.tolist(),
                    "labels": [self.classes[i] for i in ids],
                    "label_ids": ids.tolist(),
                }
            )
        return out

    def explain(
        self, image: Image.Image, target: int | str | None = None
    ) -> tuple[np.ndarray, int]:
        """Grad-CAM of a classification: (heatmap float32 [height, width] of the image in
        [0, 1], explained class index). `target` (index or name) defaults to the predicted
        class."""
        from engine.gradcam import gradcam, resize_heatmap

        if self.task != "classification":
            raise PredictError("Grad-CAM explains classifications; this run is a detector")
        if isinstance(target, str):
            if target not in self.classes:
                raise PredictError(f"class {target!r}: expected one of {', '.join(self.classes)}")
            target = self.classes.index(target)
        x = self.preprocess(image).unsqueeze(0).to(self.device)
        heatmap, index = gradcam(self.model, x, target)
        # The test transform squashes the whole image to a square, so stretching the map back
        # puts every cell over the pixels it saw.
        return resize_heatmap(heatmap, image.size), index


# -- batch prediction -------------------------------------------------------------------------


def collect_images(paths: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """(files to predict, paths that do not exist). Folders are searched recursively for the
    image types Pillow reads; a file named explicitly is tried whatever its extension."""
    from engine.data.images import list_images

    files: list[Path] = []
    missing: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += list_images(path)
        elif path.is_file():
            files.append(path)
        else:
            missing.append(str(raw))
    return files, missing


def output_format(out: str | Path | None) -> str:
    if out is None or str(out) == "-":
        return "csv"
    suffix = Path(out).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise PredictError(
            f"--out {out}: unknown extension {suffix or '(none)'!r}, expected one of "
            + ", ".join(OUTPUT_FORMATS)
        )
    return OUTPUT_FORMATS[suffix]


def csv_header(task: str, classes: Sequence[str]) -> list[str]:
    if task == "detection":
        return ["path", "label", "score", "x1", "y1", "x2", "y2", "error"]
    return ["path", "label", "score", *[f"prob_{c}" for c in classes], "error"]


def csv_rows(path: str, result: dict | None, task: str, classes, error: str = "") -> list[list]:
    """The CSV rows of one image (see the module docstring for the columns)."""
    width = len(csv_header(task, classes))
    if result is None:
        return [[path] + [""] * (width - 2) + [error]]
    if task == "detection":
        if not result["boxes"]:
            return [[path] + [""] * (width - 1)]
        return [
            [path, label, round(score, 6), *[round(v, 2) for v in box], ""]
            for box, score, label in zip(result["boxes"], result["scores"], result["labels"])
        ]
    probs = [round(result["probs"][c], 6) for c in classes]
    return [[path, result["label"], round(result["score"], 6), *probs, ""]]


def json_record(path: str, result: dict | None, task: str, error: str = "") -> dict:
    """The JSONL object of one image."""
    if result is None:
        return {"path": path, "error": error}
    if task == "detection":
        return {
            "path": path,
            "boxes": [[round(v, 2) for v in box] for box in result["boxes"]],
            "scores": [round(s, 6) for s in result["scores"]],
            "labels": result["labels"],
        }
    return {
        "path": path,
        "label": result["label"],
        "score": round(result["score"], 6),
        "probs": {c: round(p, 6) for c, p in result["probs"].items()},
    }


def format_csv(records: Sequence[tuple[str, dict | None, str]], task: str, classes) -> str:
    """(path, result or None, error) records as CSV text, for downloads."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(csv_header(task, classes))
    for path, result, error in records:
        writer.writerows(csv_rows(path, result, task, classes, error))
    return buffer.getvalue()


class _Writer:
    """Writes each image's rows as soon as its batch is done (big folders stay small in memory)."""

    def __init__(self, handle, fmt: str, task: str, classes):
        self.handle, self.fmt, self.task, self.classes = handle, fmt, task, classes
        if fmt == "csv":
            self.csv = csv.writer(handle)
            self.csv.writerow(csv_header(task, classes))

    def write(self, path: str, result: dict | None, error: str = "") -> None:
        if self.fmt == "csv":
            self.csv.writerows(csv_rows(path, result, self.task, self.classes, error))
        else:
            self.handle.write(json.dumps(json_record(path, result, self.task, error)) + "\n")


def predict_files(
    run_id: int,
    paths: Iterable[str | Path],
    out: str | Path | None = None,
    batch_size: int = 16,
    home=None,
    progress: bool = True,
    threshold: float | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Predict image files and folders with a run's model; write CSV or JSONL (see the module
    docstring). Returns {"predicted": n, "failed": m, "out": path or None, "threshold": the
    detection threshold used (None for classification)}."""
    from tqdm import tqdm

    from engine.data import ImageError

    fmt = output_format(out)
    if batch_size < 1:
        raise PredictError(f"batch size {batch_size}: expected 1 or more")
    paths = [str(p) for p in paths]
    files, missing = collect_images(paths)
    if not files:
        where = ", ".join(paths) or "(no paths given)"
        detail = f" ({', '.join(missing)} does not exist)" if missing else ""
        raise PredictError(f"no images found in {where}{detail}")
    predictor = load_predictor(run_id, home=home, device=device)
    if predictor.task == "detection" and threshold is None:
        threshold = predictor.default_threshold

    to_stdout = out is None or str(out) == "-"
    if not to_stdout:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    handle = sys.stdout if to_stdout else open(out, "w", newline="", encoding="utf-8")  # noqa: SIM115
    predicted = failed = 0
    try:
        writer = _Writer(handle, fmt, predictor.task, predictor.classes)
        for path in missing:
            writer.write(path, None, "file not found")
            failed += 1
        with tqdm(total=len(files), unit="img", file=sys.stderr, disable=not progress) as bar:
            for start in range(0, len(files), batch_size):
                batch = files[start : start + batch_size]
                readable: list[tuple[str, Image.Image]] = []
                errors: dict[str, str] = {}
                for file in batch:
                    try:
                        readable.append((str(file), predictor.read(file)))
                    except ImageError as exc:
                        errors[str(file)] = exc.reason
                results = predictor.predict([img for _, img in readable], threshold=threshold)
                by_path = dict(zip([p for p, _ in readable], results))
                for file in batch:  # keep the files' order in the output
                    key = str(file)
                    if key in by_path:
                        writer.write(key, by_path[key])
                        predicted += 1
                    else:
                        writer.write(key, None, errors[key])
                        failed += 1
                bar.update(len(batch))
    finally:
        if not to_stdout:
            handle.close()
        else:
            handle.flush()
    return {
        "predicted": predicted,
        "failed": failed,
        "out": None if to_stdout else str(out),
        "threshold": threshold if predictor.task == "detection" else None,
    }
