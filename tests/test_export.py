import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_predict import CLASSES, ROOT, make_run, write_images

from engine.data import read_image
from engine.export import ExportError, export_run
from engine.predict import load_predictor

# torch 2.14 deprecates TorchScript in favour of torch.export; the format still loads fine.
ignore_jit_deprecation = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    images = write_images(home.parent / "images")
    return {"home": home, "cls": make_run(home), "det": make_run(home, task="detection"),
            "images": images}  # fmt: skip


def sample_batch(predictor, images):
    return torch.stack([predictor.preprocess(read_image(p)) for p in images])


def own_logits(predictor, batch):
    with torch.no_grad():
        return predictor.model(batch).numpy()


def read_card(path):
    return json.loads(path.with_name(path.name + ".json").read_text())


def test_onnx_export_matches_the_model_with_any_batch(seeded):
    import onnxruntime as ort

    home, run_id = seeded["home"], seeded["cls"]
    path = export_run(run_id, "onnx", home=home)
    assert path == home / str(run_id) / "export" / "model.onnx"
    predictor = load_predictor(run_id, home=home)
    batch = sample_batch(predictor, seeded["images"][:3])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    (logits,) = session.run(None, {"image": batch.numpy()})
    np.testing.assert_allclose(logits, own_logits(predictor, batch), atol=1e-4)

    card = read_card(path)
    assert card["format"] == "onnx" and card["file"] == "model.onnx"
    assert card["classes"] == CLASSES and card["image_size"] == 48
    assert card["mean"] == predictor.card["mean"] and card["std"] == predictor.card["std"]
    assert card["inputs"]["image"]["shape"] == ["batch", 3, 48, 48]
    assert card["metrics"] == {"accuracy": 0.75} and card["config"]["model"] == "efficientnet_b0"


@ignore_jit_deprecation
def test_torchscript_export_matches_the_model(seeded, tmp_path):
    home, run_id = seeded["home"], seeded["cls"]
    path = export_run(run_id, "torchscript", out=tmp_path / "deploy" / "net.pt", home=home)
    assert path == tmp_path / "deploy" / "net.pt" and read_card(path)["format"] == "torchscript"
    assert not list(path.parent.glob("*.partial"))
    predictor = load_predictor(run_id, home=home)
    batch = sample_batch(predictor, seeded["images"])
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        np.testing.assert_allclose(loaded(batch).numpy(), own_logits(predictor, batch), atol=1e-4)


def test_safetensors_export_reloads_the_same_weights(seeded, tmp_path):
    home, run_id = seeded["home"], seeded["cls"]
    path = export_run(run_id, "safetensors", out=tmp_path, home=home)
    assert path == tmp_path / "model.safetensors"
    exported = load_file(str(path))
    original = load_file(str(home / str(run_id) / "model.safetensors"))
    assert exported.keys() == original.keys()
    assert all(torch.equal(exported[k], original[k]) for k in original)
    with safe_open(str(path), "pt") as handle:
        assert json.loads(handle.metadata()["visionboard"])["classes"] == CLASSES
    assert read_card(path)["task"] == "classification"


@ignore_jit_deprecation
def test_detection_exports_torchscript_and_onnx_that_match(seeded):
    from factories import digits_boxes

    home, run_id = seeded["home"], seeded["det"]
    predictor = load_predictor(run_id, home=home)
    image = digits_boxes(n_images=2, canvas=80, classes=3)[0]["image"].convert("RGB")
    image = image.resize((90, 70))  # not the size the export traced with
    expected = predictor.predict([image])[0]
    tensor = predictor.preprocess(image)

    path = export_run(run_id, "torchscript", home=home)
    scripted = torch.jit.load(str(path))
    with torch.no_grad():
        boxes, scores, labels = scripted(tensor)
    np.testing.assert_allclose(boxes.numpy(), expected["boxes"], atol=1e-3)
    np.testing.assert_allclose(scores.numpy(), expected["scores"], atol=1e-5)
    assert labels.tolist() == expected["label_ids"]
    card = read_card(path)
    assert card["threshold"] == 0.3 and card["outputs"]["labels"]["meaning"].startswith("0-based")
    assert (card["min_size"], card["max_size"]) == (96, 128)

    try:
        path = export_run(run_id, "onnx", home=home)
    except ExportError as exc:  # allowed by the design when this torch cannot trace it
        assert "torchscript or safetensors" in str(exc)
        return
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores, labels = session.run(None, {"image": tensor.numpy()})
    # Equal scores may come out in another order: compare the strongest detections as sets.
    top = np.array(expected["scores"]) > 0.5
    assert top.sum() > 0
    got = np.array(sorted(zip(scores[scores > 0.5], labels[scores > 0.5])))
    want = np.array(sorted(zip(np.array(expected["scores"])[top], np.array(expected["label_ids"])[top])))  # fmt: skip
    np.testing.assert_allclose(got, want, atol=1e-3)
    for box, score in zip(boxes[scores > 0.5], scores[scores > 0.5]):
        near = np.abs(np.array(expected["boxes"]) - box).max(axis=1) < 1e-2
        assert (np.abs(np.array(expected["scores"])[near] - score) < 1e-3).any()
    assert len(boxes) == len(scores) == len(labels)


def test_export_errors_are_clear(seeded, tmp_path):
    home = seeded["home"]
    with pytest.raises(ExportError, match="format 'tflite': expected one of onnx, torchscript"):
        export_run(seeded["cls"], "tflite", home=home)
    with pytest.raises(ExportError, match="run 99 not found"):
        export_run(99, "onnx", home=home)
    queued = make_run(home, status="failed", model=False)
    with pytest.raises(ExportError, match=f"run {queued} \\(failed\\) has no trained model"):
        export_run(queued, "torchscript", home=home)


def test_cli_export_onnx(seeded):
    home = seeded["home"]
    env = dict(os.environ, VISIONBOARD_HOME=str(home))
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--home", str(home), "export", str(seeded["cls"]),
         "--format", "onnx", "--out", str(home / "cli.onnx")],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"exported run {seeded['cls']} as onnx: {home / 'cli.onnx'}" in done.stdout
    import onnx

    onnx.checker.check_model(str(home / "cli.onnx"))
    assert read_card(home / "cli.onnx")["classes"] == CLASSES
