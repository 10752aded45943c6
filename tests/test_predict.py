import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import ADMIN
from PIL import Image
from safetensors.torch import save_file

from engine import store
from engine.config import RunConfig
from engine.data import build_transform, read_image
from engine.models import create_model, model_input
from engine.predict import PredictError, load_predictor, predict_files

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["cat", "dog", "fox"]
DETECTOR = "fasterrcnn_mobilenet_v3_large_320_fpn"


# -- a finished run, built by hand as engine.train writes it ---------------------------------


def make_run(home, task="classification", classes=CLASSES, status="completed", model=True, **cfg):
    """A run row plus, with `model`, model.safetensors and model.json like the trainer's.
    The head gets large random weights, so different images get different predictions."""
    values = {"dataset": "x", "task": task, "pretrained": False, **cfg}
    if task == "classification":
        values = {"model": "efficientnet_b0", "image_size": 48, **values}
    else:
        values = {"model": DETECTOR, "min_size": 96, "max_size": 128, **values}
    config = RunConfig.from_dict(values)
    db = store.connect(home)
    run_id = store.create_run(db, config.resolved(), name=f"{task} test run", by=ADMIN)
    store.set_status(db, run_id, status)
    db.conn.close()
    if not model:
        return run_id
    torch.manual_seed(0)
    net = create_model(config, len(classes), load_weights=False)
    if task == "detection":
        calibrate_batchnorm(net)
    with torch.no_grad():
        head = (
            net.roi_heads.box_predictor.cls_score if task == "detection" else net.get_classifier()
        )
        head.weight.normal_(std=0.5)
    folder = store.run_dir(run_id, home)
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()}, folder / "model.safetensors"
    )
    info = model_input(config, net)
    card = {
        "run_id": run_id,
        "task": task,
        "model": config.model_name,
        "classes": list(classes),
        "num_classes": len(classes),
        "image_size": info["image_size"],
        "mean": list(info["mean"]),
        "std": list(info["std"]),
        "min_size": config.min_size,
        "max_size": config.max_size,
        "threshold": 0.3 if task == "detection" else None,
        "metric": config.metric_name,
        "best_epoch": 2,
        "metrics": {"accuracy": 0.75} if task == "classification" else {"f1": 0.5},
        "config": config.resolved(),
    }
    (folder / "model.json").write_text(json.dumps(card))
    return run_id


def calibrate_batchnorm(detector):
    """Running statistics from a few pictures: a fresh detector's BatchNorm (mean 0, var 1)
    flattens every feature map, and all its boxes would tie on one score."""
    from factories import digits_boxes

    tensors = [
        torch.from_numpy(np.array(r["image"].convert("RGB"))).permute(2, 0, 1) / 255.0
        for r in digits_boxes(n_images=6, canvas=80, classes=3)
    ]
    for module in detector.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a plain average over the batch
            module.reset_running_stats()
    detector.train()
    with torch.no_grad():
        detector.backbone(detector.transform(tensors)[0].tensors)
    detector.eval()


def write_images(folder, n=4):
    """n small pictures of different sizes (one in a subfolder), a broken .png and a text file."""
    from engine.sample_datasets import digit_images

    folder = Path(folder)
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (image, _) in enumerate(digit_images(per_class=1, size=32, classes=range(n))):
        image = image.resize((32 + 8 * k, 40))
        path = folder / ("sub" if k == 0 else "") / f"img{k}.png"
        image.save(path)
        paths.append(path)
    (folder / "broken.png").write_bytes(b"not a png at all")
    (folder / "notes.txt").write_text("not an image")
    return paths


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """One data directory with a classification run (1) and a detection run (2)."""
    home = tmp_path_factory.mktemp("home")
    cls_run = make_run(home)
    det_run = make_run(home, task="detection")
    images = write_images(home.parent / "images")
    return {"home": home, "cls": cls_run, "det": det_run, "images": images}


def read_csv(path_or_text):
    text = Path(path_or_text).read_text() if isinstance(path_or_text, Path) else path_or_text
    return list(csv.DictReader(io.StringIO(text)))


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# -- classification ----------------------------------------------------------------------------


