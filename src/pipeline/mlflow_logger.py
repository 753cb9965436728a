"""Lightning's logger interface for the run that tracking.experiment_run opened: metrics go to the run's tracking
process (remote_tracking.py) without waiting, so MLflow is never imported in the trainer's process. Unlike
Lightning's MLFlowLogger it neither starts nor ends the run: its status belongs to the pipeline, which knows
whether the run was stopped (KILLED), failed, or is to be resumed.

An epoch's metrics reach it twice at one step, validation's then training's, with the checkpoints between: it holds
them and sends them in one batch when the next epoch starts (EpochWrites), which halves the store's work per epoch
(SQLite: ~10 ms of a ~50 ms epoch of the digits MLP where a sweep's job writes them itself), and the trainer waits for
that write only at the next checkpoint, by when the tracking process has long done it. What a checkpoint was saved
before writing it keeps, and a run resumed from it writes that first.
"""
import logging
import re
import time
from collections.abc import Mapping

from pytorch_lightning import Callback
from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities import rank_zero_only

from pipeline import remote_tracking
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)


class MLFlowLogger(Logger):
    def __init__(self, tracking_uri: str, experiment_name: str, run: remote_tracking.TrackedRun | None = None):
        super().__init__()
        if run is None:
            raise ConfigError("logger=mlflow writes to the run the pipeline opens (tracking.experiment_run); "
                              "build it with that run")
        self._experiment_name = experiment_name
        self._run = run
        self.held: dict | None = None  # metrics of one step not written yet: {"step", "timestamp_ms", "metrics"}

    @property
    def name(self) -> str:
        return self._experiment_name

    @property
    def version(self) -> str:
        return self._run.run_id

    @property
    def run_id(self) -> str:
        return self._run.run_id

    @property
    def experiment(self) -> remote_tracking.TrackedRun:
        return self._run

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        """Nothing: the run's params are its whole config, logged when the run starts."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Held until the step changes or a flush. MLflow allows letters, digits and `_ / . - ` and space in a metric's
        name; others are dropped, as Lightning's logger does."""
        kept = {}
        for key, value in metrics.items():
            if isinstance(value, str):
                log.warning("discarding metric %s: a string (%s)", key, value)
                continue
            kept[re.sub("[^a-zA-Z0-9_/. -]+", "", key)] = float(value)
        step = step or 0
        if self.held is not None and self.held["step"] != step:
            self.flush()
        if self.held is None:
            self.held = {"step": step, "timestamp_ms": int(time.time() * 1000), "metrics": {}}
        self.held["metrics"].update(kept)

    @rank_zero_only
    def flush(self) -> None:
        """Send what is held to be written (`written` waits for it)."""
        held, self.held = self.held, None
        if held:
            self._run.log_metrics(held["metrics"], held["step"], held["timestamp_ms"], wait=False)

    @rank_zero_only
    def written(self) -> None:
        """Wait until what was sent is written; raises what failed."""
        self._run.written()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """The end of a fit or test (Lightning calls it on success, failure and Ctrl-C): nothing stays held, all is
        written. After a failure, a write that fails too is only reported: the failure is the error to show."""
        try:
            self.flush()
            self.written()
        except Exception as also:
            if status == "success":
                raise
            log.warning("the last metrics of MLflow run %s could not be written: %s", self.run_id, also)


class EpochWrites(Callback):
    """When an MLFlowLogger writes: each epoch's metrics at the next epoch's start (the last epoch's, and a test's or
    validation's, when Lightning finalizes the logger at the end of each); every checkpoint waits until what was sent
    before it is written. A checkpoint keeps what is held when it is saved (that epoch's validation metrics); a fit
    resumed from it writes them first, so a run killed before the write still records them (MLflow skips them if the
    write happened after all: the same key, step, timestamp and value)."""

    def __init__(self, logger: MLFlowLogger):
        self.logger = logger
        self.restored: dict | None = None  # held when the checkpoint a fit resumes from was saved

    def on_train_start(self, trainer, pl_module) -> None:
        if self.restored:
            self.logger.held, self.restored = self.restored, None
            self.logger.flush()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.logger.flush()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self.logger.written()

    def state_dict(self) -> dict:
        return {"held": copy_of(self.logger.held)}

    def load_state_dict(self, state_dict: dict) -> None:
        """Also when a test loads the best checkpoint: only a fit's start writes what it held."""
        self.restored = copy_of(state_dict.get("held"))


def copy_of(held: dict | None) -> dict | None:
    """Held metrics not shared with the logger, which goes on adding to its own."""
    return {**held, "metrics": dict(held["metrics"])} if held else None
