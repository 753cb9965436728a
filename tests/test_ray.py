"""A sweep's jobs on a Ray cluster: a real head node on 127.0.0.1 with 2 CPUs, joined by hydra/launcher=ray_cluster;
the jobs run in Ray's worker processes and land as children of the sweep's one MLflow parent run."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import finished_two_rate_sweep, running_commands
from pipeline.server import free_port

RAY = str(Path(sys.executable).with_name("ray"))
QUIET = {"RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture
def ray_head():
    """A Ray head on loopback, stopped (with every Ray process it started) at the end."""
    port = free_port()
    env = {**os.environ, **QUIET}
    started = subprocess.run([RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                              "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
                             env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def ray_processes() -> list[str]:
    return running_commands("raylet", "gcs_server")


def test_a_sweep_runs_its_jobs_on_a_ray_cluster_under_one_parent(ray_head, run_py, tracking_uri):
    swept = run_py("-m", "hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address={ray_head}",
                   "optimizer.lr=0.01,0.03", "trainer.max_epochs=1", env=QUIET, timeout=600)
    assert swept.returncode == 0, swept.stderr[-3000:]

    parent, children = finished_two_rate_sweep(tracking_uri)
    # The jobs ran in Ray's worker processes, not in the sweeping process (as the basic launcher's would).
    assert parent.data.tags["pipeline.pid"] not in {child.data.tags["pipeline.pid"] for child in children}

    assert ray_processes()  # the head still runs; `ray stop` leaves nothing behind
    subprocess.run([RAY, "stop", "--force"], env={**os.environ, **QUIET}, capture_output=True, timeout=120)
    assert not ray_processes()
