"""optimizer=muon (pipeline.muon): convolution filters take orthogonalised momentum steps on a fixed norm, everything
else torch's Nesterov SGD steps, in the task's parameter groups; it trains the CIFAR-10 recipe's network for real."""
import copy

import pytest
import torch
from torch import nn

from pipeline.muon import Muon, orthogonalised
from test_images import write_cifar


@pytest.mark.parametrize("shape", [(16, 72), (72, 16), (32, 32)])
def test_orthogonalised_keeps_the_singular_vectors_and_evens_out_the_singular_values(shape):
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(*shape, generator=generator) @ torch.diag(torch.logspace(-1, 1, shape[1]))
    result = orthogonalised(matrix, steps=5)
    values, spread = torch.linalg.svdvals(result), torch.linalg.svdvals(matrix)
    assert values.max() < 1.3 and values.min() > 0.15
    assert values.max() / values.min() < spread.max() / spread.min() / 3  # spread 3+ times less
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    assert torch.nn.functional.cosine_similarity(result.flatten(), (u @ vh).flatten(), dim=0) > 0.85


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, bias=False)
        self.norm = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.conv(x))).amax(dim=(2, 3)))


def loss_of(net):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, 8, 8, generator=generator)
    return nn.functional.cross_entropy(net(x), torch.arange(16) % 4)


def test_everything_but_the_filters_follows_torchs_nesterov_sgd():
    torch.manual_seed(0)
    net = Net()
    net.conv.weight.requires_grad_(False)  # the filters' steps would change the others' gradients
    reference = copy.deepcopy(net)
    muon = Muon(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01, filter_lr=0.05)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    for _ in range(5):
        for optimizer, model in ((muon, net), (sgd, reference)):
            optimizer.zero_grad()
            loss_of(model).backward()
            optimizer.step()
    for (name, p), q in zip(net.named_parameters(), reference.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    assert not torch.equal(net.head.weight, Net().head.weight)


@pytest.mark.parametrize("scheduled_momentum", [None, 0.95], ids=["constant", "momentum scheduled"])
def test_a_filter_steps_along_its_orthogonalised_nesterov_momentum_from_a_fixed_norm(scheduled_momentum):
    """With a momentum schedule (scheduler=onecycle's cycle_momentum sets every group's momentum), the filters keep
    filter_momentum."""
    torch.manual_seed(0)
    net = Net()
    muon = Muon(net.parameters(), lr=0.1, filter_lr=0.05, filter_momentum=0.6, newton_schulz_steps=3)
    for group in muon.param_groups if scheduled_momentum else []:
        group["momentum"] = scheduled_momentum
    gradients, before = [], []
    for _ in range(2):
        muon.zero_grad()
        loss_of(net).backward()
        gradients.append(net.conv.weight.grad.clone())
        before.append(net.conv.weight.detach().clone())
        muon.step()
    momentum = 0.6 * gradients[0] + gradients[1]
    nesterov = (gradients[1] + 0.6 * momentum).reshape(8, -1)
    expected = before[1] * 8**0.5 / before[1].norm() - 0.05 * orthogonalised(nesterov, 3).view(8, 3, 3, 3)
    assert torch.allclose(net.conv.weight, expected, atol=1e-6)
    assert net.conv.weight.detach().norm().item() == pytest.approx(8**0.5, rel=0.1)
    assert {group["lr"] for group in muon.param_groups} == {0.1, 0.05}


def test_the_tasks_parameter_groups_keep_their_rates_and_the_filters_get_theirs():
    import functools

    from pipeline.models.whitened import WhitenedCNN
    from pipeline.tasks.classify import Classifier

    model = WhitenedCNN([3, 32, 32], 10, widths=[8, 16, 16])
    optimizer = functools.partial(Muon, lr=1.5, momentum=0.85, weight_decay=0.0013, filter_lr=0.24)
    task = Classifier(model, optimizer, num_classes=10, norm_bias_lr_scale=64)
    groups = task.configure_optimizers().param_groups
    by_lr = {group["lr"]: group for group in groups}
    assert set(by_lr) == {1.5, 1.5 * 64, 0.24}
    filters = [p for p in model.parameters() if p.ndim == 4]
    assert {id(p) for p in by_lr[0.24]["params"]} == {id(p) for p in filters}
    assert by_lr[0.24]["weight_decay"] == 0 and by_lr[1.5 * 64]["weight_decay"] == pytest.approx(0.0013 / 64)


@pytest.mark.parametrize("key, value, message", [
    ("filter_lr", -1, r"optimizer.filter_lr=-1 is invalid: must be a number >= 0"),
    ("filter_momentum", 1.0, r"optimizer.filter_momentum=1.0 is invalid: must be a number in \[0, 1\)"),
    ("newton_schulz_steps", 0, r"optimizer.newton_schulz_steps=0 is invalid: an integer >= 1"),
])
def test_bad_values_are_refused_naming_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        Muon(Net().parameters(), **{"lr": 0.1, key: value})


def test_a_state_dict_round_trip_continues_the_same_trajectory():
    torch.manual_seed(0)
    net = Net()
    muon = Muon(net.parameters(), lr=0.1, filter_lr=0.05)
    for _ in range(3):
        muon.zero_grad()
        loss_of(net).backward()
        muon.step()
    copied = copy.deepcopy(net)
    resumed = Muon(copied.parameters(), lr=0.1, filter_lr=0.05)
    resumed.load_state_dict(copy.deepcopy(muon.state_dict()))
    for optimizer, model in ((muon, net), (resumed, copied)):
        optimizer.zero_grad()
        loss_of(model).backward()
        optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), copied.parameters()))


def test_the_cifar10_recipe_trains_its_filters_with_muon(compose_config, tmp_path):
    from pipeline import train

    write_cifar(tmp_path / "data" / "cifar-10-batches-py", per_batch=40, test=40)
    cfg = compose_config("experiment=cifar10_cnn", "logger=none", f"data.root={tmp_path}/data",
                         f"data.cache_dir={tmp_path}/cache", "data.download=false", "data.batch_size=32",
                         "data.val_fraction=0.2", "model.widths=[8,16,16]", "trainer.max_epochs=2",
                         "~callbacks.progress_bar", "+trainer.enable_progress_bar=false", "threads=1")
    assert cfg.optimizer._target_ == "pipeline.muon.Muon"
    assert cfg.optimizer.lr == 1.5 and cfg.optimizer.filter_lr == 0.12  # the recipe's rates reach it
    train.start(cfg)
    datamodule = train.build_data(cfg)
    task = train.build_task(cfg, datamodule)
    before = {name: p.detach().clone() for name, p in task.model.named_parameters()}
    trainer = train.build_trainer(cfg, None)
    metrics, _ = train.fit(trainer, task, datamodule)
    assert isinstance(trainer.optimizers[0], Muon) and "val/acc_best" in metrics
    for name, p in task.model.named_parameters():
        if p.ndim == 4 and p.requires_grad:
            assert not torch.equal(p, before[name]), name
            assert p.detach().norm().item() == pytest.approx(len(p) ** 0.5, rel=0.2), name
