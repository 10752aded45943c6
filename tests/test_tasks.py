"""The train loader's randomness: each epoch's shuffle and augmentation follow from the run's
seed and the epoch's number alone, whatever ran before in the process and however many loader
workers read the images; and the loaders leave the process's own random stream alone."""

import pytest
import torch
from accelerate import Accelerator
from factories import write_digits_imagefolder

from engine.config import RunConfig
from engine.data import load_splits
from engine.tasks import create_task, dataloader_config

AUGMENTED = {
    "augment_color": True, "augment_hflip": True, "augment_rotation": 15.0, "augment_crop": True,
}  # fmt: skip
INPUT = {"image_size": 32, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits_imagefolder(
        tmp_path_factory.mktemp("data") / "digits", per_class=6, classes=range(3)
    )


def prepared(digits, num_workers=0, augment=AUGMENTED):
    """A task and its train loader, fresh, as a trainer process (new or resumed) has them."""
    cfg = RunConfig.from_dict(
        {**augment, "dataset": str(digits), "batch_size": 4, "seed": 3, "device": "cpu"}
        | {"num_workers": num_workers}
    )
    splits = load_splits(str(digits), cfg.task, cfg.dataset_format, cfg.test_ratio, cfg.seed)
    task = create_task(cfg, splits, INPUT)
    accelerator = Accelerator(cpu=True, dataloader_config=dataloader_config(cfg))
    train_loader = task.loaders(num_processes=1)["train"]
    return task, accelerator.prepare(train_loader)


def read_epochs(task, train_loader, epochs) -> list[list[tuple]]:
    """(indices, images) of every batch of each epoch."""
    seen = []
    for epoch in epochs:
        task.start_epoch(train_loader, epoch)
        seen.append([(index.tolist(), images) for index, images, _ in train_loader])
    return seen


def epochs_seen(digits, epochs, num_workers=0, augment=AUGMENTED):
    return read_epochs(*prepared(digits, num_workers, augment), epochs)


def assert_same(a, b):
    assert [[index for index, _ in epoch] for epoch in a] == [
        [index for index, _ in epoch] for epoch in b
    ]
    assert all(torch.equal(x, y) for ea, eb in zip(a, b) for (_, x), (_, y) in zip(ea, eb))


def test_an_epoch_is_the_same_in_a_resumed_process(digits):
    _, second = epochs_seen(digits, [1, 2])
    (resumed,) = epochs_seen(digits, [2])
    assert_same([resumed], [second])


def test_each_epoch_shuffles_and_augments_anew(digits):
    first, second = epochs_seen(digits, [1, 2])
    order = [[i for i, _ in epoch] for epoch in (first, second)]
    assert order[0] != order[1]
    # An image read in both epochs is augmented differently.
    images = [
        {j: batch[k] for i, batch in epoch for k, j in enumerate(i)} for epoch in (first, second)
    ]
    index = min(images[0].keys() & images[1].keys())
    assert not torch.equal(images[0][index], images[1][index])


def test_loader_workers_augment_as_the_main_process_does(digits):
    # Two persistent workers over two epochs: each sample's draw depends on its seed, not on
    # the worker that reads it or on what that worker read before.
    assert_same(epochs_seen(digits, [1, 2], num_workers=2), epochs_seen(digits, [1, 2]))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_loaders_leave_the_processs_random_stream_alone(digits, num_workers):
    # Dropout and detector sampling draw from it: reading data must not move it, or a resumed
    # run (whose persistent workers start later than the uninterrupted run's) would draw anew.
    task, train_loader = prepared(digits, num_workers)
    before = torch.get_rng_state()
    read_epochs(task, train_loader, [1, 2])
    assert torch.equal(torch.get_rng_state(), before)


def test_training_loss_smooths_the_labels_and_evaluation_does_not(digits):
    cfg = RunConfig.from_dict({"dataset": str(digits), "device": "cpu"})
    assert cfg.label_smoothing == 0.1  # the default
    splits = load_splits(str(digits), cfg.task, cfg.dataset_format, cfg.test_ratio, cfg.seed)
    task = create_task(cfg, splits, INPUT)
    torch.manual_seed(0)
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, 0])
    model = lambda images: logits  # noqa: E731
    loss, _, n = task.train_step(model, (None, torch.zeros(4, 3, 32, 32), labels))
    smoothed = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    plain = torch.nn.functional.cross_entropy(logits, labels)
    assert n == 4 and torch.isclose(loss, smoothed) and not torch.isclose(loss, plain)
    cfg.label_smoothing = 0.0
    loss, _, _ = task.train_step(model, (None, torch.zeros(4, 3, 32, 32), labels))
    assert torch.isclose(loss, plain)


