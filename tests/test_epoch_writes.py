"""One MLflow write per epoch (mlflow_logger.EpochWrites): validation's and training's metrics of an epoch written
together, and what a checkpoint was saved before writing written by the fit that resumes from it."""
import sqlite3
import threading
import time
from collections import defaultdict

import pytorch_lightning as pl
import torch

from conftest import all_runs


def test_an_epochs_metrics_are_written_in_one_batch(run_py, tracking_uri):
    result = run_py("trainer.max_epochs=3")
    assert result.returncode == 0, result.stderr[-3000:]
    client, (run,) = all_runs(tracking_uri)
    writes = defaultdict(set)  # step -> the timestamps of the writes at that step
    for key in run.data.metrics:
        if key.startswith(("train/", "val/")) or key == "epoch":
            for metric in client.get_metric_history(run.info.run_id, key):
                writes[metric.step].add(metric.timestamp)
    epoch_steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/acc"))
    assert len(epoch_steps) == 3
    assert all(len(writes[step]) == 1 for step in epoch_steps), dict(writes)
    # Lightning adds `epoch` to each of the two calls: written once a step, as one write does
    epochs = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "epoch")]
    assert [value for step, value in epochs if step in epoch_steps] == [0.0, 1.0, 2.0]


def fit(cfg, tracking_uri: str, resume_from=None, callbacks=()) -> str:
    """The pipeline's own trainer for `cfg` (and `callbacks`), tracked through a real tracking process into a new run;
    its id."""
    from pipeline import liveness, remote_tracking
    from pipeline.train import build_data, build_task, build_trainer, start

    worker = remote_tracking.TrackingProcess()
    try:
        run_id = worker.call("start_run", tracking_uri, "epoch writes", "a run", liveness.process_tags(), None)
        run = remote_tracking.TrackedRun(worker, run_id, tracking_uri)
        start(cfg)
        datamodule = build_data(cfg)
        task = build_task(cfg, datamodule)
        build_trainer(cfg, run, callbacks=callbacks).fit(task, datamodule=datamodule, ckpt_path=resume_from)
        run.end("FINISHED")
    finally:
        worker.close()
    return run_id


def test_a_fit_resumed_from_a_checkpoint_writes_what_it_held_first(compose_config, tmp_path, tracking_uri):
    """A run killed between a checkpoint and the write of its epoch: the checkpoint has the validation metrics, and a
    fit resumed from it, here into a new run as the killed run's store never saw them, writes them."""
    first = fit(compose_config("trainer.max_epochs=2", "callbacks=none"), tracking_uri)
    last = tmp_path / "out" / "checkpoints" / "last.ckpt"
    (held,) = [state["held"] for key, state in torch.load(last, weights_only=True)["callbacks"].items()
               if key.startswith("EpochWrites")]
    assert held["metrics"].keys() >= {"val/acc", "val/loss"} and not any(k.startswith("train/") for k in held["metrics"])

    last.rename(tmp_path / "epoch_2.ckpt")
    resumed = fit(compose_config("trainer.max_epochs=3", "callbacks=none"), tracking_uri,
                  resume_from=tmp_path / "epoch_2.ckpt")
    client, _ = all_runs(tracking_uri)
    history = {run_id: [(m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, "val/acc")]
               for run_id in (first, resumed)}
    assert history[resumed][0] == history[first][-1]  # the held write: same step, value and time
    assert len(history[resumed]) == 2 and history[resumed][1][0] > history[first][-1][0]


def test_a_held_write_the_store_already_has_is_not_recorded_twice(compose_config, tmp_path, tracking_uri):
    from pipeline import liveness, remote_tracking
    from pipeline.mlflow_logger import EpochWrites, MLFlowLogger

    worker = remote_tracking.TrackingProcess()
    try:
        run_id = worker.call("start_run", tracking_uri, "epoch writes", "a run", liveness.process_tags(), None)
        run = remote_tracking.TrackedRun(worker, run_id, tracking_uri)
        logger = MLFlowLogger(tracking_uri, "epoch writes", run)
        logger.log_metrics({"val/acc": 0.5}, step=9)
        saved = EpochWrites(logger).state_dict()  # a checkpoint's
        logger.flush()  # the write happened before the kill after all
        resumed = EpochWrites(logger)
        resumed.load_state_dict(saved)
        resumed.on_train_start(None, None)
        logger.log_metrics({"val/acc": 0.6}, step=19)
        logger.finalize("success")
        run.end("FINISHED")
    finally:
        worker.close()
    client, _ = all_runs(tracking_uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val/acc")] == [(9, 0.5), (19, 0.6)]


class HoldTheStore(pl.Callback):
    """Locks the SQLite store for `seconds` from the first epoch's end, before its metrics are sent (at the second
    epoch's start): the tracking process's write of them waits that long. Notes when the second epoch's checkpoint is
    saved."""

    def __init__(self, database, seconds: float):
        self.database, self.seconds = database, seconds
        self.released_at = self.saved_at = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch != 0:
            return
        lock = sqlite3.connect(self.database, check_same_thread=False, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")

        def release():
            self.released_at = time.time()
            lock.execute("ROLLBACK")
            lock.close()

        threading.Timer(self.seconds, release).start()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.current_epoch == 1 and self.saved_at is None:
            self.saved_at = time.time()


def test_a_checkpoint_is_saved_only_once_the_epochs_before_it_are_written(compose_config, tmp_path, tracking_uri):
    hold = HoldTheStore(tmp_path / "mlflow.db", seconds=2.0)
    run_id = fit(compose_config("trainer.max_epochs=2", "callbacks=none"), tracking_uri, callbacks=[hold])
    assert hold.released_at is not None and hold.saved_at >= hold.released_at  # an epoch here takes ~0.05 s
    client, _ = all_runs(tracking_uri)
    assert len(client.get_metric_history(run_id, "val/acc")) == 2
