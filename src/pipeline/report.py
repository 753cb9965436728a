"""python -m pipeline.report [PARENT_RUN_ID | --latest]: print a sweep's or search's summary, rebuilt from MLflow.

It is logged again on the parent run too (sweep/summary.md and its plots), e.g. for a sweep older than the report."""
import argparse
import sys

from pipeline.errors import ConfigError


def latest_sweep(client) -> str:
    """The newest run that has child runs: the last sweep's parent. Parents carry the `pipeline.sweep` tag, so the
    newest few are one query away however many runs the store holds; a store whose parents were written before they
    were tagged is searched through its children instead."""
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    tagged = client.search_runs(experiments, "tags.`pipeline.sweep` IS NOT NULL", max_results=10,
                                order_by=["attributes.start_time DESC"]) if experiments else []
    for parent in tagged:  # a sweep stopped before its first job started has no children
        if has_children(client, parent):
            return parent.info.run_id
    children = client.search_runs(experiments, "tags.mlflow.parentRunId IS NOT NULL",
                                  max_results=50000) if experiments else []
    parents = [client.get_run(run_id) for run_id in {child.data.tags["mlflow.parentRunId"] for child in children}]
    if not parents:
        raise ConfigError(f"no sweep (a run with child runs) in {client.tracking_uri}: run one first "
                          "(python run.py -m optimizer.lr=0.001,0.01) or give the tracking URI of its store")
    return max(parents, key=lambda run: run.info.start_time).info.run_id


def has_children(client, run) -> bool:
    """Whether any run names `run` as its parent: one row read, however many children it has."""
    return bool(client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'",
                                   max_results=1))


def sweep_parent(client, run_id: str) -> str:
    """The run id, checked to be a sweep's parent."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"no run {run_id} in {client.tracking_uri}") from None
    if not has_children(client, run):
        parent = run.data.tags.get("mlflow.parentRunId")
        hint = f"it is a job of sweep {parent}; give that id" if parent else "give a sweep's parent run or --latest"
        raise ConfigError(f"run {run_id} is not a sweep's parent (it has no child runs): {hint}")
    return run_id


def main(argv: list[str] | None = None) -> int:
    from pipeline.predict import tracking_uri

    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("run_id", nargs="?", metavar="PARENT_RUN_ID", help="the sweep's parent run")
    which.add_argument("--latest", action="store_true", help="the newest sweep (the default without a run id)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI or ./mlflow.db)")
    args = parser.parse_args(argv)
    try:
        from pipeline import tracking
        from pipeline.search.report import log_report

        client = tracking.client(tracking_uri(args.tracking_uri))
        run_id = sweep_parent(client, args.run_id) if args.run_id else latest_sweep(client)
        text = log_report(client, run_id)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"sweep {run_id}\n")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
