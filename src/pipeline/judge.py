"""The judge of generated images: a classifier of the real data, whose class probabilities and penultimate-layer
features score samples offline (no Inception network, no download). Either a classify run's logged model
(`task.judge=<run id>`) or, when none is named, a small LeNet trained here on the training split and cached."""
import hashlib
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError, first_line

log = logging.getLogger(__name__)

# What task.judge_recipe may set, with what the judge trained here uses when a key is left out.
# min_steps: small data (digits: 10 batches an epoch) gets more epochs, so the judge is trained on every data.
RECIPE = {"channels": [6, 16], "fc": [120, 84], "epochs": 3, "min_steps": 600, "lr": 0.002, "batch_size": 128}


def recording_penultimate(classifier: nn.Module, store: list) -> nn.Module:
    """`classifier`, made to append the input of its last linear layer (the penultimate features) to `store` on
    every call. A plain module gets a hook; a model MLflow restored from torch.export (a graph, no submodules
    that are called) gets a recording node after the last linear operation's input."""
    if isinstance(classifier, torch.fx.GraphModule):
        linear = [node for node in classifier.graph.nodes
                  if node.op == "call_function" and node.target == torch.ops.aten.linear.default]
        if linear:
            def keep(features):
                store.append(features)
                return features

            features = linear[-1].args[0]
            with classifier.graph.inserting_after(features):
                classifier.graph.call_function(keep, (features,))
            classifier.recompile()
            return classifier
    layers = [module for module in classifier.modules() if isinstance(module, nn.Linear)]
    if not layers:
        raise ConfigError("the judge has no final linear layer whose input could serve as its features: "
                          "judge with a classifier that ends in one (model=lenet, cnn, mlp, ...)")
    layers[-1].register_forward_pre_hook(lambda module, inputs: store.append(inputs[0]))
    return classifier


class Judge:
    """A classifier of the real images, called on images in [0, 1] (normalised as its data served them): their
    class probabilities and penultimate features. Not an nn.Module, so no task saves or trains it."""

    def __init__(self, classifier: nn.Module, mean, std, source: str):
        self.store: list[torch.Tensor] = []
        if not isinstance(classifier, torch.fx.GraphModule):  # torch.export's graphs are exported in eval mode
            classifier.eval()
        self.classifier = recording_penultimate(classifier, self.store)
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        self.source = source  # what the logs and the logged model's description say it is

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        """(class probabilities, penultimate features) of images in [0, 1], in batches, on the images' device."""
        probabilities, features = [], []
        self.classifier.to(images.device)  # the task's device: not a submodule, the judge does not move with it
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            x = (batch - self.mean.to(batch.device)) / self.std.to(batch.device)
            self.store.clear()
            probabilities.append(F.softmax(self.classifier(x).float(), dim=1))
            features.append(self.store[-1].flatten(1).float())
        return torch.cat(probabilities), torch.cat(features)


# --- a judge named by its MLflow run ---------------------------------------------------------------------
def judge_from_run(run_id: str, data_name: str, input_shape, num_classes: int) -> Judge:
    """The classifier a classify run logged, with the normalisation its data used (from its config), refused in
    one line if it is not a classifier of this data."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline import remote_tracking, tracking
    from pipeline.resume import recorded_config

    where = f"task.judge={run_id}"
    try:
        client = tracking.client(remote_tracking.uri_in_use or mlflow.get_tracking_uri())
        client.get_run(run_id)
        description = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/data/description.json"))
        config = recorded_config(client, run_id)
    except (MlflowException, OSError) as error:
        raise ConfigError(f"{where}: no classify run with a logged model and config in MLflow store "
                          f"{mlflow.get_tracking_uri()} ({first_line(error)[:150]})") from None
    if description.get("task") != "classify":
        raise ConfigError(f"{where} is a task={description.get('task')} run: a judge is a classifier "
                          f"(task=classify) trained on data={data_name}")
    if (description.get("data") != data_name or list(description.get("input_shape", [])) != list(input_shape)
            or len(description.get("class_names", [])) != num_classes):
        raise ConfigError(f"{where} classifies data={description.get('data')} "
                          f"({description.get('input_shape')}, {len(description.get('class_names', []))} classes): "
                          f"a judge must know data={data_name}'s classes")
    data = config.get("data", {})
    channels = int(input_shape[0])
    mean, std = data.get("mean", [0.0] * channels), data.get("std", [1.0] * channels)
    classifier = mlflow.pytorch.load_model(f"runs:/{run_id}/model", map_location="cpu")
    return Judge(classifier, mean, std, source=f"MLflow run {run_id} ({config.get('model', {}).get('_target_', '?')}"
                                               f" on data={data_name})")


# --- a judge trained here --------------------------------------------------------------------------------
def recipe_of(judge_recipe: dict | None) -> dict:
    """RECIPE with the task's judge_recipe over it; an unknown key is refused naming the known ones."""
    from omegaconf import DictConfig, OmegaConf

    given = OmegaConf.to_container(judge_recipe) if isinstance(judge_recipe, DictConfig) else dict(judge_recipe or {})
    unknown = set(given) - set(RECIPE)
    if unknown:
        raise ConfigError(f"task.judge_recipe.{sorted(unknown)[0]} is not a judge setting: use "
                          + ", ".join(RECIPE))
    return {**RECIPE, **given}


