"""Several optimizer steps per call from Lightning's training loop, where nothing needs Lightning between them.

For every batch Lightning fetches it, moves it, and calls each callback's and the module's per-step hooks through
its profiler; for a model whose step takes a millisecond that is a third of the time (benchmarks/throughput.py:
even a bare Lightning loop runs at ~0.7x a plain PyTorch loop). With `fused_steps`, the in-memory data hands the
task groups of consecutive batches (data/batches.py: GroupedBatches) and the task takes one step per batch itself
(Task.take_steps): the same batches, order, random draws and updates, so the same weights, step count and logged
steps as one step per call; only Lightning's per-batch work is paid once per group.

That is only the same where nothing else acts between steps, so it is used only where every callback's per-step
hooks are known: a progress bar (ours shows steps; Lightning's own would count calls), a checkpoint saved per epoch,
the divergence check (the task calls it at each step). A weight average, lookahead, a step-triggered checkpoint,
gradient accumulation, 16-mixed's gradient scaler, several processes, step limits or a task that takes its own
steps each keep one step per call.
"""
import time

import pytorch_lightning as pl
import torch

from pipeline.data.batches import GroupedBatches
from pipeline.data.in_memory import InMemoryDataModule
from pipeline.divergence import StopOnDivergence
from pipeline.errors import ConfigError

MOST = 32  # steps per call that `auto` takes at most: template MLP 16: 0.83x plain, 32: 0.85x, 64: 0.86x
GROUP_SECONDS = 0.05  # `auto` groups fewer steps where a group would take longer: the bar moves once per group
CALLBACK_STEP_HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
                       "on_before_optimizer_step", "on_before_zero_grad")
# The task's own: Task.on_before_optimizer_step (the clipping) is called at each step; a task's override is not.
MODULE_STEP_HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
                     "on_before_zero_grad", "on_before_batch_transfer", "on_after_batch_transfer",
                     "transfer_batch_to_device", "optimizer_step")


class FusedSteps(pl.Callback):
    """Decides, as a fit starts, how many steps the task takes per call: `setting` "auto" (as many as take about
    GROUP_SECONDS, at most MOST, where nothing stands against it), 1, or an integer (refused, with the reason, where
    something stands against it). A resumed fit decides anew: checkpoints are written between epochs (a checkpoint
    on a step trigger keeps one step per call), where how the last epoch's batches were grouped no longer matters."""

    def __init__(self, setting="auto"):
        self.setting = setting

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or not isinstance(trainer.datamodule, InMemoryDataModule):
            return
        reason = None if self.setting == 1 else why_not(trainer, pl_module)
        if reason is not None and self.setting != "auto":
            raise ConfigError(f"fused_steps={self.setting}: {reason}; use fused_steps=auto or 1")
        if reason is not None or self.setting == 1:
            group = 1
        else:
            group = int(self.setting) if self.setting != "auto" else steps_in(GROUP_SECONDS, pl_module,
                                                                               trainer.datamodule)
        trainer.datamodule.training_group = group

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and isinstance(trainer.datamodule, InMemoryDataModule):
            trainer.datamodule.training_group = 1  # what a fit without this callback expects


