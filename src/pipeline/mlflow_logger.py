"""Lightning's MLflow logger, minus one thing: it does not end the run. Lightning's logger sets the run FAILED on
any interruption and FINISHED after fit (before the test); here the run's status belongs to the pipeline
(tracking.experiment_run), which knows whether the run was stopped (KILLED), failed, or is to be resumed."""
from pytorch_lightning.loggers import MLFlowLogger as LightningMLFlowLogger


class MLFlowLogger(LightningMLFlowLogger):
    def finalize(self, status: str = "success") -> None:
        if self._initialized and self._checkpoint_callback:  # the one other thing finalize does (log_model=true)
            self._scan_and_log_checkpoints(self._checkpoint_callback)
