"""Bad input: one clear line (key, value, what is allowed), a non-zero exit, and no MLflow run left RUNNING."""
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, all_runs

BAD_INPUT = [
    # (arguments, words the one line must contain)
    (["model=transformer"], ["model=transformer", "linear", "mlp"]),
    (["model.depth=3"], ["model.depth=3", "unknown key"]),
    (["optimizer.lr=-0.1"], ["optimizer.lr=-0.1", "> 0"]),
    (["regularization.dropout=1.0"], ["regularization.dropout=1.0", "[0, 1)"]),
    (["regularization.dropout=-0.2"], ["regularization.dropout=-0.2", "[0, 1)"]),
    (["model.hidden=[64,0]"], ["model.hidden=[64, 0]", ">= 1"]),
    (["model.activation=swish"], ["model.activation='swish'", "relu", "gelu"]),
    (["trainer.max_epochs=0"], ["trainer.max_epochs=0", ">= 1"]),
    (["data.batch_size=0"], ["data.batch_size=0", ">= 1"]),
    (["model.input_shape=[5]"], ["MLP", "digits", "[1, 8, 8]"]),  # a model that can't take the data's shape
    (["data=xor", "data.input_shape=[3]"], ["data.input_shape=[3]", "[2]"]),
    (["-m", "optimizer.lr=0.1,-1"], ["optimizer.lr=-1", "> 0"]),  # inside a sweep too
]


@pytest.mark.parametrize("args,words", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_clear_line(run_py, tracking_uri, args, words):
    result = run_py(*args, timeout=120)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    if "-m" not in args:  # a sweep's earlier, good jobs print their own progress first
        assert len(lines) == 1, result.stderr
    assert [line for line in lines if line.startswith("error")] == lines[-1:], result.stderr
    for word in words:
        assert word in lines[-1], lines[-1]
    _, runs = all_runs(tracking_uri)
    assert not [r for r in runs if r.info.status == "RUNNING"]


def test_failure_inside_a_run_marks_it_failed(run_py, tracking_uri):
    # Lightning rejects a negative batch limit when the trainer is built, after the MLflow run started.
    result = run_py("+trainer.limit_train_batches=-3", timeout=120)
    assert result.returncode != 0
    _, runs = all_runs(tracking_uri)
    assert [r.info.status for r in runs] == ["FAILED"]


def interruptible() -> None:
    """In the child before exec: Ctrl-C's default action. A test run started in the background (`cmd &` in a
    non-interactive shell) ignores SIGINT, and an ignored SIGINT is inherited: Python would never raise
    KeyboardInterrupt, and the run under test would train on."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_running(tracking_uri: str, count: int, process, limit: float = 90):
    deadline = time.time() + limit
    while time.time() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        _, runs = all_runs(tracking_uri)
        # running, and inside the training loop (an epoch has been logged)
        if len([r for r in runs if r.info.status == "RUNNING" and "train/loss" in r.data.metrics]) >= count:
            return
        time.sleep(0.5)
    raise AssertionError("no run started")


@pytest.mark.parametrize("sweep", [False, True], ids=["run", "sweep"])
def test_ctrl_c_marks_runs_killed(tmp_path, tracking_uri, sweep):
    args = ["-m", "optimizer=sgd,adam"] if sweep else []
    command = [sys.executable, str(ROOT / "run.py"), *args, "trainer.max_epochs=10000",
               f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep"]
    all_runs(tracking_uri)  # create the store first: two processes migrating a new SQLite file at once collide
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=interruptible)
    try:
        wait_for_running(tracking_uri, 1, process)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=90)
    finally:
        process.kill()
    assert process.returncode != 0
    _, runs = all_runs(tracking_uri)
    assert len(runs) == (2 if sweep else 1), stderr[-3000:]  # a sweep: its parent and the running child
    assert {r.info.status for r in runs} == {"KILLED"}, (
        [(r.info.run_name, r.info.status) for r in runs], stderr[-3000:])
