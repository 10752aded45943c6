"""The run's model: the best epoch's weights, its model card and its test predictions.

Written by the main process into the run's folder each time an epoch improves on the best, so
a run stopped at any point leaves its best model, loadable by engine.predict and export.
"""

from __future__ import annotations

import math
from typing import Any

from safetensors.torch import save_file

from engine.config import RunConfig
from engine.run_folder import RunFolder


def model_card(
    run_id: int,
    cfg: RunConfig,
    classes: list[str],
    model_input: dict[str, Any],
    metrics: dict[str, Any],
    best_epoch: int,
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


def is_number(value: Any) -> bool:
    """A finite int or float: what a metrics table keeps (NaN, None and flags are left out)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
