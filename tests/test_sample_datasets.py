import json
import shutil

import numpy as np
from factories import ADMIN
from PIL import Image

from engine import store
from engine.data import load_splits
from engine.sample_datasets import (
    CLASSIFICATION_NAME,
    DETECTION_NAME,
    compose_canvases,
    ensure_samples,
)


def test_ensure_samples_writes_and_registers_both_datasets(db, home):
    assert ensure_samples(db, home) == [CLASSIFICATION_NAME, DETECTION_NAME]
    digits = store.get_dataset(db, CLASSIFICATION_NAME)
    assert (digits["format"], digits["task"]) == ("imagefolder", "classification")
    assert digits["info"]["error"] is None
    assert digits["info"]["classes"] == [str(d) for d in range(10)]
    assert sum(digits["info"]["images"].values()) == 300
    assert digits["info"]["split_source"] == "seeded"
    with Image.open(next((home / "datasets" / "digits" / "3").glob("*.png"))) as img:
        assert img.size == (32, 32)

    detection = store.get_dataset(db, DETECTION_NAME)
    assert (detection["format"], detection["task"]) == ("coco", "detection")
    info = detection["info"]
    assert info["error"] is None and sum(info["images"].values()) == 40
    # Nothing blocking and no warning; the build's .complete marker is listed as left aside.
    assert [p for p in info["problems"] if p["severity"] != "info"] == []
    assert info["boxes"]["train"] > 0
    splits = load_splits(detection["path"], "detection")
    assert splits.classes == [str(d) for d in range(10)]
    for sample in splits.train[:10]:
        assert 1 <= len(sample.labels) <= 3
        with Image.open(sample.path) as img:
            assert img.size == (128, 128)


def test_ensure_samples_is_idempotent_and_repairs_an_interrupted_build(db, home):
    ensure_samples(db, home)
    coco = home / "datasets" / DETECTION_NAME / "annotations.json"
    stamp = coco.stat().st_mtime_ns
    ensure_samples(db, home)
    assert coco.stat().st_mtime_ns == stamp
    assert len(store.list_datasets(db)) == 2

    folder = home / "datasets" / CLASSIFICATION_NAME
    (folder / ".complete").unlink()  # as if the process died while writing
    shutil.rmtree(folder / "5")
    store.delete_dataset(db, CLASSIFICATION_NAME, by=ADMIN)
    ensure_samples(db, home)
    assert len(list((folder / "5").glob("*.png"))) == 30
    assert store.get_dataset(db, CLASSIFICATION_NAME) is not None


def test_canvas_boxes_are_tight_around_the_digits():
    canvases = compose_canvases(8, canvas=128, seed=3)
    for image, boxes, labels in canvases:
        pixels = np.asarray(image)
        assert 1 <= len(boxes) <= 3 and len(boxes) == len(labels)
        outside = pixels.copy()
        for x1, y1, x2, y2 in boxes.astype(int):
            inside = pixels[y1:y2, x1:x2]
            assert 4 <= x2 - x1 <= 40 and 4 <= y2 - y1 <= 40
            # every edge of the box touches ink: the box is tight
            assert inside[0].max() > 40 and inside[-1].max() > 40
            assert inside[:, 0].max() > 40 and inside[:, -1].max() > 40
            outside[y1:y2, x1:x2] = 0
        assert outside.max() <= 40  # no ink outside the boxes


def test_sample_coco_file_is_plain_coco(db, home):
    ensure_samples(db, home)
    data = json.loads((home / "datasets" / DETECTION_NAME / "annotations.json").read_text())
    assert [c["name"] for c in data["categories"]] == [str(d) for d in range(10)]
    assert len(data["images"]) == 40
    assert all(len(a["bbox"]) == 4 and a["iscrowd"] == 0 for a in data["annotations"])


def test_a_run_builds_the_samples_only_when_it_names_one(db, home, tmp_path):
    from factories import write_digits_imagefolder

    from engine.config import RunConfig
    from engine.preflight import submit_run

    own = write_digits_imagefolder(tmp_path / "own", per_class=4, classes=range(2), split=True)
    keys = {"model": "efficientnet_b0", "pretrained": False, "image_size": 32}
    submit_run(RunConfig.from_dict({**keys, "dataset": str(own)}), db, by=ADMIN)
    # The user's own data: nothing of the samples is built or registered before it queues.
    assert not (home / "datasets" / CLASSIFICATION_NAME).exists()
    assert store.get_dataset(db, CLASSIFICATION_NAME) is None
    run_id = submit_run(RunConfig.from_dict({**keys, "dataset": "digits"}), db, by=ADMIN)
    assert store.get_run(db, run_id)["config"]["dataset"] == CLASSIFICATION_NAME
    assert store.get_dataset(db, CLASSIFICATION_NAME)["path"] == str(home / "datasets" / "digits")
