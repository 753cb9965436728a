"""A sweep in MLflow: one parent run, a child per job, and, however the sweep ends, a summary on the parent."""
import math
from contextlib import contextmanager

from omegaconf import DictConfig

from pipeline import liveness, tracking
from pipeline.search.job_environment import job_environment, machine_environment

ENV = (tracking.PARENT_RUN_ENV, tracking.PARENT_RUN_ENV + "_URI", tracking.SWEPT_KEYS_ENV)


class SweepParent:
    """The open parent run, and the jobs that failed (overrides, error), which the summary lists."""

    def __init__(self, run_id: str | None, tracking_uri: str | None = None):
        self.run_id, self.tracking_uri = run_id, tracking_uri
        self.failures: list[tuple[list[str], BaseException]] = []


@contextmanager
def sweep_parent_run(config: DictConfig, resume_run_id: str | None = None, tags=None):
    """Create the parent run (or reopen `resume_run_id`, a search continued) and hand its id to the jobs (by
    environment variable, set in whichever process runs a job: job_environment.py). When the block ends the parent
    is summarised (summarise, below) and ends FINISHED if any child finished, FAILED if none did; when it is
    interrupted, it and every child still running end KILLED."""
    if not tracking.uses_mlflow(config):
        with job_environment(config, machine_environment()):
            yield SweepParent(None)
        return
    uri = config.logger.tracking_uri
    client = tracking.client(uri)
    sweep = " ".join(config.hydra.overrides.task) or "defaults"
    if resume_run_id:
        run_id = resume_run_id
        tracking.take_over(client, run_id, liveness.process_tags())
        client.update_run(run_id, status="RUNNING")
    else:
        experiment = tracking.experiment_id(config.logger.tracking_uri, config.logger.experiment_name)
        run = client.create_run(experiment, run_name=f"sweep: {sweep}",
                                tags={"pipeline.sweep": sweep, "pipeline.sweep_dir": str(config.hydra.sweep.dir),
                                      **liveness.process_tags(), **(tags or {})})
        run_id = run.info.run_id
        client.log_text(run_id, "\n".join(config.hydra.overrides.task) + "\n", "sweep/overrides.txt")
    parent = SweepParent(run_id, uri)
    try:
        handed = {**machine_environment(), **dict(zip(ENV, (run_id, uri, ",".join(swept_keys(config)))))}
        with job_environment(config, handed), \
                liveness.Heartbeat(client, run_id):
            yield parent
    except BaseException as error:
        status = tracking.end_status(error)
        end_running_children(client, run_id, status, tracking.end_reason(error))
        summarise(client, run_id, parent.failures)
        client.set_tag(run_id, liveness.ERROR, tracking.end_reason(error))
        client.set_terminated(run_id, status)
        raise
    else:
        summarise(client, run_id, parent.failures)
        children = children_of(client, run_id)
        client.set_terminated(run_id, "FINISHED" if any(c.info.status == "FINISHED" for c in children) else "FAILED")


def children_of(client, parent_run_id: str):
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              order_by=["attributes.start_time ASC"])


def end_running_children(client, parent_run_id: str, status: str, reason: str) -> None:
    """Children a stopped sweep leaves behind (parallel workers are terminated without a chance to say so). A
    child's own process may be ending it at this very moment (a Ctrl-C reaches both): MLflow then refuses the second
    insert of the same tag, and the child keeps the reason its process gave."""
    from mlflow.exceptions import MlflowException

    for child in children_of(client, parent_run_id):
        if child.info.status == "RUNNING":
            try:
                client.set_tag(child.info.run_id, liveness.ERROR, f"its sweep was {reason}")
            except MlflowException:
                if client.get_run(child.info.run_id).data.tags.get(liveness.ERROR) is None:
                    raise
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


def summarise(client, parent_run_id: str, failures=()):
    """The same summary for a grid sweep and a search (pipeline/search/report.py: summary.md with every child, its
    state, objective, test metrics and error, and the best as a command line; history, importance, Pareto plots),
    plus the validation curves, the counts, and the best child on the parent's tags and metrics. Returns the
    children."""
    from pipeline.cli import one_line
    from pipeline.search.report import best, collect, log_report

    children = children_of(client, parent_run_id)
    report = collect(client, parent_run_id)
    text = log_report(client, parent_run_id)
    failed = [trial for trial in report.trials if trial.state in ("FAIL", "FAILED")]
    if len(failures) > len(failed):  # some jobs failed before their run existed: only the launcher knows them
        text += f"\nFailed jobs reported by the launcher ({len(failures)}):\n\n" + "".join(
            f"- {' '.join(overrides)}: {one_line(error)}\n" for overrides, error in failures)
        client.log_text(parent_run_id, text, "sweep/summary.md")
    if children:
        log_curves(client, parent_run_id, children, report.objectives[0][0].removesuffix("_best"))
    client.log_metric(parent_run_id, "sweep/children", len(children))
    client.log_metric(parent_run_id, "sweep/failed", max(len(failures), len(failed)))
    winner = best(report)
    if winner is not None and len(report.objectives) == 1:
        objective = report.objectives[0][0]
        client.set_tag(parent_run_id, "best_run_id", winner.run_id)
        client.set_tag(parent_run_id, "best_run_name", winner.name)
        client.log_metric(parent_run_id, f"best/{objective}", winner.values[objective])
        for key, value in winner.tests.items():  # the best run's test results, where the sweep is browsed
            if not math.isnan(value):
                client.log_metric(parent_run_id, f"best/{key}", value)
    print(text)
    return children
