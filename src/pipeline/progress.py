"""Lightning's rich progress bar, redrawn a few times a second instead of after every batch.

After every batch Lightning's bar collects the logged metrics and updates its table: for a small model that is a
tenth of the step's time (benchmarks/throughput.py). A person reads a bar a few times a second at most.
"""
import time

from pytorch_lightning.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """Updates after a batch only when `interval` seconds have passed since the last update, and after each
    epoch's last batch, so the bar always ends full and with the epoch's metrics."""

    def __init__(self, interval: float = 0.25, **kwargs):
        super().__init__(**kwargs)
        self.interval = interval
        self._shown = float("-inf")  # the first update is due whatever the clock reads (monotonic: from boot)

    def _due(self, batch_idx: int, total) -> bool:
        now = time.monotonic()
        if batch_idx + 1 != total and now - self._shown < self.interval:
            return False
        self._shown = now
        return True

    @property
    def total_train_batches(self):
        """Steps, where the task takes several per batch Lightning hands it (pipeline/fused_steps.py)."""
        return getattr(self.trainer.train_dataloader, "steps", None) or super().total_train_batches

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        group, total = getattr(trainer.train_dataloader, "group", 1), self.total_train_batches
        step = min((batch_idx + 1) * group, total) - 1  # the group's last step, from 0
        if not self.is_disabled and self._due(step, total):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, step)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self.is_disabled and self._due(batch_idx, self.total_val_batches_current_dataloader):
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self.is_disabled and self._due(batch_idx, self.total_test_batches_current_dataloader):
            super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