def test_folder_predictions_list_broken_files_and_match_the_model(seeded, tmp_path):
    home, run_id, images = seeded["home"], seeded["cls"], seeded["images"]
    folder = images[1].parent
    result = predict_files(run_id, [folder], out=tmp_path / "p.csv", home=home, progress=False)
    assert result == {
        "predicted": 4,
        "failed": 1,
        "out": str(tmp_path / "p.csv"),
        "threshold": None,
    }

    rows = read_csv(tmp_path / "p.csv")
    assert list(rows[0]) == ["path", "label", "score", "prob_cat", "prob_dog", "prob_fox", "error"]
    by_path = {Path(r["path"]).name: r for r in rows}
    assert set(by_path) == {"img0.png", "img1.png", "img2.png", "img3.png", "broken.png"}
    broken = by_path.pop("broken.png")
    assert broken["label"] == "" and "cannot read image" in broken["error"]

    predictor = load_predictor(run_id, home=home)
    expected = predictor.predict([read_image(p) for p in images])
    # The model's own output on training's test transform, computed here independently.
    cfg = predictor.cfg
    transform = build_transform(cfg, False, 48, predictor.card["mean"], predictor.card["std"])
    batch = torch.stack([transform(read_image(p)) for p in images])
    with torch.no_grad():
        probs = predictor.model(batch).softmax(-1).numpy()
    for path, pred, own in zip(images, expected, probs):
        row = by_path[path.name]
        assert row["error"] == ""
        assert row["label"] == pred["label"] == CLASSES[int(own.argmax())]
        got = np.array([float(row[f"prob_{c}"]) for c in CLASSES])
        np.testing.assert_allclose(got, own, atol=2e-6)
        np.testing.assert_allclose([pred["probs"][c] for c in CLASSES], own, atol=1e-6)
        assert float(row["score"]) == pytest.approx(own.max(), abs=2e-6)
    assert len({r["label"] for r in by_path.values()}) > 1, "predictions should differ"

    out = tmp_path / "p.jsonl"
    result = predict_files(run_id, [folder], out=out, home=home, progress=False, batch_size=3)
    assert (result["predicted"], result["failed"]) == (4, 1)
    records = {Path(r["path"]).name: r for r in read_jsonl(out)}
    assert set(records["broken.png"]) == {"path", "error"}
    for path, pred in zip(images, expected):
        record = records[path.name]
        assert record["label"] == pred["label"]
        assert record["probs"] == pytest.approx(pred["probs"], abs=1e-6)


