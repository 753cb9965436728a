"""run(cfg): the one place where a composed config becomes objects, a fit, a test and a tracked result."""
import contextlib
import functools
import json
import logging
import os
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from pipeline import distributed, object_storage, resume, timing, tracking, transfer
from pipeline.checks import check_config, check_model_fits_data
from pipeline.cores import cores, parallel_jobs
from pipeline.objective import objective
from pipeline.precision import resolved as precision_for, use_tensor_cores
from pipeline.divergence import StopOnDivergence
from pipeline.errors import ConfigError
from pipeline.fused_steps import FusedSteps
from pipeline.mlflow_logger import EpochWrites, MLFlowLogger
from pipeline.models.building import build_network, module_layers
from pipeline.tasks.base import steps_by_hand
from pipeline.timing import phase

log = logging.getLogger(__name__)
# Lightning advertises a cloud logger at every start; users of this pipeline have MLflow.
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(lambda record: "litlogger" not in record.getMessage())
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
# A diverged loss reaches the mean-loss metric before StopOnDivergence ends the run with a clearer message.
warnings.filterwarnings("ignore", message="Encountered `nan` values in tensor")


def hydra_overrides() -> tuple[list[str], str | None, list[str]]:
    """This job's command-line overrides and, inside a multirun, its sweep's parent run id and swept keys."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return [], None, []
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return list(hydra_cfg.overrides.task), None, []
    swept = [key for key in os.environ.get(tracking.SWEPT_KEYS_ENV, "").split(",") if key]
    return list(hydra_cfg.overrides.task), os.environ.get(tracking.PARENT_RUN_ENV), swept


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """The callbacks group's, then the ones no run goes without: a resumable last checkpoint with the random
    state, a stop on divergence, the choice of steps per call (fused_steps), and in a search's trial the pruning of
    hopeless trials."""
    callbacks = cfg.get("callbacks") or {}
    chosen = [instantiate(callback) for callback in callbacks.values() if callback and "_target_" in callback]
    chosen += [resume.last_checkpoint(cfg.paths.output_dir), resume.RandomState(), StopOnDivergence(),
               FusedSteps(cfg.get("fused_steps", "auto"))]
    if cfg.get("trial") is None:  # not a search's trial: no study to report to (and optuna's import is spared)
        return chosen
    from pipeline.search.pruning import trial_callbacks

    return chosen + trial_callbacks(cfg)


def build_logger(cfg: DictConfig, run) -> pl.loggers.Logger | bool:
    if not cfg.get("logger") or "_target_" not in cfg.logger:
        return False
    if run is not None:
        return instantiate(cfg.logger, run=run)
    return instantiate(cfg.logger)


def fill_from_data(cfg: DictConfig, datamodule) -> None:
    """Sizes a data config leaves null (chars: the classes are the language files found) take the loaded data's
    values, so models interpolating them and the tracked params see real numbers. In a resolved config
    (params.yaml) the model's and task's copies are null too, and are filled the same way."""
    for key in ("num_classes", "vocab_size"):
        for section in ("data", "model", "task"):
            if key in cfg.get(section, {}) and cfg[section][key] is None:
                cfg[section][key] = int(getattr(datamodule, key))


def build_data(cfg: DictConfig, prepared: dict | None = None):
    """The config's datamodule with its splits loaded (from `prepared`, the prepare stage's file, if given)."""
    datamodule = instantiate(cfg.data)
    if prepared is None:
        datamodule.prepare_data()
        datamodule.setup("fit")
    else:
        datamodule.restore(prepared)
    fill_from_data(cfg, datamodule)
    return datamodule


def build_task(cfg: DictConfig, datamodule) -> pl.LightningModule:
    """The model the config names, checked against the data, wrapped in its training task."""
    model = build_network(cfg.model, module_layers(cfg))
    check_model_fits_data(model, cfg, example=datamodule.example_inputs())
    if hasattr(model, "initialise_from_data"):  # weights computed from the data, not learned (models/whitened.py)
        model.initialise_from_data(datamodule.splits["train"][0])
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    task = instantiate(cfg.task, model=model, optimizer=instantiate(cfg.optimizer), scheduler=scheduler)
    task.step_by_hand(cfg.trainer)
    return task


def trainer_settings(cfg: DictConfig) -> dict:
    """What the trainer config leaves to the machine (trainer.precision=auto-mixed or gpu-mixed: precision.py) and
    to the task (gradient clipping, when the task takes its own optimizer steps: Task.step_by_hand)."""
    settings = {"gradient_clip_val": None, "gradient_clip_algorithm": None} if steps_by_hand(cfg.trainer) else {}
    precision = cfg.trainer.get("precision")
    if precision is not None:
        settings["precision"] = precision_for(precision, cfg.trainer.get("accelerator", "auto"))
    return settings


def build_trainer(cfg: DictConfig, mlflow_run, loggers=(), callbacks=()) -> pl.Trainer:
    object_storage.ask_only_when_imported()
    logger = build_logger(cfg, mlflow_run)
    all_loggers = ([logger] if logger else []) + list(loggers)
    writes = [EpochWrites(logger)] if isinstance(logger, MLFlowLogger) else []
    return instantiate(cfg.trainer, logger=all_loggers or False,
                       callbacks=build_callbacks(cfg) + writes + list(callbacks), **trainer_settings(cfg))


def start(cfg: DictConfig) -> None:
    """What every entry point does first: validate, set threads, seed everything. Without `threads`, jobs that
    run side by side share the cores out (more threads than cores slow every job down)."""
    check_config(cfg)
    distributed.check(cfg)
    distributed.prepare(cfg.trainer)
    jobs = parallel_jobs()
    threads = cfg.threads or (max(1, cores() // jobs) if jobs > 1 else None)
    if threads:
        torch.set_num_threads(threads)
    use_tensor_cores(cfg.trainer.get("accelerator", "auto"))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)


def fit(trainer: pl.Trainer, task: pl.LightningModule, datamodule,
        resume_from: Path | None = None) -> tuple[dict[str, float], str]:
    """Fit (from `resume_from`, a last checkpoint, if given); return the final metrics and the best checkpoint's
    path ("" when no callback chose a best one)."""
    trainer.fit(task, datamodule=datamodule, ckpt_path=resume_from)
    best = next((callback.best_model_path for callback in trainer.checkpoint_callbacks if callback.monitor), "")
    return metrics_of(trainer), "" if trainer.fast_dev_run else best


def metrics_of(trainer: pl.Trainer) -> dict[str, float]:
    return {key: float(value) for key, value in trainer.callback_metrics.items()}


def log_trained_model(mlflow_run, task, datamodule) -> None:
    """What the task exports (its weights as they are now) and the description that using it needs."""
    model, example, description = task.exported(datamodule)
    mlflow_run.log_model(model, example)
    mlflow_run.log_dict({**datamodule.describe(), "task": task.name, **description}, "data/description.json")


def evaluation_files(task, datamodule, folder: Path) -> list[Path]:
    """What the DVC evaluate stage writes beside the test metrics (classify: predictions.csv and per-class scores;
    embed: the vectors and the probes' neighbours), for run.py's MLflow run too."""
    from pipeline.files import write_json

    more, files = task.evaluation(datamodule, folder)
    if more:
        files.append(write_json(folder / "details.json", more))
    return files


def resume_point(cfg: DictConfig, overrides: list[str], output_dir: str | None = None):
    """The config to run and the run it continues (None: a new run), as `resume` says. `resume=<run id>` alone
    takes that run's recorded config; with other overrides the config they compose must be the run's."""
    if not cfg.get("resume"):
        return cfg, None
    if not tracking.uses_mlflow(cfg):
        raise ConfigError(f"resume={cfg.resume}: runs to resume are found in MLflow; it needs logger=mlflow")
    client = tracking.client(cfg.logger.tracking_uri)
    if cfg.resume == "auto":
        found = resume.find(cfg, client, tracking.experiment_id(cfg.logger.tracking_uri, cfg.logger.experiment_name),
                            output_dir)
        if found is None:
            log.warning("resume=auto: no stopped or crashed run of this config has a last checkpoint; "
                        "starting a new run")
            return cfg, None
    elif all(override.startswith("resume=") for override in overrides):
        found = resume.by_run_id(None, client, str(cfg.resume))
        cfg = resume.recorded_config(client, found.run_id)
    else:
        found = resume.by_run_id(cfg, client, str(cfg.resume))
    cfg.paths.output_dir = found.output_dir
    resume.quiet_existing_folder_warning()
    return cfg, found


def trial_tags(cfg: DictConfig, swept_keys: list[str] | None) -> dict[str, str]:
    """A search trial's number and its values of the searched keys (search.params): what reports read."""
    if cfg.get("trial") is None:
        return {}
    values = {key: OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig))
              else value for key in swept_keys or [] for value in [OmegaConf.select(cfg, key.lstrip("+~"))]}
    return {"search.trial": str(cfg.trial), "search.params": json.dumps(values)}


