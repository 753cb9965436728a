"""What every task shares, and what the rest of the pipeline may ask of a task.

A task is a LightningModule that wraps a plain model (models/) with what depends on what is learned: the loss,
the metrics, what "best" means (`monitor`, `mode`), what data it needs, how it checks a model, its plots, what the
DVC evaluate stage writes and what the logged MLflow model is. train.py, checks.py and the stages call only the
methods below, so a new task is one file in tasks/ and one in conf/task/.
"""
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch import nn
from torchmetrics import MaxMetric, MeanMetric, MinMetric

from pipeline.data.batches import BatchGroup
from pipeline.errors import ConfigError
from pipeline.fused_steps import step_listeners, training_steps

STAGES = ("train_", "val_", "test_")  # ModuleDict keys can't be "train" (a Module attribute): hence the underscore
EVALUATED = STAGES[1:]  # the stages whose metrics are torchmetrics objects; training values are summed by hand


class Task(pl.LightningModule):
    """The model, its optimizer (a partial awaiting parameters) and optional LR scheduler, and the best epoch of
    every metric in `best_of()`, logged as `<metric>_best` (what the checkpoint keeps and a sweep ranks by)."""

    name = "task"  # the conf/task option, for messages
    # The validation metrics whose best epoch is kept, each with the direction that is better.
    best_of: dict[str, str] = {"val/loss": "min"}

    def __init__(self, model: nn.Module, optimizer, scheduler=None, monitor: str = "val/loss", mode: str = "min",
                 log_every_step: bool = False):
        super().__init__()
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.monitor, self.mode = monitor, mode
        self.log_every_step = log_every_step
        self.check_best(monitor, mode)
        self.mean_loss = nn.ModuleDict({stage: MeanMetric() for stage in EVALUATED})
        self.epoch_sums: dict[str, list] = {}  # this epoch's training values so far (see add_to_epoch_mean)
        self.epoch_metrics: dict[str, tuple] = {}  # this epoch's metrics by key, any stage (see log_epoch_metric)
        self.gradient_clip: tuple[float, str] | None = None  # (value, "norm" or "value"): see step_by_hand
        # The best epoch so far; persistent, so it is in checkpoints and a resumed run remembers it.
        self.val_best = nn.ModuleDict({key.removeprefix("val/"): MaxMetric() if direction == "max" else MinMetric()
                                       for key, direction in self.best_of.items()})
        for metric in self.val_best.values():
            metric.persistent(True)

    # --- what a task declares ---------------------------------------------------------------------
    def val_metric(self, key: str):
        """The torchmetrics object behind the validation metric `key` (one of best_of): the mean loss for
        val/loss; a task that keeps the best of other metrics says which object each is."""
        return self.mean_loss["val_"]

    @classmethod
    def check_best(cls, monitor: str, mode: str) -> None:
        """What "best" means must be one of best_of: checks.check_config asks before anything is built."""
        if cls.best_of.get(monitor) != mode:
            allowed = " or ".join(f"{key} with mode {direction}" for key, direction in cls.best_of.items())
            raise ConfigError(f"task.monitor={monitor} with task.mode={mode}: task={cls.name} keeps the best epoch "
                              f"by {allowed}")

    @classmethod
    def check_data(cls, cfg: DictConfig) -> None:
        """Raise ConfigError when data=`cfg.data` lacks what this task learns from (checked before loading)."""

    @classmethod
    def check_model(cls, model: nn.Module, inputs: torch.Tensor, cfg: DictConfig) -> None:
        """Raise ConfigError when `model` (already run once on `inputs`) cannot be trained by this task."""

    def plots(self, datamodule, viz: DictConfig, folder: Path) -> list[Path]:
        """PNG files about the trained model on the test split (MLflow artifacts, the DVC visualize stage)."""
        return []

    def evaluation(self, datamodule, folder: Path) -> tuple[dict, list[Path]]:
        """For the DVC evaluate stage, beyond the test metrics: more values for metrics.json and detail files
        written into `folder`."""
        return {}, []

    def exported(self, datamodule) -> tuple[nn.Module, torch.Tensor, dict]:
        """What the logged MLflow model is: a module, an example input for its signature, and what a user of it
        needs to know besides the weights (merged into data/description.json)."""
        raise NotImplementedError

    # --- shared behaviour -------------------------------------------------------------------------
    def forward(self, x):
        return self.model(x)

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.log_epoch_metrics("val")
            for key in self.best_of:
                name = key.removeprefix("val/")
                self.val_best[name](self.val_metric(key).compute())
                # the same on every process (computed from metrics summed over them): sync_dist only says so
                self.log(f"{key}_best", self.val_best[name].compute(), prog_bar=False, sync_dist=True)
        self.reset_epoch_metrics("val")

    def on_test_epoch_end(self):
        self.log_epoch_metrics("test")
        self.reset_epoch_metrics("test")

    def log_epoch_metric(self, key: str, metric, *values, prog_bar: bool = False) -> None:
        """Update the torchmetrics `metric` with this step's `values`; it is logged as `key` (`<stage>/...`) once, at
        the stage's epoch end. Handed to self.log at every step instead, a metric costs a small model's step ~0.1 ms
        more: Lightning moves its states to the value's device and it computes the batch's own value, every step."""
        metric.update(*values)
        self.epoch_metrics[key] = (metric, prog_bar)

    def log_epoch_metrics(self, stage: str) -> None:
        """Log the epoch's metrics of `stage` (log_epoch_metric); computed over every process's batches, so the same
        on every process."""
        for key, (metric, prog_bar) in self.epoch_metrics.items():
            if key.startswith(stage + "/"):
                self.log(key, metric.compute(), prog_bar=prog_bar, sync_dist=True)

    def reset_epoch_metrics(self, stage: str) -> None:
        for key in [key for key in self.epoch_metrics if key.startswith(stage + "/")]:
            self.epoch_metrics.pop(key)[0].reset()

    # BatchNorm shifts (biases) learn this many times faster than the other weights, their weight decay divided by
    # it so that the decay per step stays the same (airbench's bias_scaler); 1: one group. Set by task= options
    # that take it (classify: task.norm_bias_lr_scale).
    norm_bias_lr_scale: float = 1.0

    def parameter_groups(self):
        """What the optimizer gets: every parameter in one group, or the trained BatchNorm shifts in a second one
        with the learning rate scaled by norm_bias_lr_scale (the optimizer's weight decay divided by it)."""
        if self.norm_bias_lr_scale == 1:
            return self.parameters()
        settings = getattr(self.optimizer, "keywords", {})
        if "lr" not in settings:
            raise ConfigError(f"task.norm_bias_lr_scale={self.norm_bias_lr_scale} needs an optimizer with a "
                              "learning rate (optimizer.lr), such as optimizer=sgd or momentum")
        norms = [module for module in self.model.modules() if isinstance(module, nn.modules.batchnorm._NormBase)]
        shifts = [module.bias for module in norms if module.bias is not None and module.bias.requires_grad]
        shift_ids = {id(shift) for shift in shifts}
        scale, decay = self.norm_bias_lr_scale, settings.get("weight_decay", 0.0)
        return [{"params": [p for p in self.parameters() if id(p) not in shift_ids]},
                {"params": shifts, "lr": settings["lr"] * scale, "weight_decay": decay / scale}]

    def configure_optimizers(self):
        groups = self.parameter_groups()
        optimizer = self.optimizer(params=groups)
        if self.scheduler is None:
            return optimizer
        if getattr(self.scheduler, "func", None) is torch.optim.lr_scheduler.OneCycleLR:
            # One-cycle schedules are defined over the whole run's steps, which only the trainer knows; each group
            # peaks at the schedule's max_lr scaled as the group's learning rate is.
            peak, steps = self.scheduler.keywords["max_lr"], training_steps(self.trainer)
            peaks = [peak * group["lr"] / optimizer.defaults["lr"] for group in optimizer.param_groups]
            scheduler = self.scheduler(optimizer, max_lr=peaks if len(peaks) > 1 else peak, total_steps=steps)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer),
                                                          "interval": "epoch"}}

    def step_by_hand(self, trainer: DictConfig) -> None:
        """Take the optimizer steps in training_step (Lightning's manual optimisation) rather than through
        Lightning's closure, whose per-step hooks cost a small model a sixth of its step (benchmarks/throughput.py).
        The trainer config's gradient clipping moves here, as Lightning refuses it under manual optimisation;
        gradient accumulation (trainer.accumulate_grad_batches > 1) stays with Lightning's automatic optimisation."""
        if not steps_by_hand(trainer):
            return
        self.automatic_optimization = False
        if trainer.get("gradient_clip_val"):
            self.gradient_clip = (float(trainer.gradient_clip_val), trainer.get("gradient_clip_algorithm") or "norm")

    def training_step(self, batch, batch_idx):
        if isinstance(batch, BatchGroup):
            return self.take_steps(batch, batch_idx)
        loss = self.training_loss(batch, batch_idx)
        if loss is not None and not self.automatic_optimization:
            optimizer = self.optimizers()
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()  # clips first, in on_before_optimizer_step, where Lightning would
            self.step_schedulers("step")
        return loss

    def take_steps(self, group: BatchGroup, group_idx: int) -> None:
        """One optimizer step for each batch of the group (pipeline/fused_steps.py), each as training_step takes it
        through Lightning: the divergence check before backward and before the step, clipping, the step's
        schedules; Lightning's step count goes up by one per step and the loggers' by one per batch."""
        lightning_optimizer = self.optimizers()
        optimizer = lightning_optimizer.optimizer
        listeners = step_listeners(self.trainer)
        first = group_idx * self.trainer.train_dataloader.group  # the batch index each step would have had
        for index, batch in enumerate(group, start=first):
            loss = self.training_loss(batch, index)
            if loss is None:
                continue
            optimizer.zero_grad()
            for listener in listeners:
                listener.on_before_backward(self.trainer, self, loss)
            loss.backward()
            lightning_optimizer._on_before_step()  # Lightning's step count, as LightningOptimizer.step keeps it
            for listener in listeners:
                listener.on_before_optimizer_step(self.trainer, self, optimizer)
            self.on_before_optimizer_step(optimizer)
            optimizer.step()
            lightning_optimizer._on_after_step()
            self.step_schedulers("step")
        # Lightning adds one after the call: the loggers' step (metrics' x axis) counts batches as without groups.
        self.trainer.fit_loop.epoch_loop._batches_that_stepped += len(group) - 1

    def step_schedulers(self, interval: str) -> None:
        """Under manual optimisation, step the schedules whose interval is `interval` ("step" or "epoch")."""
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == interval:
                config.scheduler.step()

    def training_loss(self, batch, batch_idx) -> torch.Tensor | None:
        """This batch's loss (None: no gradient step this time)."""
        return self._step(batch, "train")

    def on_before_optimizer_step(self, optimizer) -> None:
        # After the divergence check and, under 16-mixed, after the gradients are unscaled: as Lightning clips.
        if self.gradient_clip and not self.automatic_optimization:
            value, algorithm = self.gradient_clip
            self.clip_gradients(optimizer, gradient_clip_val=value, gradient_clip_algorithm=algorithm)

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def _step(self, batch, stage: str):
        raise NotImplementedError

    def log_loss(self, stage: str, loss: torch.Tensor, count: int, prog_bar: bool = True) -> None:
        """`<stage>/loss`, the epoch's mean over examples (batches weighted by their `count`), and with
        log_every_step each training step's as train/loss_step."""
        if stage == "train":
            self.add_to_epoch_mean("train/loss", loss, count, prog_bar)
            if self.log_every_step:
                self.log("train/loss_step", loss, on_step=True, on_epoch=False)
            return
        self.log_epoch_metric(f"{stage}/loss", self.mean_loss[stage + "_"], loss.detach(), count, prog_bar=prog_bar)

    def add_to_epoch_mean(self, key: str, value, count: int = 1, prog_bar: bool = False) -> None:
        """A training step's value (the mean over its `count` examples), logged once, at the epoch's end, as the
        epoch's mean over examples. Summed here, a tensor on its own device (no host sync per step): a self.log or
        a torchmetrics update per step costs a small model a tenth of its step (benchmarks/throughput.py)."""
        if isinstance(value, torch.Tensor):
            value = value.detach().float()
        entry = self.epoch_sums.setdefault(key, [0.0, 0, prog_bar])
        entry[0] = entry[0] + value * count
        entry[1] += count

    def on_train_epoch_start(self) -> None:
        """A model whose trained parts change with the epoch (a `start_epoch(epoch)` method) hears of each."""
        start_epoch = getattr(self.model, "start_epoch", None)
        if start_epoch is not None:
            start_epoch(self.current_epoch)

    def on_train_epoch_end(self) -> None:
        for key, (total, count, prog_bar) in self.epoch_sums.items():
            self.log(key, total / count, prog_bar=prog_bar, sync_dist=True)
        self.epoch_sums = {}
        self.log_epoch_metrics("train")
        self.reset_epoch_metrics("train")
        if not self.automatic_optimization:
            self.step_schedulers("epoch")  # where Lightning steps them: after the epoch's validation pass


