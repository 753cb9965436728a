"""One-shot architecture search (`hydra.sweeper.strategy: oneshot`): train one large network and search its
sub-networks.

Every MLP of the space is a slice of one SuperMLP: its first len(hidden) layers and the first w units of each.
Training draws a random sub-network per batch (uniform single-path sampling, Guo et al. 2020), so the shared weights
learn to serve every architecture; ranking 200 candidates then costs 200 validation passes, not 200 trainings.
Whether that ranking can be trusted is measured, not assumed: besides the `top_k` best, `tau_sample` candidates drawn
uniformly are trained from scratch as ordinary trials, and Kendall's tau between the two rankings goes on the parent.
"""
import csv
import io
import json
import math
import random
import time

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError
from pipeline.models.activations import activation as make_activation
from pipeline.search.space import Choice, ListOf, distributions, from_params, random_genome, to_params

HIDDEN = "model.hidden"
OPTIONS = {"candidates": 200, "supernet_epochs": 20, "top_k": 3, "tau_sample": 10, "lr": 1e-3}
LOWEST = {"candidates": 2, "supernet_epochs": 0, "top_k": 1, "tau_sample": 0}  # supernet_epochs=0: untrained baseline


class SuperMLP(nn.Module):
    """max_depth layers of max_width units and one classifier; forward(x, hidden) runs the sub-network `hidden`
    ([64, 32]) on slices of them. One activation for all: weights shared by relu and sigmoid sub-networks would be
    trained for neither."""

    def __init__(self, input_shape, num_classes: int, max_depth: int, max_width: int, activation: str = "relu"):
        super().__init__()
        widths = [math.prod(input_shape)] + [max_width] * max_depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.classifier = nn.Linear(max_width, num_classes)
        self.activation = make_activation(activation)

    def forward(self, x, hidden):
        if not 1 <= len(hidden) <= len(self.layers) or not all(1 <= w <= self.classifier.in_features for w in hidden):
            raise ValueError(f"sub-network {list(hidden)} is not in this supernet: 1..{len(self.layers)} layers of "
                             f"1..{self.classifier.in_features} units")
        x = x.flatten(1)
        for layer, width in zip(self.layers, hidden):
            x = self.activation(F.linear(x, layer.weight[:width, :x.shape[1]], layer.bias[:width]))
        return F.linear(x, self.classifier.weight[:, :x.shape[1]], self.classifier.bias)


def train_supernet(supernet: SuperMLP, datamodule, epochs: int, space, rng: random.Random, lr: float = 1e-3) -> None:
    """A plain torch loop, not Lightning: each batch trains another random sub-network, and nothing of the supernet
    is checkpointed, logged per epoch or kept, which is all a Trainer would add."""
    optimizer = torch.optim.Adam(supernet.parameters(), lr=lr)
    supernet.train()
    for _ in range(epochs):
        for x, y in datamodule.train_dataloader():
            loss = F.cross_entropy(supernet(x, random_genome(space, rng)[HIDDEN]), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


@torch.no_grad()
def inherited_accuracy(supernet: SuperMLP, hidden, batches) -> float:
    """A sub-network's accuracy with the supernet's weights as they are: without BatchNorm there are no statistics
    to recalibrate per sub-network."""
    supernet.eval()
    correct = total = 0
    for x, y in batches:
        correct += int((supernet(x, hidden).argmax(1) == y).sum())
        total += len(y)
    return correct / total


def kendall_tau(a, b) -> float:
    """Rank agreement in [-1, 1] (1: same order); nan when either side is constant or has fewer than 2 values."""
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic) if len(a) >= 2 else math.nan


def sample_candidates(space, n: int, rng: random.Random) -> list[dict]:
    """n distinct genomes, or all that a small space has."""
    found = {}
    for _ in range(20 * n):
        if len(found) == n:
            break
        genome = random_genome(space, rng)
        found.setdefault(json.dumps(genome), genome)
    return list(found.values())


