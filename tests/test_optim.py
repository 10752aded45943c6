import pytest
import torch
from torch import nn

from engine import optim
from engine.config import RunConfig


def make_cfg(**values):
    return RunConfig.from_dict({"dataset": "x", **values})


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def train_step(model, optimizer):
    optimizer.zero_grad()
    loss = model(torch.randn(8, 4)).pow(2).mean()
    loss.backward()
    optimizer.step()


def run(schedule, model, optimizer, epochs, steps, metrics=None):
    """The LR used by every step, epoch by epoch."""
    lrs = []
    for epoch in range(epochs):
        for _ in range(steps):
            lrs.append(schedule.lr)
            train_step(model, optimizer)
            schedule.step_batch()
        schedule.step_epoch(metrics[epoch] if metrics else 0.5)
    return lrs


@pytest.mark.parametrize("schedule_name", ["plateau", "step", "exponential"])
@pytest.mark.parametrize("name", ["adam", "sgd", "rmsprop", "adamax", "adagrad", "adadelta"])
def test_every_optimizer_and_schedule_trains(name, schedule_name):
    cfg = make_cfg(optimizer=name, lr_schedule=schedule_name, lr=0.01, step_size=1)
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = optim.create_optimizer(cfg, model)
    assert type(optimizer).__name__.lower() == name
    schedule = optim.create_schedule(cfg, optimizer, steps_per_epoch=3)
    run(schedule, model, optimizer, epochs=2, steps=3)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    if schedule_name == "step":
        assert schedule.lr == pytest.approx(0.01 * 0.1**2)
    if schedule_name == "exponential":
        assert schedule.lr == pytest.approx(0.01 * 0.95**2)


def test_optimizer_settings_come_from_the_config():
    cfg = make_cfg(optimizer="sgd", lr=0.05, momentum=0.8, weight_decay=1e-4)
    group = optim.create_optimizer(cfg, tiny_model()).param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.05, 0.8, 1e-4)
    assert group["nesterov"] is True  # SGD's registered extra (engine.choices)
    no_momentum = optim.create_optimizer(make_cfg(optimizer="sgd", momentum=0), tiny_model())
    assert no_momentum.param_groups[0]["nesterov"] is False  # torch refuses it without momentum
    group = optim.create_optimizer(make_cfg(optimizer="rmsprop"), tiny_model()).param_groups[0]
    assert group["momentum"] == 0.9


def test_only_trainable_parameters_are_optimized():
    model = tiny_model()
    model[0].requires_grad_(False)
    optimizer = optim.create_optimizer(make_cfg(), model)
    params = optimizer.param_groups[0]["params"]
    assert len(params) == 2 and all(p.requires_grad for p in params)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        optim.create_optimizer(make_cfg(), model)


def test_unknown_names_list_the_valid_ones():
    cfg = make_cfg()
    cfg.optimizer = "lamb"
    with pytest.raises(ValueError, match="'lamb'.*adam, sgd, rmsprop, adamax, adagrad, adadelta"):
        optim.create_optimizer(cfg, tiny_model())
    cfg = make_cfg()
    cfg.lr_schedule = "cosine"
    optimizer = optim.create_optimizer(make_cfg(), tiny_model())
    with pytest.raises(ValueError, match="'cosine'.*plateau, step, exponential"):
        optim.create_schedule(cfg, optimizer, 5)


def test_warmup_rises_over_the_first_epoch_then_holds():
    cfg = make_cfg(lr=0.01, lr_schedule="step", step_size=1, lr_gamma=0.5)
    model = tiny_model()
    optimizer = optim.create_optimizer(cfg, model)
    schedule = optim.create_schedule(cfg, optimizer, steps_per_epoch=5)
    assert schedule.lr == pytest.approx(0.01 / 5)  # not zero: the first step counts
    lrs = run(schedule, model, optimizer, epochs=2, steps=5)
    first, second = lrs[:5], lrs[5:]
    assert all(a < b for a, b in zip(first, first[1:]))
    assert first == pytest.approx([0.002, 0.004, 0.006, 0.008, 0.01])
    assert first[-1] == 0.01  # exactly lr at the end of epoch 1
    assert second == [0.005] * 5  # decayed once at the end of epoch 1, constant within epoch 2


