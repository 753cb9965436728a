"""A moving average of the weights (EMA), which validation, the best checkpoint, the test and the logged model use:
late in training it sits nearer the bottom of the loss valley than the noisy weights that SGD's last steps leave."""
from pytorch_lightning.callbacks import EMAWeightAveraging


class WeightAverage(EMAWeightAveraging):
    """Lightning's EMA callback (decay, update_every_n_steps, update_starting_at_epoch), except when a checkpoint is
    loaded to test or predict: Lightning's then puts back the raw weights saved beside the average (what resuming a
    fit needs), so the test would score weights nobody validated; this one keeps the average there."""

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.state.fn == "fit":
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