def oneshot_search(sweeper, space, fixed, base, study, parent, objectives) -> None:
    """Train the supernet, rank the candidates, run the top_k and tau_sample of them as trials, log tau."""
    from pipeline.train import build_data

    options = sweeper.oneshot  # check()ed, defaults filled in, by the sweeper before the study was opened
    rng = random.Random(sweeper.seed)
    torch.manual_seed(sweeper.seed)
    if base.get("threads"):
        torch.set_num_threads(base.threads)
    datamodule = build_data(base)
    supernet = SuperMLP(datamodule.input_shape, datamodule.num_classes, space[HIDDEN].max_length,
                        max(widths_of(space[HIDDEN])), base.model.activation)
    start = time.perf_counter()
    train_supernet(supernet, datamodule, options["supernet_epochs"], space, rng, options["lr"])
    seconds = time.perf_counter() - start
    val = list(datamodule.val_dataloader())
    ranked = sorted(((inherited_accuracy(supernet, g[HIDDEN], val), g) for g in
                     sample_candidates(space, options["candidates"], rng)), key=lambda pair: -pair[0])
    launched = ranked[:options["top_k"]] + rng.sample(ranked, min(options["tau_sample"], len(ranked)))
    launched = list({json.dumps(g): (acc, g) for acc, g in launched}.values())  # the top ones may be drawn again
    launch(sweeper, study, launched, fixed, space, objectives, parent)

    metric, direction = objectives[0]
    trained = standalone_values(study, space)
    pairs = [(acc, trained[json.dumps(g)]) for acc, g in launched if json.dumps(g) in trained]
    sign = 1 if direction == "maximize" else -1  # tau > 0: the two rankings agree
    tau = kendall_tau([a for a, _ in pairs], [sign * v for _, v in pairs])
    print(f"one-shot: Kendall tau {tau:.3f} between inherited accuracy and {metric} over {len(pairs)} architectures "
          f"trained from scratch (supernet: {options['supernet_epochs']} epochs, {seconds:.1f} s; "
          f"{len(ranked)} candidates ranked)")
    parent.record({"oneshot/kendall_tau": tau, "oneshot/supernet_seconds": seconds},
                  {"oneshot/ranking.csv": ranking_csv(ranked, trained, metric)})


def launch(sweeper, study, scored, fixed, space, objectives, parent) -> None:
    """(inherited acc, genome) pairs as ordinary trials, `n_jobs` at a time, the accuracy kept on the trial; one
    already COMPLETE or PRUNED in the study (the same search run again) is not run again."""
    from optuna.trial import TrialState

    done = {json.dumps(from_params(t.params, space)) for t in study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))}
    todo = [(acc, genome) for acc, genome in scored if json.dumps(genome) not in done]
    for start in range(0, len(todo), sweeper.n_jobs):
        sweeper.check_failure_rate(study)
        trials = []
        for acc, genome in todo[start:start + sweeper.n_jobs]:
            study.enqueue_trial(to_params(genome, space))
            trials.append(study.ask(distributions(space)))
            trials[-1].set_user_attr("inherited_acc", acc)
        sweeper.run_trials(study, trials, fixed, space, objectives, parent)


def standalone_values(study, space) -> dict[str, float]:
    """{genome as JSON: objective value} of the study's COMPLETE trials (the newest where one ran twice)."""
    from optuna.trial import TrialState

    return {json.dumps(from_params(t.params, space)): t.values[0]
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}


def ranking_csv(ranked, trained: dict, metric: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["rank", HIDDEN, "inherited_acc", metric])
    for rank, (acc, genome) in enumerate(ranked, 1):
        writer.writerow([rank, json.dumps(genome[HIDDEN]), f"{acc:.4f}", trained.get(json.dumps(genome), "")])
    return out.getvalue()


def widths_of(dim: ListOf) -> tuple:
    return dim.item.values if isinstance(dim.item, Choice) else (dim.item.low, dim.item.high)


def check(options, space, base) -> dict:
    """The options with their defaults, once the space, model and task are ones a supernet can stand in for."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"hydra.sweeper.oneshot.{unknown[0]} is unknown: use {', '.join(OPTIONS)}")
    options = {**OPTIONS, **options}
    for name, lowest in LOWEST.items():
        value = options[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
            raise ConfigError(f"hydra.sweeper.oneshot.{name}={value!r} is invalid: must be an integer >= {lowest}")
    if not isinstance(options["lr"], (int, float)) or not options["lr"] > 0:
        raise ConfigError(f"hydra.sweeper.oneshot.lr={options['lr']!r} is invalid: must be a number > 0")
    dim = space.get(HIDDEN)
    if set(space) != {HIDDEN} or not isinstance(dim, ListOf) or dim.min_length < 1 or not all(
            isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths_of(dim)):
        raise ConfigError(f"strategy oneshot searches {HIDDEN} only, a list of >= 1 positive widths (sub-networks "
                          f"are slices of one supernet); got {', '.join(space)}: fix the other keys instead")
    if base.model.get("_target_") != "pipeline.models.mlp.MLP" or base.model.get("batchnorm"):
        raise ConfigError("strategy oneshot needs model=mlp without BatchNorm (regularization.batchnorm=false): its "
                          "supernet is an MLP whose sub-networks share weights, not BatchNorm statistics")
    if base.task.get("_target_") != "pipeline.tasks.classify.Classifier":
        raise ConfigError(f"strategy oneshot needs task=classify (it ranks sub-networks by accuracy); got "
                          f"{base.task.get('_target_')}")
    return options
