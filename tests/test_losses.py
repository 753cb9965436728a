"""Loss design (lab 1): the three classification losses by hand, and each one trains the same model."""
import pytest
import torch

from pipeline.tasks.losses import LOSSES, cross_entropy, hinge, squared
from pipeline.train import run


def test_the_losses_by_hand():
    scores, y = torch.tensor([[0.0, 0.0, 0.0], [2.0, 1.0, 0.0]]), torch.tensor([0, 0])
    # hinge: sum over the other classes of max(0, 1 - s_true + s_other), divided by the number of classes
    assert hinge(scores[:1], y[:1]).item() == pytest.approx(2 / 3)
    assert hinge(scores[1:], y[1:]).item() == pytest.approx(0.0)  # the true class leads by the margin: no loss
    # squared: mean over classes of (s - onehot)^2
    assert squared(scores[:1], y[:1]).item() == pytest.approx(1 / 3)
    assert squared(torch.tensor([[1.0, 0.0, 0.0]]), y[:1]).item() == pytest.approx(0.0)
    assert cross_entropy(scores[:1], y[:1]).item() == pytest.approx(torch.log(torch.tensor(3.0)).item())


@pytest.mark.parametrize("name", LOSSES)
def test_class_weights_weigh_examples_by_their_class(name):
    scores, y = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 0, 1, 1, 2, 2])
    only_class_1 = torch.tensor([0.0, 1.0, 0.0])
    assert LOSSES[name](scores, y, weight=only_class_1).item() == pytest.approx(
        LOSSES[name](scores[2:4], y[2:4]).item(), rel=1e-5)


@pytest.mark.parametrize("name", LOSSES)
def test_each_loss_trains_the_linear_model_on_digits(compose_config, name):
    overrides = ["model=linear", "optimizer.lr=0.01", "trainer.max_epochs=5", "logger=none",
                 f"task.loss={name}", "threads=1"]
    metrics = run(compose_config(*overrides), overrides=overrides)
    assert metrics["test/acc"] >= 0.85  # chance is 0.1


def test_an_unknown_loss_or_smoothing_a_margin_is_one_line(run_py):
    result = run_py("task.loss=l1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: task.loss='l1' is invalid for task=classify: must be one of cross_entropy, hinge, squared"]
    result = run_py("task.loss=hinge", "task.label_smoothing=0.1")
    assert result.returncode == 2
    assert "task.label_smoothing=0.1 does not apply to task.loss=hinge" in result.stderr.strip().splitlines()[-1]
