"""Classification: a loss on class scores (cross-entropy, hinge or squared: task.loss), accuracy and macro-F1 per
stage; wraps any nn.Module that outputs one score per class."""
import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from pipeline.errors import ConfigError
from pipeline.tasks.losses import LOSSES


class Classifier(pl.LightningModule):
    """Trains `model` with the given optimizer (a partial awaiting parameters) and optional LR scheduler.

    Metrics are logged per epoch as `train/loss`, `val/acc`, `val/acc_best`, `val/f1_macro`, `val/f1_macro_best`,
    `test/acc`, ... (the `_best` ones are the best epoch so far: what a sweep ranks its runs by).
    Macro-F1 (the mean of per-class F1) is reported for val and test: on imbalanced data it shows what accuracy
    hides, a model that ignores the small classes. The loss weighs classes as the datamodule's
    `class_weights()` says (data.class_weighting), if it has that method.
    """

    def __init__(self, model: nn.Module, optimizer, num_classes: int, scheduler=None,
                 log_every_step: bool = False, label_smoothing: float = 0.0, channels_last: bool = False,
                 loss: str = "cross_entropy", monitor: str = "val/acc", mode: str = "max"):
        super().__init__()
        if loss not in LOSSES:
            raise ConfigError(f"task.loss={loss!r} is invalid: must be one of {', '.join(LOSSES)}")
        if loss == "hinge" and label_smoothing:
            raise ConfigError(f"task.label_smoothing={label_smoothing} does not apply to task.loss=hinge (a margin "
                              "loss has no target distribution to smooth): set it to 0 or pick another loss")
        self.loss_name = loss
        # What "best" means, declared with the task; the checkpoint and sweeps read it from the config (objective.py)
        if (monitor, mode) not in (("val/acc", "max"), ("val/f1_macro", "max")):
            raise ConfigError(f"task.monitor={monitor} with task.mode={mode}: a classifier keeps the best epoch by "
                              "val/acc or val/f1_macro, both with mode max")
        self.monitor, self.mode = monitor, mode
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.log_every_step = log_every_step
        # channels_last: convolutions on CPU (oneDNN) and tensor cores run ~25% faster in NHWC layout.
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.label_smoothing = label_smoothing
        # Filled from the training split's class counts in setup(); a buffer, so it moves with the model.
        self.register_buffer("class_weight", None, persistent=False)
        self.acc = nn.ModuleDict({stage: MulticlassAccuracy(num_classes, average="micro")
                                  for stage in ("train_", "val_", "test_")})
        # Not on train: a per-step F1 update would cost time for a number nobody reads.
        self.f1 = nn.ModuleDict({stage: MulticlassF1Score(num_classes, average="macro") for stage in ("val_", "test_")})
        self.mean_loss = nn.ModuleDict({stage: MeanMetric() for stage in ("train_", "val_", "test_")})
        # The best epoch so far; persistent, so it is in checkpoints and a resumed run remembers it.
        self.val_best = nn.ModuleDict({"acc": MaxMetric(), "f1_macro": MaxMetric()})
        for best in self.val_best.values():
            best.persistent(True)

    def forward(self, x):
        return self.model(x)

    def _step(self, batch, stage: str):
        x, y = batch
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.model(x)
        loss = self.loss(logits, y)
        # ModuleDict keys can't be "train" (a Module attribute), hence the trailing underscore.
        self.acc[stage + "_"](logits, y)
        self.mean_loss[stage + "_"](loss, weight=len(y))
        on_step = self.log_every_step and stage == "train"
        self.log(f"{stage}/loss", self.mean_loss[stage + "_"], on_step=False, on_epoch=True,
                 prog_bar=stage != "train")
        self.log(f"{stage}/acc", self.acc[stage + "_"], on_step=False, on_epoch=True, prog_bar=True)
        if stage != "train":
            self.f1[stage + "_"](logits, y)
            self.log(f"{stage}/f1_macro", self.f1[stage + "_"], on_step=False, on_epoch=True)
        if on_step:
            self.log("train/loss_step", loss, on_step=True, on_epoch=False)
        return loss

    def loss(self, logits, y):
        """The configured loss (task.loss) with the class weights and label smoothing."""
        return LOSSES[self.loss_name](logits, y, weight=self.class_weight, label_smoothing=self.label_smoothing)

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            return
        for name, metric in (("acc", self.acc["val_"]), ("f1_macro", self.f1["val_"])):
            self.val_best[name](metric.compute())
            self.log(f"val/{name}_best", self.val_best[name].compute(), prog_bar=False)

    def setup(self, stage: str) -> None:
        weights = getattr(self.trainer.datamodule, "class_weights", None)
        if weights is not None and self.class_weight is None:
            self.class_weight = weights()

    def configure_optimizers(self):
        optimizer = self.optimizer(params=self.parameters())
        if self.scheduler is None:
            return optimizer
        if getattr(self.scheduler, "func", None) is torch.optim.lr_scheduler.OneCycleLR:
            # One-cycle schedules are defined over the whole run's steps, which only the trainer knows.
            scheduler = self.scheduler(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer),
                                                          "interval": "epoch"}}

    @torch.no_grad()
    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.model(x).argmax(dim=-1)