def test_no_warmup_starts_at_lr():
    cfg = make_cfg(lr=0.01, warmup=False, lr_schedule="exponential", lr_gamma=0.5)
    model = tiny_model()
    optimizer = optim.create_optimizer(cfg, model)
    schedule = optim.create_schedule(cfg, optimizer, steps_per_epoch=3)
    lrs = run(schedule, model, optimizer, epochs=2, steps=3)
    assert lrs == [0.01] * 3 + [0.005] * 3


def test_plateau_cuts_after_patience():
    cfg = make_cfg(lr=0.1, plateau_patience=2, plateau_factor=0.1, metric="accuracy")
    model = tiny_model()
    optimizer = optim.create_optimizer(cfg, model)
    schedule = optim.create_schedule(cfg, optimizer, steps_per_epoch=2)
    metrics = [0.5, 0.6, 0.6, 0.6, 0.6, None]
    lrs = run(schedule, model, optimizer, epochs=6, steps=2, metrics=metrics)
    per_epoch = lrs[1::2]
    # Epochs 3 and 4 do not improve (patience 2); epoch 5 is the third: the LR is cut after it.
    assert per_epoch[:5] == pytest.approx([0.1] * 5)
    assert per_epoch[5] == pytest.approx(0.01)
    assert schedule.lr == pytest.approx(0.01)  # no metric: no evidence, no cut


def test_plateau_minimises_a_loss_metric():
    cfg = make_cfg(lr=0.1, plateau_patience=0, metric="log_loss", warmup=False)
    optimizer = optim.create_optimizer(cfg, tiny_model())
    schedule = optim.create_schedule(cfg, optimizer, 1)
    schedule.step_epoch(1.0)
    schedule.step_epoch(0.5)  # lower is better: an improvement
    assert schedule.lr == pytest.approx(0.1)
    schedule.step_epoch(0.9)
    assert schedule.lr == pytest.approx(0.01)


@pytest.mark.parametrize("schedule_name", ["plateau", "step", "exponential"])
def test_resume_continues_the_same_lr_curve(schedule_name):
    cfg = make_cfg(lr=0.01, lr_schedule=schedule_name, step_size=2, plateau_patience=1)
    metrics = [0.5, 0.5, 0.5, 0.6, 0.6, 0.6, 0.6]

    model = tiny_model()
    optimizer = optim.create_optimizer(cfg, model)
    schedule = optim.create_schedule(cfg, optimizer, steps_per_epoch=4)
    straight = run(schedule, model, optimizer, epochs=7, steps=4, metrics=metrics)

    model = tiny_model()
    optimizer = optim.create_optimizer(cfg, model)
    schedule = optim.create_schedule(cfg, optimizer, steps_per_epoch=4)
    # Stop in the middle of the warmup's epoch, as a checkpoint after a crash would.
    first = []
    for _ in range(2):
        first.append(schedule.lr)
        train_step(model, optimizer)
        schedule.step_batch()
    saved = (optimizer.state_dict(), schedule.state_dict())

    optimizer = optim.create_optimizer(cfg, model)
    schedule = optim.create_schedule(cfg, optimizer, steps_per_epoch=4)
    schedule.load_state_dict(saved[1])
    optimizer.load_state_dict(saved[0])
    rest = []
    for _ in range(2):
        rest.append(schedule.lr)
        train_step(model, optimizer)
        schedule.step_batch()
    schedule.step_epoch(metrics[0])
    rest += run(schedule, model, optimizer, epochs=6, steps=4, metrics=metrics[1:])
    assert first + rest == pytest.approx(straight)
    assert len(set(straight)) > 4  # the curve does move: warmup and at least one decay


def test_left_empty_lr_is_the_optimizers_own():
    for name, lr in (("adam", 1e-3), ("sgd", 1e-2)):
        cfg = make_cfg(optimizer=name)
        assert cfg.lr is None and cfg.learning_rate == lr and cfg.resolved()["lr"] == lr
        assert optim.create_optimizer(cfg, tiny_model()).param_groups[0]["lr"] == lr
    assert make_cfg(optimizer="sgd", lr=0.2).learning_rate == 0.2


