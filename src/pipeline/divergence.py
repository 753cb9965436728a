"""Divergence stops a run at once: a loss or gradient that is NaN or infinite only ever poisons the weights, and
training on for hours after it would only hide the moment it happened."""
import math

import pytorch_lightning as pl
import torch

from pipeline.errors import TrainingError

HINT = "lower optimizer.lr or clip gradients (trainer.gradient_clip_val=1.0)"


class TrainingDiverged(TrainingError):
    """The loss or a gradient became NaN or infinite."""


class StopOnDivergence(pl.Callback):
    """Checks the loss before backward and the gradients before each optimizer step, in one host sync per step (the
    loss is kept as a tensor until the gradients are there). Under 16-mixed a non-finite gradient is the gradient
    scaler's to handle (it skips that step and lowers its scale): there the loss alone is checked.

    On a GPU that sync would make the host wait for every step it queued before queuing the next, leaving the GPU
    idle in between; there each step's values are copied to the host without waiting and read one step later
    (and at the epoch's end), so a diverged run stops one optimizer step later than on a CPU.
    """

    def __init__(self):
        self.loss = None
        self.pending = None  # on a GPU: (values on their way to the host, their copy's event, epoch, step)
        self.flags: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # see gradients_not_finite

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.loss = loss.detach()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        loss = self.loss if self.loss is not None else torch.zeros(())
        scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
        not_finite = torch.zeros(()) if scaled else self.gradients_not_finite(optimizer)
        if loss.device.type != "cuda":
            self.check(loss.item(), not_finite.item(), trainer.current_epoch, trainer.global_step)
            return
        self.check_pending()
        values = torch.stack([loss.float().reshape(()), not_finite.to(loss.device)])
        copied = torch.cuda.Event()
        self.pending = (values.to("cpu", non_blocking=True), copied, trainer.current_epoch, trainer.global_step)
        copied.record()

    def gradients_not_finite(self, optimizer) -> torch.Tensor:
        """Not 0 when some gradient holds a NaN or an infinity. One fused pass over the gradients of each
        device and dtype: the check torch's gradient scaler makes, here with a scale of 1, which leaves them as they
        are (for the template MLP 21 us a step against their norm's 56, in isolation)."""
        grads: dict[tuple, list[torch.Tensor]] = {}
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None:
                    grads.setdefault((parameter.grad.device, parameter.grad.dtype), []).append(parameter.grad)
        found = None
        for (device, _), tensors in grads.items():
            if device not in self.flags:
                self.flags[device] = torch.zeros(1, device=device), torch.ones(1, device=device)
            flag, scale = self.flags[device]
            flag.zero_()
            torch._amp_foreach_non_finite_check_and_unscale_(tensors, flag, scale)
            found = flag if found is None else found + flag.to(found.device)
        return torch.zeros(()) if found is None else found.reshape(())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.check_pending()

    def check_pending(self) -> None:
        if self.pending is not None:
            values, copied, epoch, step = self.pending
            self.pending = None
            copied.synchronize()
            self.check(*values.tolist(), epoch, step)

    @staticmethod
    def check(loss: float, not_finite: float, epoch: int, step: int) -> None:
        """not_finite: not 0 when a gradient is NaN or infinite."""
        if math.isfinite(loss) and not not_finite:
            return
        which = f"the loss is {loss}" if not math.isfinite(loss) else "a gradient is NaN or infinite"
        raise TrainingDiverged(f"training diverged at epoch {epoch}, step {step}: {which}; {HINT}")
