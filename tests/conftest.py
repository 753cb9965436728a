"""Shared helpers: compose the real conf/ with Hydra, run the real run.py, read the real MLflow store."""
import functools
import http.server
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# The suite's workers share the cores: each worker, and every process it starts (run.py, DVC stages), gets its share
# of threads. Two workers on two cores with two threads each ran the DVC tests a fifth slower.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // WORKERS))


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch) -> str:
    """A fresh SQLite MLflow store per test, set the way a user would: MLFLOW_TRACKING_URI."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # An earlier test in this process may have set MLflow's global URI, which outranks the variable.
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture
def compose_config(tmp_path, tracking_uri):
    """compose_config("model=linear", ...) -> the composed config, outputs under tmp_path."""

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("config", overrides=[f"paths.output_dir={tmp_path}/out", *overrides])

    return _compose


@pytest.fixture
def run_py(tmp_path, tracking_uri):
    """run_py("model=linear", ...) runs `python run.py ...` as a user would, in tmp_path, and returns the result."""

    def _run(*args: str, timeout: float = 300, env: dict | None = None, **popen) -> subprocess.CompletedProcess:
        command = [sys.executable, str(ROOT / "run.py"), *args,
                   f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep"]
        full_env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, **(env or {})}
        return subprocess.run(command, cwd=tmp_path, env=full_env, capture_output=True, text=True,
                              timeout=timeout, **popen)

    return _run


def run_python(code: str, cwd=None) -> list[str]:
    """`code` (dedented) run by this interpreter in a fresh process, which must succeed: its printed words. For
    what a process changes for good (the garbage collector, loky's start method) or must start without."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()


def run_py_reporting_at_exit(tmp_path, report: str, *arguments: str) -> list[str]:
    """The whole run.py (with `arguments`) in a fresh process, watched from inside: `report`, an expression, is
    evaluated as the process exits (atexit, after the run) and its printed words returned. For what a run leaves
    behind in its process (the collector's state, the modules it imported)."""
    watcher = tmp_path / "watch.py"
    watcher.write_text(textwrap.dedent(f"""
        import atexit, gc, runpy, sys

        atexit.register(lambda: print("report:", {report}, file=sys.stderr))
        sys.argv = [{str(ROOT / 'run.py')!r}, *sys.argv[1:]]
        runpy.run_path(sys.argv[0], run_name="__main__")
    """))
    done = subprocess.run([sys.executable, str(watcher), *arguments, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return next(line for line in done.stderr.splitlines() if line.startswith("report:")).split()[1:]


def all_runs(tracking_uri: str):
    """The store's client and every run in it. The store is opened as the pipeline opens it (a client alone would
    create a new store's tables in place, which a run starting at the same moment would find half made)."""
    import mlflow

    from pipeline.store import ensure_store

    ensure_store(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(experiments) if experiments else []


def epochs_logged(db: Path, key: str) -> int:
    """How many values of metric `key` the running run has logged, read straight from the SQLite file (cheap enough
    to poll while a run trains): its epochs so far, for a metric logged once per epoch."""
    import sqlite3

    try:
        with sqlite3.connect(db) as connection:
            return connection.execute("SELECT count(*) FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid "
                                      "WHERE m.key = ? AND r.status = 'RUNNING'", (key,)).fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def finished_two_rate_sweep(tracking_uri: str):
    """(parent, children) of a finished `-m optimizer.lr=0.01,0.03` sweep, checked: one parent, one finished child
    per rate and nothing else (what every launcher's sweep must leave)."""
    _, runs = all_runs(tracking_uri)
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and len(runs) == 3
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert {child.data.params["optimizer.lr"] for child in children} == {"0.01", "0.03"}
    return parent, children


@pytest.fixture
def http_folder(tmp_path):
    """A real HTTP server on localhost that serves tmp_path/served (stands in for the dataset's mirror)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def running_commands(*containing: str) -> list[str]:
    """Command lines of the running processes that contain any of `containing`: what a test's servers left behind."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # it ended while we looked
            continue
        if any(text in command for text in containing):
            found.append(command)
    return found