def steps_by_hand(trainer: DictConfig) -> bool:
    """Whether the tasks take their own optimizer steps under this trainer config (Task.step_by_hand)."""
    return (trainer.get("accumulate_grad_batches") or 1) <= 1


class ImageTask(Task):
    """A task that learns to rebuild images: it reads them as pixel values in [0, 1] (the datamodule's
    `unit_pixels` undoes its normalisation), so losses such as BCE and measures such as PSNR mean what they say."""

    @classmethod
    def check_data(cls, cfg: DictConfig) -> None:
        image_data_only(cls.name, cfg)

    def setup(self, stage: str) -> None:
        self.unit_pixels = self.trainer.datamodule.unit_pixels

    def test_images(self, datamodule, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The test split's images in [0, 1] (the first `limit`) and their labels."""
        x, y = datamodule.splits["test"]
        return datamodule.unit_pixels(x[:limit]), y[:limit]


def image_data_only(task: str, cfg: DictConfig) -> None:
    """Tasks that rebuild images need images: data whose input_shape is [channels, height, width]."""
    shape = cfg.data.get("input_shape")
    if "vocab_size" in cfg.data or shape is None or len(shape) != 3:
        raise ConfigError(f"task={task} needs image data (data.input_shape [channels, height, width]): "
                          f"data={cfg.data.name} has "
                          + ("token ids" if "vocab_size" in cfg.data else f"input_shape {list(shape or [])}")
                          + "; choose data=digits, mnist, fashion_mnist or cifar10")
