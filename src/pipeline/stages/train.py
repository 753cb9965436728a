"""Stage 2: fit the model on the prepared splits; write the best checkpoint and the per-epoch history, and start
this pipeline run's MLflow run (the later stages add their results to it)."""
import contextlib
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig

from pipeline import collector

with collector.paused():  # torch and Lightning: imported once, then left out of the collector's passes
    from pipeline import resume, tracking, transfer
    from pipeline.cli import as_main_process, run_stage
    from pipeline.data.download import md5_of
    from pipeline.history import EpochHistory, HistoryInCheckpoints
    from pipeline.stages.outputs import (CHECKPOINT, HISTORY, PREPARED, RUN, load_prepared, load_weights,
                                         write_atomically, write_json)
    from pipeline.train import (build_data, build_task, build_trainer, fit, log_trained_model, resume_point,
                                run_identity, start)


def pipeline_run(cfg: DictConfig, resumed, transferred: dict):
    """The MLflow run of this pipeline run, named after the DVC experiment when there is one (or the run of a
    train stage that was stopped, which this one continues)."""
    if not tracking.uses_mlflow(cfg):
        return contextlib.nullcontext()
    experiment = os.environ.get("DVC_EXP_NAME")
    tags = {"pipeline.entry": "dvc", **run_identity(cfg), **transferred}
    if experiment:
        tags["dvc.experiment"] = experiment
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc.baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    name = f"dvc exp {experiment}" if experiment else "dvc repro"
    return tracking.experiment_run(cfg, name, overrides=[], tags=tags, resume_run_id=resumed and resumed.run_id)


def prepared_summary(datamodule) -> dict:
    """What the MLflow run records of the prepare stage's output: its md5 (the same hash dvc.lock holds) and the
    split sizes, not the tensors themselves (CIFAR-10's are 150 MB)."""
    return {"path": str(PREPARED), "md5": md5_of(PREPARED), "classes": getattr(datamodule, "class_names", None),
            "splits": datamodule.sizes()}


def remove_scratch(checkpoint: Path, output_dir: Path) -> None:
    """Lightning's checkpoint folder, once the best checkpoint is copied out: the folder right below
    paths.output_dir that holds it (checkpoints/, or <logger>/version_0/ without the checkpoint callback)."""
    try:
        parts = checkpoint.resolve().relative_to(output_dir.resolve()).parts
    except ValueError:  # not inside paths.output_dir: not ours to remove
        return
    if len(parts) > 1:
        shutil.rmtree(output_dir / parts[0], ignore_errors=True)


def resume_stopped_stage(cfg: DictConfig):
    """A train stage that was stopped or died left its last checkpoint in paths.output_dir (DVC removes only the
    declared outputs): the next `dvc repro` with the same params continues it, in the same MLflow run."""
    left = Path(cfg.paths.output_dir) / "checkpoints"
    if not (left / resume.LAST).exists() or not tracking.uses_mlflow(cfg):
        return cfg, None
    cfg.resume = "auto"
    cfg, resumed = resume_point(cfg, [], output_dir=str(Path(cfg.paths.output_dir).resolve()))
    if resumed is None:  # left by a run of other params: not this run's to continue
        cfg.resume = None
        shutil.rmtree(left, ignore_errors=True)
    return cfg, resumed


def train(cfg: DictConfig) -> None:
    cfg, resumed = resume_stopped_stage(cfg)
    start(cfg)
    datamodule = build_data(cfg, prepared=load_prepared())
    task = build_task(cfg, datamodule)
    transferred = transfer.apply(task.model, cfg)
    history = EpochHistory()
    with pipeline_run(cfg, resumed, transferred) as mlflow_run:
        trainer = build_trainer(cfg, mlflow_run, loggers=[history], callbacks=[HistoryInCheckpoints(history)])
        metrics, best = fit(trainer, task, datamodule, resumed and resumed.checkpoint)
        if best:
            write_atomically(CHECKPOINT, lambda partial: shutil.copyfile(best, partial))
            remove_scratch(Path(best), Path(cfg.paths.output_dir))
        else:  # nothing was checkpointed (trainer=debug): the weights as they are
            write_atomically(CHECKPOINT, trainer.save_checkpoint)
        load_weights(task)
        write_atomically(HISTORY, history.write_csv)
        run_id = mlflow_run.run_id if mlflow_run is not None else None
        write_json(RUN, {"tracking_uri": cfg.logger.tracking_uri if run_id else None, "run_id": run_id})
        if mlflow_run is not None:
            log_trained_model(mlflow_run, task, datamodule)
            mlflow_run.log_files([HISTORY], "dvc/train")
            mlflow_run.log_dict(prepared_summary(datamodule), "dvc/prepare/summary.json")
    best_values = "  ".join(f"{key}={value:.4f}" for key, value in sorted(metrics.items()) if key.endswith("_best"))
    print(f"trained {cfg.model._target_.rsplit('.', 1)[-1]} for {len(history.rows)} epochs: {best_values} "
          f"-> {CHECKPOINT}, {HISTORY}")


if __name__ == "__main__":
    as_main_process(run_stage, train)
