"""A sweep's parent run in MLflow: created (or taken over by a search continued), its children ended when the sweep
is stopped, its summary, and a search's verdict on each child. These run where the sweep's MLflow work runs (the
tracking process, tracking_worker.Worker's sweep commands); the sweeping process holds sweep_parent_run.SweepParent.
Each function takes the MLflow client first."""
import json
import math

from pipeline import liveness, tracking


def open_parent(client, tracking_uri: str, experiment_name: str, sweep: str, overrides: list[str], tags: dict,
                process_tags: dict, resume_run_id: str | None = None) -> str:
    """A new parent run named after the sweep's overrides, or `resume_run_id` running again as this sweep's."""
    if resume_run_id:
        tracking.take_over(client, resume_run_id, process_tags)
        client.update_run(resume_run_id, status="RUNNING")
        return resume_run_id
    experiment = tracking.experiment_id(tracking_uri, experiment_name)
    run = client.create_run(experiment, run_name=f"sweep: {sweep}",
                            tags={"pipeline.sweep": sweep, **process_tags, **tags})
    client.log_text(run.info.run_id, "\n".join(overrides) + "\n", "sweep/overrides.txt")
    return run.info.run_id


def close_parent(client, run_id: str, failures: list, status: str | None = None, reason: str | None = None) -> str:
    """Summarise the sweep and end its parent: FINISHED if any child finished, FAILED if none did; or, for a sweep
    stopped (`status` KILLED) or failed (FAILED) with `reason`, that status for it and every child still running.
    `failures` are (overrides, one-line error) of the jobs that failed. Returns the summary."""
    if status:
        end_running_children(client, run_id, status, reason)
    children = children_of(client, run_id)  # as they ended
    text = summarise(client, run_id, children, failures)
    if status:
        client.set_tag(run_id, liveness.ERROR, reason)
    else:
        status = "FINISHED" if any(child.info.status == "FINISHED" for child in children) else "FAILED"
    client.set_terminated(run_id, status)
    return text


def prepare_summary() -> None:
    """Import what the summary's plots need (matplotlib, ~0.4 s) while the sweep's jobs run, not after them."""
    from pipeline.search import report  # noqa: F401
    from pipeline.viz import pyplot, search_plots, sweep_curves  # noqa: F401

    pyplot()


def children_of(client, parent_run_id: str, only: str = "", page_size: int = 1000) -> list:
    """Every child run of the parent, oldest first (`only`: an MLflow filter they must match too). Read page by page
    (MLflow's own paginator): one search returns at most `page_size` runs, and a sweep may have more children."""
    from mlflow.utils import get_results_from_paginated_fn

    experiment = client.get_run(parent_run_id).info.experiment_id
    condition = f"tags.mlflow.parentRunId = '{parent_run_id}'" + (f" and {only}" if only else "")
    return get_results_from_paginated_fn(
        lambda count, token: client.search_runs([experiment], filter_string=condition, max_results=count,
                                                order_by=["attributes.start_time ASC"], page_token=token), page_size)


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


def summarise(client, parent_run_id: str, children, failures=()) -> str:
    """The same summary for a grid sweep and a search (pipeline/search/report.py: summary.md with every child, its
    state, objective, test metrics and error, and the best as a command line; history, importance, Pareto plots),
    plus the validation curves, the counts, and the best child on the parent's tags and metrics. Returns the
    summary's text. `children`: the parent's child runs (children_of)."""
    from pipeline.search.report import best, collect, log_report

    report = collect(client, parent_run_id, children)
    text = log_report(client, parent_run_id, report)
    failed = [trial for trial in report.trials if trial.state in ("FAIL", "FAILED")]
    if len(failures) > len(failed):  # some jobs failed before their run existed: only the launcher knows them
        text += f"\nFailed jobs reported by the launcher ({len(failures)}):\n\n" + "".join(
            f"- {' '.join(overrides)}: {error}\n" for overrides, error in failures)
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
    return text


def mark_child(client, parent_run_id: str, trial_number: int, state: str, reason: str | None = None,
               searched: dict | None = None) -> None:
    """Tag the trial's MLflow run with the study's verdict (search.state); a trial refused before it ran gets a
    FAILED run of its own, with its values of the searched keys (`searched`), so every trial is in MLflow."""
    child = next(iter(children_of(client, parent_run_id, only=f"tags.`search.trial` = '{trial_number}'")), None)
    if child is None:
        experiment = client.get_run(parent_run_id).info.experiment_id
        child = client.create_run(experiment, run_name=f"trial {trial_number} (refused)", tags={
            "mlflow.parentRunId": parent_run_id, "search.trial": str(trial_number),
            "search.params": json.dumps(searched or {}), liveness.ERROR: reason or ""})
        client.set_terminated(child.info.run_id, "FAILED")
    client.set_tag(child.info.run_id, "search.state", state)
    if reason and child.info.status != "FAILED" and state == "FAIL":  # finished, but its objective was not finite
        client.set_tag(child.info.run_id, liveness.ERROR, reason)


def record(client, parent_run_id: str, metrics: dict[str, float], texts: dict[str, str]) -> None:
    """Metrics (those not finite left out) and text files (path: text) on the parent run."""
    for key, value in metrics.items():
        if math.isfinite(value):
            client.log_metric(parent_run_id, key, value)
    for path, text in texts.items():
        client.log_text(parent_run_id, text, path)
