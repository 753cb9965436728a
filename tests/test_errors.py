"""Bad input: one clear line (key, value, what is allowed), a non-zero exit, and no MLflow run left RUNNING."""
import os
import signal
import subprocess
import sys
import time

import pytest
import pytorch_lightning as pl
import torch

from conftest import ROOT, all_runs

BAD_INPUT = [
    # (arguments, words the one line must contain): each kind of mistake once through the whole command
    (["model=transformer"], ["model=transformer", "linear", "mlp"]),
    (["model.depth=3"], ["model.depth=3", "unknown key"]),
    (["optimizer.lr=-0.1"], ["optimizer.lr=-0.1", "> 0"]),
    (["model.input_shape=[5]"], ["MLP", "digits", "[1, 8, 8]"]),  # a model that can't take the data's shape
    (["data=xor", "data.input_shape=[3]"], ["data.input_shape=[3]", "[2]"]),  # found when the data is loaded
    (["-m", "optimizer.lr=0.1,-1"], ["sweep job 1", "optimizer.lr=-1", "> 0", "nothing was run"]),  # sweeps too
    (["--cfg", "job", "-m", "optimizer.lr=0.1,1"], ["Only one of --run, --multirun", "leave out -m"]),  # Hydra's
]
# More values outside their rules: the same checks (checks.check_job) and the same one-line message (cli.describe)
# as the command's, without a process each.
BAD_VALUES = [
    (["regularization.dropout=1.0"], ["regularization.dropout=1.0", "[0, 1)"]),
    (["regularization.dropout=-0.2"], ["regularization.dropout=-0.2", "[0, 1)"]),
    (["model.hidden=[64,0]"], ["model.hidden=[64, 0]", ">= 1"]),
    (["model.activation=swish"], ["model.activation='swish'", "relu", "gelu"]),
    (["trainer.max_epochs=0"], ["trainer.max_epochs=0", ">= 1"]),
    (["data.batch_size=0"], ["data.batch_size=0", ">= 1"]),
]


@pytest.mark.parametrize("args,words", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_clear_line(run_py, tracking_uri, args, words):
    result = run_py(*args, timeout=120)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[-1], lines[-1]
    _, runs = all_runs(tracking_uri)
    assert not [r for r in runs if r.info.status == "RUNNING"]


@pytest.mark.parametrize("args,words", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_values_are_refused_with_one_line_naming_them(compose_config, args, words):
    from pipeline.checks import check_job
    from pipeline.cli import describe

    with pytest.raises(Exception) as refused:
        check_job(compose_config(*args))
    message = describe(refused.value)
    assert message is not None and "\n" not in message, refused.value
    for word in words:
        assert word in message, message


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


STOPS = {  # (arguments, signal, to the whole process group as a terminal's Ctrl-C does)
    "run-ctrl-c": ([], signal.SIGINT, True),
    "run-sigterm": ([], signal.SIGTERM, False),  # (SIGTERM takes the same way out of a joblib sweep: not repeated)
    "sweep-ctrl-c": (["-m", "optimizer=sgd,adam"], signal.SIGINT, True),
    "joblib-sweep-ctrl-c": (["-m", "optimizer=sgd,adam", "hydra/launcher=joblib"], signal.SIGINT, True),
}


@pytest.mark.parametrize("stop", STOPS)
def test_ctrl_c_or_sigterm_marks_every_run_killed_without_a_traceback(tmp_path, tracking_uri, stop):
    args, how, whole_group = STOPS[stop]
    command = [sys.executable, str(ROOT / "run.py"), *args, "trainer.max_epochs=10000",
               f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep"]
    all_runs(tracking_uri)  # the store exists before polling it
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=interruptible, start_new_session=True)
    parallel = "hydra/launcher=joblib" in args
    try:
        wait_for_running(tracking_uri, 2 if parallel else 1, process)
        if whole_group:
            os.killpg(process.pid, how)
        else:
            process.send_signal(how)
        _, stderr = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0
    assert "Traceback" not in stderr, stderr[-3000:]
    _, runs = all_runs(tracking_uri)
    # a sweep: its parent and the running children (one at a time, or two in parallel)
    assert len(runs) == (1 if not args else 3 if parallel else 2), stderr[-3000:]
    assert {r.info.status for r in runs} == {"KILLED"}, ([(r.info.run_name, r.info.status) for r in runs],
                                                         stderr[-3000:])
    assert all("stopped" in r.data.tags["pipeline.error"] for r in runs)


def test_divergence_stops_the_run_at_once_with_one_line(run_py, tracking_uri):
    result = run_py("optimizer=sgd", "optimizer.lr=1e6")
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: training diverged at epoch 0, step "), line
    assert "is nan" in line or "is inf" in line
    assert "lower optimizer.lr or clip gradients" in line
    client, (run,) = all_runs(tracking_uri)
    assert run.info.status == "FAILED" and run.data.tags["pipeline.error"] == line.removeprefix("error: ")
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 0  # stopped inside the first epoch


class FlatAtZero(pl.LightningModule):
    """loss = sqrt(|w|) at w = 0: the loss is 0, its gradient is not finite (what a NaN loss test never reaches)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return torch.sqrt(self.w.abs()).sum() + 0 * batch.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(4, 1), batch_size=1)


def quiet_trainer(**settings) -> pl.Trainer:
    from pipeline.divergence import StopOnDivergence

    return pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", callbacks=[StopOnDivergence()], **settings)


def test_a_gradient_that_is_not_finite_stops_the_run_though_its_loss_is_finite():
    from pipeline.divergence import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="at epoch 0, step 0: a gradient is NaN or infinite"):
        quiet_trainer().fit(FlatAtZero())


def test_under_a_gradient_scaler_a_gradient_that_is_not_finite_is_the_scalers_to_skip():
    """16-mixed on a GPU: the scaler meets infinite gradients by design (it skips the step and lowers its scale)."""
    from pytorch_lightning.plugins.precision import MixedPrecision

    model, scaler = FlatAtZero(), torch.amp.GradScaler("cpu", init_scale=2.0**16)
    quiet_trainer(plugins=[MixedPrecision("16-mixed", "cpu", scaler)]).fit(model)
    assert float(model.w) == 0.0  # every step skipped
    assert scaler.get_scale() < 2.0**16