def timm_classifier():
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_efficientnet", pretrained=False, num_classes=3)


def test_pretrained_layers_learn_at_a_fraction_of_the_head_lr():
    model = timm_classifier()
    head = {id(p) for p in model.get_classifier().parameters()}
    cfg = make_cfg(lr=0.01, backbone_lr_factor=0.1)  # pretrained by default
    optimizer = optim.create_optimizer(cfg, model)
    first, second = optimizer.param_groups
    assert {id(p) for p in first["params"]} == head and first["lr"] == 0.01
    assert len(second["params"]) == len(list(model.parameters())) - len(head)
    assert second["lr"] == pytest.approx(0.001)
    # The warmup raises both groups to their own rate; the schedule reports the head's.
    schedule = optim.create_schedule(cfg, optimizer, steps_per_epoch=4)
    assert schedule.lr == pytest.approx(0.01 / 4)
    assert second["lr"] == pytest.approx(0.001 / 4)
    for _ in range(4):
        schedule.step_batch()
    assert (first["lr"], second["lr"]) == (0.01, pytest.approx(0.001))
    # From scratch there is nothing to protect; with a factor of 1, one rate.
    one_rate = make_cfg(lr=0.01, backbone_lr_factor=1)
    for other in (make_cfg(lr=0.01, backbone_lr_factor=0.1, pretrained=False), one_rate):
        groups = optim.create_optimizer(other, model).param_groups
        assert len(groups) == 1 and groups[0]["lr"] == 0.01
    # A model without a known head keeps one rate too (tiny_model is an nn.Sequential).
    groups = optim.create_optimizer(cfg, tiny_model()).param_groups
    assert len(groups) == 1 and groups[0]["lr"] == 0.01


def test_a_zero_factor_trains_the_head_only():
    model = timm_classifier()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = make_cfg(lr=0.01, backbone_lr_factor=0, warmup=False)
    optimizer = optim.create_optimizer(cfg, model)
    loss = model(torch.randn(2, 3, 32, 32)).logsumexp(-1).mean()
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed == {"classifier.weight", "classifier.bias"}


def test_nesterov_is_a_key_and_old_stored_sgd_runs_keep_plain_momentum():
    group = optim.create_optimizer(make_cfg(optimizer="sgd", nesterov=False), tiny_model())
    assert group.param_groups[0]["nesterov"] is False
    old = RunConfig.from_stored({"dataset": "x", "optimizer": "sgd", "lr": 0.01})
    assert optim.create_optimizer(old, tiny_model()).param_groups[0]["nesterov"] is False
    assert (old.label_smoothing, old.backbone_lr_factor) == (0.0, 1.0)


def test_an_ignored_backbone_lr_factor_is_said_once():
    said = []
    cfg = make_cfg(pretrained=False, backbone_lr_factor=0.5)
    optimizer = optim.create_optimizer(cfg, tiny_model(), log=said.append)
    assert len(optimizer.param_groups) == 1
    assert len(said) == 1 and "backbone_lr_factor 0.5 ignored: pretrained is off" in said[0]
    optim.create_optimizer(make_cfg(pretrained=False), tiny_model(), log=said.append)
    assert len(said) == 1  # the default factor, from scratch: nothing to say
    optim.create_optimizer(make_cfg(pretrained=False, backbone_lr_factor=1), tiny_model(), log=said.append)  # fmt: skip
    assert len(said) == 1  # factor 1: nothing to say
    optim.create_optimizer(make_cfg(pretrained=True), tiny_model(), log=said.append)
    assert len(said) == 2 and "the model's head is not known" in said[1]
    # Detection's own default is 1: a detector from scratch set to 0.1 is told it is ignored.
    detector = make_cfg(task="detection", pretrained=False, backbone_lr_factor=0.1)
    optim.create_optimizer(detector, tiny_model(), log=said.append)
    assert len(said) == 3 and "backbone_lr_factor 0.1 ignored: pretrained is off" in said[2]