def parameter_count(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@torch.no_grad()
def inference_latency_ms(task, datamodule, repeats: int = 20) -> float:
    """Median milliseconds of the logged model on one input (after two warm-up calls): what a search can
    minimise beside the parameter count, on the machine it runs on."""
    import statistics
    import time

    model, example, _ = task.exported(datamodule)
    model.eval()
    one = example[:1].to(next(model.parameters()).device)
    times = []
    for index in range(repeats + 2):
        start = time.perf_counter()
        model(one)
        if index >= 2:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def run_identity(cfg: DictConfig) -> dict[str, str]:
    """The tags by which `resume` finds a run again: what it computes and where its checkpoints are. Taken before
    the data fills in sizes the config leaves open, as resume_point sees the config."""
    return {resume.DIGEST: resume.config_digest(cfg), resume.OUTPUT_DIR: str(Path(cfg.paths.output_dir).resolve())}


def run(cfg: DictConfig, overrides: list[str] | None = None, parent_run_id: str | None = None,
        swept_keys: list[str] | None = None) -> dict[str, float]:
    """Train, test and track the experiment `cfg` describes; return its final train/val/test metrics."""
    if not distributed.is_leader():
        return follow(cfg)
    if overrides is None:
        overrides, parent_run_id, swept_keys = hydra_overrides()
    timing.reset()
    with phase("config"):
        check_config(cfg)
        cfg, resumed = resume_point(cfg, overrides)
        start(cfg)
        identity = run_identity(cfg)
    with phase("data"):
        datamodule = build_data(cfg)
    with phase("model"):
        task = build_task(cfg, datamodule)
        identity.update(transfer.apply(task.model, cfg))

    run_name = tracking.run_name(overrides, swept_keys)
    with contextlib.ExitStack() as ending:
        with phase("tracking start"):
            mlflow_run = ending.enter_context(
                tracking.experiment_run(cfg, run_name, overrides, parent_run_id,
                                        tags={**identity, **trial_tags(cfg, swept_keys)},
                                        resume_run_id=resumed and resumed.run_id)
                if tracking.uses_mlflow(cfg) else contextlib.nullcontext())
        with phase("trainer"):
            trainer = build_trainer(cfg, mlflow_run, callbacks=timing.clock_callbacks())
        if resumed:
            log.info("resuming run %s from %s", resumed.run_id, resumed.checkpoint)
        with phase("fit"):
            distributed.hand_over(cfg, resumed and resumed.checkpoint)
            metrics, best = fit(trainer, task, datamodule, resumed and resumed.checkpoint)
        with phase("test"):
            trainer.test(task, datamodule=datamodule, ckpt_path=best or None, verbose=True)
        metrics.update(metrics_of(trainer))
        # What a multi-objective search may minimise beside its error.
        metrics["model/params"] = parameter_count(task.model)
        with phase("latency"):
            metrics["model/latency_ms"] = inference_latency_ms(task, datamodule)
        if mlflow_run is not None:
            with phase("model export"):
                mlflow_run.log_metrics({key: metrics[key] for key in ("model/params", "model/latency_ms")})
                log_trained_model(mlflow_run, task, datamodule)
            with phase("plots"):
                mlflow_run.log_generated_files("plots", functools.partial(task.plots, datamodule, cfg.viz))
            with phase("evaluation"):
                mlflow_run.log_generated_files("evaluation", functools.partial(evaluation_files, task, datamodule))
            log.info("MLflow run %s (%s) in %s", mlflow_run.run_id, run_name, cfg.logger.tracking_uri)
        body_done = time.time()
    timing.phases.append(("tracking end", body_done, time.time()))
    timing.write()

    summary = "  ".join(f"{key}={value:.4f}" for key, value in sorted(metrics.items()) if key.startswith("test/"))
    ranked_by = objective(cfg)[0]
    print(f"{run_name}: {summary}  ({ranked_by}={metrics.get(ranked_by, float('nan')):.4f})")
    return metrics


def follow(cfg: DictConfig) -> dict[str, float]:
    """A data-parallel process other than the leader: the same fit and test on its share of the batches, with the
    leader's config and checkpoint when Lightning started it (distributed.py); it neither tracks nor exports."""
    cfg, checkpoint = distributed.handed() or (cfg, None)
    start(cfg)
    datamodule = build_data(cfg)
    task = build_task(cfg, datamodule)
    transfer.apply(task.model, cfg)  # DDP copies the leader's weights; what is frozen must match it
    trainer = instantiate(cfg.trainer, logger=False, callbacks=build_callbacks(cfg), **trainer_settings(cfg))
    metrics, best = fit(trainer, task, datamodule, checkpoint)
    trainer.test(task, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    return {**metrics, **metrics_of(trainer)}