def cache_file(cache_dir: str, data_name: str, recipe: dict, seed: int, train: torch.Tensor) -> Path:
    """Where a judge of this data, recipe and seed is kept: named by a digest that includes the training
    images themselves, so a judge of other files of the same name is never taken for it."""
    digest = hashlib.sha256(json.dumps({"data": data_name, "recipe": recipe, "seed": seed}, sort_keys=True).encode())
    digest.update(train.contiguous().numpy().tobytes())
    return Path(cache_dir) / "judges" / f"{data_name}-{digest.hexdigest()[:16]}.pt"


def fit_lenet(train: tuple, test: tuple, num_classes: int, recipe: dict, seed: int) -> tuple[nn.Module, float]:
    """A LeNet on the images as the data serves them, Adam, a plain loop (Lightning's overhead buys nothing here); its own random
    state, so whether the judge was cached or not, the GAN then draws the same numbers. Returns its test acc."""
    from pipeline.models.lenet import LeNet

    x, y = train
    batches = -(-len(y) // recipe["batch_size"])
    epochs = max(recipe["epochs"], -(-recipe["min_steps"] // batches))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LeNet(list(x.shape[1:]), num_classes, recipe["channels"], recipe["fc"])
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe["lr"])
        for _ in range(epochs):
            order = torch.randperm(len(y))
            for start in range(0, len(y), recipe["batch_size"]):
                index = order[start : start + recipe["batch_size"]]
                loss = F.cross_entropy(model(x[index]), y[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(test[0][i : i + 1000]).argmax(1) == test[1][i : i + 1000]).sum())
                      for i in range(0, len(test[1]), 1000))
    return model, correct / max(len(test[1]), 1)


def trained_judge(train: tuple, test: tuple, mean, std, data_name: str, num_classes: int,
                  judge_recipe: dict | None, seed: int, cache_dir: str) -> tuple[Judge, float]:
    """A LeNet judge (train, test: (images, labels) as the data serves them, normalised by `mean` and `std`) from
    the cache, or trained now and cached; the log says which, and its test accuracy."""
    from pipeline.files import write_atomically
    from pipeline.models.lenet import LeNet

    recipe = recipe_of(judge_recipe)
    path = cache_file(cache_dir, data_name, recipe, seed, train[0])
    shape = list(train[0].shape[1:])
    if path.exists():
        saved = torch.load(path, weights_only=True)
        model = LeNet(shape, num_classes, recipe["channels"], recipe["fc"])
        model.load_state_dict(saved["state_dict"])
        accuracy = float(saved["test_acc"])
        log.info("judge: the LeNet judge of data=%s cached in %s (test accuracy %.4f)", data_name, path, accuracy)
    else:
        log.warning("task.judge is null: training a LeNet judge (channels %s, fc %s, %d epochs, at least %d "
                    "steps) on data=%s's %d training images first; it is cached in %s for later runs",
                    recipe["channels"], recipe["fc"], recipe["epochs"], recipe["min_steps"], data_name, len(train[1]), path)
        began = time.perf_counter()
        model, accuracy = fit_lenet(train, test, num_classes, recipe, seed)
        write_atomically(path, lambda partial: torch.save({"state_dict": model.state_dict(), "test_acc": accuracy,
                                                           "recipe": recipe, "data": data_name}, partial))
        log.warning("judge: trained in %.0f s, test accuracy %.4f", time.perf_counter() - began, accuracy)
    source = f"LeNet {recipe['channels']}/{recipe['fc']} trained here on data={data_name} ({recipe['epochs']} epochs)"
    return Judge(model, mean, std, source), accuracy
