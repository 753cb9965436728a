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
    step (the loss is kept as a tensor until the gradients are there).

    On a GPU that sync would make the host wait for every step it queued before queuing the next, leaving the GPU
    idle in between; there each step's values are copied to the host without waiting and read one step later
    (and at the epoch's end), so a diverged run stops one optimizer step later than on a CPU.
    """

    def __init__(self):
        self.loss = None
        self.pending = None  # on a GPU: (values on their way to the host, their copy's event, epoch, step)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.loss = loss.detach()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        loss = self.loss if self.loss is not None else torch.zeros(())
        values = torch.stack([loss.float().reshape(()), grad_norm.float().to(loss.device)])
        if values.device.type != "cuda":
            self.check(values, trainer.current_epoch, trainer.global_step)
            return
        self.check_pending()
        copied = torch.cuda.Event()
        self.pending = (values.to("cpu", non_blocking=True), copied, trainer.current_epoch, trainer.global_step)
        copied.record()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.check_pending()

    def check_pending(self) -> None:
        if self.pending is not None:
            values, copied, epoch, step = self.pending
            self.pending = None
            copied.synchronize()
            self.check(values, epoch, step)

    @staticmethod
    def check(values: torch.Tensor, epoch: int, step: int) -> None:
        """values: the loss and the gradient norm."""
        if bool(torch.isfinite(values).all()):
            return
        loss, grad_norm = values.tolist()
        which = f"the loss is {loss}" if not torch.isfinite(values[0]) else f"the gradient norm is {grad_norm}"
        raise TrainingDiverged(f"training diverged at epoch {epoch}, step {step}: {which}; {HINT}")
