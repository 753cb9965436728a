"""MLflow tracking: where the store is, one run per experiment (a child of its sweep's parent), what it records.

A training run's records are written by its tracking process (remote_tracking.py), which calls the functions here
that take a client; the rest of the pipeline (sweeps, reports, predictions) calls them in its own process.
mlflow is imported inside functions: it costs ~1 s of start-up that runs without MLflow should not pay.
"""
import logging
import os
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline import liveness
from pipeline.errors import first_line
from pipeline.store import artifact_root, ensure_store

log = logging.getLogger(__name__)

# The sweep's parent run id, set by the sweeper in the launching process and inherited by its jobs.
PARENT_RUN_ENV = "PIPELINE_SWEEP_PARENT_RUN_ID"
SWEPT_KEYS_ENV = "PIPELINE_SWEPT_KEYS"

_ghosts_checked: set[str] = set()  # stores this process has already searched for dead runs


def uses_mlflow(cfg: DictConfig) -> bool:
    return str(OmegaConf.select(cfg, "logger._target_", default="")).endswith("MLFlowLogger")


def client(tracking_uri: str):
    """The MLflow client of a store, opened the safe way: the store made ready under its lock (see store.py),
    MLflow's global URI set to it, and, once per process, runs left RUNNING by dead processes marked KILLED."""
    import mlflow

    # The pipeline reads back a few small files (a config, a model); a progress bar for each buries the output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    ensure_store(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow_client = mlflow.MlflowClient(tracking_uri)
    if tracking_uri not in _ghosts_checked:
        _ghosts_checked.add(tracking_uri)
        for run_id in liveness.mark_ghosts_killed(mlflow_client):
            log.warning("run %s was left RUNNING by a process that died; marked KILLED", run_id)
    return mlflow_client


def experiment_id(tracking_uri: str, name: str) -> str:
    """Return the id of the experiment `name`, creating it if needed (another process may create it at the same
    moment: then theirs is used)."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(tracking_uri)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return mlflow_client.create_experiment(name, artifact_location=artifact_root(tracking_uri))
        except MlflowException:
            experiment = mlflow_client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        mlflow_client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


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
    """KILLED for Ctrl-C, SIGTERM and a search trial its pruner stopped; FAILED for any other error."""
    stopped = isinstance(error, (KeyboardInterrupt, SystemExit)) or getattr(error, "pruned", False)
    return "KILLED" if stopped else "FAILED"


def end_reason(error: BaseException) -> str:
    """What the run's error tag says: the error's first line, or that it was stopped."""
    from pipeline.cli import one_line

    if isinstance(error, (KeyboardInterrupt, SystemExit)):
        return "stopped (Ctrl-C or SIGTERM)"
    return one_line(error)[:1000]


def reopen(mlflow_client, run_id: str, process_tags: dict[str, str]):
    """Start an existing run again (status RUNNING), recorded as the given process's."""
    import mlflow

    take_over(mlflow_client, run_id, process_tags)
    return mlflow.start_run(run_id=run_id)


def take_over(mlflow_client, run_id: str, process_tags: dict[str, str]) -> None:
    """Record an existing run as the given process's, without the error that ended it before."""
    for key, value in process_tags.items():
        mlflow_client.set_tag(run_id, key, value)
    if liveness.ERROR in mlflow_client.get_run(run_id).data.tags:
        mlflow_client.delete_tag(run_id, liveness.ERROR)


@contextmanager
def experiment_run(cfg: DictConfig, run_name: str, overrides: list[str], parent_run_id: str | None = None,
                   tags: dict[str, str] | None = None, resume_run_id: str | None = None):
    """An MLflow run, written by this process's tracking worker (remote_tracking.py), that always ends (FINISHED,
    FAILED or KILLED), never left RUNNING; it starts with the config logged. With `resume_run_id` the run is that
    earlier one, reopened (its params and config are already there)."""
    from pipeline import remote_tracking

    uri, worker = cfg.logger.tracking_uri, remote_tracking.process()
    if resume_run_id:
        run_id = worker.call("reopen", uri, resume_run_id, parent_run_id, liveness.process_tags())
    else:  # waited for: a run that dies from here on has its record
        run_id = worker.call("start_run", uri, cfg.logger.experiment_name, run_name,
                             {**(tags or {}), **liveness.process_tags()}, parent_run_id)
    run = remote_tracking.TrackedRun(worker, run_id, uri)
    with run.ending():
        if not resume_run_id:
            run.log_params(flatten(cfg))
            run.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/config.yaml")
            run.log_text(OmegaConf.to_yaml(OmegaConf.create(list(overrides))), "config/overrides.yaml")
        yield run


@contextmanager
def resumed_run(tracking_uri: str, run_id: str):
    """Reopen a finished run to add to it (a later DVC stage adding its results), ending it the same way."""
    from pipeline import remote_tracking

    worker = remote_tracking.process()
    run = remote_tracking.TrackedRun(worker, worker.call("reopen", tracking_uri, run_id, None,
                                                         liveness.process_tags()), tracking_uri)
    with run.ending():
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
