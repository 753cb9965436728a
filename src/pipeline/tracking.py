"""MLflow tracking: where the store is, one run per experiment (a child of its sweep's parent), what it records.

mlflow is imported inside functions: it costs ~1 s of start-up that runs without MLflow should not pay.
"""
import logging
import os
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline.errors import first_line

log = logging.getLogger(__name__)
# MLflow announces every schema migration of a new SQLite store at INFO level on stderr.
for _chatty in ("mlflow.store.db.utils", "alembic"):
    logging.getLogger(_chatty).setLevel(logging.WARNING)

# The sweep's parent run id, set by the sweep callback in the launching process and inherited by its jobs.
PARENT_RUN_ENV = "PIPELINE_SWEEP_PARENT_RUN_ID"
SWEPT_KEYS_ENV = "PIPELINE_SWEPT_KEYS"


def uses_mlflow(cfg: DictConfig) -> bool:
    return str(OmegaConf.select(cfg, "logger._target_", default="")).endswith("MLFlowLogger")


def artifact_root(tracking_uri: str) -> str | None:
    """Artifacts of a local SQLite store go beside the database, not into whatever folder the run started in."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
    return (db.parent / "mlruns").as_uri()


def experiment_id(cfg: DictConfig) -> str:
    """Return the id of the config's experiment, creating it (and on first use the store's schema)."""
    import mlflow

    uri = cfg.logger.tracking_uri
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(cfg.logger.experiment_name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    return client.create_experiment(cfg.logger.experiment_name, artifact_location=artifact_root(uri))


def flatten(cfg: DictConfig) -> dict[str, str]:
    """The config as MLflow params: dotted keys, values as text (MLflow caps a value at 6000 characters)."""
    flat = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = str(node)[:6000]

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def run_name(overrides: list[str], swept_keys: list[str] | None = None) -> str:
    """Name a run by its overrides; inside a sweep by only the swept ones, which tell siblings apart."""
    if swept_keys:
        overrides = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in swept_keys] or overrides
    return " ".join(overrides) or "defaults"


def end_status(error: BaseException) -> str:
    return "KILLED" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "FAILED"


@contextmanager
def ending_run():
    """End MLflow's active run when the block ends: FINISHED, FAILED on an error, KILLED on Ctrl-C."""
    import mlflow

    try:
        yield
    except BaseException as error:
        mlflow.end_run(end_status(error))
        raise
    else:
        mlflow.end_run("FINISHED")


@contextmanager
def experiment_run(cfg: DictConfig, run_name: str, overrides: list[str], parent_run_id: str | None = None,
                   tags: dict[str, str] | None = None):
    """An MLflow run that always ends (see ending_run), never left RUNNING; it starts with the config logged."""
    import mlflow

    if parent_run_id:
        experiment = mlflow.MlflowClient(cfg.logger.tracking_uri).get_run(parent_run_id).info.experiment_id
        mlflow.set_tracking_uri(cfg.logger.tracking_uri)
    else:
        experiment = experiment_id(cfg)
    tags = {**(tags or {}), **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
    run = mlflow.start_run(experiment_id=experiment, run_name=run_name, tags=tags)
    with ending_run():
        params = flatten(cfg)
        items = list(params.items())
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            mlflow.log_params(dict(items[start : start + 100]))
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/config.yaml")
        mlflow.log_text(OmegaConf.to_yaml(OmegaConf.create(list(overrides))), "config/overrides.yaml")
        yield run


@contextmanager
def resumed_run(tracking_uri: str, run_id: str):
    """Reopen a finished run to add to it (a later DVC stage adding its results), ending it the same way."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    run = mlflow.start_run(run_id=run_id)
    with ending_run():
        yield run


def log_model(model, example_input) -> None:
    """Log a plain nn.Module as an MLflow Model that `mlflow.pytorch.load_model` restores.

    MLflow's default format is torch.export's pt2 (a traced graph, no pickle, no code needed to load).
    A model that torch.export cannot trace is pickled instead, with the pipeline's code shipped beside it.
    """
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    import pipeline

    model.eval()
    with torch.no_grad():
        output = model(example_input)
    common = dict(name="model", signature=infer_signature(example_input.numpy(), output.numpy()),
                  # Inferring requirements starts a subprocess that reloads the model (seconds); state them.
                  pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    try:
        mlflow.pytorch.log_model(model, input_example=example_input, serialization_format="pt2", **common)
    except Exception as error:  # torch.export refuses some models (data-dependent control flow)
        log.warning("torch.export could not trace the model (%s); logging it pickled", first_line(error))
        mlflow.pytorch.log_model(model, serialization_format="pickle",
                                 code_paths=[str(Path(pipeline.__file__).parent)], **common)


def log_dict(run_id: str, values: dict, artifact_file: str) -> None:
    """A small JSON artifact (e.g. the class names and vocabulary that using a logged model needs)."""
    import mlflow

    mlflow.MlflowClient().log_dict(run_id, values, artifact_file)


def log_files(run_id: str, paths, artifact_dir: str, client=None) -> None:
    """Log files under `artifact_dir`. Without a client, MLflow's current tracking URI is used."""
    import mlflow

    client = client or mlflow.MlflowClient()
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_dir)


def log_generated_files(run_id: str, artifact_dir: str, make_files, client=None) -> None:
    """Let `make_files(folder)` write files (plots) into a scratch folder and log the ones it returns under
    `artifact_dir`."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        log_files(run_id, make_files(Path(folder)), artifact_dir, client)


def end_open_sweep(status: str) -> None:
    """Mark this process's sweep parent run as ended after a failure, so it is not left RUNNING."""
    run_id = os.environ.pop(PARENT_RUN_ENV, None)
    uri = os.environ.pop(PARENT_RUN_ENV + "_URI", None)
    if run_id and uri:
        import mlflow

        mlflow.MlflowClient(uri).set_terminated(run_id, status)
