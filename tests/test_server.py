"""A group's tracking server: PostgreSQL + `mlflow server` with basic authentication, started and stopped by
`python -m pipeline.server` on loopback, with a real joblib sweep tracked through it."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT
from pipeline.errors import ConfigError

USER, PASSWORD = "lab-lead", "a-long-enough-password"


def server_command(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": PASSWORD}
    return subprocess.run([sys.executable, "-m", "pipeline.server", *args], env=env, capture_output=True, text=True,
                          timeout=180)


@pytest.fixture
def server():
    """A server with authentication on any free port, stopped at the end whatever happens; its folder is one the
    `postgres` user can enter (as root, PostgreSQL runs as that user, and pytest's own temporary folders are
    private). One test uses it from start to stop: a second server would cost ~10 s more."""
    folder = Path(tempfile.mkdtemp(prefix="pipeline-server-", dir="/tmp"))
    folder.chmod(0o755)
    started = server_command("start", str(folder / "lab"), "--port", "0", "--auth")
    assert started.returncode == 0, started.stderr
    state = json.loads((folder / "lab" / "server.json").read_text())
    try:
        yield {"folder": folder / "lab", **state}
    finally:
        server_command("stop", str(folder / "lab"))
        shutil.rmtree(folder, ignore_errors=True)


def status_of(url: str, credentials: tuple[str, str] | None) -> int:
    import base64

    request = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/search?max_results=5")
    if credentials:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(credentials).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_a_group_server_refuses_strangers_tracks_a_sweep_whole_and_stops_clean(server, tmp_path, monkeypatch):
    refuses_without_credentials(server, monkeypatch)
    tracks_a_joblib_sweep_whole(server, tmp_path, monkeypatch)
    stops_leaving_nothing_running(server)


def refuses_without_credentials(server, monkeypatch):
    from pipeline import store

    assert status_of(server["url"], None) == 401
    assert status_of(server["url"], (USER, "wrong-password-here")) == 401
    assert status_of(server["url"], (USER, PASSWORD)) == 200
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="asks for credentials: set MLFLOW_TRACKING_USERNAME"):
        store.check_server(server["url"])
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password-here")
    with pytest.raises(ConfigError, match=f"refused the credentials of MLFLOW_TRACKING_USERNAME={USER}"):
        store.check_server(server["url"])


def test_a_run_against_a_server_that_is_not_there_is_one_line(tmp_path):
    from pipeline import store
    from pipeline.server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConfigError, match="no MLflow server answers at .*python -m pipeline.server start"):
        store.check_server(url)
    # the same from run.py, whose tracking process finds it out while the trainer imports torch
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "logger=mlflow_server",
                             f"logger.tracking_uri={url}", f"hydra.run.dir={tmp_path}/run"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: no MLflow server answers at {url}"), line


def tracks_a_joblib_sweep_whole(server, tmp_path, monkeypatch):
    """No run, metric or artifact lost; the model loads through the server; the runs are rows in PostgreSQL."""
    import mlflow
    import psycopg2
    import torch

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server["url"])
    swept = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "-m", "logger=mlflow_server", "hydra/launcher=joblib",
         "optimizer.lr=0.01,0.03", "seed=1,2", "trainer.max_epochs=2", "experiment_name=server_sweep",
         f"hydra.sweep.dir={tmp_path}/sweep"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert swept.returncode == 0, swept.stderr[-3000:]

    mlflow.set_tracking_uri(server["url"])
    client = mlflow.MlflowClient(server["url"])
    experiment = client.get_experiment_by_name("server_sweep")
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 4 and len(runs) == 5
    assert {run.info.status for run in runs} == {"FINISHED"}
    for child in children:
        assert len(client.get_metric_history(child.info.run_id, "val/acc")) == 2  # one per epoch
        assert 0.0 <= child.data.metrics["test/acc"] <= 1.0
        logged = {item.path for folder in ("config", "plots", "data")
                  for item in client.list_artifacts(child.info.run_id, folder)}
        assert {"config/config.yaml", "data/description.json", "plots/confusion_matrix.png"} <= logged
    # The server proxies artifacts: the files are in its folder, not the client's.
    assert list((server["folder"] / "artifacts").rglob("confusion_matrix.png"))
    assert not (tmp_path / "mlruns").exists()

    model = mlflow.pytorch.load_model(f"runs:/{children[0].info.run_id}/model")
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)  # a digits classifier

    with psycopg2.connect(f"postgresql://postgres@127.0.0.1:{server['database_port']}/mlflow") as database:
        with database.cursor() as cursor:
            cursor.execute("SELECT run_uuid FROM runs WHERE experiment_id = %s", (int(experiment.experiment_id),))
            assert {row[0] for row in cursor.fetchall()} == {run.info.run_id for run in runs}
            cursor.execute("SELECT count(*) FROM metrics WHERE run_uuid = %s AND key = 'val/acc'",
                           (children[0].info.run_id,))
            assert cursor.fetchone()[0] == 2


def stops_leaving_nothing_running(server):
    from pipeline import store
    from pipeline.server import group_alive

    stopped = server_command("stop", str(server["folder"]))
    assert stopped.returncode == 0, stopped.stderr
    assert not group_alive(server["pid"])
    assert not (server["folder"] / "postgres" / "postmaster.pid").exists()
    with pytest.raises(ConfigError, match="no MLflow server answers"):
        store.check_server(server["url"])
