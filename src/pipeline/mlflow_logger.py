"""Lightning's logger interface for the run that tracking.experiment_run opened: metrics go to the run's tracking
process (remote_tracking.py) without waiting, so MLflow is never imported in the trainer's process. Unlike
Lightning's MLFlowLogger it neither starts nor ends the run: its status belongs to the pipeline, which knows
whether the run was stopped (KILLED), failed, or is to be resumed."""
import logging
import re
from collections.abc import Mapping

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
        """MLflow allows letters, digits and `_ / . - ` and space in a metric's name; others are dropped, as
        Lightning's logger does."""
        kept = {}
        for key, value in metrics.items():
            if isinstance(value, str):
                log.warning("discarding metric %s: a string (%s)", key, value)
                continue
            kept[re.sub("[^a-zA-Z0-9_/. -]+", "", key)] = value
        self._run.log_metrics(kept, step or 0)