def write_photo(path, width=800, height=600):
    """A smooth JPEG far larger than 4 x image_size: decoded in draft mode by the run."""
    coarse = np.random.default_rng(0).integers(0, 255, (height // 40, width // 40, 3), np.uint8)
    Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC).save(path, quality=90)
    return path


def test_a_large_jpeg_is_predicted_from_the_pixels_the_runs_evaluation_read(seeded, tmp_path):
    from engine.data.records import ClassSample, DatasetSplits
    from engine.tasks import ClassificationTask

    home, run_id = seeded["home"], seeded["cls"]
    photo = write_photo(tmp_path / "photo.jpg")
    db = store.connect(home)
    cfg = RunConfig.from_stored(store.get_run(db, run_id)["config"])  # as the trainer reads it
    db.conn.close()
    predictor = load_predictor(run_id, home=home)
    card = predictor.card
    splits = DatasetSplits("classification", "", Path(), CLASSES)
    splits.test = [ClassSample(str(photo), 0)]
    inputs = {"image_size": card["image_size"], "mean": card["mean"], "std": card["std"]}
    evaluated = ClassificationTask(cfg, splits, inputs).dataset(splits.test, train=False)[0][0]
    assert predictor.decode_size and 4 * predictor.image_size < 600
    assert torch.equal(predictor.preprocess(predictor.read(photo)), evaluated)
    full = predictor.preprocess(read_image(photo))  # the full decode differs: the test can tell
    assert not torch.equal(full, evaluated)

    predict_files(run_id, [photo], out=tmp_path / "p.jsonl", home=home, progress=False)
    row = read_jsonl(tmp_path / "p.jsonl")[0]
    with torch.no_grad():
        own = predictor.model(evaluated[None]).softmax(-1)[0].numpy()
    np.testing.assert_allclose([row["probs"][c] for c in CLASSES], own, atol=2e-6)


def test_predict_to_stdout_names_files_and_missing_paths(seeded, capsys):
    images = seeded["images"]
    result = predict_files(
        seeded["cls"],
        [images[2], images[3], "no/such/file.png"],
        home=seeded["home"],
        progress=True,
    )
    assert result["out"] is None and (result["predicted"], result["failed"]) == (2, 1)
    captured = capsys.readouterr()
    rows = read_csv(captured.out)
    assert [r["path"] for r in rows] == ["no/such/file.png", str(images[2]), str(images[3])]
    assert rows[0]["error"] == "file not found"
    assert "img" in captured.err  # the progress bar goes to stderr, the CSV to stdout


def test_prediction_errors_are_clear(seeded, tmp_path):
    home, images = seeded["home"], seeded["images"]
    with pytest.raises(PredictError, match="run 99 not found"):
        predict_files(99, images, home=home, progress=False)
    queued = make_run(home, status="queued", model=False)
    with pytest.raises(PredictError, match=f"run {queued} \\(queued\\) has no trained model"):
        load_predictor(queued, home=home)
    other = tmp_path / "other_home"  # the page test counts the seeded runs with a model
    broken = make_run(other)
    (other / str(broken) / "model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(PredictError, match=f"run {broken}: cannot load .*model.safetensors"):
        load_predictor(broken, home=other)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictError, match="no images found in .*empty"):
        predict_files(seeded["cls"], [tmp_path / "empty"], home=home, progress=False)
    with pytest.raises(PredictError, match="does not exist"):
        predict_files(seeded["cls"], [tmp_path / "nothing"], home=home, progress=False)
    with pytest.raises(PredictError, match="unknown extension '.xlsx'.*.csv, .jsonl"):
        predict_files(seeded["cls"], images, out=tmp_path / "p.xlsx", home=home)


def test_gradcam_heatmap_has_the_image_size_and_follows_the_input(seeded):
    from engine.gradcam import overlay

    predictor = load_predictor(seeded["cls"], home=seeded["home"])
    first, second = (read_image(p) for p in seeded["images"][1:3])
    heat1, index1 = predictor.explain(first)
    heat2, _ = predictor.explain(second)
    assert heat1.shape == (first.height, first.width)
    assert heat2.shape == (second.height, second.width)
    for heat in (heat1, heat2):
        assert heat.dtype == np.float32 and heat.min() >= 0 and heat.max() <= 1
        assert heat.max() > 0.99  # normalised
    assert index1 == predictor.predict([first])[0]["index"]
    small = np.asarray(Image.fromarray(heat2).resize(first.size))
    assert np.abs(heat1 - small).mean() > 0.01
    other = (index1 + 1) % 3
    heat_other, index_other = predictor.explain(first, target=CLASSES[other])
    assert index_other == other and not np.allclose(heat_other, heat1)
    assert overlay(first, heat1).size == first.size
    with pytest.raises(PredictError, match="class 'wolf': expected one of cat, dog, fox"):
        predictor.explain(first, target="wolf")


def test_gradcam_hooks_the_last_conv_of_other_models():
    from engine.gradcam import gradcam

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 2),
    )
    for p in net.parameters():
        p.requires_grad_(False)  # frozen weights still explain
    x = torch.zeros(1, 3, 20, 24)
    x[..., 5:10, 5:10] = 1.0
    heat, index = gradcam(net, x)
    assert heat.shape == (20, 24) and 0 <= index < 2
    assert heat.min() >= 0 and heat.max() <= 1


# -- detection ---------------------------------------------------------------------------------


def test_detection_predicts_boxes_in_original_pixels(seeded, tmp_path):
    from factories import digits_boxes

    home, run_id = seeded["home"], seeded["det"]
    predictor = load_predictor(run_id, home=home)
    image = digits_boxes(n_images=2, canvas=80, classes=3)[0]["image"]
    image = image.convert("RGB").resize((100, 80))
    everything = predictor.predict([image])[0]
    assert everything["boxes"], "the randomly initialised detector should return boxes"
    boxes = np.array(everything["boxes"])
    assert (boxes[:, [0, 2]] <= 100 + 1e-3).all() and (boxes[:, [1, 3]] <= 80 + 1e-3).all()
    assert set(everything["labels"]) <= set(CLASSES)
    assert everything["labels"] == [CLASSES[i] for i in everything["label_ids"]]
    # The model itself on the same [0, 1] tensor (it resizes inside and maps boxes back).
    with torch.no_grad():
        own = predictor.model([torch.from_numpy(np.array(image)).permute(2, 0, 1) / 255.0])[0]
    np.testing.assert_allclose(boxes, own["boxes"].numpy(), atol=1e-4)

    scores = np.array(everything["scores"])
    cut = float(np.median(scores))
    kept = predictor.predict([image], threshold=cut)[0]
    assert len(kept["scores"]) == int((scores >= cut).sum()) and min(kept["scores"]) >= cut

    image.save(tmp_path / "scene.png")
    result = predict_files(run_id, [tmp_path], out=tmp_path / "boxes.csv", home=home)
    assert result["threshold"] == 0.3  # the run's saved threshold
    rows = read_csv(tmp_path / "boxes.csv")
    assert list(rows[0]) == ["path", "label", "score", "x1", "y1", "x2", "y2", "error"]
    above = [s for s in everything["scores"] if s >= 0.3]
    assert len(rows) == max(1, len(above))
    if above:
        assert float(rows[0]["score"]) == pytest.approx(above[0], abs=1e-5)
    result = predict_files(run_id, [tmp_path], out=tmp_path / "b.jsonl", home=home, threshold=0.0)
    record = read_jsonl(tmp_path / "b.jsonl")[0]
    assert len(record["boxes"]) == len(everything["boxes"])
    np.testing.assert_allclose(record["boxes"], boxes, atol=0.01)