def why_not(trainer: pl.Trainer, task) -> str | None:
    """What keeps this fit at one step per call; None: nothing."""
    from pipeline.tasks.base import Task

    settings = [
        (isinstance(trainer.datamodule, InMemoryDataModule)
         and type(trainer.datamodule).train_dataloader is InMemoryDataModule.train_dataloader
         and type(trainer.datamodule).on_after_batch_transfer is InMemoryDataModule.on_after_batch_transfer,
         f"data={getattr(trainer.datamodule, 'name', None)} does not serve its training batches in groups"),
        (isinstance(task, Task) and type(task).training_step is Task.training_step,
         f"task={getattr(task, 'name', type(task).__name__)} takes its own steps"),
        (not task.automatic_optimization, "the steps are Lightning's (trainer.accumulate_grad_batches > 1)"),
        (not getattr(task, "log_every_step", False), "task.log_every_step=true logs every step through Lightning"),
        (trainer.world_size == 1, "it trains on several processes"),
        (getattr(trainer.precision_plugin, "scaler", None) is None,
         f"trainer.precision={trainer.precision} scales the gradients through Lightning"),
        (trainer.max_steps in (-1, None), f"trainer.max_steps={trainer.max_steps} counts Lightning's calls"),
        (whole(trainer.limit_train_batches), f"trainer.limit_train_batches={trainer.limit_train_batches} counts "
                                             "Lightning's calls"),
        (whole(trainer.val_check_interval), f"trainer.val_check_interval={trainer.val_check_interval} counts "
                                            "Lightning's calls"),
        (not trainer.fast_dev_run and not trainer.overfit_batches, "a fast_dev_run or overfit_batches run"),
    ]
    for fine, reason in settings:
        if not fine:
            return reason
    hooks = overridden(task, pl.LightningModule, MODULE_STEP_HOOKS) + overridden(task, Task,
                                                                             ["on_before_optimizer_step"])
    if hooks:
        return f"the task acts at every step ({', '.join(hooks)})"
    for callback in trainer.callbacks:
        hooks = overridden(callback, pl.Callback, CALLBACK_STEP_HOOKS)
        if hooks and not step_safe(callback):
            return f"callback {type(callback).__name__} acts at every step ({', '.join(hooks)})"
    return None


def whole(limit) -> bool:
    """Lightning's "all of it": a float 1.0 (an integer 1 means one batch)."""
    return isinstance(limit, float) and limit == 1.0


def overridden(obj, base: type, hooks) -> list[str]:
    return [hook for hook in hooks if getattr(type(obj), hook) is not getattr(base, hook)]


def step_safe(callback: pl.Callback) -> bool:
    """Callbacks whose per-step hooks may see a group: a progress bar (ours shows steps: pipeline/progress.py), a
    checkpoint with no step trigger, the divergence check, which the task calls at every step, and a callback that
    says so (`sees_groups = True`: its per-step hooks only observe)."""
    if isinstance(callback, pl.callbacks.ModelCheckpoint):
        return not callback._every_n_train_steps and callback._train_time_interval is None
    return isinstance(callback, (pl.callbacks.ProgressBar, StopOnDivergence)) or getattr(callback, "sees_groups",
                                                                                         False)


def step_listeners(trainer: pl.Trainer) -> list[StopOnDivergence]:
    """The callbacks the task calls at each of a group's steps, as Lightning would."""
    return [callback for callback in trainer.callbacks if isinstance(callback, StopOnDivergence)]


TIMED_EXAMPLES = 64  # steps_in times this many examples and scales to the batch: a large network costs little to time


@torch.no_grad()
def steps_in(seconds: float, task, datamodule) -> int:
    """How many training steps take about `seconds`, at most MOST: a step costs about three forward passes of its
    batch, timed on the first training examples with the model in eval mode (no batch statistics or random draws
    change). Eval mode may cost more (a model averaging test-time views): then fewer steps, never more."""
    examples = min(datamodule.batch_size, TIMED_EXAMPLES)
    x = datamodule.splits["train"][0][:examples]
    training = task.training
    task.eval()
    try:
        task(x)  # the first pass sets up kernels and memory
        forward = min(timed(task, x) for _ in range(3))  # the least: on a busy machine a pass may wait for a core
        step = 3 * forward * datamodule.batch_size / examples
    finally:
        task.train(training)
    return max(1, min(MOST, int(seconds / max(step, 1e-9))))


def timed(task, x) -> float:
    start = time.perf_counter()
    task(x)
    return time.perf_counter() - start


def training_steps(trainer: pl.Trainer) -> int:
    """The fit's optimizer steps (a one-cycle schedule's length): Lightning's estimate counts its calls, which take
    a group's steps each where batches are grouped (never together with a step limit: why_not)."""
    estimate = int(trainer.estimated_stepping_batches)  # makes the training batches
    loader = trainer.train_dataloader
    return trainer.max_epochs * loader.steps if isinstance(loader, GroupedBatches) else estimate
