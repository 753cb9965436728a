"""run(cfg): the one place where a composed config becomes objects, a fit, a test and a tracked result."""
import contextlib
import functools
import logging
import os
import warnings

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from pipeline import tracking
from pipeline.checks import check_config, check_model_fits_data
from pipeline.viz.classification import classification_plots

log = logging.getLogger(__name__)
# Lightning advertises a cloud logger at every start; users of this pipeline have MLflow.
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(lambda record: "litlogger" not in record.getMessage())
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


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
    callbacks = cfg.get("callbacks") or {}
    return [instantiate(callback) for callback in callbacks.values() if callback and "_target_" in callback]


def build_logger(cfg: DictConfig, run) -> pl.loggers.Logger | bool:
    if not cfg.get("logger") or "_target_" not in cfg.logger:
        return False
    if run is not None:
        return instantiate(cfg.logger, run_id=run.info.run_id)
    return instantiate(cfg.logger)


def fill_from_data(cfg: DictConfig, datamodule) -> None:
    """Sizes a data config leaves null (chars: the classes are the language files found) take the loaded data's
    values, so models interpolating them and the tracked params see real numbers."""
    for key in ("num_classes", "vocab_size"):
        if key in cfg.data and cfg.data[key] is None:
            cfg.data[key] = int(getattr(datamodule, key))


def run(cfg: DictConfig, overrides: list[str] | None = None, parent_run_id: str | None = None,
        swept_keys: list[str] | None = None) -> dict[str, float]:
    """Train, test and track the experiment `cfg` describes; return its final train/val/test metrics."""
    check_config(cfg)
    if overrides is None:
        overrides, parent_run_id, swept_keys = hydra_overrides()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    fill_from_data(cfg, datamodule)
    model = instantiate(cfg.model)
    check_model_fits_data(model, cfg, example=datamodule.splits["train"][0][:2])
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    task = instantiate(cfg.task, model=model, optimizer=instantiate(cfg.optimizer), scheduler=scheduler)

    run_name = tracking.run_name(overrides, swept_keys)
    tracked = (tracking.experiment_run(cfg, run_name, overrides, parent_run_id)
               if tracking.uses_mlflow(cfg) else contextlib.nullcontext())
    with tracked as mlflow_run:
        trainer: pl.Trainer = instantiate(cfg.trainer, logger=build_logger(cfg, mlflow_run),
                                          callbacks=build_callbacks(cfg))
        trainer.fit(task, datamodule=datamodule)
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None and not trainer.fast_dev_run else ""
        trainer.test(task, datamodule=datamodule, ckpt_path=best or None, verbose=True)
        metrics.update({key: float(value) for key, value in trainer.callback_metrics.items()})
        if mlflow_run is not None:
            example = next(iter(datamodule.test_dataloader()))[0][:8]
            tracking.log_model(model, example)
            mlflow_run_id = mlflow_run.info.run_id
            tracking.log_dict(mlflow_run_id, datamodule.describe(), "data/description.json")
            tracking.log_generated_files(mlflow_run_id, "plots",
                                         functools.partial(classification_plots, model, datamodule))
            log.info("MLflow run %s (%s) in %s", mlflow_run.info.run_id, run_name, cfg.logger.tracking_uri)

    summary = "  ".join(f"{key}={value:.4f}" for key, value in sorted(metrics.items()) if key.startswith("test/"))
    print(f"{run_name}: {summary}  ({cfg.sweep.objective}={metrics.get(cfg.sweep.objective, float('nan')):.4f})")
    return metrics
