"""A Hydra callback that groups a multirun in MLflow: one parent run, a child per job, a summary at the end."""
import math
import os

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pipeline import tracking


class SweepParentRun(Callback):
    """Creates the parent run before any job starts (which also creates a new store's schema once, so
    parallel jobs never race to create it) and, when the sweep ends, ranks the children by the objective."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if not tracking.uses_mlflow(config):
            return
        import mlflow

        uri = config.logger.tracking_uri
        client = mlflow.MlflowClient(uri)
        sweep = " ".join(config.hydra.overrides.task) or "defaults"
        run = client.create_run(tracking.experiment_id(config), run_name=f"sweep: {sweep}",
                                tags={"pipeline.sweep": sweep, "pipeline.sweep_dir": str(config.hydra.sweep.dir)})
        client.log_text(run.info.run_id, "\n".join(config.hydra.overrides.task) + "\n", "sweep/overrides.txt")
        os.environ[tracking.PARENT_RUN_ENV] = run.info.run_id
        os.environ[tracking.SWEPT_KEYS_ENV] = ",".join(swept_keys(config))
        os.environ[tracking.PARENT_RUN_ENV + "_URI"] = uri

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        run_id = os.environ.get(tracking.PARENT_RUN_ENV)
        if not run_id or not tracking.uses_mlflow(config):
            return
        import mlflow

        client = mlflow.MlflowClient(config.logger.tracking_uri)
        summarise(client, run_id, config.sweep.objective, config.sweep.direction)
        client.set_terminated(run_id, "FINISHED")
        for name in (tracking.PARENT_RUN_ENV, tracking.PARENT_RUN_ENV + "_URI", tracking.SWEPT_KEYS_ENV):
            os.environ.pop(name, None)


def swept_keys(config: DictConfig) -> list[str]:
    """The keys the sweep varies (`optimizer=sgd,adam`, or a sweeper's search space): they name the children."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = [override.get_key_element() for override in parsed if override.is_sweep_override()]
    return keys + list(config.hydra.sweeper.get("params") or {})


CURVES = ["val/loss", "val/acc"]


def log_curves(client, parent_run_id: str, children) -> None:
    """Plot every child's per-epoch validation loss and accuracy on shared axes, as sweep/curves.png."""
    from pipeline.viz.sweep_curves import plot_sweep_curves

    histories = {child.info.run_name: {metric: [m.value for m in sorted(
        client.get_metric_history(child.info.run_id, metric), key=lambda m: m.step)] for metric in CURVES}
        for child in children}
    tracking.log_generated_files(
        parent_run_id, "sweep", lambda folder: [plot_sweep_curves(histories, CURVES, folder / "curves.png")], client)


def summarise(client, parent_run_id: str, objective: str, direction: str) -> dict | None:
    """Log a table of the children and their objective on the parent, and tag the best child."""
    parent = client.get_run(parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                  order_by=["attributes.start_time ASC"])
    # The objective, then every test metric a child reported (accuracy, macro-F1, loss, ...).
    columns = [objective] + sorted({key for child in children for key in child.data.metrics
                                    if key.startswith("test/") and key != objective})
    rows = []
    for child in children:
        rows.append({"run": child.info.run_name, "run_id": child.info.run_id, "status": child.info.status,
                     **{key: child.data.metrics.get(key, math.nan) for key in columns}})
    scored = [row for row in rows if not math.isnan(row[objective])]
    best = (max if direction == "maximize" else min)(scored, key=lambda row: row[objective]) if scored else None

    header = ["run", "status", *columns, "run_id"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        mark = " (best)" if row is best else ""
        values = " | ".join(f"{row[key]:.4f}" for key in columns)
        lines.append(f"| {row['run']}{mark} | {row['status']} | {values} | {row['run_id']} |")
    text = f"Sweep summary: {len(rows)} runs, objective {objective} ({direction})\n\n" + "\n".join(lines) + "\n"
    client.log_text(parent_run_id, text, "sweep/summary.md")
    log_curves(client, parent_run_id, children)
    client.log_metric(parent_run_id, "sweep/children", len(rows))
    if best is not None:
        client.set_tag(parent_run_id, "best_run_id", best["run_id"])
        client.set_tag(parent_run_id, "best_run_name", best["run"])
        client.log_metric(parent_run_id, f"best/{objective}", best[objective])
        for key in columns[1:]:  # the best run's test results, on the parent where the sweep is browsed
            if not math.isnan(best[key]):
                client.log_metric(parent_run_id, f"best/{key}", best[key])
    print(text)
    return best
