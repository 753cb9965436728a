"""python -m pipeline.ui: the MLflow dashboard on the project's store, opened where a deep-learning user starts.

MLflow 3's UI opens an experiment on its GenAI pages (traces, token usage); training runs are a toggle and a tab
away, and their metrics hide behind a column picker. This starts the UI (`mlflow server`, one worker, loopback) and
prints a link straight to the runs table of the newest sweep's experiment, in a saved view whose columns are the
sweep's objective, its test metrics and its swept parameters. The view is MLflow's own "share view": an experiment
tag `mlflow.sharedViewState.<key>` holding the view as JSON, opened by `?viewStateShareKey=<key>`. Against a
tracking server (MLFLOW_TRACKING_URI=http://...) it starts nothing and prints the link on that server.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.errors import ConfigError

VIEW_KEY = "pipeline"  # one saved view per experiment, rewritten each time: the printed link stays the same
SHARED_VIEW_TAG = "mlflow.sharedViewState."


def column(kind: str, name: str) -> str:
    """A runs-table column as the UI names it: attributes.`Duration`, metrics.`val/acc_best`, params.`optimizer.lr`."""
    return f"{kind}.`{name}`"


def newest_runs(client, run_id: str | None):
    """The runs to show: those of sweep `run_id` (or the single run `run_id`), else the newest sweep's, else the
    newest run's. Returns (experiment id, the sweep's parent run or None, the runs)."""
    from mlflow.exceptions import MlflowException

    from pipeline.report import latest_sweep
    from pipeline.search.parent_records import children_of

    if run_id is None:
        try:
            run_id = latest_sweep(client)
        except ConfigError:
            experiments = [experiment.experiment_id for experiment in client.search_experiments()]
            newest = client.search_runs(experiments, order_by=["attributes.start_time DESC"],
                                        max_results=1) if experiments else []
            if not newest:
                raise ConfigError(f"no runs in {client.tracking_uri} yet: train one first (python run.py), or give "
                                  "the tracking URI of the store to show (--tracking-uri)") from None
            run_id = newest[0].info.run_id
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"no run {run_id} in {client.tracking_uri}") from None
    children = children_of(client, run_id)
    return run.info.experiment_id, run if children else None, children or [run]


def columns(client, parent, runs) -> list[str]:
    """What a user compares: the objective(s) the sweep ranked by, the test metrics, the swept parameters. The
    sweep's own row (its children fold under it) shows its best child's objective: best/<objective>."""
    from pipeline.search.report import collect, grid_objective

    best = []
    if parent is not None:
        report = collect(client, parent.info.run_id, runs)  # a parent's runs are its children (newest_runs)
        objectives = [metric for metric, _ in report.objectives]
        swept = list(dict.fromkeys(key for trial in report.trials for key in trial.params))
        best = [f"best/{name}" for name in objectives if f"best/{name}" in parent.data.metrics]
    else:
        objectives, swept = [grid_objective(runs)[0]], []
    tests = sorted({key for run in runs for key in run.data.metrics if key.startswith("test/")} - set(objectives))
    logged = {key for run in runs for key in run.data.params}
    return ([column("attributes", "Duration"), column("attributes", "Models")]
            + [column("metrics", name) for name in best + objectives + tests]
            + [column("params", key) for key in swept if key in logged])


def save_view(client, experiment_id: str, selected: list[str]) -> str:
    """Store the runs-table view on the experiment, where the UI's share links look for it; return its key."""
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + VIEW_KEY, json.dumps({"selectedColumns": selected}))
    return VIEW_KEY


def runs_link(url: str, experiment_id: str, key: str) -> str:
    return f"{url.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={key}"


def serve(tracking_uri: str, host: str, port: int, log: Path) -> tuple[subprocess.Popen, str]:
    """Start `mlflow server` on the store (its own process group, so that stopping it stops its workers); return it
    and its URL once it answers."""
    from pipeline.server import LEAN, free_port, wait_until_it_answers

    port = port or free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
               "--host", host, "--port", str(port), "--workers", "1"]
    with open(log, "ab") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, **LEAN})
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    try:
        wait_until_it_answers(server, url, log, timeout=120.0)
    except BaseException:
        stop(server)
        raise
    return server, url


def stop(server: subprocess.Popen) -> None:
    from pipeline.server import end_process_group

    end_process_group(server.pid)
    server.wait()


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    from pipeline.predict import tracking_uri

    parser = argparse.ArgumentParser(prog="python -m pipeline.ui", description=__doc__.split("\n")[0])
    parser.add_argument("run_id", nargs="?", metavar="RUN_ID", help="a sweep's parent or a run (default: the newest "
                                                                    "sweep, else the newest run)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI or ./mlflow.db)")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines (default: loopback)")
    parser.add_argument("--port", type=int, default=5000, help="0: any free port (default: 5000)")
    args = parser.parse_args(argv)
    for stop_signal in (signal.SIGTERM, signal.SIGINT):  # SIGINT too: a shell ignores it in background jobs
        signal.signal(stop_signal, _raise_keyboard_interrupt)
    server, log, keep_log = None, Path(tempfile.mkstemp(prefix="mlflow-ui-", suffix=".log")[1]), False
    try:
        from pipeline import tracking
        from pipeline.store import ensure_store

        uri = tracking_uri(args.tracking_uri)
        ensure_store(uri)
        client = tracking.client(uri)
        experiment_id, parent, runs = newest_runs(client, args.run_id)
        key = save_view(client, experiment_id, columns(client, parent, runs))
        if uri.startswith(("http://", "https://")):
            url = uri
        else:
            server, url = serve(uri, args.host, args.port, log)
        what = f"sweep {parent.info.run_name!r}" if parent is not None else f"run {runs[0].info.run_name!r}"
        print(f"the runs of {what}, with its metrics as columns:\n  {runs_link(url, experiment_id, key)}\n"
              f"every experiment: {url}/#/experiments", flush=True)
        if server is None:
            return 0
        print("stop the dashboard with Ctrl-C", flush=True)
        server.wait()
        return 0 if server.returncode in (0, -signal.SIGTERM) else 1
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        keep_log = "server" in str(error)  # a server that did not start: its log, named in the error
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        if server is not None:
            stop(server)
        if not keep_log:
            log.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
