"""Transfer learning: a network starts from another run's weights (`model.init_from`) and may keep named parts
fixed (`model.freeze`). Tensors are matched by name and shape, so a LeNet trained on 10 digits gives a 5-class
LeNet everything but its last layer."""
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from pipeline.errors import ConfigError, first_line

log = logging.getLogger(__name__)
LATEST = "latest:"  # model.init_from=latest:<MLflow experiment>: the newest finished run there


def origin(source: str, tracking_uri: str | None) -> Path | str:
    """What `source` names: a checkpoint or state-dict file, or an MLflow run (a run id, or latest:<experiment>,
    the newest finished run there). Checked before a run or sweep starts (checks.check_job)."""
    path = Path(source).expanduser()
    if path.is_file():
        return path.resolve()
    if tracking_uri is None:
        raise ConfigError(f"model.init_from={source}: no such file, and runs are found in MLflow, which "
                          "logger=none does not use; give a checkpoint path or use logger=mlflow")
    return run_of(source, tracking_uri)


def source_weights(source: str, tracking_uri: str | None) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors `source` names, and where they came from (the file, or the run id), for the run's tags."""
    found = origin(source, tracking_uri)
    if isinstance(found, Path):
        return file_weights(found), str(found)
    import mlflow.pytorch

    try:
        model = mlflow.pytorch.load_model(f"runs:/{found}/model")
    except Exception as error:
        raise ConfigError(f"model.init_from={source}: run {found} has no loadable logged model "
                          f"({first_line(error)})") from None
    return dict(model.state_dict()), found


def file_weights(path: Path) -> dict[str, torch.Tensor]:
    """A Lightning checkpoint's network weights (its task keeps the network as `model.`), or a plain state dict."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise ConfigError(f"model.init_from={path}: not a checkpoint torch can read ({first_line(error)})") from None
    state = saved.get("state_dict", saved) if isinstance(saved, dict) else None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ConfigError(f"model.init_from={path}: holds no state dict (a Lightning checkpoint or "
                          "torch.save(model.state_dict()) file)")
    inner = {key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")}
    return inner or state


def run_of(source: str, tracking_uri: str) -> str:
    """The MLflow run id `source` means: itself, or the newest finished run of experiment `latest:<name>`."""
    from pipeline import tracking

    client = tracking.client(tracking_uri)
    if source.startswith(LATEST):
        name = source.removeprefix(LATEST)
        experiment = client.get_experiment_by_name(name)
        runs = [] if experiment is None else client.search_runs(
            [experiment.experiment_id], "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
            max_results=50)
        runs = [run for run in runs if "pipeline.sweep" not in run.data.tags]  # sweep parents log no model
        if not runs:
            raise ConfigError(f"model.init_from={source}: MLflow experiment {name!r} in {tracking_uri} has no "
                              f"finished run; train one first (python run.py experiment={name})")
        return runs[0].info.run_id
    try:
        client.get_run(source)
    except Exception:
        raise ConfigError(f"model.init_from={source}: not a file and no MLflow run with that id in {tracking_uri}; "
                          f"give a checkpoint path, a run id or {LATEST}<experiment name>") from None
    return source


def load_matching(network: nn.Module, weights: dict[str, torch.Tensor], source: str) -> list[str]:
    """Copy every tensor of `weights` whose name and shape the network has; return the names copied."""
    own = network.state_dict()
    matching = {key: value for key, value in weights.items() if key in own and own[key].shape == value.shape}
    if not matching:
        raise ConfigError(f"model.init_from={source}: none of its {len(weights)} tensors matches this network by "
                          f"name and shape (the network has {', '.join(list(own)[:4])}, ...)")
    network.load_state_dict(matching, strict=False)
    others = [f"{key} {list(own[key].shape)}" + (f" vs {list(weights[key].shape)}" if key in weights else "")
              for key in own if key not in matching]
    log.info("model.init_from=%s: loaded %d of %d tensors%s", source, len(matching), len(own),
             f"; kept initial: {', '.join(others)}" if others else "")
    return sorted(matching)


def freeze(network: nn.Module, names) -> list[str]:
    """Stop the gradient of every parameter under the named parts (module paths such as `features` or
    `classifier.0`); return the frozen parameters' names."""
    frozen = []
    for name in names:
        found = [key for key, _ in network.named_parameters() if key == name or key.startswith(f"{name}.")]
        if not found:
            parts = sorted({key.split(".")[0] for key, _ in network.named_parameters()})
            raise ConfigError(f"model.freeze: {name!r} names no part of {type(network).__name__}; its parts are "
                              + ", ".join(parts) + " (a module path such as features or features.0)")
        frozen += found
    parameters = dict(network.named_parameters())
    for key in frozen:
        parameters[key].requires_grad_(False)
    if frozen:
        log.info("model.freeze: %d parameter tensors fixed (%s)", len(frozen), ", ".join(names))
    return frozen


def tracking_uri(cfg: DictConfig) -> str | None:
    from pipeline import tracking

    return cfg.logger.tracking_uri if tracking.uses_mlflow(cfg) else None


def apply(network: nn.Module, cfg: DictConfig) -> dict[str, str]:
    """What `model.init_from` and `model.freeze` ask of a network about to be trained; the tags that record it."""
    tags = {}
    source = cfg.model.get("init_from")
    if source:
        weights, found = source_weights(str(source), tracking_uri(cfg))
        loaded = load_matching(network, weights, str(source))
        tags = {"transfer.init_from": found, "transfer.loaded": str(len(loaded))}
    frozen = freeze(network, list(cfg.model.get("freeze") or []))
    if frozen:
        tags["transfer.frozen"] = str(len(frozen))
    return tags
