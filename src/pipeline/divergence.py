"""Divergence stops a run at once: a loss or gradient that is NaN or infinite only ever poisons the weights, and
training on for hours after it would only hide the moment it happened."""
import pytorch_lightning as pl
import torch

from pipeline.errors import TrainingError

HINT = "lower optimizer.lr or clip gradients (trainer.gradient_clip_val=1.0)"


class TrainingDiverged(TrainingError):
    """The loss or a gradient became NaN or infinite."""


class StopOnDivergence(pl.Callback):
    """Checks the loss before backward and the gradient norm before each optimizer step, in one host sync per
    step (the loss is kept as a tensor until the gradients are there)."""

    def __init__(self):
        self.loss = None

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.loss = loss.detach()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        loss = self.loss if self.loss is not None else torch.zeros(())
        values = torch.stack([loss.float().reshape(()), grad_norm.float().to(loss.device)])
        if bool(torch.isfinite(values).all()):
            return
        which = (f"the loss is {loss.item()}" if not torch.isfinite(loss) else
                 f"the gradient norm is {grad_norm.item()}")
        raise TrainingDiverged(f"training diverged at epoch {trainer.current_epoch}, step {trainer.global_step}: "
                               f"{which}; {HINT}")
