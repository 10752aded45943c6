"""The run's model: the best epoch's weights, its model card and its predictions.

Written by the main process into the run's folder each time an epoch improves on the best, so
a run stopped at any point leaves its best model, loadable by engine.predict and export. Where
the epochs were judged on a val split, the run ends with a final report: the best model loaded
back and scored once on the test split, beside the card.
"""

from __future__ import annotations

import math
from typing import Any

from safetensors.torch import load_file, save_file

from engine.config import RunConfig
from engine.run_folder import RunFolder


def model_card(
    run_id: int,
    cfg: RunConfig,
    classes: list[str],
    model_input: dict[str, Any],
    metrics: dict[str, Any],
    best_epoch: int,
    split: str = "test",
) -> dict[str, Any]:
    """What loading the model needs (classes, input size and normalisation, threshold) and
    what it scored."""
    return {
        "run_id": run_id,
        "task": cfg.task,
        "model": cfg.model_name,
        "classes": classes,
        "num_classes": len(classes),
        "image_size": model_input.get("image_size"),
        "mean": list(model_input.get("mean") or []),
        "std": list(model_input.get("std") or []),
        "min_size": cfg.min_size,
        "max_size": cfg.max_size,
        "threshold": metrics.get("threshold"),
        "metric": cfg.metric_name,
        "best_epoch": best_epoch,
        "metrics_split": split,  # the split `metrics` were measured on: val or test
        "metrics": {k: v for k, v in metrics.items() if is_number(v)},
        "config": cfg.resolved(),
    }


def save_best_model(accelerator, model, folder: RunFolder, card: dict, predictions: dict) -> None:
    """Every process calls this; the main process writes the three files."""
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    weights = accelerator.unwrap_model(model).state_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    tmp = folder.model.with_name(folder.model.name + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(folder.model)  # a reader never sees half a model
    folder.write_card(card)
    folder.write_predictions(predictions)


def load_best_model(accelerator, model, folder: RunFolder) -> bool:
    """Every process loads the best epoch's weights back into `model` (False: none saved)."""
    accelerator.wait_for_everyone()  # the main process may still be writing them
    if not folder.has_model():
        return False
    # Read on the CPU (safetensors refuses devices such as "cpu:0" that DDP on CPU uses);
    # load_state_dict copies each tensor onto the device its parameter lives on.
    accelerator.unwrap_model(model).load_state_dict(load_file(str(folder.model)))
    return True


def final_report(metrics: dict[str, Any], split: str, best_epoch: int, images: int) -> dict:
    """The run summary's `final_test`: what the best model scored on the held-out split."""
    numbers = {k: v for k, v in metrics.items() if is_number(v)}
    return {"split": split, "best_epoch": best_epoch, "images": images, "metrics": numbers}


def save_final_report(accelerator, folder: RunFolder, report: dict, predictions: dict) -> None:
    """Every process calls this; the main process writes the final predictions and adds the
    report to the model card, so an exported model carries its held-out score."""
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    folder.write_predictions(predictions, final=True)
    folder.write_card(folder.read_card() | {"final_test": report})


def is_number(value: Any) -> bool:
    """A finite int or float: what a metrics table keeps (NaN, None and flags are left out)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