def test_default_augmentation_is_on_and_reproducible(digits):
    # The defaults augment (flip, colour, crop); per-sample seeds keep a resume exact.
    first, second = epochs_seen(digits, [1, 2], augment={})
    (resumed,) = epochs_seen(digits, [2], augment={})
    assert_same([resumed], [second])
    # An image read in both epochs looks different: augmentation, not only the shuffle.
    by_index = [
        {i: img for idx, imgs in epoch for i, img in zip(idx, imgs)} for epoch in (first, second)
    ]
    both = by_index[0].keys() & by_index[1].keys()
    assert both and not any(torch.equal(by_index[0][i], by_index[1][i]) for i in both)


def _tiny_resnet():
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=3)


@pytest.mark.parametrize("pretrained", [True, False])
def test_a_pretrained_classifier_trains_with_its_batchnorm_statistics_kept(digits, pretrained):
    # The default (keep_bn_statistics): pre-trained statistics normalise in training as in
    # evaluation and stay as loaded, while the layers' scale and shift train; a model from
    # scratch estimates its own.
    cfg = RunConfig.from_dict(
        {"dataset": str(digits), "device": "cpu", "pretrained": pretrained, "channels_last": False}
    )
    assert cfg.bn_statistics == "on"
    splits = load_splits(str(digits), cfg.task, cfg.dataset_format, cfg.test_ratio, cfg.seed)
    task = create_task(cfg, splits, INPUT)
    model = task.prepare_model(_tiny_resnet())
    bn = model.bn1
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    images = torch.randn(4, 3, 32, 32) * 3 + 1  # statistics far from the stored ones
    model.eval()
    with torch.no_grad():
        evaluated = model(images)
    model.train()
    trained = model(images)
    trained.sum().backward()
    after = {k: v for k, v in model.state_dict().items() if "running" in k}
    kept = all(torch.equal(before[k], after[k]) for k in before)
    assert kept is pretrained
    assert torch.allclose(trained, evaluated, atol=1e-5) is pretrained
    assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0  # scale still trains
    assert (task.notes != []) is pretrained
    if pretrained:
        assert task.notes == ["BatchNorm: 20 layers keep their pre-trained statistics (keep_bn_statistics auto)"]  # fmt: skip
        state = model.state_dict()  # a plain model's state dict: nothing of the hook in it
        assert set(state) == set(_tiny_resnet().state_dict())


def test_keeping_batchnorm_statistics_can_be_turned_off(digits):
    cfg = RunConfig.from_dict(
        {"dataset": str(digits), "pretrained": True, "keep_bn_statistics": "off"}
    )
    splits = load_splits(str(digits), cfg.task, cfg.dataset_format, cfg.test_ratio, cfg.seed)
    model = create_task(cfg, splits, INPUT).prepare_model(_tiny_resnet())
    before = model.bn1.running_mean.clone()
    model.train()
    model(torch.randn(4, 3, 32, 32) + 1)
    assert not torch.equal(before, model.bn1.running_mean)


def _notes(digits, model=None, **values):
    cfg = RunConfig.from_dict({"dataset": str(digits), "pretrained": True, **values})
    splits = load_splits(str(digits), cfg.task, cfg.dataset_format, cfg.test_ratio, cfg.seed)
    task = create_task(cfg, splits, INPUT)
    task.prepare_model(model or _tiny_resnet())
    return task.notes


def test_kept_statistics_at_a_high_backbone_rate_are_warned_about(digits):
    assert _notes(digits) == ["BatchNorm: 20 layers keep their pre-trained statistics (keep_bn_statistics auto)"]  # fmt: skip
    # auto at one rate for all re-estimates; set on, it keeps them and the log warns.
    assert _notes(digits, backbone_lr_factor=1) == ["BatchNorm: statistics re-estimated from each batch (keep_bn_statistics auto)"]  # fmt: skip
    warned = _notes(digits, backbone_lr_factor=1, keep_bn_statistics="on")
    assert len(warned) == 2 and warned[1].startswith(
        "warning: the pre-trained layers learn at lr x 1 with keep_bn_statistics on"
    )


def test_a_model_without_a_known_head_is_warned_about_and_one_without_batchnorm_is_not(digits):
    class Headless(torch.nn.Module):  # no classifier head timm or torchvision would name
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))

        def forward(self, x):
            return self.body(x).mean((2, 3))

    # Every layer learns at lr there (engine.optim), too fast for kept statistics.
    notes = _notes(digits, Headless())
    assert len(notes) == 2 and notes[1].startswith("warning: this model's head is unknown")
    assert _notes(digits, Headless(), keep_bn_statistics="off") == [
        "BatchNorm: statistics re-estimated from each batch (keep_bn_statistics off)"
    ]
    vit = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    assert _notes(digits, vit) == []  # no BatchNorm: nothing to say
