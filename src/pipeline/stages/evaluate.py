"""Stage 3: test the trained model; write the test metrics and what the task adds to them (classify: per-class
scores, and every test example's actual and predicted class, the data of DVC's confusion-matrix plot)."""
import shutil

from omegaconf import DictConfig

from pipeline import collector

with collector.paused():  # torch and Lightning: imported once, then left out of the collector's passes
    from pipeline.cli import as_main_process, run_stage
    from pipeline.stages.outputs import CHECKPOINT, DETAILS, METRICS, load_prepared, pipeline_run_continued, write_json
    from pipeline.train import build_data, build_task, build_trainer, metrics_of, start


def evaluate(cfg: DictConfig) -> None:
    start(cfg)
    datamodule = build_data(cfg, prepared=load_prepared())
    task = build_task(cfg, datamodule)
    with pipeline_run_continued() as mlflow_run:
        trainer = build_trainer(cfg, mlflow_run)
        trainer.test(task, datamodule=datamodule, ckpt_path=str(CHECKPOINT), verbose=False)
        test = {key.removeprefix("test/"): round(value, 6) for key, value in metrics_of(trainer).items()
                if key.startswith("test/")}
        shutil.rmtree(DETAILS, ignore_errors=True)  # only this run's files: tasks write different ones
        DETAILS.mkdir(parents=True)
        more, files = task.evaluation(datamodule, DETAILS)
        # Test metrics at the top (DVC lists keys in name order: acc, f1_macro, loss, then per_class).
        write_json(METRICS, {**test, **more})
        if mlflow_run is not None:
            mlflow_run.log_files([METRICS, *files], "dvc/evaluate")
    print("evaluated: " + "  ".join(f"test/{key}={value:.4f}" for key, value in sorted(test.items()))
          + f" -> {METRICS}, {DETAILS}")


if __name__ == "__main__":
    as_main_process(run_stage, evaluate)
