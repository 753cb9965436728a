"""Stage 4: the PNG plots of the trained model: learning curves, then the task's own (classify: confusion matrix,
misclassified examples, for CNNs filters and feature maps, and for image classifiers explanations.png with the
deletion test and sanity check in explanations.json; options: params viz.*)."""
import shutil

from omegaconf import DictConfig

from pipeline import collector

with collector.paused():  # torch and Lightning: imported once, then left out of the collector's passes
    from pipeline.cli import as_main_process, run_stage
    from pipeline.history import read_history
    from pipeline.stages.outputs import HISTORY, PLOTS, load_prepared, load_weights, pipeline_run_continued
    from pipeline.train import build_data, build_task, start
    from pipeline.viz.learning_curves import plot_learning_curves


def visualize(cfg: DictConfig) -> None:
    start(cfg)
    datamodule = build_data(cfg, prepared=load_prepared())
    task = build_task(cfg, datamodule)
    load_weights(task)
    shutil.rmtree(PLOTS, ignore_errors=True)  # only this run's plots: a model without convolutions has fewer
    PLOTS.mkdir(parents=True)
    paths = [plot_learning_curves(read_history(HISTORY), PLOTS / "learning_curves.png", cfg.viz.dpi)]
    paths += task.plots(datamodule, cfg.viz, PLOTS)
    with pipeline_run_continued() as mlflow_run:
        if mlflow_run is not None:
            mlflow_run.log_files(paths, "plots")
    print(f"plotted {', '.join(path.name for path in paths)} -> {PLOTS}")


if __name__ == "__main__":
    as_main_process(run_stage, visualize)