# -- command line ------------------------------------------------------------------------------


def test_cli_predict_writes_a_csv(seeded, tmp_path):
    home, folder = seeded["home"], seeded["images"][1].parent
    env = dict(os.environ, VISIONBOARD_HOME=str(home))
    cmd = [sys.executable, "-m", "engine.cli", "--home", str(home), "predict", str(seeded["cls"])]
    done = subprocess.run(
        [*cmd, str(folder), "--out", str(tmp_path / "preds.csv"), "--batch-size", "2"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "4 image(s) predicted, 1 unreadable" in done.stderr
    rows = read_csv(tmp_path / "preds.csv")
    assert len(rows) == 5 and sum(bool(r["error"]) for r in rows) == 1


def test_cli_predict_unknown_run_fails_cleanly(seeded, capsys):
    from engine import cli

    code = cli.main(["--home", str(seeded["home"]), "predict", "77", str(seeded["images"][0])])
    assert code == 2
    assert "error: run 77 not found" in capsys.readouterr().err


# -- dashboard ---------------------------------------------------------------------------------


def test_try_it_page_says_when_no_run_has_a_model(home, monkeypatch):
    from streamlit.testing.v1 import AppTest

    make_run(home, status="running", model=False)
    monkeypatch.setenv("VISIONBOARD_SAMPLES", "0")
    app = AppTest.from_file(str(ROOT / "dashboard" / "pages" / "predict.py"), default_timeout=60)
    app.run()
    assert not app.exception
    assert "No run has a trained model yet" in app.info[0].value


def test_try_it_page_predicts_uploads_and_server_images(seeded, monkeypatch):
    from streamlit.testing.v1 import AppTest

    home, images = seeded["home"], seeded["images"]
    make_run(home, status="running", model=False)  # no model yet: not offered
    monkeypatch.setenv("VISIONBOARD_HOME", str(home))
    monkeypatch.setenv("VISIONBOARD_SAMPLES", "0")
    app = AppTest.from_file(str(ROOT / "dashboard" / "pages" / "predict.py"), default_timeout=120)
    app.run()
    assert not app.exception
    pick = app.selectbox(key="predict_run")
    assert set(pick.options) == {
        f"#{seeded['det']} detection test run (completed)",
        f"#{seeded['cls']} classification test run (completed)",
    }
    pick.set_value(seeded["cls"]).run()
    uploads = [(p.name, p.read_bytes(), "image/png") for p in images[1:3]]
    uploads.append(("broken.png", b"not a png", "image/png"))
    app.file_uploader(key="predict_upload").set_value(uploads).run()
    assert not app.exception
    names = " ".join(m.value for m in app.markdown)
    assert "img1.png" in names and "img2.png" in names
    assert len(app.warning) == 1
    assert app.warning[0].value.startswith("broken.png: cannot read image")
    assert len(app.get("plotly_chart")) == 2  # one top-k chart per readable image
    assert len(app.get("image")) == 4  # each image and its Grad-CAM heatmap

    # The same code for a folder on the server: recursive, the broken file listed.
    app.text_input(key="predict_paths").input(str(images[1].parent)).run()
    assert not app.exception
    assert len(app.get("plotly_chart")) == 6 and len(app.warning) == 2
    assert app.get("download_button")[0].proto.label == "Download predictions (CSV)"

    app.selectbox(key="predict_run").set_value(seeded["det"]).run()
    assert not app.exception
    assert app.slider(key=f"predict_conf_{seeded['det']}").value == 0.3  # the run's threshold
    assert len(app.get("image")) == 6  # each readable image with its boxes drawn
    assert len(app.dataframe) >= 1  # the boxes above the threshold, per image
