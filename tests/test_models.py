import pytest
import torch

from engine import models
from engine.config import RunConfig


def make_cfg(**values):
    return RunConfig.from_dict({"dataset": "x", "pretrained": False, **values})


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_any_timm_name_builds_with_the_asked_classes():
    model = models.create_model(make_cfg(model="resnet18"), 3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    trained, total = models.count_parameters(model)
    assert trained == total == sum(p.numel() for p in model.parameters())


def test_unknown_model_name_suggests_close_ones():
    with pytest.raises(ValueError, match="unknown model 'efficientnet_b00'.*efficientnet_b0"):
        models.create_model(make_cfg(model="efficientnet_b00"), 3)
    with pytest.raises(ValueError, match="unknown model 'xyz_net'"):
        models.default_image_size("xyz_net")


def test_new_head_starts_small():
    model = models.create_model(make_cfg(model="efficientnet_b0"), 4)
    assert model.classifier.weight.std().item() == pytest.approx(0.01, rel=0.2)
    assert torch.count_nonzero(model.classifier.bias) == 0
    logits = model.eval()(torch.randn(2, 3, 32, 32))
    assert logits.abs().max() < 1.0


def test_retrained_layers_pick_stages_from_the_output_end():
    head = {"conv_head.weight", "bn2.weight", "bn2.bias", "classifier.weight", "classifier.bias"}
    everything = models.create_model(make_cfg(model="efficientnet_b0"), 3)
    names = {n for n, _ in everything.named_parameters()}
    assert trainable(everything) == names  # None: the model's default, all of it

    head_only = models.create_model(make_cfg(model="efficientnet_b0", retrained_layers=0), 3)
    assert trainable(head_only) == head

    last = models.create_model(make_cfg(model="efficientnet_b0", retrained_layers=1), 3)
    assert trainable(last) == head | {n for n in names if n.startswith("blocks.6.")}

    two = models.create_model(make_cfg(model="efficientnet_b0", retrained_layers=2), 3)
    assert {n.split(".")[1] for n in trainable(two) - head} == {"5", "6"}

    stages, _ = models.backbone_stages(everything)
    assert len(stages) == 8  # stem + 7 block stages
    for layers in (len(stages), 100, "all"):
        model = models.create_model(make_cfg(model="efficientnet_b0"), 3)
        models.freeze_stages(model, layers)
        assert trainable(model) == names, layers
    trained, total = models.count_parameters(last)
    assert 0 < trained < total


def test_frozen_stages_keep_their_batchnorm_statistics():
    model = models.create_model(make_cfg(model="efficientnet_b0", retrained_layers=1), 3)
    frozen_stats = model.blocks[0][0].bn1.running_mean.clone()
    trained_stats = model.blocks[6][0].bn1.running_mean.clone()
    model.train()(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert torch.equal(model.blocks[0][0].bn1.running_mean, frozen_stats)
    assert not torch.equal(model.blocks[6][0].bn1.running_mean, trained_stats)


def test_stages_follow_timm_groups_for_other_families():
    vit = models.create_model(make_cfg(model="vit_tiny_patch16_224", image_size=32), 3)
    assert vit(torch.randn(1, 3, 32, 32)).shape == (1, 3)  # built at the asked size
    stages, head = models.backbone_stages(vit)
    assert len(stages) == 13 and set(head) == {
        "norm.weight",
        "norm.bias",
        "head.weight",
        "head.bias",
    }
    models.freeze_stages(vit, 1)
    assert {n.split(".")[0] + "." + n.split(".")[1] for n in trainable(vit) if "blocks" in n} == {
        "blocks.11"
    }


def test_model_input_and_default_image_size():
    model = models.create_model(make_cfg(model="efficientnet_b0"), 3)
    info = models.model_input(make_cfg(model="efficientnet_b0"), model)
    assert info == {
        "image_size": 224,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    }
    assert (
        models.model_input(make_cfg(model="efficientnet_b0", image_size=48), model)["image_size"]
        == 48
    )
    assert models.default_image_size("efficientnet_b4") == 320
    assert models.default_image_size("efficientnet_b7") == 600
    assert models.default_image_size("fasterrcnn_resnet50_fpn") is None


def test_efficientnet_b7_is_built_the_tf_way(monkeypatch):
    from timm.models import efficientnet

    seen = {}

    def spy(variant, *args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop")  # building b7 is slow; the arguments are what matter

    monkeypatch.setattr(efficientnet, "_gen_efficientnet", spy)
    with pytest.raises(RuntimeError, match="stop"):
        models.create_model(make_cfg(model="efficientnet_b7"), 3)
    assert seen["bn_eps"] == 1e-3 and seen["pad_type"] == "same"


def det_cfg(**values):
    return make_cfg(task="detection", min_size=64, max_size=64, **values)


def test_detector_has_a_background_class_and_trains():
    model = models.create_model(det_cfg(model="fasterrcnn_mobilenet_v3_large_320_fpn"), 2)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3
    assert model.transform.min_size == (64,) and model.transform.max_size == 64
    info = models.model_input(det_cfg(model="fasterrcnn_mobilenet_v3_large_320_fpn"), model)
    assert info["image_size"] is None and info["mean"] == pytest.approx((0.485, 0.456, 0.406))
    target = {"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([1])}
    losses = model.train()([torch.rand(3, 64, 64)], [target])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()


def test_detector_default_sizes_stay_the_models_own():
    cfg = make_cfg(task="detection", model="fasterrcnn_mobilenet_v3_large_320_fpn")
    model = models.create_model(cfg, 2)
    assert model.transform.min_size == (320,) and model.transform.max_size == 640


def test_detector_samples_roi_samples_proposals_per_image_to_train_its_box_head():
    cfg = make_cfg(task="detection", model="fasterrcnn_mobilenet_v3_large_320_fpn")
    assert models.create_model(cfg, 2).roi_heads.fg_bg_sampler.batch_size_per_image == 128
    cfg = make_cfg(task="detection", model="fasterrcnn_mobilenet_v3_large_320_fpn", roi_samples=64)
    assert models.create_model(cfg, 2).roi_heads.fg_bg_sampler.batch_size_per_image == 64


def test_detector_trainable_layers():
    def body_layers(model):
        return {n.split(".")[2] for n in trainable(model) if n.startswith("backbone.body.")}

    def always_trained(model):
        names = {n for n, _ in model.named_parameters() if not n.startswith("backbone.body.")}
        assert names and names <= trainable(model)  # FPN, RPN and box heads

    name = "fasterrcnn_resnet50_fpn"
    frozen = models.create_model(det_cfg(model=name, retrained_layers=0), 2)
    assert body_layers(frozen) == set()
    always_trained(frozen)
    three = models.create_model(det_cfg(model=name, retrained_layers=3), 2)
    assert body_layers(three) == {"layer2", "layer3", "layer4"}
    full = models.create_model(det_cfg(model=name, retrained_layers=5), 2)
    assert body_layers(full) == {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}
    always_trained(full)
    # Not pre-trained and no choice: everything trains, as in torchvision.
    assert body_layers(models.create_model(det_cfg(model=name), 2)) == body_layers(full)

    mobile = "fasterrcnn_mobilenet_v3_large_320_fpn"
    none = models.create_model(det_cfg(model=mobile, retrained_layers=0), 2)
    assert body_layers(none) == set()
    always_trained(none)
    one = models.create_model(det_cfg(model=mobile, retrained_layers=1), 2)
    assert body_layers(one) == {"16"}  # the last stage: the final 1x1 conv block
    all_blocks = models.create_model(det_cfg(model=mobile, retrained_layers=5), 2)
    assert body_layers(all_blocks) == {str(i) for i in range(17)}


def test_pretrained_detector_freezes_batchnorm_like_torchvision():
    from torchvision.ops.misc import FrozenBatchNorm2d

    cfg = det_cfg(model="fasterrcnn_resnet50_fpn", pretrained=True)
    model = models.create_model(cfg, 2, load_weights=False)  # rebuild without weights
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)
    assert model.backbone.body.bn1.eps == 0.0
    layers = {n.split(".")[2] for n in trainable(model) if n.startswith("backbone.body.")}
    assert layers == {"layer2", "layer3", "layer4"}  # torchvision's default of 3
