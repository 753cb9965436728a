"""The one-shot architecture search (pipeline/search/oneshot.py): the weight-sharing supernet, its training, the
ranking's check by Kendall's tau, and `python run.py -m search=oneshot_mlp` end to end, read back from MLflow."""
import csv
import io
import json
import math
import random

import pytest
import torch

from conftest import all_runs
from pipeline.data.digits import DigitsDataModule
from pipeline.errors import ConfigError
from pipeline.models.mlp import MLP
from pipeline.search.oneshot import (SuperMLP, check, inherited_accuracy, kendall_tau, sample_candidates,
                                     train_supernet)
from pipeline.search.space import parse_space
from pipeline.search.parent_records import children_of

SPACE = parse_space({}, {"model.hidden": {"item": "choice(16, 32, 64, 128, 256)", "min_length": 1, "max_length": 4}})


def test_a_sub_network_is_the_plain_mlp_made_of_the_supernets_sliced_weights():
    torch.manual_seed(0)
    supernet = SuperMLP((1, 8, 8), 10, max_depth=4, max_width=256, activation="tanh")
    x = torch.randn(5, 1, 8, 8)
    for hidden in ([64], [64, 32], [16, 256, 128, 16]):
        plain = MLP((1, 8, 8), 10, hidden, activation="tanh")
        linears = [m for m in plain.net if isinstance(m, torch.nn.Linear)]
        widths = [64, *hidden]
        with torch.no_grad():
            for linear, layer, w_in, w_out in zip(linears, supernet.layers, widths, widths[1:]):
                linear.weight.copy_(layer.weight[:w_out, :w_in])
                linear.bias.copy_(layer.bias[:w_out])
            linears[-1].weight.copy_(supernet.classifier.weight[:, :hidden[-1]])
            linears[-1].bias.copy_(supernet.classifier.bias)
        out = supernet(x, hidden)
        assert out.shape == (5, 10)
        torch.testing.assert_close(out, plain(x))
    # one set of weights for all: the supernet is as large as the largest sub-network, whatever it serves
    largest = MLP((1, 8, 8), 10, [256] * 4, activation="tanh")
    assert sum(p.numel() for p in supernet.parameters()) == sum(p.numel() for p in largest.parameters())
    with pytest.raises(ValueError, match="not in this supernet"):
        supernet(x, [512])
    with pytest.raises(ValueError, match="not in this supernet"):
        supernet(x, [16] * 5)


def test_training_the_supernet_teaches_the_sub_networks_it_never_trained_alone():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    digits = DigitsDataModule("digits", [1, 8, 8], 10, "data", 64, val_fraction=0.1, seed=42, test_fraction=0.2)
    digits.setup("fit")
    val = list(digits.val_dataloader())
    supernet = SuperMLP((1, 8, 8), 10, max_depth=4, max_width=256)
    candidates = sample_candidates(SPACE, 20, random.Random(1))
    assert len({json.dumps(g) for g in candidates}) == 20
    untrained = [inherited_accuracy(supernet, g["model.hidden"], val) for g in candidates]
    train_supernet(supernet, digits, epochs=20, space=SPACE, rng=random.Random(0))
    trained = [inherited_accuracy(supernet, g["model.hidden"], val) for g in candidates]
    assert sum(untrained) / 20 < 0.2 and sum(trained) / 20 > 0.5  # 10 classes: chance is 0.1


def test_kendall_tau_on_known_rankings():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)  # 5 pairs agree, 1 disagrees
    assert math.isnan(kendall_tau([0.5], [0.9]))


def test_only_what_a_supernet_can_share_is_searched(compose_config):
    base = compose_config("search=oneshot_mlp")
    assert check({"top_k": 5}, SPACE, base)["top_k"] == 5
    activation = parse_space({"model.activation": "choice(relu, tanh)"}, {"model.hidden": {
        "item": "choice(16, 32)", "min_length": 1, "max_length": 2}})
    for options, space, cfg, words in [
            ({"epochs": 3}, SPACE, base, ["oneshot.epochs", "supernet_epochs"]),
            ({"candidates": 1}, SPACE, base, ["candidates=1", ">= 2"]),
            ({}, activation, base, ["model.hidden only", "model.activation"]),
            ({}, SPACE, compose_config("search=oneshot_mlp", "regularization.batchnorm=true"), ["BatchNorm"]),
            ({}, SPACE, compose_config("search=oneshot_mlp", "model=cnn"), ["model=mlp"])]:
        with pytest.raises(ConfigError) as error:
            check(options, space, cfg)
        assert "\n" not in str(error.value) and all(word in str(error.value) for word in words)


def test_a_tiny_one_shot_search_end_to_end(run_py, tracking_uri):
    command = ["-m", "search=oneshot_mlp", "hydra.sweeper.oneshot.candidates=20",
               "hydra.sweeper.oneshot.supernet_epochs=2", "hydra.sweeper.oneshot.top_k=2",
               "hydra.sweeper.oneshot.tau_sample=10", "hydra.sweeper.budget.epochs=2", "~callbacks.progress_bar"]
    result = run_py(*command, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    client, runs = all_runs(tracking_uri)
    (parent,) = [run for run in runs if "search.strategy" in run.data.tags]
    assert parent.info.status == "FINISHED" and parent.data.tags["search.strategy"] == "oneshot"
    children = children_of(client, parent.info.run_id)
    assert len(children) >= 10 and all(child.info.status == "FINISHED" for child in children)
    tau = parent.data.metrics["oneshot/kendall_tau"]
    assert math.isfinite(tau) and -1 <= tau <= 1 and "Kendall tau" in result.stdout
    assert parent.data.metrics["oneshot/supernet_seconds"] > 0
    ranking = list(csv.DictReader(io.StringIO(
        open(client.download_artifacts(parent.info.run_id, "oneshot/ranking.csv")).read())))
    assert len(ranking) == 20 and [int(row["rank"]) for row in ranking] == list(range(1, 21))
    accuracies = [float(row["inherited_acc"]) for row in ranking]
    assert accuracies == sorted(accuracies, reverse=True)
    trained = {row["model.hidden"]: float(row["val/acc_best"]) for row in ranking if row["val/acc_best"]}
    assert len(trained) == len(children) and {ranking[0]["model.hidden"], ranking[1]["model.hidden"]} <= set(trained)
    for child in children:  # each trained architecture's stand-alone result is the child's
        hidden = json.dumps(json.loads(child.data.tags["search.params"])["model.hidden"])
        assert trained[hidden] == pytest.approx(child.data.metrics["val/acc_best"])

    again = run_py(*command, timeout=900)  # the same command continues the study: nothing is trained twice
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(children_of(client, parent.info.run_id)) == len(children)
