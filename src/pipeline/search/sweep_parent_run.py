"""A sweep in MLflow: one parent run, a child per job, and, however the sweep ends, a summary on the parent."""
import math
import os
from contextlib import contextmanager

from omegaconf import DictConfig

from pipeline import liveness, tracking
from pipeline.objective import objective

ENV = (tracking.PARENT_RUN_ENV, tracking.PARENT_RUN_ENV + "_URI", tracking.SWEPT_KEYS_ENV)


class SweepParent:
    """The open parent run, and the jobs that failed (overrides, error), which the summary lists."""

    def __init__(self, run_id: str | None, tracking_uri: str | None = None):
        self.run_id, self.tracking_uri = run_id, tracking_uri
        self.failures: list[tuple[list[str], BaseException]] = []


@contextmanager
def sweep_parent_run(config: DictConfig, resume_run_id: str | None = None, summary=None, tags=None):
    """Create the parent run (or reopen `resume_run_id`, a search continued) and hand its id to the jobs (by
    environment variable, which joblib workers inherit). When the block ends the parent is summarised
    (`summary(client, run_id, failures)`, by default the grid sweep's table) and ends FINISHED if any child
    finished, FAILED if none did; when it is interrupted, it and every child still running end KILLED."""
    if not tracking.uses_mlflow(config):
        yield SweepParent(None)
        return
    uri = config.logger.tracking_uri
    client = tracking.client(uri)
    sweep = " ".join(config.hydra.overrides.task) or "defaults"
    if resume_run_id:
        run_id = resume_run_id
        for key, value in liveness.process_tags().items():
            client.set_tag(run_id, key, value)
        if liveness.ERROR in client.get_run(run_id).data.tags:
            client.delete_tag(run_id, liveness.ERROR)
        client.update_run(run_id, status="RUNNING")
    else:
        run = client.create_run(tracking.experiment_id(config), run_name=f"sweep: {sweep}",
                                tags={"pipeline.sweep": sweep, "pipeline.sweep_dir": str(config.hydra.sweep.dir),
                                      **liveness.process_tags(), **(tags or {})})
        run_id = run.info.run_id
        client.log_text(run_id, "\n".join(config.hydra.overrides.task) + "\n", "sweep/overrides.txt")
    os.environ.update(zip(ENV, (run_id, uri, ",".join(swept_keys(config)))))
    parent = SweepParent(run_id, uri)
    summary = summary or (lambda client, run_id, failures: summarise(client, run_id, *objective(config), failures))
    try:
        with liveness.Heartbeat(client, run_id):
            yield parent
    except BaseException as error:
        status = tracking.end_status(error)
        end_running_children(client, run_id, status, tracking.end_reason(error))
        summary(client, run_id, parent.failures)
        client.set_tag(run_id, liveness.ERROR, tracking.end_reason(error))
        client.set_terminated(run_id, status)
        raise
    else:
        summary(client, run_id, parent.failures)
        children = children_of(client, run_id)
        client.set_terminated(run_id, "FINISHED" if any(c.info.status == "FINISHED" for c in children) else "FAILED")
    finally:
        for name in ENV:
            os.environ.pop(name, None)


def children_of(client, parent_run_id: str):
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              order_by=["attributes.start_time ASC"])


def end_running_children(client, parent_run_id: str, status: str, reason: str) -> None:
    """Children a stopped sweep leaves behind (parallel workers are terminated without a chance to say so)."""
    for child in children_of(client, parent_run_id):
        if child.info.status == "RUNNING":
            client.set_tag(child.info.run_id, liveness.ERROR, f"its sweep was {reason}")
            client.set_terminated(child.info.run_id, status)


def swept_keys(config: DictConfig) -> list[str]:
    """The keys the sweep varies (`optimizer=sgd,adam`, or a sweeper's search space): they name the children."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = [override.get_key_element() for override in parsed if override.is_sweep_override()]
    return keys + list(config.hydra.sweeper.get("params") or {}) + list(config.hydra.sweeper.get("lists") or {})


def log_curves(client, parent_run_id: str, children, monitor: str) -> None:
    """Plot every child's per-epoch validation loss and the task's monitored metric (val/acc, ...) on shared axes,
    as sweep/curves.png: the comparison of the sweep's runs."""
    from pipeline.viz.sweep_curves import plot_sweep_curves

    curves = list(dict.fromkeys(["val/loss", monitor]))
    histories = {child.info.run_name: {metric: [m.value for m in sorted(
        client.get_metric_history(child.info.run_id, metric), key=lambda m: m.step)] for metric in curves}
        for child in children}
    tracking.log_generated_files(
        parent_run_id, "sweep", lambda folder: [plot_sweep_curves(histories, curves, folder / "curves.png")], client)


def summarise(client, parent_run_id: str, objective: str, direction: str, failures=()):
    """Log a table of the children (status, objective, test metrics, error) and the failed jobs on the parent, tag
    the best child, and return the children."""
    from pipeline.cli import one_line

    children = children_of(client, parent_run_id)
    # The objective, then every test metric a child reported (accuracy, macro-F1, loss, ...).
    columns = [objective] + sorted({key for child in children for key in child.data.metrics
                                    if key.startswith("test/") and key != objective})
    rows = []
    for child in children:
        rows.append({"run": child.info.run_name, "run_id": child.info.run_id, "status": child.info.status,
                     "error": child.data.tags.get(liveness.ERROR, ""),
                     **{key: child.data.metrics.get(key, math.nan) for key in columns}})
    scored = [row for row in rows if row["status"] == "FINISHED" and not math.isnan(row[objective])]
    best = (max if direction == "maximize" else min)(scored, key=lambda row: row[objective]) if scored else None

    header = ["run", "status", *columns, "run_id", "error"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        mark = " (best)" if row is best else ""
        values = " | ".join(f"{row[key]:.4f}" for key in columns)
        lines.append(f"| {row['run']}{mark} | {row['status']} | {values} | {row['run_id']} | {row['error']} |")
    text = f"Sweep summary: {len(rows)} runs, objective {objective} ({direction})\n\n" + "\n".join(lines) + "\n"
    if failures:
        text += f"\nFailed jobs ({len(failures)}):\n\n" + "".join(
            f"- {' '.join(overrides)}: {one_line(error)}\n" for overrides, error in failures)
    client.log_text(parent_run_id, text, "sweep/summary.md")
    if children:
        log_curves(client, parent_run_id, children, objective.removesuffix("_best"))
    client.log_metric(parent_run_id, "sweep/children", len(rows))
    client.log_metric(parent_run_id, "sweep/failed", len(failures))
    if best is not None:
        client.set_tag(parent_run_id, "best_run_id", best["run_id"])
        client.set_tag(parent_run_id, "best_run_name", best["run"])
        client.log_metric(parent_run_id, f"best/{objective}", best[objective])
        for key in columns[1:]:  # the best run's test results, on the parent where the sweep is browsed
            if not math.isnan(best[key]):
                client.log_metric(parent_run_id, f"best/{key}", best[key])
    print(text)
    return children
