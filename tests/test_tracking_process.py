"""MLflow in a second process (remote_tracking.py, tracking_worker.py): the trainer never imports MLflow, its run
is recorded whole, an error nobody waited for still fails the run, and either process dying is said in one line
or one tag (the trainer dying: tests/test_resume.py)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, all_runs, run_py_reporting_at_exit


def test_the_trainer_never_imports_mlflow_and_its_run_is_recorded_whole(tmp_path, tracking_uri):
    (mlflow_imported,) = run_py_reporting_at_exit(tmp_path, "'mlflow' in sys.modules", "trainer.max_epochs=2")
    assert mlflow_imported == "False"
    client, (run,) = all_runs(tracking_uri)
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 2
    assert {"test/acc", "model/params", "model/latency_ms"} <= set(run.data.metrics)
    assert run.data.params["trainer.max_epochs"] == "2"
    logged = {artifact.path for folder in ("", "plots", "model") for artifact in client.list_artifacts(run.info.run_id,
                                                                                                         folder)}
    assert {"config", "plots/confusion_matrix.png", "data"} <= logged
    assert any(path.startswith("model/") for path in logged)


def test_an_error_nobody_waited_for_fails_the_run_at_its_end(tracking_uri):
    from pipeline import liveness, remote_tracking

    worker = remote_tracking.TrackingProcess()
    try:
        run_id = worker.call("start_run", tracking_uri, "held errors", "one run", liveness.process_tags(), None)
        run = remote_tracking.TrackedRun(worker, run_id, tracking_uri)
        run.log_metrics({"loss": 0.5})
        worker.send("log_text", 123, "notes.txt")  # not text: fails in the worker, and nobody waits for it
        with pytest.raises(TypeError):
            run.end("FINISHED")
    finally:
        worker.close()
    client, (recorded,) = all_runs(tracking_uri)
    assert recorded.info.status == "FAILED"
    assert "TypeError" in recorded.data.tags["pipeline.error"]
    assert [m.value for m in client.get_metric_history(recorded.info.run_id, "loss")] == [0.5]


def test_a_command_the_tracking_process_cannot_rebuild_fails_the_run_and_says_why(tmp_path, tracking_uri, monkeypatch):
    """An object of a class only the trainer can import arrives whole but cannot be unpickled there: the run is not
    labelled KILLED (its trainer is alive) but FAILED with the reason, and the trainer's call fails in one line."""
    from pipeline import liveness, remote_tracking
    from pipeline.errors import TrainingError

    (tmp_path / "only_here.py").write_text("class Setting:\n    def __str__(self):\n        return 'a setting'\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # this process's path only: the tracking process does not have it
    from only_here import Setting

    worker = remote_tracking.TrackingProcess()
    try:
        run_id = worker.call("start_run", tracking_uri, "unreadable", "one run", liveness.process_tags(), None)
        with pytest.raises(TrainingError, match=r"the MLflow tracking process \(pid \d+\) ended unexpectedly"):
            worker.call("log_params", {"setting": Setting()})
    finally:
        worker.close()
    _, (recorded,) = all_runs(tracking_uri)
    assert recorded.info.run_id == run_id and recorded.info.status == "FAILED"
    assert "could not read a command" in recorded.data.tags[liveness.ERROR]
    assert "only_here" in recorded.data.tags[liveness.ERROR]  # No module named 'only_here'


def tracking_worker_of(pid: int) -> int | None:
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        if "pipeline.tracking_worker" in Path(f"/proc/{child}/cmdline").read_text():
            return int(child)
    return None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the worker through /proc")
def test_a_tracking_process_that_dies_fails_the_run_in_one_line(tmp_path, tracking_uri):
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "trainer.max_epochs=10000",
                                f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while (worker := tracking_worker_of(process.pid)) is None or not any(run.info.status == "RUNNING" for run in
                                                                               all_runs(tracking_uri)[1]):
            assert process.poll() is None and time.time() < deadline, process.communicate()[1][-3000:]
            time.sleep(0.1)
        os.kill(worker, signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith(f"error: the MLflow tracking process (pid {worker}) ended "
                                                      "unexpectedly"), stderr[-3000:]


# A trainer that starts a run and then writes metrics as fast as its tracking process takes them: it is nearly always
# waiting for an answer, so a kill lands while the tracking process is writing one it can no longer deliver.
BUSY_TRAINER = """
import sys
from pipeline import liveness, remote_tracking
tracking = remote_tracking.TrackingProcess()
run_id = tracking.call("start_run", sys.argv[1], "busy", "busy", liveness.process_tags(), None)
print(run_id, flush=True)
step = 0
while True:
    step += 1
    tracking.call("log_metrics", {"loss": 1.0 / step}, step, 0)
"""


def test_a_trainer_killed_while_it_waits_for_an_answer_has_its_run_marked_killed(tmp_path, tracking_uri):
    from pipeline import liveness

    trainer = subprocess.Popen([sys.executable, "-c", BUSY_TRAINER, tracking_uri], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    run_id = trainer.stdout.readline().strip()
    client, _ = all_runs(tracking_uri)
    deadline = time.time() + 60
    while len(client.get_metric_history(run_id, "loss")) < 20:
        assert trainer.poll() is None and time.time() < deadline, trainer.communicate()[1][-3000:]
        time.sleep(0.05)
    trainer.kill()
    _, stderr = trainer.communicate(timeout=60)  # its tracking process holds stderr too: this waits for both
    run = client.get_run(run_id)
    assert run.info.status == "KILLED", stderr[-3000:]
    assert "ended without a word" in run.data.tags[liveness.ERROR]
    assert "Traceback" not in stderr, stderr[-3000:]


@pytest.mark.parametrize("arguments, rank, starts", [
    (["trainer.max_epochs=2"], "0", True),
    (["-m", "optimizer.lr=0.1,0.2"], "0", False),  # a sweep: its jobs may track in other processes
    (["--cfg", "job"], "0", False),
    (["--help"], "0", False),
    (["logger=csv"], "0", False),
    (["trainer.max_epochs=2"], "1", False),  # a data-parallel run's other processes never track
])
def test_run_py_starts_its_tracking_process_before_hydra_only_for_a_tracked_run(monkeypatch, arguments, rank, starts):
    from pipeline import remote_tracking

    monkeypatch.setattr(remote_tracking, "_process", None)
    monkeypatch.setenv("LOCAL_RANK", rank)
    remote_tracking.start_early(arguments)
    started = remote_tracking._process
    try:
        assert (started is not None) == starts
        if started is not None:  # it imports MLflow at once, before any store is named
            assert started.call("import_mlflow") is None and started.alive()
    finally:
        if started is not None:
            started.close()
